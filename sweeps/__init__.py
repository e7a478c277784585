"""Experiment configs, one file per experiment (``get_config(arg=None)``); see each file's docstring."""
from __future__ import annotations

from typing import Any, Sequence


def plumbing_check(config: Any, num_train: Sequence[int]) -> Any:
    """The config shrunk to a seconds-long run of the same pipeline (a sweep file's 'quick' of a CPU run):
    the given P grid, 64 test rows, a 20-step chain, width 32, 8 steps, 16 samples, 64 loss rows."""
    config.data.update(dict(num_train=tuple(num_train), num_test=64))
    config.process.T = 20
    config.network.width = 32
    config.train.update(dict(num_steps=8, steps_per_call=8))
    config.eval.update(dict(num_samples=16, loss_rows=64))
    return config
