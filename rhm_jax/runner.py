"""The run loop: train a grid of models in chunks, evaluate on a log-spaced schedule, checkpoint, resume.

Shape letters: M models in the grid (M' once padded for several devices), Q rows of the shared
training pool (the largest P), N test rows, D sequence length.

``run(config, workdir)`` is idempotent: a stopped run (any reason, SIGKILL included) restarts from
its newest readable checkpoint, drops the metrics rows written after it, and ends with the same
rows and states as an uninterrupted run. Schedule of one model with budget b: evaluations (and kept
checkpoints) at ``{0, b} | evaluate.eval_steps(b, per_octave)``; extra checkpoints every
``run.checkpoint_every`` steps, of which the last ``run.keep_last`` are kept. Evaluation keys are
``fold_in(key(run.seed), step)``, so ``score`` reproduces an evaluation from its checkpoint.

Safety (see README "What is guaranteed"): the work directory is locked for the run's life
(``rhm_jax.lock``); SIGINT / SIGTERM finish the current device call, save a checkpoint and raise
``Interrupted`` (both set up by ``rhm_jax.guard``); a checkpoint that cannot be read for a reason of the environment stops the run
with nothing changed; a run never starts from scratch over rows it would have to drop, rows dropped
on resume are copied to ``metrics.dropped-<time>.jsonl`` first, and rows missing below the restored
checkpoint are re-evaluated from the kept checkpoints (or the run refuses).

A grid larger than the device memory (or than ``run.max_models_per_program``) runs as sub-grids of
consecutive models, one after another, each with its checkpoints in ``checkpoints/part_<i>``; the
split is recorded in ``checkpoints/partition.json`` at the first start and reused on resume. With
several local devices each sub-grid is split over them (``rhm_jax.sharding``). Rows carry the
model's index in the full grid (``run.grid_slice`` runs a slice of it).
"""
from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import signal
from typing import Any, Callable, NamedTuple, Sequence

import jax
import ml_collections
import numpy as np

from rhm_jax import checkpoint, diffusion, evaluate, events, health, lock, plan, results, train
from rhm_jax.guard import STOP_SIGNALS, Interrupted, StopSignals, lock_workdir
from rhm_jax import config as config_lib
from rhm_jax.program import Programs, eval_key, programs
from rhm_jax.progress import Progress, format_seconds
from rhm_jax.record import Recorder

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


# ----------------------------------------------------------------------------- sub-grids

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


def make_part(config: ml_collections.ConfigDict, progs: Programs, positions: Sequence[int]) -> Part:
    """The sub-grid at these positions of the grid."""
    rows = [progs.grid_rows[i] for i in positions]
    schedules = {r["index"]: set(schedule(r["budget_steps"], config.eval.per_octave)) for r in rows}
    grid = progs.place.grid(select(progs.grid, positions))
    return Part(list(positions), [r["index"] for r in rows], grid, rows, schedules,
                max(r["budget_steps"] for r in rows))


def restore_target(config: ml_collections.ConfigDict, progs: Programs, grid: train.Grid) -> Any:
    """Abstract state of a placed grid (the restore target)."""
    return progs.place.target(jax.eval_shape(lambda: train.init_state(progs.settings.train, progs.setup.network, grid)))


def models_per_program(config: ml_collections.ConfigDict, progs: Programs) -> int:
    """How many models one compiled program may hold: the config cap, else device memory."""
    M = len(progs.grid_rows)
    cap = int(config.run.max_models_per_program)
    if cap > 0:
        return min(cap, M)
    try:
        limit = (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    except Exception:  # backends without memory stats (CPU) raise or return None
        limit = None
    if not limit:
        return M
    grid = progs.place.grid(progs.grid)
    lowered = progs.step_fn.lower(restore_target(config, progs, grid), grid, progs.pool, config.train.steps_per_call)
    analysis = lowered.compile().memory_analysis()  # the compilation is reused by the first call
    if analysis is None:
        return M
    need = sum(getattr(analysis, f"{name}_size_in_bytes", 0) for name in ("argument", "output", "temp"))
    need -= getattr(analysis, "alias_size_in_bytes", 0)  # per device on a mesh
    if need <= MEMORY_FRACTION * limit:
        return M
    devices = progs.place.num_devices
    per_model = need / (grid.P.shape[0] / devices)
    k = max(1, int(MEMORY_FRACTION * limit // per_model)) * devices
    log.info("the grid of %d models needs about %.1f GiB per device for training, a device has %.1f GiB:"
             " at most %d models per program", M, need / 2**30, limit / 2**30, k)
    return min(k, M)


def partition(config: ml_collections.ConfigDict, progs: Programs, workdir: str,
              offset: int = 0) -> list[tuple[int, list[int]]]:
    """(part number, positions in the program's grid) of one program's consecutive, balanced sub-grids.

    ``checkpoints/partition.json`` lists every started program's parts in run order, as positions
    in the run's model list (this program's start at ``offset``); the stored split of a started
    program wins, a new program's split is appended.
    """
    path = os.path.join(workdir, "checkpoints", PARTITION_FILE)
    n = len(progs.grid_rows)
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
    k = models_per_program(config, progs)
    parts = [(offset + p).tolist() for p in np.array_split(np.arange(n), math.ceil(n / k))]
    if len(parts) > 1:
        log.info("splitting the grid of %d models into %d sub-grids of at most %d, run one after another",
                 n, len(parts), max(len(p) for p in parts))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    results.write_json_atomic(path, {"parts": stored + parts})
    return [(len(stored) + i, [p - offset for p in part]) for i, part in enumerate(parts)]


def stored_parts(config: ml_collections.ConfigDict, progs: Programs, workdir: str,
                 offset: int = 0) -> list[tuple[int, Part]]:
    """(part number, sub-grid) of one program of an existing run; [] if that program never started.

    ValueError if the run has no checkpoints at all.
    """
    path = os.path.join(workdir, "checkpoints", PARTITION_FILE)
    if not os.path.exists(path):
        raise ValueError(f"workdir={workdir!r} holds no checkpoints (no {path})")
    n = len(progs.grid_rows)
    stored = _read_partition(path)
    return [(j, make_part(config, progs, [p - offset for p in part]))
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


# ----------------------------------------------------------------------------- the loop

def evaluation_rows(config: ml_collections.ConfigDict, progs: Programs, part: Part, state: Any, step: int,
                    due: Callable[[int], bool], tracker: health.Tracker | None = None) -> list[dict]:
    """Evaluate every model of the part at ``step``; rows of the models for which ``due(model)``,
    flagged by ``tracker`` (loss blow-up, collapse) when given."""
    metrics = progs.evaluator(state, part.grid, eval_key(config, step))
    rows = [r for r in metrics_rows(metrics, part.rows, state, step) if due(int(r["model"]))]
    return rows if tracker is None else tracker.flag(rows)


_GRID_ONLY = ("index", "budget_steps", "budget_epochs")  # grid-row fields that are not metrics columns


def metrics_rows(metrics: dict, grid_rows: Sequence[dict], state: Any, step: int) -> list[dict]:
    """One metrics row per model of ``grid_rows`` (the first models of a padded grid): the model's
    index, its grid row's columns (the seeds and every swept setting), the metrics, ``step``.

    A diverged model is frozen at diverged_step; its rows still carry the schedule's step.
    """
    rows = evaluate.to_rows(metrics, list(grid_rows), state)
    return [{"model": r["model"], **{k: v for k, v in g.items() if k not in _GRID_ONLY}, **r, "step": int(step)}
            for r, g in zip(rows, grid_rows)]


def _log_divergence(state: Any, part: Part, seen: set[int]) -> None:
    """Log each model that diverged since the last check, with grid index and step."""
    diverged, at = jax.device_get((state.diverged, state.diverged_step))
    for j, row in enumerate(part.rows):
        if diverged[j] and row["index"] not in seen:
            seen.add(row["index"])
            log.warning("model %d (P=%s, seed=%s, lr=%s) diverged at step %d: frozen there, reported in its"
                        " rows", row["index"], row["P"], row["seed"], row["lr"], int(at[j]))


def _start(config: ml_collections.ConfigDict, progs: Programs, part: Part, ckpt: checkpoint.Checkpointer,
           writer: results.MetricsWriter, digest: str) -> tuple[int, Any, bool]:
    """(step, state, restored): the newest readable checkpoint, or a fresh state at step 0.

    Refuses (ValueError) to start from scratch over rows past step 0 of these models; rows past
    the restored step are copied aside before they are dropped; rows missing at or below it are
    re-evaluated from kept checkpoints. A ``checkpoint.ReadFailure`` propagates (nothing changed).
    """
    # strict=False: a state padded for another device count is truncated / zero-padded (dummies).
    restored = ckpt.restore_latest(restore_target(config, progs, part.grid), strict=False)
    models = set(part.models)
    mine = [r for r in writer.rows() if r["model"] in models]
    if restored is None:
        later = [r for r in mine if r["step"] > 0]  # step-0 rows are redone identically at once
        if later:
            raise ValueError(
                f"{writer.path} holds {len(later)} rows of models {_span(part.models)} up to step"
                f" {max(r['step'] for r in later)}, but no readable checkpoint is left in {ckpt.directory}"
                " (broken ones are kept as broken-*): starting over would drop them. Nothing was changed;"
                " restore the checkpoints, or pass --force to move the directory aside and start over")
        state = progs.place.init_state(progs.settings.train, progs.setup.network, part.grid)
        if progs.place.mesh is None:  # committed like a restored state: one compilation for both
            state = jax.device_put(state, jax.devices()[0])
        writer.truncate_after(-1, part.models)
        return 0, state, False
    t, state, meta = restored
    if meta.get("config_hash") != digest:
        raise ValueError(f"checkpoint at step {t} in {ckpt.directory} was written for another config"
                         f" (hash {meta.get('config_hash')} vs {digest}); use a new --workdir")
    if meta.get("models") != part.models:
        raise ValueError(f"checkpoint at step {t} in {ckpt.directory} holds models {meta.get('models')} but"
                         f" {PARTITION_FILE} assigns models {part.models} to it: was {PARTITION_FILE} edited?")
    dropping = [r for r in mine if r["step"] > t]
    if dropping:
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        copy = os.path.join(os.path.dirname(writer.path), f"metrics.dropped-{stamp}.jsonl")
        results.write_rows(copy, dropping)
        log.info("copied the %d metrics rows past step %d to %s before dropping them", len(dropping), t, copy)
    dropped = writer.truncate_after(t, part.models)
    log.info("resuming models %s from the checkpoint at step %d (%d later metrics rows dropped)",
             _span(part.models), t, dropped)
    _fill_missing_rows(config, progs, part, ckpt, writer, t, [r for r in mine if r["step"] <= t])
    return t, state, True


def _fill_missing_rows(config: ml_collections.ConfigDict, progs: Programs, part: Part,
                       ckpt: checkpoint.Checkpointer, writer: results.MetricsWriter, t: int,
                       rows: list[dict]) -> None:
    """Re-evaluate rows missing at evaluation steps <= t from kept checkpoints; ValueError if one is gone."""
    have = {(r["model"], r["step"]) for r in rows}
    missing = sorted({s for m in part.models for s in part.schedules[m] if s <= t and (m, s) not in have})
    if not missing:
        return
    gone = [s for s in missing if s not in ckpt.steps()]
    if gone:
        raise ValueError(f"{writer.path} lacks the rows of evaluation steps {gone[:10]} of models {_span(part.models)},"
                         f" which the checkpoint at step {t} has passed, and no checkpoint at those steps is kept to"
                         " re-evaluate them; restore the file, or pass --force to move the directory aside and start over")
    log.warning("%s lacks the rows of evaluation steps %s of models %s: re-evaluating them from their checkpoints",
                writer.path, missing, _span(part.models))
    target = restore_target(config, progs, part.grid)
    tracker = health.Tracker(config.eval.num_samples)
    for s in sorted({r["step"] for r in rows} | set(missing)):
        tracker.flag([r for r in rows if r["step"] == s])  # only remembered: the loss history of each model
        due = {m for m in part.models if s in part.schedules[m] and (m, s) not in have}
        if due:
            state, _ = ckpt.restore(s, target, strict=False)
            writer.write(evaluation_rows(config, progs, part, state, s, lambda m: m in due, tracker))


def kept_evaluations(eval_points: set[int], mode: str, budgets: Sequence[int]) -> set[int]:
    """Evaluation steps whose checkpoints are kept under ``run.keep_evaluations``."""
    if mode == "all":
        return set(eval_points)
    if mode == "octaves":
        return {s for s in eval_points if s & (s - 1) == 0 or s in budgets}  # 0, powers of 2, ends
    return set()


def _stops(config: ml_collections.ConfigDict, part: Part) -> list[int]:
    """Steps at which the loop stops: evaluations (0 included), extra checkpoints, the end."""
    every = int(config.run.checkpoint_every)
    return sorted(part.eval_points | set(range(every, part.end, every) if every else ()) | {part.end})


def _run_part(config: ml_collections.ConfigDict, progs: Programs, rec: Recorder, directory: str, part: Part,
              digest: str, stopping: "StopSignals | None" = None, compiles: bool = True) -> None:
    """Train one sub-grid to its end, resuming from its newest readable checkpoint; on a stop
    signal, save a checkpoint after the current device call and raise ``Interrupted``.

    ``digest``: the config hash its checkpoints carry (``stored_hash``). ``compiles``: the first
    training call compiles the program (the first sub-grid of a program): it is left out of the rate.
    """
    eval_points, writer, bar = part.eval_points, rec.metrics, rec.bar
    keep = kept_evaluations(eval_points, config.run.keep_evaluations, [r["budget_steps"] for r in part.rows])
    with checkpoint.Checkpointer(directory, config.run.keep_last, keep_steps=keep) as ckpt:
        t, state, restored = _start(config, progs, part, ckpt, writer, digest)
        rec.begin(part, t, restored)
        stops = _stops(config, part)
        if restored:  # done by an earlier process: counted, never timed
            bar.restored(sum(min(t, r["budget_steps"]) for r in part.rows), sum(s <= t for s in stops))
        seen: set[int] = set()
        tracker = health.Tracker(config.eval.num_samples, [r for r in writer.rows() if r["model"] in set(part.models)])
        saved = {t} if restored else set()

        def stop(t: int, state: Any) -> None:
            with bar.pause():
                rows = []
                if t in eval_points:
                    rows = evaluation_rows(config, progs, part, state, t, lambda m: t in part.schedules[m], tracker)
                rec.stop(rows)  # metrics and train rows before the checkpoint
                _log_divergence(state, part, seen)
                ckpt.save(t, state, {"config_hash": digest, "models": part.models, "grid": part.rows})
                saved.add(t)
            rec.resumed()

        def check_signal(t: int, state: Any) -> None:
            if stopping is None or stopping.received is None:
                return
            if t in eval_points and t not in saved:
                stop(t, state)
            elif t not in saved:
                rec.stop([])
                ckpt.save(t, state, {"config_hash": digest, "models": part.models, "grid": part.rows})
            raise Interrupted(stopping.received, f"stopped by {signal.Signals(stopping.received).name} at step {t}"
                              f" of models {_span(part.models)}: checkpoint and rows saved in {os.path.dirname(writer.path)};"
                              " run the same command again to resume")

        if not restored:
            stop(0, state)
        check_signal(t, state)
        pending = None  # metrics of the previous call: read one call late, so never blocking
        while t < part.end:
            target_step = next(s for s in stops if s > t)
            n = min(int(config.train.steps_per_call), target_step - t)
            if compiles and bar.clock_started:  # a later program's first call compiles: not timed either
                with bar.untimed():
                    state, metrics = jax.block_until_ready(progs.step_fn(state, part.grid, progs.pool, n))
            else:
                state, metrics = progs.step_fn(state, part.grid, progs.pool, n)
            t += n
            if compiles or not bar.clock_started:  # wait for the first call: its compilation is not timed
                bar.compiled(rec.chunk(metrics, part, timed=False))
                metrics, compiles = None, False
            if pending is not None:
                bar.advance(rec.chunk(pending, part, timed=True))
            pending = metrics
            stopping_now = stopping is not None and stopping.received is not None
            if t == target_step or stopping_now:  # here we must wait anyway
                if pending is not None:
                    bar.advance(rec.chunk(pending, part, timed=True))
                pending = None
            if t == target_step:
                stop(t, state)
            check_signal(t, state)
    rec.end_part()


def _span(models: Sequence[int]) -> str:
    return f"{models[0]}..{models[-1]}" if len(models) > 1 else str(models[0])


def stored_hash(workdir: str) -> str:
    """Config hash of the work directory's config.json as written (not of the config resuming it).

    A schema key added since the directory was created is absent there, so its checkpoints keep
    the hash they were saved with; ``results.prepare_workdir`` has checked that the key holds its
    default.
    """
    return config_lib.config_hash(results.read_config_json(workdir)["config"])


def run(config: ml_collections.ConfigDict, workdir: str, *, points: Sequence[dict] | None = None,
        force: bool = False, progress: bool = True, stop_signals: Sequence[int] = STOP_SIGNALS,
        tensorboard: bool = False) -> list[dict]:
    """Train and evaluate a sweep in ``workdir`` (new or resumed); returns all metrics rows.

    ``points``: the sweep (``plan``; default: the config alone). Its programs (models that share
    every static setting) run one after another in the one work directory: one config.json, one
    metrics.jsonl, one progress bar, one summary. Holds ``workdir``'s lock throughout
    (``lock.Busy`` if another process has it). The ``stop_signals`` end the run at the next
    device-call boundary with a checkpoint saved: ``Interrupted`` is raised and re-running resumes
    with unchanged results. Writes ``summary.txt`` (each model at its ``results.DEFAULT_READING``
    evaluation) at the end and prints nothing but the progress lines (stderr; ``progress=False``:
    none). ``tensorboard``: also write TensorBoard event files (``rhm_jax.events``).
    """
    config_lib.validate(config)
    sweep = plan.make_plan(config, [{}] if points is None else points)  # every point checked, nothing compiled
    if tensorboard:
        events.check_available()
    workdir = os.path.abspath(workdir)
    with contextlib.ExitStack() as stack:
        stopping = stack.enter_context(StopSignals(stop_signals))
        lock_workdir(workdir, force, stack)
        return _run_locked(config, sweep, workdir, progress, stopping, tensorboard)


def _sweep_stops(program: "plan.Program") -> int:
    """The stops of one program as a single sub-grid (for the progress bar's count of pauses)."""
    budgets = [r["budget_steps"] for r in program.rows]
    points = set().union(*(schedule(b, program.config.eval.per_octave) for b in budgets))
    every = int(program.config.run.checkpoint_every)
    end = max(budgets)
    return len(points | set(range(every, end, every) if every else ()) | {end})


def _run_locked(config: ml_collections.ConfigDict, sweep: "plan.Plan", workdir: str, progress: bool,
                stopping: StopSignals, tensorboard: bool = False) -> list[dict]:
    """``run`` once the work directory is locked."""
    grid_rows = [r for program in sweep.programs for r in program.rows]
    status = results.prepare_workdir(workdir, config, grid_rows, points=sweep.points)
    digest = stored_hash(workdir)
    log.info("%s run in %s: %d models in %d program(s)%s", status, workdir, len(grid_rows), len(sweep.programs),
             f", swept: {', '.join(sweep.swept)}" if sweep.swept else "")
    bar = Progress(sum(r["budget_steps"] for r in grid_rows), sum(_sweep_stops(p) for p in sweep.programs),
                   enabled=progress)
    rec = Recorder(workdir, bar, tensorboard)
    offset = 0
    try:
        for program in sweep.programs:
            progs = programs(program.config, program.rows)
            log.info("program %d/%d: models %s on %d device(s), largest P=%d, %d test rows", program.index + 1,
                     len(sweep.programs), _span([r["index"] for r in program.rows]), progs.place.num_devices,
                     progs.setup.pool_GxQxD.shape[1], progs.setup.test_GxNxD.shape[1])
            parts = partition(program.config, progs, workdir, offset)
            for i, (number, positions) in enumerate(parts):
                part = make_part(program.config, progs, positions)
                if len(parts) > 1:
                    log.info("sub-grid %d: models %s", number, _span(part.models))
                _run_part(program.config, progs, rec, part_dir(workdir, number), part, digest, stopping,
                          compiles=i == 0 or len(positions) != len(parts[0][1]))
            offset += len(program.rows)
    finally:
        bar.close()
        rec.end_part()
    if bar.first_eta is not None:
        log.info("training took %s; the first estimate after compilation (at %s) was %s left, the truth %s",
                 format_seconds(bar.elapsed()), format_seconds(bar.first_eta_at), format_seconds(bar.first_eta),
                 format_seconds(bar.elapsed() - bar.first_eta_at))
    rows = rec.metrics.rows()
    results.write_summary(workdir, results.summary_table(rows))
    if bar.clock_started or "wall_time_s" not in results.read_config_json(workdir).get("provenance", {}):
        try:  # a finished run re-run on a read-only disk trains nothing and records nothing
            results.record_wall_time(workdir, rec.wall_s())
        except OSError as err:
            log.warning("could not record the wall time in %s: %s", results.CONFIG_FILE, err)
    return rows


# ----------------------------------------------------------------------------- re-scoring

def score(workdir: str, step: int | None = None, num_samples: int | None = None,
          sampler_steps: int | str | None = None) -> dict[int, list[dict]]:
    """Re-evaluate checkpoints (every kept step, or ``step``) with K samples and S sampler steps.

    S is an integer or 'exact' (the process's exact sampler: process.sampler_steps=None).
    Writes ``score_<step>_<K>_<S>.jsonl`` per step (S: ``diffusion.sampler_label``) (rows of the models that were at that step) and
    returns the rows by step; never writes metrics.jsonl or checkpoints. K and S default to the
    run's, so re-scoring an evaluation step reproduces its metrics rows. Holds the work directory's
    lock; refuses before computing anything when the directory cannot be written or holds no
    checkpoint. Scoring every step skips a broken checkpoint with a warning; scoring ``step`` raises.
    """
    workdir = os.path.abspath(workdir)
    stored = results.read_config_json(workdir)
    config = config_lib.from_dict(stored["config"])
    if num_samples is not None:
        config.eval.num_samples = int(num_samples)
    if sampler_steps is not None:
        config.process.sampler_steps = diffusion.sampler_steps_setting(sampler_steps)
    config_lib.validate(config)
    if not os.access(workdir, os.W_OK):
        raise ValueError(f"workdir={workdir!r} is not writable: score writes its score_*.jsonl files there")
    sweep = plan.make_plan(config, stored.get("points", [{}]))
    with lock.hold(workdir, "score"):
        return _score_locked(workdir, stored, sweep, step)


class _Stored(NamedTuple):
    """One sub-grid of a stored run, with its program's config and programs."""

    config: ml_collections.ConfigDict
    progs: Programs
    part: Part
    ckpt: checkpoint.Checkpointer


def _score_locked(workdir: str, stored: dict, sweep: "plan.Plan", step: int | None) -> dict[int, list[dict]]:
    """``score`` once the work directory is locked."""
    grid_rows = [r for program in sweep.programs for r in program.rows]
    if results.to_json_value(grid_rows) != stored["grid"]:
        raise ValueError(f"the grid rebuilt from {workdir}/config.json differs from the stored one")
    earlier = results.read_rows(os.path.join(workdir, results.METRICS_FILE))
    subgrids, offset = [], 0
    with contextlib.ExitStack() as stack:
        for program in sweep.programs:
            progs = programs(program.config, program.rows)
            for number, part in stored_parts(program.config, progs, workdir, offset):
                ckpt = stack.enter_context(checkpoint.Checkpointer(part_dir(workdir, number), read_only=True))
                subgrids.append(_Stored(program.config, progs, part, ckpt))
            offset += len(program.rows)
        available = sorted(set().union(*(g.ckpt.steps() for g in subgrids)))
        if not available:
            raise ValueError(f"workdir={workdir!r} holds no checkpoint to score (checkpoints/part_*/ are empty)")
        if step is not None and step not in available:
            raise ValueError(f"no checkpoint at step {step} in {workdir}; available steps: {available}")
        num_samples, sampler_steps = sweep.programs[0].config.eval.num_samples, diffusion.sampler_label(sweep.programs[0].config.process)
        by_step, broken = {}, []
        for s in [step] if step is not None else available:
            rows = []
            tracker = health.Tracker(num_samples, [r for r in earlier if r["step"] < s])
            for g in subgrids:
                if s not in g.ckpt.steps():
                    continue
                try:
                    state, _ = g.ckpt.restore(s, restore_target(g.config, g.progs, g.part.grid), strict=False)
                except checkpoint.BrokenCheckpoint as err:
                    if step is not None:
                        raise
                    log.warning("skipping step %d: %s", s, err)
                    broken.append(s)
                    continue
                budget = {r["index"]: r["budget_steps"] for r in g.part.rows}
                rows += evaluation_rows(g.config, g.progs, g.part, state, s, lambda model: s <= budget[model], tracker)
            if s in broken and not rows:
                continue
            name = f"score_{s}_{num_samples}_{sampler_steps}.jsonl"
            results.write_rows(os.path.join(workdir, name), rows)
            log.info("wrote %s (%d rows)", name, len(rows))
            by_step[s] = rows
        if broken:
            log.warning("%d broken checkpoint(s) skipped, at steps %s", len(broken), sorted(set(broken)))
    return by_step
