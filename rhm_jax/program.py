"""A program: models of a sweep that share every static value, with their stacked datasets and compiled functions.

Shape letters: M models, G distinct datasets of the program, Q rows of each training pool (the
program's largest P), N test rows, D sequence length.

A dataset is the (grammar seed, data seed) of a model. ``build`` draws each distinct dataset of
the program once and stacks them: the grammars as one pytree with leading axis G, the training
pools as (G, Q, D), the test sets as (G, N, D). A model with training-set size P reads the first P
rows of its pool: ``data.sample_dataset`` draws nested prefixes, so these are the rows a pool of
exactly P rows would hold. ``programs`` adds the compiled train chunk and evaluator, memoized on
the static values only: a second program (or grid, or resume in the same process) that differs in
traced values alone (P, seeds, lr, budgets, Adam's scalars, grammar and data seeds) reuses them.
"""
from __future__ import annotations

import functools
import json
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rhm_jax import data, diffusion, evaluate, grammar, keys, networks, settings, sharding, train
from rhm_jax import config as config_lib

# Keys whose values never reach a compiled program: the traced per-model values (Grid leaves; the
# pool's row count Q follows the largest P, and jax retraces for a new shape on its own) and the
# execution keys, except three that shape the compiled functions (steps per call, the device mesh,
# the evaluator's model batches).
_SHAPING_EXECUTION_KEYS = ("train.steps_per_call", "run.shard_models", "eval.models_per_batch")
_NOT_COMPILED = frozenset(keys.of_kind("traced")) | (frozenset(keys.of_kind("execution")) - set(_SHAPING_EXECUTION_KEYS))
_ROW_KEYS = ("index", "P", "seed", "lr", "grammar_seed", "data_seed", "budget_steps", "warmup_steps", "b1", "b2",
             "adam_eps")


class Setup(NamedTuple):
    """What a program builds before training, stacked over its G distinct datasets."""

    grammar: grammar.Grammar  # every leaf with leading axis G
    pool_GxQxD: jax.Array  # Q = the program's largest P; model i reads pool dataset_i's first P_i rows
    test_GxNxD: jax.Array
    process: Any
    network: networks.Network
    datasets: tuple[tuple[int, int], ...]  # (grammar_seed, data_seed) of each g


class Programs(NamedTuple):
    """A program's setup, its placed jitted functions and its grid."""

    setup: Setup
    place: sharding.Placement
    step_fn: Callable  # (state, grid, pool_GxQxD, num_steps) -> (state, metrics)
    evaluator: Callable  # (state, grid, key) -> metrics: per-model grammar, lookup, pool, test
    pool: jax.Array  # the stacked pools where step_fn reads them (placed)
    grid: train.Grid  # the grid of ``grid_rows``, not placed
    grid_rows: list[dict]
    settings: settings.Settings


class _Compiled(NamedTuple):
    """Everything of a program that depends on its static values only."""

    process: Any
    network: networks.Network
    place: sharding.Placement
    step_fn: Callable
    evaluate: Callable  # (state, grid, key, refs) -> metrics


def static_key(config: ml_collections.ConfigDict) -> str:
    """The values that decide a program's compiled functions, as canonical JSON."""
    flat = config_lib.flatten(config_lib.to_dict(config))
    return json.dumps({k: v for k, v in flat.items() if k not in _NOT_COMPILED}, sort_keys=True)


@functools.lru_cache(maxsize=4)
def _compiled(key: str) -> _Compiled:
    """Process, network and jitted functions of a static key (see ``static_key``)."""
    config = config_lib.base_config()
    for name, value in json.loads(key).items():
        section, field = name.split(".")
        config[section][field] = tuple(value) if isinstance(value, list) else value
    g = config.grammar
    typed = settings.of(config)
    process = diffusion.make(config.process, g.v, g.s**g.L)
    network = networks.make(config.network, g.v, g.s, g.L, process)
    place = sharding.Placement(sharding.use_mesh(typed.shard))
    step_fn = train.jit_chunk(place.chunk(train.make_train_chunk(typed.train, process, network)))
    evaluate_fn = place.evaluator(evaluate.make_evaluator(typed, process, network))
    return _Compiled(process, network, place, step_fn, evaluate_fn)


def clear_cache() -> None:
    """Forget the memoized compilations and datasets (the next ``programs`` call builds afresh)."""
    _compiled.cache_clear()
    _dataset.cache_clear()


@functools.lru_cache(maxsize=16)
def _dataset(sizes: tuple[int, ...], grammar_seed: int, data_seed: int, num_train: int,
             num_test: int) -> tuple[grammar.Grammar, np.ndarray, np.ndarray]:
    """One dataset: the rules of grammar_seed, then train (num_train, D) and test (num_test, D) rows of data_seed."""
    rules = grammar.sample_rules(grammar_seed, *sizes)
    train_QxD, test_NxD = data.sample_dataset(data_seed, rules, num_train, num_test)
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


def build(config: ml_collections.ConfigDict, rows: Sequence[dict] | None = None) -> Setup:
    """The stacked grammars and datasets of the rows' distinct (grammar_seed, data_seed), process and network.

    ``config``: validated, with the program's static values; ``rows``: its models' grid rows
    (default: ``train.grid_rows(config)``, the config's own grid).
    """
    rows = _check_rows(train.grid_rows(config) if rows is None else rows)
    g = config.grammar
    sizes = (int(g.v), int(g.n), int(g.m), int(g.s), int(g.L))
    datasets = train.datasets_of(rows)
    num_train = max(int(r["P"]) for r in rows)
    drawn = [_dataset(sizes, gs, ds, num_train, int(config.data.num_test)) for gs, ds in datasets]
    compiled = _compiled(static_key(config))
    return Setup(grammar=grammar.stack([d[0] for d in drawn]),
                 pool_GxQxD=jnp.asarray(np.stack([d[1] for d in drawn])),
                 test_GxNxD=jnp.asarray(np.stack([d[2] for d in drawn])),
                 process=compiled.process, network=compiled.network, datasets=datasets)


def programs(config: ml_collections.ConfigDict, rows: Sequence[dict] | None = None) -> Programs:
    """A program's setup, placed data, jitted functions and grid.

    ``config``: validated (``plan.Program.config``); ``rows``: the grid rows of its models, or a
    subset of them (default: ``train.grid_rows(config)``). The compiled functions are shared by
    every call with the same static values (``static_key``).
    """
    rows = _check_rows(train.grid_rows(config) if rows is None else rows)
    typed = settings.of(config)
    compiled = _compiled(static_key(config))
    setup = build(config, rows)
    place = compiled.place
    refs = place.pool(evaluate.references(typed.eval, setup.grammar, setup.pool_GxQxD, setup.test_GxNxD))
    evaluate_fn = compiled.evaluate

    def evaluator(state: train.TrainState, grid: train.Grid, key: jax.Array) -> dict:
        """Metrics of every model of a (placed) grid of this program."""
        return evaluate_fn(state, grid, key, refs)

    return Programs(setup, place, compiled.step_fn, evaluator, place.pool(setup.pool_GxQxD), train.grid_arrays(rows),
                    rows, typed)


def eval_key(config: ml_collections.ConfigDict, step: int) -> jax.Array:
    """The evaluation key at ``step``: the same for a run, its resume and a re-score."""
    return jax.random.fold_in(jax.random.key(config.run.seed), step)
