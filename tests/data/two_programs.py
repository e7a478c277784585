"""Test sweep: the smoke grammar, 2 widths (static: two programs) x 2 grammar seeds x 2 data seeds x P in {8, 16}.

16 tiny models (the smoke grammar v=4, n=2, m=2, s=2, L=3; one model seed), 64 steps each, for the
end-to-end tests of a sweep in one work directory (tests/test_sweep_runs.py). Not an experiment.
"""
from __future__ import annotations

import os

import ml_collections

from rhm_jax import config as config_lib
from rhm_jax import plan

_SMOKE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "sweeps",
                      "smoke.py")


def get_config() -> ml_collections.ConfigDict:
    """The smoke config with P in {8, 16}, one model seed, 8 samples per evaluation."""
    config = config_lib.load(_SMOKE)
    config.data.num_train = (8, 16)
    config.train.seeds = (0,)
    config.eval.num_samples = 8
    return config


def get_sweep() -> list[dict]:
    """width (static) x grammar seed x data seed (traced): 2 programs of 8 models."""
    return plan.product(plan.sweep("network.width", [8, 16]), plan.sweep("grammar.seed", [0, 1]),
                        plan.sweep("data.seed", [0, 1]))
