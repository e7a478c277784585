"""The run loop: train a grid of models in chunks, evaluate on a log-spaced schedule, checkpoint, resume.

Shape letters: M models in the grid (M' once padded for several devices), Q rows of the shared
training pool (the largest P), N test rows, D sequence length.

``run(config, workdir)`` is idempotent: a stopped run (any reason, SIGKILL included) restarts from
its newest readable checkpoint, drops the metrics rows written after it, and ends with the same
rows and states as an uninterrupted run. Schedule of one model with budget b: evaluations (and kept
checkpoints) at ``{0, b} | evaluate.eval_steps(b, per_octave)``; extra checkpoints every
``run.checkpoint_every`` steps, of which the last ``run.keep_last`` are kept. Sampling keys are
``fold_in(key(run.seed), step)`` and loss keys depend on the run and model seeds only (common
random numbers), so ``rescore.score`` reproduces an evaluation from its checkpoint.

Safety (see README "What is guaranteed"): the work directory is locked for the run's life
(``rhm_jax.lock``); SIGINT / SIGTERM finish the current device call, save a checkpoint and raise
``Interrupted`` (both set up by ``rhm_jax.guard``); a checkpoint that cannot be read for a reason of the environment stops the run
with nothing changed; a run never starts from scratch over rows it would have to drop, rows dropped
on resume are copied to ``metrics.dropped-<time>.jsonl`` first, and rows missing below the restored
checkpoint are re-evaluated from the kept checkpoints (or the run refuses).

A grid larger than the device memory runs as sub-grids (``rhm_jax.subgrids``), one after another.
With several local devices each sub-grid is split over them (``rhm_jax.sharding``). Rows carry the
model's index in the full grid (``run.grid_slice`` runs a slice of it). The loop reads the planned
programs' typed settings (``plan.Program.settings``), never the config; re-scoring a stored run is
``rhm_jax.rescore``.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
import signal
from typing import Any, Sequence

import jax
import ml_collections

from rhm_jax import checkpoint, events, health, memory, plan, results, timing
from rhm_jax import config as config_lib
from rhm_jax.guard import STOP_SIGNALS, Interrupted, StopSignals, lock_workdir
from rhm_jax.program import Built, build
from rhm_jax.progress import Progress, format_seconds
from rhm_jax.record import Recorder
from rhm_jax.subgrids import (PARTITION_FILE, Part, evaluation_rows, make_part, part_dir, partition,
                              restore_target, schedule, span)

log = logging.getLogger(__name__)


def _log_divergence(state: Any, part: Part, seen: set[int]) -> None:
    """Log each model that diverged since the last check, with grid index and step."""
    diverged, at = jax.device_get((state.diverged, state.diverged_step))
    for j, row in enumerate(part.rows):
        if diverged[j] and row["index"] not in seen:
            seen.add(row["index"])
            log.warning("model %d (P=%s, seed=%s, lr=%s) diverged at step %d: frozen there, reported in its"
                        " rows", row["index"], row["P"], row["seed"], row["lr"], int(at[j]))


def _start(progs: Built, part: Part, ckpt: checkpoint.Checkpointer,
           writer: results.MetricsWriter, digest: str, split: Any = timing.NO_SPLIT) -> tuple[int, Any, bool]:
    """(step, state, restored): the newest readable checkpoint, or a fresh state at step 0.

    Refuses (ValueError) to start from scratch over rows past step 0 of these models; rows past
    the restored step are copied aside before they are dropped; rows missing at or below it are
    re-evaluated from kept checkpoints. A ``checkpoint.ReadFailure`` propagates (nothing changed).
    """
    # strict=False: a state padded for another device count is truncated / zero-padded (dummies).
    restored = ckpt.restore_latest(restore_target(progs, part.grid), strict=False, config_hash=digest)
    models = set(part.models)
    mine = [r for r in writer.rows() if r["model"] in models]
    if restored is None:
        later = [r for r in mine if r["step"] > 0]  # step-0 rows are redone identically at once
        if later:
            raise ValueError(
                f"{writer.path} holds {len(later)} rows of models {span(part.models)} up to step"
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
             span(part.models), t, dropped)
    _fill_missing_rows(progs, part, ckpt, writer, t, [r for r in mine if r["step"] <= t], split)
    return t, state, True


def _fill_missing_rows(progs: Built, part: Part,
                       ckpt: checkpoint.Checkpointer, writer: results.MetricsWriter, t: int,
                       rows: list[dict], split: Any = timing.NO_SPLIT) -> None:
    """Re-evaluate rows missing at evaluation steps <= t from kept checkpoints; ValueError if one is gone."""
    have = {(r["model"], r["step"]) for r in rows}
    missing = sorted({s for m in part.models for s in part.schedules[m] if s <= t and (m, s) not in have})
    if not missing:
        return
    gone = [s for s in missing if s not in ckpt.steps()]
    if gone:
        raise ValueError(f"{writer.path} lacks the rows of evaluation steps {gone[:10]} of models {span(part.models)},"
                         f" which the checkpoint at step {t} has passed, and no checkpoint at those steps is kept to"
                         " re-evaluate them; restore the file, or pass --force to move the directory aside and start over")
    log.warning("%s lacks the rows of evaluation steps %s of models %s: re-evaluating them from their checkpoints",
                writer.path, missing, span(part.models))
    target = restore_target(progs, part.grid)
    tracker = health.Tracker(progs.settings.eval.num_samples)
    for s in sorted({r["step"] for r in rows} | set(missing)):
        tracker.flag([r for r in rows if r["step"] == s])  # only remembered: the loss history of each model
        due = {m for m in part.models if s in part.schedules[m] and (m, s) not in have}
        if due:
            state, _ = ckpt.restore(s, target, strict=False)
            writer.write(evaluation_rows(progs, part, state, s, lambda m: m in due, tracker, split))


def kept_evaluations(eval_points: set[int], mode: str, budgets: Sequence[int]) -> set[int]:
    """Evaluation steps whose checkpoints are kept under ``run.keep_evaluations``."""
    if mode == "all":
        return set(eval_points)
    if mode == "octaves":
        return {s for s in eval_points if s & (s - 1) == 0 or s in budgets}  # 0, powers of 2, ends
    return set()


def _stops(eval_points: set[int], end: int, every: int) -> list[int]:
    """Steps at which the loop stops: evaluations (0 included), checkpoints every ``every`` steps, the end."""
    return sorted(eval_points | set(range(every, end, every) if every else ()) | {end})


def _run_part(progs: Built, rec: Recorder, directory: str, part: Part,
              digest: str, stopping: "StopSignals | None" = None, compiles: bool = True) -> None:
    """Train one sub-grid to its end, resuming from its newest readable checkpoint; on a stop
    signal, save a checkpoint after the current device call and raise ``Interrupted``.

    ``digest``: the config hash its checkpoints carry (``stored_hash``). ``compiles``: the first
    training call compiles the program (the first sub-grid of a program): it is left out of the rate.
    """
    eval_points, writer, bar, run_settings = part.eval_points, rec.metrics, rec.bar, progs.settings.run
    split = rec.split
    keep = kept_evaluations(eval_points, run_settings.keep_evaluations, [r["budget_steps"] for r in part.rows])
    if stopping is not None:
        stopping.at_once = True  # until this sub-grid's first device call returns: nothing new to save
    with checkpoint.Checkpointer(directory, run_settings.keep_last, keep_steps=keep) as ckpt:
        with bar.untimed(), split.phase("checkpoint"):  # restoring or initializing a sub-grid: not training
            t, state, restored = _start(progs, part, ckpt, writer, digest, split)
        rec.begin(part, t, restored)
        if compiles:
            bar.compiling()  # its first pause compiles the evaluator for this sub-grid's size
        stops = _stops(eval_points, part.end, run_settings.checkpoint_every)
        if restored:  # done by an earlier process: counted, never timed
            bar.restored(sum(min(t, r["budget_steps"]) for r in part.rows), sum(s <= t for s in stops))
        seen: set[int] = set()
        tracker = health.Tracker(progs.settings.eval.num_samples, [r for r in writer.rows() if r["model"] in set(part.models)])
        saved = {t} if restored else set()

        def stop(t: int, state: Any) -> None:
            with bar.pause():
                rows = []
                if t in eval_points:
                    rows = evaluation_rows(progs, part, state, t, lambda m: t in part.schedules[m], tracker, split)
                with split.phase(None):
                    rec.stop(rows)  # metrics and train rows before the checkpoint
                    _log_divergence(state, part, seen)
                with split.phase("checkpoint"):
                    ckpt.save(t, state, {"config_hash": digest, "models": part.models, "grid": part.rows})
                saved.add(t)
            rec.resumed()

        def check_signal(t: int, state: Any) -> None:
            if stopping is None or stopping.received is None:
                return
            if t in eval_points and t not in saved:
                stop(t, state)
            elif t not in saved:
                with split.phase(None):
                    rec.stop([])
                with split.phase("checkpoint"):
                    ckpt.save(t, state, {"config_hash": digest, "models": part.models, "grid": part.rows})
            raise Interrupted(stopping.received, f"stopped by {signal.Signals(stopping.received).name} at step {t}"
                              f" of models {span(part.models)}: checkpoint and rows saved in {os.path.dirname(writer.path)};"
                              " run the same command again to resume")

        if not restored:
            stop(0, state)
        check_signal(t, state)
        pending = None  # metrics of the previous call: read one call late, so never blocking
        with split.phase("train"):  # its evaluations and checkpoints are phases of their own
            while t < part.end:
                target_step = next(s for s in stops if s > t)
                n = min(progs.settings.train.steps_per_call, target_step - t)
                if compiles and bar.clock_started:  # a later program's first call compiles: not timed either
                    with bar.untimed():
                        state, metrics = jax.block_until_ready(progs.step_fn(state, part.grid, progs.pool, n))
                else:
                    state, metrics = progs.step_fn(state, part.grid, progs.pool, n)
                t += n
                if stopping is not None:
                    stopping.at_once = False  # compiled, and the state has moved past its checkpoint
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


def stored_hash(workdir: str) -> str:
    """Config hash of the work directory's config.json as written (not of the config resuming it).

    A schema key added since the directory was created is absent there, so its checkpoints keep
    the hash they were saved with; ``results.prepare_workdir`` has checked that the key holds its
    default.
    """
    return config_lib.config_hash(results.read_config_json(workdir)["config"])


def run(config: ml_collections.ConfigDict, workdir: str, *, points: Sequence[dict] | None = None,
        force: bool = False, progress: bool = True, stop_signals: Sequence[int] = STOP_SIGNALS,
        tensorboard: bool = False, exit_at_once: bool = False) -> list[dict]:
    """Train and evaluate a sweep in ``workdir`` (new or resumed); returns all metrics rows.

    ``points``: the sweep (``plan``; default: the config alone). Its programs (models that share
    every static setting) run one after another in the one work directory: one config.json, one
    metrics.jsonl, one progress bar, one summary. Holds ``workdir``'s lock throughout
    (``lock.Busy`` if another process has it). The ``stop_signals`` end the run at the next
    device-call boundary with a checkpoint saved: ``Interrupted`` is raised and re-running resumes
    with unchanged results. Writes ``summary.txt`` (each model at its ``results.DEFAULT_READING``
    evaluation, then a line of where the wall time went: ``timing``, also config.json's
    ``wall_split_s``) at the end and prints nothing but the progress lines (stderr; ``progress=False``:
    none).
    ``tensorboard``: also write TensorBoard event files (``rhm_jax.events``). ``exit_at_once``
    (entry points): SIGINT / SIGTERM during set-up or compilation, and a second Ctrl-C, end the
    process at once with one line (``guard.StopSignals``).
    """
    sweep = plan.make_plan(config, [{}] if points is None else points)  # every point validated, nothing compiled
    memory.check(sweep.programs)  # one line if not even one model of a program fits, before anything is written
    if tensorboard:
        events.check_available()
    if not str(workdir).strip():
        raise ValueError(f"workdir={str(workdir)!r} names no directory; give a path")
    workdir = os.path.abspath(workdir)
    with contextlib.ExitStack() as stack:
        stopping = stack.enter_context(StopSignals(stop_signals, exit_at_once))
        lock_workdir(workdir, force, stack)
        return _run_locked(config, sweep, workdir, progress, stopping, tensorboard)


def _sweep_stops(program: plan.Program) -> int:
    """The stops of one program as a single sub-grid (for the progress bar's count of pauses)."""
    budgets = [r["budget_steps"] for r in program.rows]
    run_settings = program.settings.run
    points = set().union(*(schedule(b, run_settings.per_octave) for b in budgets))
    return len(_stops(points, max(budgets), run_settings.checkpoint_every))


def _run_locked(config: ml_collections.ConfigDict, sweep: "plan.Plan", workdir: str, progress: bool,
                stopping: StopSignals, tensorboard: bool = False) -> list[dict]:
    """``run`` once the work directory is locked."""
    grid_rows = [r for program in sweep.programs for r in program.rows]
    status = results.prepare_workdir(workdir, config, grid_rows, points=sweep.points)
    digest = stored_hash(workdir)
    log.info("%s run in %s: %d models in %d program(s)%s", status, workdir, len(grid_rows), len(sweep.programs),
             f", swept: {', '.join(sweep.swept)}" if sweep.swept else "")
    bar = Progress(sum(r["budget_steps"] for r in grid_rows), sum(_sweep_stops(p) for p in sweep.programs),
                   enabled=progress, programs=len(sweep.programs))
    rec = Recorder(workdir, bar, tensorboard)
    try:
        with rec.split.listening():
            _run_programs(sweep, rec, bar, workdir, digest, stopping)
    finally:
        bar.close()
        rec.end_part()
    if bar.first_eta is not None:
        log.info("training took %s; the first estimate after compilation (at %s) was %s left, the truth %s",
                 format_seconds(bar.elapsed()), format_seconds(bar.first_eta_at), format_seconds(bar.first_eta),
                 format_seconds(bar.elapsed() - bar.first_eta_at))
    rows = rec.metrics.rows()
    if bar.clock_started or "wall_time_s" not in results.read_config_json(workdir).get("provenance", {}):
        try:  # a finished run re-run on a read-only disk trains nothing and records nothing
            results.record_wall_time(workdir, rec.wall_s(), rec.split.snapshot())
        except OSError as err:
            log.warning("could not record the wall time in %s: %s", results.CONFIG_FILE, err)
    where = results.split_line(workdir)  # where the wall time went (rhm_jax.timing), after the table
    results.write_summary(workdir, results.summary_table(rows), where)
    if where:
        log.info("%s", where)
    return rows


def _run_programs(sweep: "plan.Plan", rec: Recorder, bar: Progress, workdir: str, digest: str,
                  stopping: StopSignals) -> None:
    """Every program of the sweep, one after another, each as its sub-grids."""
    offset = 0
    for program in sweep.programs:
        bar.begin_program()
        with bar.untimed(), rec.split.phase("setup"):  # a later program's build and datasets: not training
            progs = build(program.settings, program.rows)
            parts = partition(progs, workdir, offset)
        log.info("program %d/%d: models %s on %d device(s), largest P=%d, %d test rows", program.index + 1,
                 len(sweep.programs), span([r["index"] for r in program.rows]), progs.place.num_devices,
                 progs.setup.pool_GxQxD.shape[1], progs.setup.test_GxNxD.shape[1])
        for i, (number, positions) in enumerate(parts):
            part = make_part(progs, positions)
            if len(parts) > 1:
                log.info("sub-grid %d: models %s", number, span(part.models))
            _run_part(progs, rec, part_dir(workdir, number), part, digest, stopping,
                      compiles=i == 0 or len(positions) != len(parts[0][1]))
        offset += len(program.rows)
