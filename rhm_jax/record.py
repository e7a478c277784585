"""Where a run's outputs go besides checkpoints: the metrics and train tables, the wall clock,
the progress lines and the optional event files (used by ``rhm_jax.runner``).

A part is a sub-grid (``subgrids.Part``): ``rows`` (its grid rows, real models first) and ``models``
(their global indices).
"""
from __future__ import annotations

import time
from typing import Any

import jax

from rhm_jax import events, results, timing
from rhm_jax.progress import Progress


class Recorder:
    """Where a run's outputs go besides checkpoints: metrics and train tables, wall clock, progress,
    event files. ``wall_s`` is the run's wall time, summed over the processes that ran it, and
    ``split`` (``timing.Split``) where it went; every train row carries both as they stood when
    its chunk returned (``wall_s``, ``wall_split_s``), so a resumed run adds to them."""

    def __init__(self, workdir: str, bar: Progress, tensorboard: bool = False):
        self.workdir, self.bar, self.tensorboard = workdir, bar, tensorboard
        self.metrics = results.MetricsWriter(workdir)
        self.train = results.MetricsWriter(workdir, results.TRAIN_FILE)
        self.events: events.EventWriter | None = None
        self._began = time.monotonic()
        self.split = timing.Split()
        self._base: float | None = None  # wall seconds of earlier processes, up to the restored step
        self._pending: list[dict] = []  # train rows since the last stop
        self._last_read = self._began

    def wall_s(self) -> float:
        """Seconds since the run began (earlier processes up to their last checkpoint included)."""
        return (self._base or 0.0) + time.monotonic() - self._began

    def begin(self, part: Any, t: int, restored: bool) -> None:
        """Drop the train rows after the restored step (all of the part's, when fresh); open event files."""
        self.train.truncate_after(t if restored else -1, part.models)
        if self._base is None:
            latest = max(self.train.rows(), key=lambda r: r.get("wall_s") or 0.0, default={})
            self._base = latest.get("wall_s") or 0.0
            self.split.rebase(latest.get("wall_split_s") or {})  # rows written before the split: none
        if self.tensorboard:
            self.events = events.EventWriter(self.workdir, part.rows, purge_step=t + 1 if restored else None)

    def chunk(self, metrics: dict, part: Any, timed: bool) -> int:
        """Buffer the train rows of one returned chunk; returns its model-steps."""
        metrics = jax.device_get(metrics)
        now = time.monotonic()
        done = metrics["steps_done"][:len(part.rows)]
        rate = float(done.sum()) / (now - self._last_read) if timed and now > self._last_read else None
        self._last_read = now
        wall, split = self.wall_s(), self.split.snapshot()
        for j, row in enumerate(part.rows):
            if done[j] > 0:
                self._pending.append(dict(model=row["index"], step=int(metrics["step"][j]),
                                          epoch=float(metrics["epoch"][j]), loss=float(metrics["loss"][j]),
                                          wall_s=wall, model_steps_per_s=rate, wall_split_s=split))
        return int(done.sum())

    def stop(self, rows: list[dict]) -> None:
        """Write evaluation rows and the buffered train rows (before the checkpoint is saved)."""
        if rows:
            self.metrics.write(rows)
        self.train.write(self._pending)
        if self.events is not None:
            self.events.train(self._pending)
            self.events.evaluation(rows)
            self.events.flush()
        self._pending = []

    def resumed(self) -> None:
        """After a stop: the next chunk's rate is timed from now."""
        self._last_read = time.monotonic()

    def end_part(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None
