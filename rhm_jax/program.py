"""A program: models of a sweep that share every static value, with their stacked datasets and compiled functions.

Shape letters: M models, G distinct datasets of the program, Q rows of each training pool (the
program's largest P), N test rows, D sequence length.

A dataset is the (grammar seed, data seed) of a model. ``setup`` draws each distinct dataset of
the program once (``draw``, the one function that draws a model's data; the clustering learner
uses it too) and stacks them: the grammars as one pytree with leading axis G, the training pools as
(G, Q, D), the test sets as (G, N, D). A model with training-set size P reads the first P rows of
its pool: ``data.sample_dataset`` draws nested prefixes, so these are the rows a pool of exactly P
rows would hold. An online model (P = 0) reads none: it draws its batches from its grammar, which
``build`` then hands to the train chunk beside the pools (``train.Sources``). ``build`` adds the compiled train chunk and evaluator, memoized on the program's
typed settings (``settings.Settings.compiled``): a second program (or grid, or resume in the same
process) that differs in traced values alone (P, seeds, lr, budgets, Adam's scalars, grammar and
data seeds) reuses them.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax import data, evaluate, grammar, networks, plan, settings, sharding, train

# The grid-row fields a compiled program reads (``train.grid_arrays``; budget_epochs is a record only).
_ROW_KEYS = tuple(f for f in plan.ROW_FIELDS if f != "budget_epochs")


class Setup(NamedTuple):
    """What a program builds before training, stacked over its G distinct datasets."""

    grammar: grammar.Grammar  # every leaf with leading axis G
    pool_GxQxD: jax.Array  # Q = the program's largest P; model i reads pool dataset_i's first P_i rows
    test_GxNxD: jax.Array
    process: Any
    network: networks.Network
    datasets: tuple[tuple[int, int], ...]  # (grammar_seed, data_seed) of each g


class Built(NamedTuple):
    """One program's setup, its placed jitted functions and its grid."""

    setup: Setup
    place: sharding.Placement
    step_fn: Callable  # (state, grid, pool_GxQxD, num_steps) -> (state, metrics)
    evaluator: "ProgramEvaluator"  # (state, grid, key) -> metrics: per-model grammar, lookup, pool, test
    pool: Any  # the stacked pools where step_fn reads them (placed); train.Sources with the grammars when a model is online
    grid: train.Grid  # the grid of ``grid_rows``, not placed
    grid_rows: list[dict]
    settings: settings.Settings


class ProgramEvaluator:
    """A program's ``evaluate.Evaluator`` bound to its references: ``(state, grid, key) -> metrics``,
    or its halves ``sample(state, grid, key) -> tokens`` and ``score(state, grid, tokens) -> metrics``."""

    def __init__(self, evaluate_fn: evaluate.Evaluator, refs: evaluate.References):
        self.evaluate_fn, self.refs = evaluate_fn, refs

    def sample(self, state: train.TrainState, grid: train.Grid, key: jax.Array) -> jax.Array:
        """(M, N, D) samples of every model of a (placed) grid of this program."""
        return self.evaluate_fn.sample(state, grid, key, self.refs)

    def score(self, state: train.TrainState, grid: train.Grid, tokens_MxNxD: jax.Array) -> dict:
        """Metrics of every model of a (placed) grid from its samples."""
        return self.evaluate_fn.score(state, grid, tokens_MxNxD, self.refs)

    def __call__(self, state: train.TrainState, grid: train.Grid, key: jax.Array) -> dict:
        """Metrics of every model of a (placed) grid of this program."""
        return self.score(state, grid, self.sample(state, grid, key))


class _Compiled(NamedTuple):
    """Everything of a program that depends on its static values only."""

    network: networks.Network
    place: sharding.Placement
    step_fn: Callable
    evaluate: evaluate.Evaluator  # (state, grid, key, refs) -> metrics


@functools.lru_cache(maxsize=4)
def _network(typed: settings.Settings) -> networks.Network:
    """The network of compiled settings (``settings.Settings.compiled``), one object per settings."""
    g = typed.grammar
    return networks.build(typed.network, g.v, g.s, g.L, typed.process)  # validated by config.validate


@functools.lru_cache(maxsize=4)
def _compiled(typed: settings.Settings, num_models: int) -> _Compiled:
    """Network and jitted functions of compiled settings for a program of ``num_models`` models.

    Its placement: the models over min(local devices, num_models) devices (``sharding.use_mesh``);
    callers pass ``num_models`` clipped to the device count, so grids of any larger size share one entry.
    """
    network = _network(typed)
    place = sharding.Placement(sharding.use_mesh(typed.shard, num_models=num_models))
    step_fn = train.jit_chunk(place.chunk(train.make_train_chunk(typed.train, typed.process, network)))
    evaluate_fn = place.evaluator(evaluate.make_evaluator(typed, typed.process, network))
    return _Compiled(network, place, step_fn, evaluate_fn)


def clear_cache() -> None:
    """Forget the memoized compilations and datasets (the next ``build`` call builds afresh)."""
    _compiled.cache_clear()
    _network.cache_clear()
    draw.cache_clear()


@functools.lru_cache(maxsize=16)
def draw(sizes: settings.GrammarSizes, grammar_seed: int, data_seed: int, num_train: int,
         num_test: int) -> tuple[grammar.Grammar, np.ndarray, np.ndarray]:
    """One dataset: the rules of grammar_seed, then train (num_train, D) and test (num_test, D) rows of data_seed.

    A smaller ``num_train`` draws a prefix of a larger one's training rows (``data.sample_dataset``).
    """
    rules = grammar.sample_rules(int(grammar_seed), sizes.v, sizes.n, sizes.m, sizes.s, sizes.L)
    train_QxD, test_NxD = data.sample_dataset(int(data_seed), rules, int(num_train), int(num_test))
    return rules, train_QxD, test_NxD


def _check_rows(rows: Sequence[dict]) -> list[dict]:
    """The grid rows as a list; ValueError naming the first missing key."""
    rows = list(rows)
    if not rows:
        raise ValueError("a program needs at least one grid row")
    for row in rows:
        missing = [k for k in _ROW_KEYS if k not in row]
        if missing:
            raise ValueError(f"grid row {row!r} lacks {missing}")
    return rows


def setup(typed: settings.Settings, rows: Sequence[dict]) -> Setup:
    """The stacked grammars and datasets of the rows' distinct (grammar_seed, data_seed), process and network.

    ``typed``: a planned program's settings (``plan.Program.settings``); ``rows``: its models' grid rows.
    """
    rows = _check_rows(rows)
    datasets = train.datasets_of(rows)
    num_train = max(1, max(int(r["P"]) for r in rows))  # online models (P = 0) read none; the pool keeps a row
    drawn = [draw(typed.grammar, gs, ds, num_train, typed.num_test) for gs, ds in datasets]
    return Setup(grammar=grammar.stack([d[0] for d in drawn]),
                 pool_GxQxD=jnp.asarray(np.stack([d[1] for d in drawn])),
                 test_GxNxD=jnp.asarray(np.stack([d[2] for d in drawn])),
                 process=typed.process, network=_network(typed.compiled()), datasets=datasets)


def build(typed: settings.Settings, rows: Sequence[dict]) -> Built:
    """A program's setup, placed data, jitted functions and grid.

    ``typed``: the program's settings (``plan.Program.settings``); ``rows``: the grid rows of its
    models, or a subset of them. The compiled functions are shared by every call with the same
    compiled settings.
    """
    rows = _check_rows(rows)
    compiled = _compiled(typed.compiled(), min(len(rows), len(jax.local_devices())))
    built = setup(typed, rows)
    place = compiled.place
    refs = place.pool(evaluate.references(typed.eval, built.grammar, built.pool_GxQxD, built.test_GxNxD))
    evaluator = ProgramEvaluator(compiled.evaluate, refs)
    # The grammars travel with the pools only when a model trains online: finite-P programs stay as they were.
    online = any(int(r["P"]) == data.ONLINE for r in rows)
    sources = train.Sources(built.pool_GxQxD, built.grammar) if online else built.pool_GxQxD
    return Built(built, place, compiled.step_fn, evaluator, place.pool(sources), train.grid_arrays(rows),
                 rows, typed)


def eval_key(run_seed: int, step: int) -> jax.Array:
    """The sampling key of the evaluation at ``step`` (``settings.RunSettings.seed``): the same for a run, its
    resume and a re-score. The losses use keys of the run and model seeds alone (``EvalSettings.loss_seed``)."""
    return jax.random.fold_in(jax.random.key(run_seed), step)
