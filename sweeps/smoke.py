"""Smoke test: a tiny grid (2 P x 2 seeds) on a tiny grammar, for tests and demos.

Launch:   python -m launch.local --config sweeps/smoke.py --workdir runs/smoke
Run time: about half a minute on a 2-core CPU, most of it compilation.
Expected: the run completes and prints a 4-model table; level-1 validity above the uniform
baseline f = m / v**(s-1) = 0.5 for the larger P (tiny runs are noisy; this is a plumbing check).
"""
from __future__ import annotations

import ml_collections

from rhm_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Tiny grammar (v=4, n=2, m=2, s=2, L=3: d=8, P_max=256), width 16, 64 steps; 'quick' is the same."""
    if arg not in (None, "", "quick"):
        raise ValueError(f"sweeps/smoke.py takes no argument or 'quick', got {arg!r}")
    config = config_lib.base_config()
    config.grammar.update(dict(v=4, n=2, m=2, s=2, L=3, seed=0))
    config.data.update(dict(num_train=(16, 64), num_test=32, seed=0))
    config.process.update(dict(T=20, sampler_steps=20))
    config.network.width = 16
    config.train.update(dict(batch_size=8, lr=(3e-3,), num_steps=64, num_epochs=0.0, seeds=(0, 1),
                             steps_per_call=16))
    config.eval.update(dict(num_samples=32, per_octave=1, num_windows=2))
    config.run.update(dict(checkpoint_every=0, keep_last=2))
    return config
