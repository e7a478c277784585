"""A program's sub-grids: the models one compiled program holds at once, their schedules and rows.

Shape letters: M models in the grid (M' once padded for several devices).

A grid larger than the device memory (or than ``run.max_models_per_program``) runs as sub-grids of
consecutive models, one after another, each with its checkpoints in ``checkpoints/part_<i>``; the
split is recorded in ``checkpoints/partition.json`` at the first start and reused on resume (and
read back when a stored run is opened, ``rhm_jax.stored``). Schedule of one model with budget b:
evaluations at ``{0, b} | evaluate.eval_steps(b, per_octave)``.
"""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from rhm_jax import evaluate, health, results, train
from rhm_jax.program import Built, eval_key

log = logging.getLogger(__name__)

MEMORY_FRACTION = 0.8  # of a device's bytes_limit that one training program may plan to use
PARTITION_FILE = "partition.json"


def schedule(budget: int, per_octave: int) -> list[int]:
    """Evaluation steps of a model with this budget: 0, the log-spaced steps, and the budget."""
    if budget < 1:
        return [0]
    return sorted({0, int(budget)} | {int(s) for s in evaluate.eval_steps(int(budget), per_octave)})


def select(grid: train.Grid, positions: Sequence[int]) -> train.Grid:
    """The sub-grid of the given positions in the grid."""
    index = np.asarray(positions)
    return jax.tree.map(lambda x: x[index], grid)


class Part(NamedTuple):
    """One sub-grid: positions in the run's grid, global model indices, placed grid, schedules."""

    positions: list[int]
    models: list[int]  # grid_rows[...]["index"]: the model's index in the full grid
    grid: train.Grid  # placed (padded to the device count on a mesh)
    rows: list[dict]
    schedules: dict[int, set[int]]  # model index -> its evaluation steps
    end: int  # the largest budget

    @property
    def eval_points(self) -> set[int]:
        return set().union(*self.schedules.values())


def make_part(built: Built, positions: Sequence[int]) -> Part:
    """The sub-grid at these positions of the program's grid."""
    rows = [built.grid_rows[i] for i in positions]
    per_octave = built.settings.run.per_octave
    schedules = {r["index"]: set(schedule(r["budget_steps"], per_octave)) for r in rows}
    grid = built.place.grid(select(built.grid, positions))
    return Part(list(positions), [r["index"] for r in rows], grid, rows, schedules,
                max(r["budget_steps"] for r in rows))


def restore_target(built: Built, grid: train.Grid) -> Any:
    """Abstract state of a placed grid (the restore target)."""
    return built.place.target(jax.eval_shape(lambda: train.init_state(built.settings.train, built.setup.network, grid)))


def models_per_program(built: Built) -> int:
    """How many models one compiled program may hold: the config cap, else device memory."""
    M = len(built.grid_rows)
    cap = built.settings.run.max_models_per_program
    if cap > 0:
        return min(cap, M)
    limit = evaluate.device_bytes_limit()
    if not limit:
        return M
    grid = built.place.grid(built.grid)
    lowered = built.step_fn.lower(restore_target(built, grid), grid, built.pool, built.settings.train.steps_per_call)
    analysis = lowered.compile().memory_analysis()  # the compilation is reused by the first call
    if analysis is None:
        return M
    need = sum(getattr(analysis, f"{name}_size_in_bytes", 0) for name in ("argument", "output", "temp"))
    need -= getattr(analysis, "alias_size_in_bytes", 0)  # per device on a mesh
    if need <= MEMORY_FRACTION * limit:
        return M
    devices = built.place.num_devices
    per_model = need / (grid.P.shape[0] / devices)
    k = max(1, int(MEMORY_FRACTION * limit // per_model)) * devices
    log.info("the grid of %d models needs about %.1f GiB per device for training, a device has %.1f GiB:"
             " at most %d models per program", M, need / 2**30, limit / 2**30, k)
    return min(k, M)


def partition(built: Built, workdir: str, offset: int = 0) -> list[tuple[int, list[int]]]:
    """(part number, positions in the program's grid) of one program's consecutive, balanced sub-grids.

    ``checkpoints/partition.json`` lists every started program's parts in run order, as positions
    in the run's model list (this program's start at ``offset``); the stored split of a started
    program wins, a new program's split is appended.
    """
    path = os.path.join(workdir, "checkpoints", PARTITION_FILE)
    n = len(built.grid_rows)
    stored = _read_partition(path) if os.path.exists(path) else []
    mine = [(j, [p - offset for p in part]) for j, part in enumerate(stored) if offset <= part[0] < offset + n]
    if mine:
        if [p for _, part in mine for p in part] != list(range(n)):
            raise ValueError(f"{path} must split positions {offset}..{offset + n - 1} (one program's models) into"
                             f" runs of consecutive models, found {[part for _, part in mine]!r}; restore it, or"
                             " start over with --force")
        return mine
    covered = sum(len(part) for part in stored)
    if covered != offset:
        raise ValueError(f"{path} covers positions 0..{covered - 1}, but the next program starts at {offset}:"
                         " was it edited? Restore it, or start over with --force")
    k = models_per_program(built)
    parts = [(offset + p).tolist() for p in np.array_split(np.arange(n), math.ceil(n / k))]
    if len(parts) > 1:
        log.info("splitting the grid of %d models into %d sub-grids of at most %d, run one after another",
                 n, len(parts), max(len(p) for p in parts))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    results.write_json_atomic(path, {"parts": stored + parts})
    return [(len(stored) + i, [p - offset for p in part]) for i, part in enumerate(parts)]


def stored_parts(built: Built, workdir: str, offset: int = 0) -> list[tuple[int, Part]]:
    """(part number, sub-grid) of one program of an existing run; [] if that program never started.

    ValueError if the run has no checkpoints at all.
    """
    path = os.path.join(workdir, "checkpoints", PARTITION_FILE)
    if not os.path.exists(path):
        raise ValueError(f"workdir={workdir!r} holds no checkpoints (no {path})")
    n = len(built.grid_rows)
    stored = _read_partition(path)
    return [(j, make_part(built, [p - offset for p in part]))
            for j, part in enumerate(stored) if offset <= part[0] < offset + n]


def _read_partition(path: str) -> list[list[int]]:
    """The stored split; ValueError naming the file unless it lists runs of consecutive positions 0, 1, ..."""
    try:
        with open(path) as f:
            parts = json.load(f)["parts"]
        flat = [int(i) for part in parts for i in part]
        ok = all(isinstance(p, list) and p for p in parts) and flat == list(range(len(flat)))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a valid partition ({type(err).__name__}: {err}); restore it from a"
                         " backup, or start over with --force") from None
    if not ok:
        raise ValueError(f"{path} must split the models' positions 0, 1, ... into runs of consecutive models,"
                         f" found {parts!r}; restore it, or start over with --force")
    return parts


def part_dir(workdir: str, index: int) -> str:
    """Checkpoint directory of sub-grid ``index``."""
    return os.path.join(workdir, "checkpoints", f"part_{index}")


# ----------------------------------------------------------------------------- a sub-grid's rows

def evaluation_rows(built: Built, part: Part, state: Any, step: int, due: Callable[[int], bool],
                    tracker: health.Tracker | None = None) -> list[dict]:
    """Evaluate every model of the part at ``step``; rows of the models for which ``due(model)``,
    flagged by ``tracker`` (loss blow-up, collapse) when given."""
    metrics = built.evaluator(state, part.grid, eval_key(built.settings.run.seed, step))
    rows = [r for r in metrics_rows(metrics, part.rows, state, step) if due(int(r["model"]))]
    return rows if tracker is None else tracker.flag(rows)


_GRID_ONLY = ("index", "budget_steps", "budget_epochs")  # grid-row fields that are not metrics columns


def metrics_rows(metrics: dict, grid_rows: Sequence[dict], state: Any, step: int) -> list[dict]:
    """One metrics row per model of ``grid_rows`` (the first models of a padded grid): the model's
    index, its grid row's columns (P, seeds, lr, Adam's scalars and every swept setting; the
    ``plan.ROW_FIELDS`` but the index and budgets), the metrics (``evaluate.to_rows``), ``step``.

    A diverged model is frozen at diverged_step; its rows still carry the schedule's step.
    """
    rows = evaluate.to_rows(metrics, list(grid_rows), state)
    return [{"model": r["model"], **{k: v for k, v in g.items() if k not in _GRID_ONLY}, **r, "step": int(step)}
            for r, g in zip(rows, grid_rows)]


def span(models: Sequence[int]) -> str:
    """'first..last' of model indices (or the one index)."""
    return f"{models[0]}..{models[-1]}" if len(models) > 1 else str(models[0])
