"""Re-score a stored run: evaluate its kept checkpoints again, with more samples or sampler steps.

Sampling keys are ``fold_in(key(run.seed), step)`` and loss keys come from the run seed and the
model seed alone (the same at every step), so re-scoring an evaluation step with the run's
settings reproduces its metrics rows.
"""
from __future__ import annotations

import contextlib
import logging
import os

from rhm_jax import checkpoint, health, lock, results, stored
from rhm_jax.subgrids import evaluation_rows, part_dir, restore_target

log = logging.getLogger(__name__)


def score(workdir: str, step: int | str | None = None, num_samples: int | None = None,
          sampler_steps: int | str | None = None) -> dict[int, list[dict]]:
    """Re-evaluate checkpoints (every kept step, ``step``, or each model at its 'best' / 'last'
    evaluation, ``results.pick``) with K samples and sampler S (steps, or 'exact').

    Writes ``score_<step>_<K>_<S>.jsonl`` per step (rows of the models that were at that step; a
    reading merges its rows into the file, replacing those of the same models) and returns the rows
    by step; never writes metrics.jsonl or checkpoints. K and S default to the
    run's, so re-scoring an evaluation step reproduces its metrics rows. Holds the work directory's
    lock; refuses before computing anything when the directory cannot be written or holds no
    checkpoint. Scoring every step skips a broken checkpoint with a warning; scoring ``step`` raises.
    """
    if isinstance(step, str) and step not in results.READINGS:
        raise ValueError(f"step={step!r} must be a checkpoint step or one of {tuple(results.READINGS)}")
    run = stored.open_run(workdir, num_samples, sampler_steps)
    if not os.access(run.workdir, os.W_OK):
        raise ValueError(f"workdir={run.workdir!r} is not writable: score writes its score_*.jsonl files there")
    with lock.hold(run.workdir, "score"):
        return _score_locked(run, step)


def _readings(rows: list[dict], at: str) -> dict[int, int]:
    """Model -> the step of its ``at`` evaluation ('best' or 'last') in the metrics rows."""
    by_model: dict[int, list[dict]] = {}
    for r in rows:
        by_model.setdefault(r["model"], []).append(r)
    if not by_model:
        raise ValueError(f"step={at!r} needs evaluations, and {results.METRICS_FILE} holds none")
    return {m: int(results.pick(history, at)["step"]) for m, history in by_model.items()}


def _score_locked(run: stored.Stored, step: int | str | None) -> dict[int, list[dict]]:
    """``score`` once the work directory is locked."""
    workdir = run.workdir
    earlier = results.read_rows(os.path.join(workdir, results.METRICS_FILE))
    wanted = _readings(earlier, step) if isinstance(step, str) else None
    with contextlib.ExitStack() as stack:
        subgrids = [(g, stack.enter_context(checkpoint.Checkpointer(part_dir(workdir, g.number), read_only=True)))
                    for g in stored.subgrids(run)]
        available = sorted(set().union(*(ckpt.steps() for _, ckpt in subgrids)))
        if not available:
            raise ValueError(f"workdir={workdir!r} holds no checkpoint to score (checkpoints/part_*/ are empty)")
        steps = sorted(set(wanted.values())) if wanted else [step] if step is not None else available
        gone = [s for s in steps if s not in available]
        if gone:
            which = f"the {step} evaluations of the models are at steps {steps}: " if wanted else ""
            raise ValueError(f"{which}no checkpoint at step {gone[0]} in {workdir}; available steps: {available}")
        first = run.plan.programs[0].settings
        num_samples, sampler = first.eval.num_samples, first.sampler_label
        by_step, broken = {}, []
        log.info("re-scoring %d checkpoint step(s) with %d samples, sampler %s: the first compiles", len(steps),
                 num_samples, sampler)
        for number, s in enumerate(steps, 1):
            log.info("re-scoring step %d (%d of %d)", s, number, len(steps))
            rows = []
            tracker = health.Tracker(num_samples, [r for r in earlier if r["step"] < s])
            for g, ckpt in subgrids:
                if wanted and not any(wanted.get(m) == s for m in g.part.models):
                    continue  # none of its models is read at this step
                if s not in ckpt.steps():
                    if wanted:
                        raise ValueError(f"no checkpoint at step {s} in {ckpt.directory} for the {step} evaluation of"
                                         f" its models; available steps: {ckpt.steps()}")
                    continue
                try:
                    state, _ = ckpt.restore(s, restore_target(g.built, g.part.grid), strict=False)
                except checkpoint.BrokenCheckpoint as err:
                    if step is not None:  # asked for: an error, not a skip
                        raise
                    log.warning("skipping step %d: %s", s, err)
                    broken.append(s)
                    continue
                budget = {r["index"]: r["budget_steps"] for r in g.part.rows}
                due = (lambda model: wanted.get(model) == s) if wanted else (lambda model: s <= budget[model])
                rows += evaluation_rows(g.built, g.part, state, s, due, tracker)
            if s in broken and not rows:
                continue
            name = f"score_{s}_{num_samples}_{sampler}.jsonl"
            if wanted:
                results.merge_rows(os.path.join(workdir, name), rows)
            else:
                results.write_rows(os.path.join(workdir, name), rows)
            log.info("wrote %s (%d rows)", name, len(rows))
            by_step[s] = rows
        if broken:
            log.warning("%d broken checkpoint(s) skipped, at steps %s", len(broken), sorted(set(broken)))
    return by_step
