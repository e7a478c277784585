"""A finished (or stopped) run in a notebook: its models, parameters, grammar, sampling and scoring.

Shape letters: M models loaded, N samples per model, D sequence length.

    run = notebook.load("runs/quick", step="best")   # or "last", or a checkpoint step
    run.table                    # one row per model: grid row (global index, seed, lr, budget), step, metrics
    run.params                   # stacked parameters, leading axis M (the debiased EMA when the run kept one)
    tokens_MxNxD = run.sample(256)                   # vmapped over the models
    run.score_samples(tokens_MxNxD)                  # validity per level, copies ... per model
    run.score(num_samples=4096)                      # re-evaluate; writes score_*.jsonl only if write=True

Each model is restored from the checkpoint of the step it is loaded at (``best``: its lowest test
loss, as ``results.pick`` and the report read it), so re-scoring with the run's settings reproduces
its metrics rows. Nothing in the work directory is changed unless ``score(write=True)``. A job
array (``launch.slurm``) keeps its checkpoints per slice: load ``DIR/slice_<k>``.

A sweep over static settings (``plan``; the quick sweep's m = 3 and m = 2) runs several programs in
one directory, and models of different programs cannot be stacked (their shapes differ). ``load``
then gives a ``Sweep``: one ``Run`` per program (``sweep.runs``, ``sweep[k]``, ``sweep.run_of(model)``),
with the table, sampling (one array per program) and scoring over all of them. ``program=k`` or
models of one program give that program's ``Run``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from rhm_jax import checkpoint, diffusion, evaluate, keys, plan, results, sharding, stored, train
from rhm_jax.program import Built, build, eval_key
from rhm_jax.subgrids import metrics_rows, part_dir, restore_target, select


class Run:
    """Models of one work directory, each at one step, stacked along a leading model axis M."""

    def __init__(self, workdir: str, program: plan.Program, progs: Built, positions: list[int],
                 state: train.TrainState, table: Any, swept_columns: Sequence[str] = ()):
        self.workdir, self.program, self._progs = workdir, program, progs
        self.swept_columns = tuple(swept_columns)  # results columns of the sweep's swept keys (m, width, ...)
        self.settings = program.settings  # typed settings of the loaded models' program
        self._positions = positions  # of the loaded models in the run's grid
        self.state = state  # stacked TrainState (opt_state dropped), leading axis M
        self.table = table  # pandas DataFrame, one row per loaded model, in the order of axis M
        self.grid = select(progs.grid, positions)

    # ------------------------------------------------------------------ what was trained
    @property
    def grammar(self) -> Any:
        """The grammar (``rhm_jax.grammar.Grammar``) of the loaded models' first dataset (the only one
        unless the run sweeps grammar or data seeds; ``training_set`` is per model)."""
        return jax.tree.map(lambda x: x[0], self._progs.setup.grammar)

    @property
    def process(self) -> Any:
        return self._progs.setup.process

    @property
    def network(self) -> Any:
        return self._progs.setup.network

    def describe(self) -> str:
        """Its models and the swept values of its program, e.g. 'models 0..7: m=3'."""
        return f"models {self.models[0]}..{self.models[-1]}: {_swept_values(self)}"

    @property
    def models(self) -> list[int]:
        """Global grid indices of the loaded models, in the order of axis M."""
        return [int(m) for m in self.table["model"]]

    @functools.cached_property
    def params(self) -> Any:
        """Parameters to evaluate, stacked (M, ...): the debiased EMA when the run kept one, else the raw ones."""
        decay = self._progs.settings.train.ema_decay
        return jax.vmap(lambda st: train.eval_params(st, decay))(self.state)

    def training_set(self, model: int) -> np.ndarray:
        """(P, D) training rows of the model with global index ``model``."""
        row = self.table[self.table["model"] == model]
        if row.empty:
            raise ValueError(f"model={model} is not loaded; loaded: {self.models}")
        dataset = int(self.grid.dataset[self.models.index(model)])
        return np.asarray(self._progs.setup.pool_GxQxD[dataset, :int(row["P"].iloc[0])])

    @property
    def test_set(self) -> np.ndarray:
        """(N_test, D) test rows of the loaded models' first dataset (shared by all models unless the
        run sweeps grammar or data seeds)."""
        return np.asarray(self._progs.setup.test_GxNxD[0])

    # ------------------------------------------------------------------ sampling and scoring
    def sample(self, num_samples: int, seed: int = 0, sampler_steps: int | str | None = None) -> np.ndarray:
        """(M, N, D) int32 samples of every model (model i draws with fold_in(key(seed), its model seed)).

        ``sampler_steps``: an integer, 'exact' (the process's exact sampler) or None (the run's).
        """
        if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise ValueError(f"num_samples={num_samples!r} must be an integer >= 1")
        process = self.process
        if sampler_steps is not None:
            process = dataclasses.replace(process, sampler_steps=diffusion.sampler_steps_setting(sampler_steps))
        fn = _sampler(process, self.network, int(num_samples), None, self.grammar.d)
        return np.asarray(fn(self.params, self.grid.model_seed, jax.random.key(seed)))

    def score_samples(self, tokens_MxNxD: Any) -> Any:
        """Table of per-model scores of given samples: validity per level, valid, copies (of the
        model's own training set), novel_valid, duplicates, rule coverage and entropy."""
        tokens_MxNxD = jnp.asarray(tokens_MxNxD, jnp.int32)
        if tokens_MxNxD.ndim != 3 or tokens_MxNxD.shape[0] != len(self.models) or tokens_MxNxD.shape[2] != self.grammar.d:
            raise ValueError(f"tokens_MxNxD of shape {tokens_MxNxD.shape} must be (M={len(self.models)}, N, "
                             f"D={self.grammar.d})")
        scores = _scorer(self._refs)(tokens_MxNxD, self.grid.P, self.grid.dataset)
        return self._frame(jax.device_get(scores))

    @functools.cached_property
    def _refs(self) -> evaluate.References:
        setup = self._progs.setup
        return evaluate.references(self._progs.settings.eval, setup.grammar, setup.pool_GxQxD, setup.test_GxNxD)

    def score(self, num_samples: int | None = None, sampler_steps: int | str | None = None,
              write: bool = False) -> Any:
        """Re-evaluate every loaded model (K samples, S sampler steps or 'exact'; the run's by default) with the
        evaluation key of its step; returns the metrics rows as a table. ``write=True`` also stores
        them in ``score_<step>_<K>_<S>.jsonl`` (read back by ``results.load(workdir, kind='scores')``)."""
        reopened = stored.open_run(self.workdir, num_samples, sampler_steps).plan.programs
        typed = next(p for p in reopened if p.index == self.program.index).settings
        evaluator = build(typed, self._progs.grid_rows).evaluator  # the run's data, these settings
        steps = np.asarray(self.table["step"])
        rows = []
        for step in sorted(set(steps.tolist())):
            index = np.flatnonzero(steps == step)
            state, grid = (jax.tree.map(lambda x: x[index], tree) for tree in (self.state, self.grid))
            metrics = evaluator(state, grid, eval_key(typed.run.seed, int(step)))
            grid_rows = [self._progs.grid_rows[self._positions[i]] for i in index]
            step_rows = metrics_rows(metrics, grid_rows, state, int(step))
            if write:
                K, S = typed.eval.num_samples, typed.sampler_label
                results.merge_rows(os.path.join(self.workdir, f"score_{int(step)}_{K}_{S}.jsonl"), step_rows)
            rows += step_rows
        order = {m: i for i, m in enumerate(self.models)}
        return pd.DataFrame(sorted(rows, key=lambda r: order[r["model"]]))

    def _frame(self, values: dict) -> Any:
        """A table of (M,)-leading arrays, one row per model, beside the model's grid columns."""
        columns = ["model", *(c for c in self.swept_columns if c in self.table and c not in ("P", "seed", "lr")),
                   "P", "seed", "lr", "step"]
        frame = self.table[columns].reset_index(drop=True).copy()
        for name, array in values.items():
            array = np.asarray(array)
            if array.ndim == 1:
                frame[name] = array
            else:
                for w in range(array.shape[1]):
                    frame[f"{name}_{w}"] = array[:, w]
        return frame


class Sweep:
    """Models of a work directory with several programs (a sweep over static settings such as m):
    one ``Run`` per program, in run order. Table, sampling and scoring span every program; what
    is stacked (parameters, grammar, training sets) is per program: ``sweep[k]`` or ``run_of(model)``."""

    _PER_PROGRAM = ("params", "state", "grammar", "process", "network", "settings", "program", "grid", "training_set",
                    "test_set")

    def __init__(self, workdir: str, runs: list[Run]):
        self.workdir, self.runs = workdir, runs

    def __len__(self) -> int:
        return len(self.runs)

    def __iter__(self):
        return iter(self.runs)

    def __getitem__(self, k: int) -> Run:
        return self.runs[k]

    def __getattr__(self, name: str) -> Any:
        if name in Sweep._PER_PROGRAM:
            raise AttributeError(f"{name!r} is per program: {self.workdir} holds {len(self.runs)} programs "
                                 f"({self.describe()}); use sweep[k].{name} or sweep.run_of(model).{name}")
        raise AttributeError(name)

    def describe(self) -> str:
        """Each program's models and the static values that set it apart, e.g. 'models 0..7: m=3'."""
        return "; ".join(r.describe() for r in self.runs)

    @property
    def models(self) -> list[int]:
        """Global grid indices of every loaded model, program by program."""
        return [m for r in self.runs for m in r.models]

    @property
    def table(self) -> Any:
        """One row per loaded model of every program, with its ``program`` (index in the sweep's run order)."""
        return _stacked(self.runs, [r.table for r in self.runs])

    def run_of(self, model: int) -> Run:
        """The ``Run`` holding the model with global index ``model``."""
        for run in self.runs:
            if model in run.models:
                return run
        raise ValueError(f"model={model} is not loaded; loaded: {self.models}")

    def sample(self, num_samples: int, seed: int = 0, sampler_steps: int | str | None = None) -> list[np.ndarray]:
        """One (M_k, N, D_k) array of samples per program (``Run.sample`` of each)."""
        return [r.sample(num_samples, seed, sampler_steps) for r in self.runs]

    def score_samples(self, tokens: Sequence[Any]) -> Any:
        """Per-model scores of one sample array per program (as ``sample`` returns), in one table."""
        if len(tokens) != len(self.runs):
            raise ValueError(f"tokens must hold one (M, N, D) array per program: {len(self.runs)}, got {len(tokens)}")
        return _stacked(self.runs, [r.score_samples(t) for r, t in zip(self.runs, tokens)])

    def score(self, num_samples: int | None = None, sampler_steps: int | str | None = None,
              write: bool = False) -> Any:
        """``Run.score`` of every program, in one table."""
        return _stacked(self.runs, [r.score(num_samples, sampler_steps, write) for r in self.runs])


def _swept_values(run: Run) -> str:
    """'m=3' (the swept columns of a run's first model), or 'the config alone'."""
    row = run.table.iloc[0]
    pairs = [f"{c}={row[c]}" for c in run.swept_columns if c in row]
    return ", ".join(pairs) or "the config alone"


def _stacked(runs: list[Run], tables: list[Any]) -> Any:
    """The runs' tables one under the other, each row with its ``program`` (index in the sweep's run order)."""
    return pd.concat([t.assign(program=r.program.index) for r, t in zip(runs, tables)], ignore_index=True)


@functools.lru_cache(maxsize=8)
def _sampler(process: Any, network: Any, num_samples: int, steps: int | None, d: int):
    """jit(vmap) of process.sample over stacked params and model seeds."""
    kwargs = {} if getattr(process, "d", None) is not None else {"d": d}

    @jax.jit
    def sample(params: Any, model_seed_M: jax.Array, key: jax.Array) -> jax.Array:
        one = lambda p, seed: process.sample(p, network.apply, jax.random.fold_in(key, seed), num_samples,
                                             steps=steps, **kwargs)
        return jax.vmap(one)(params, model_seed_M)

    return sample


def _scorer(refs: Any):
    """jit(vmap) of evaluate.score_in over models (tokens, P and dataset slot)."""
    return jax.jit(jax.vmap(lambda tokens, P, g: evaluate.score_in(refs, g, tokens, P)))


# ----------------------------------------------------------------------------- loading

def _wanted_steps(table: Any, step: int | str, models: list[int]) -> dict[int, int]:
    """Model index -> the step to load it at."""
    if isinstance(step, (int, np.integer)) and not isinstance(step, bool):
        return {m: int(step) for m in models}
    if step not in results.READINGS:
        raise ValueError(f"step={step!r} must be a checkpoint step or one of {tuple(results.READINGS)}")
    wanted = {}
    for m in models:
        history = table[table["model"] == m].to_dict("records")
        if not history:
            raise ValueError(f"model {m} has no evaluation yet, so no {step!r} step")
        wanted[m] = int(results.pick(history, step)["step"])
    return wanted


def load(workdir: str | os.PathLike, step: int | str = results.DEFAULT_READING,
         models: Sequence[int] | None = None, program: int | None = None) -> "Run | Sweep":
    """The models of a work directory (global ``models`` indices, default all; or those of program
    ``program``) at ``step``: a checkpoint step, or 'best' / 'last' (each model at its own best or last
    evaluation). A ``Run`` when the models share one program (always for a run without a sweep over
    static settings), else a ``Sweep`` holding one ``Run`` per program.

    ValueError (one line) when the directory is not a run, a model or program is not in it, or a
    step has no checkpoint (``run.keep_evaluations`` may have dropped it; the message lists what exists).
    """
    run = stored.open_run(workdir)
    workdir, sweep = run.workdir, run.plan
    owned = [[r["index"] for r in p.rows] for p in sweep.programs]
    all_models = [m for own in owned for m in own]
    if program is not None:
        if not isinstance(program, (int, np.integer)) or not 0 <= program < len(owned):
            raise ValueError(f"program={program!r}: {workdir} holds programs 0..{len(owned) - 1}")
        outside = sorted(set(models or ()) - set(owned[program]))
        if outside:
            raise ValueError(f"models {outside} are not in program {program} of {workdir} (its models: "
                             f"{owned[program][0]}..{owned[program][-1]})")
    if models is None:
        models = owned[program] if program is not None else all_models
    models = [int(m) for m in models]
    missing = sorted(set(models) - set(all_models))
    if missing:
        raise ValueError(f"models {missing} are not in {workdir} (it holds {all_models[0]}..{all_models[-1]})")
    table = results.load(workdir)
    wanted = _wanted_steps(table, step, models)
    swept = [keys.KEYS[k].column for k in sweep.swept if k in keys.KEYS]
    runs = [_load_program(run, p, [m for m in models if m in own], wanted, table, swept)
            for p, own in zip(sweep.programs, map(set, owned)) if set(models) & own]
    return runs[0] if len(runs) == 1 else Sweep(workdir, runs)


def _load_program(run: stored.Stored, program: plan.Program, models: list[int], wanted: dict[int, int],
                  table: Any, swept: list[str]) -> Run:
    """``models`` of one program, each restored at its ``wanted`` step."""
    workdir = run.workdir
    states: dict[int, Any] = {}
    progs = None
    for subgrid in stored.subgrids(run, [program]):
        progs, part = subgrid.built, subgrid.part
        needed = {m: wanted[m] for m in part.models if m in models}
        if not needed:
            continue
        with checkpoint.Checkpointer(part_dir(workdir, subgrid.number), read_only=True) as ckpt:
            available = ckpt.steps()
            budget = {r["index"]: r["budget_steps"] for r in part.rows}
            for s in sorted(set(needed.values())):
                source = s if s in available else None
                if source is None and all(budget[m] <= s for m, w in needed.items() if w == s):
                    # models at their budget are frozen: any later checkpoint holds that state
                    source = next((a for a in available if a > s), None)
                if source is None:
                    raise ValueError(f"no checkpoint at step {s} in {ckpt.directory}; available steps: {available}")
                state, _ = ckpt.restore(source, restore_target(progs, part.grid), strict=False)
                host = sharding.unpad(state.replace(opt_state=None), len(part.rows))
                for m, w in needed.items():
                    if w == s:
                        states[m] = jax.tree.map(lambda x: x[part.models.index(m)], host)
    missing = [m for m in models if m not in states]
    if progs is None or missing:
        raise ValueError(f"models {missing or models} of {workdir} have no checkpoint yet")
    state = jax.tree.map(lambda *xs: jnp.stack(xs), *[states[m] for m in models])
    position = {r["index"]: i for i, r in enumerate(progs.grid_rows)}
    grid = {r["index"]: r for r in progs.grid_rows}
    at = {m: int(states[m].step) for m in models}
    rows = []
    for m in models:
        match = table[(table["model"] == m) & (table["step"] == at[m])]
        row = match.iloc[0].to_dict() if len(match) else dict(grid[m], model=m, step=at[m])
        row.pop("index", None)
        rows.append(row)
    return Run(workdir, program, progs, [position[m] for m in models], state, pd.DataFrame(rows), swept)
