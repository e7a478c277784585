"""Optional TensorBoard event files: per-model scalars of a run, to watch a long sweep live.

Off by default (``runner.run(..., tensorboard=True)``, ``launch.local --tensorboard``); needs the
``tensorboard`` extra (tensorboardX). One event directory per model,
``<workdir>/tensorboard/model_<index>_P<P>_seed<seed>``, so that TensorBoard overlays the models of
a grid on each chart: ``train/loss`` per training chunk, and every scalar of an evaluation row
(``eval/validity_l1``, ``eval/copies``, ``eval/test_loss`` ...). On resume from step t, events
after t are purged, as the metrics rows are.
"""
from __future__ import annotations

import os
from typing import Iterable, Sequence

EVENTS_DIR = "tensorboard"
_SKIP = {"model", "step", "P", "seed", "lr", "diverged", "diverged_step", "budget_steps", "budget_epochs"}


def run_name(row: dict) -> str:
    """Event directory name of one model (a grid row)."""
    return f"model_{int(row['index']):04d}_P{row['P']}_seed{row['seed']}"


def check_available() -> None:
    """ValueError (one line) when tensorboardX is not installed."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        raise ValueError("tensorboard=True needs tensorboardX: pip install 'rhm_jax[tensorboard]'") from None


class EventWriter:
    """One tensorboardX SummaryWriter per model of a (sub-)grid."""

    def __init__(self, workdir: str, grid_rows: Sequence[dict], purge_step: int | None = None):
        check_available()
        from tensorboardX import SummaryWriter

        root = os.path.join(workdir, EVENTS_DIR)
        self._writers = {int(r["index"]): SummaryWriter(os.path.join(root, run_name(r)), purge_step=purge_step)
                         for r in grid_rows}
        self._skip = _SKIP | {k for r in grid_rows for k in r}  # a model's settings (seeds, swept keys) are not curves

    def train(self, rows: Iterable[dict]) -> None:
        """Rows of the train table: ``train/loss`` at each row's step."""
        for row in rows:
            if row.get("loss") is not None:
                self._writers[row["model"]].add_scalar("train/loss", row["loss"], row["step"])

    def evaluation(self, rows: Iterable[dict]) -> None:
        """Metrics rows: every numeric value as ``eval/<name>``."""
        for row in rows:
            writer = self._writers[row["model"]]
            for name, value in row.items():
                if name not in self._skip and isinstance(value, (int, float)) and not isinstance(value, bool):
                    writer.add_scalar(f"eval/{name}", value, row["step"])

    def flush(self) -> None:
        """Write pending events to disk."""
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Flush and close every writer."""
        for writer in self._writers.values():
            writer.close()
