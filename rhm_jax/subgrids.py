"""A program's sub-grids: the models one compiled program holds at once, their schedules and rows.

Shape letters: M models in the grid (M' once padded for several devices).

A grid larger than the memory (estimated before compiling, ``rhm_jax.memory``) or than
``run.max_models_per_program`` runs as sub-grids of consecutive models, one after another, each with
its checkpoints in ``checkpoints/part_<i>``; the split is recorded in ``checkpoints/partition.json``
at the first start and reused on resume for the parts that went past step 0 (the others are split
again when the models per program changed), and read back when a stored run is opened
(``rhm_jax.stored``). Schedule of one model with budget b:
evaluations at ``{0, b} | evaluate.eval_steps(b, per_octave)``.
"""
from __future__ import annotations

import datetime
import json
import logging
import math
import os
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np

from rhm_jax import evaluate, health, memory, results, timing, train
from rhm_jax.program import Built, eval_key

log = logging.getLogger(__name__)

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
    """How many models one compiled program may hold: the least of ``run.max_models_per_program``
    (when set), what fits in memory by ``memory.estimate`` (before compiling) and, on a device that
    reports its memory, the compiled training step's own memory analysis.

    ValueError (one line naming the limit) when not even one model fits.
    """
    M = len(built.grid_rows)
    cap = built.settings.run.max_models_per_program
    k = min(cap, M) if cap > 0 else M
    limit, source = memory.available()
    need = memory.estimate(built.settings, built.grid_rows)
    fit = memory.models_that_fit(need, limit)
    if fit is not None:
        if fit == 0:
            raise ValueError(memory.refusal(need, limit, source))
        if memory.device_bytes_limit():
            fit *= built.place.num_devices  # each device holds its share of the models
        if fit < k:
            log.info("the grid of %d models needs about %.1f GiB, %.1f GiB is available (%s): at most %d models"
                     " per program", M, need.total(M) / 2**30, limit / 2**30, source, fit)
            k = fit
    if k < M or cap > 0 or not memory.device_bytes_limit():
        return k
    return min(k, _compiled_fit(built))


def _compiled_fit(built: Built) -> int:
    """Models per program by the compiled training step's memory analysis on a device that reports its limit."""
    M, limit = len(built.grid_rows), memory.device_bytes_limit()
    grid = built.place.grid(built.grid)
    lowered = built.step_fn.lower(restore_target(built, grid), grid, built.pool, built.settings.train.steps_per_call)
    analysis = lowered.compile().memory_analysis()  # the compilation is reused by the first call
    if analysis is None:
        return M
    need = sum(getattr(analysis, f"{name}_size_in_bytes", 0) for name in ("argument", "output", "temp"))
    need -= getattr(analysis, "alias_size_in_bytes", 0)  # per device on a mesh
    if need <= memory.MEMORY_FRACTION * limit:
        return M
    devices = built.place.num_devices
    per_model = need / (grid.P.shape[0] / devices)
    k = max(1, int(memory.MEMORY_FRACTION * limit // per_model)) * devices
    log.info("the grid of %d models needs about %.1f GiB per device for training, a device has %.1f GiB:"
             " at most %d models per program", M, need / 2**30, limit / 2**30, k)
    return min(k, M)


def _split(positions: Sequence[int], k: int) -> list[list[int]]:
    """Consecutive, balanced runs of at most k positions."""
    return [[int(p) for p in part] for part in np.array_split(np.asarray(positions), math.ceil(len(positions) / k))]


def partition(built: Built, workdir: str, offset: int = 0) -> list[tuple[int, list[int]]]:
    """(part number, positions in the program's grid) of one program's consecutive, balanced sub-grids.

    ``checkpoints/partition.json`` lists every started program's parts in run order, as positions
    in the run's model list (this program's start at ``offset``); a new program's split is
    appended. A started program keeps the split of its started parts; those that never passed
    step 0 (the last parts of the file) are split again when the models per program changed
    (``run.max_models_per_program``, or the memory available), their step-0 checkpoints moved aside.
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
        return _resplit(built, workdir, stored, mine, offset)
    covered = sum(len(part) for part in stored)
    if covered != offset:
        raise ValueError(f"{path} covers positions 0..{covered - 1}, but the next program starts at {offset}:"
                         " was it edited? Restore it, or start over with --force")
    k = models_per_program(built)
    parts = [[offset + p for p in part] for part in _split(range(n), k)]
    if len(parts) > 1:
        log.info("splitting the grid of %d models into %d sub-grids of at most %d, run one after another",
                 n, len(parts), max(len(p) for p in parts))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    results.write_json_atomic(path, {"parts": stored + parts})
    return [(len(stored) + i, [p - offset for p in part]) for i, part in enumerate(parts)]


def _started(workdir: str, number: int, models: set[int], later_rows: set[int]) -> bool:
    """Whether sub-grid ``number`` went past step 0: a checkpoint other than step 0, or a row past it."""
    directory = part_dir(workdir, number)
    entries = os.listdir(directory) if os.path.isdir(directory) else []
    return any(e != "0" for e in entries) or bool(models & later_rows)


def _resplit(built: Built, workdir: str, stored: list[list[int]], mine: list[tuple[int, list[int]]],
             offset: int) -> list[tuple[int, list[int]]]:
    """``mine`` with its parts that never passed step 0 split again for today's models per program."""
    if mine[-1][0] != len(stored) - 1:
        return mine  # a later program has started: the part numbers after these are taken
    rows_path = os.path.join(workdir, results.METRICS_FILE)
    later = {int(r["model"]) for r in (results.read_rows(rows_path) if os.path.exists(rows_path) else [])
             if r.get("step", 0) > 0}
    index = lambda part: {int(built.grid_rows[p]["index"]) for p in part}
    first = len(mine)
    while first > 0 and not _started(workdir, mine[first - 1][0], index(mine[first - 1][1]), later):
        first -= 1
    tail = mine[first:]
    if not tail:
        return mine
    positions = [p for _, part in tail for p in part]
    wanted = _split(positions, models_per_program(built))
    if wanted == [part for _, part in tail]:
        return mine
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    for number, _ in tail:
        if os.path.isdir(part_dir(workdir, number)):
            os.rename(part_dir(workdir, number), f"{part_dir(workdir, number)}.resplit-{stamp}")
    start = tail[0][0]
    results.write_json_atomic(os.path.join(workdir, "checkpoints", PARTITION_FILE),
                              {"parts": stored[:start] + [[offset + p for p in part] for part in wanted]})
    log.info("models %s had not passed step 0: split again into %d sub-grid(s) of at most %d (was %d); their"
             " old checkpoints are kept as part_<j>.resplit-%s", span([built.grid_rows[p]["index"] for p in positions]),
             len(wanted), max(len(p) for p in wanted), len(tail), stamp)
    return mine[:first] + [(start + i, part) for i, part in enumerate(wanted)]


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
                    tracker: health.Tracker | None = None, split: Any = timing.NO_SPLIT) -> list[dict]:
    """Evaluate every model of the part at ``step``; rows of the models for which ``due(model)``,
    flagged by ``tracker`` (loss blow-up, collapse) when given. ``split`` (``timing.Split``) times
    the sampler and the scoring apart: it waits for the samples before scoring them."""
    with split.phase("sample"):
        tokens = built.evaluator.sample(state, part.grid, eval_key(built.settings.run.seed, step))
        if split is not timing.NO_SPLIT:
            tokens = jax.block_until_ready(tokens)
    with split.phase("score"):
        metrics = built.evaluator.score(state, part.grid, tokens)
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
