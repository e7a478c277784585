"""Hierarchical learning in time at fixed P: levels are learned in order, then memorization.

Launch:   python -m launch.local --config sweeps/hierarchy_in_time.py --workdir runs/hierarchy_in_time
          python -m launch.report --workdir runs/hierarchy_in_time
Quick:    python -m launch.local --config sweeps/hierarchy_in_time.py:quick --workdir runs/hierarchy_in_time_quick
Grid:     v=n=8, m=3, s=2, L=3 (d=8, P_max = 17496), P = 1024, 4 seeds, bpUNet W=1024 (18.9M
          parameters), batch 64, Adam 1e-4, 1e4 epochs (160,000 steps), evaluations log-spaced at 4
          per octave (~70 per model, 1024 samples each).
Run time: ESTIMATE, not yet measured: memory-bound training allows ~4,000 model-steps/s on an H100
          at 18.9M parameters (roofline), a few models reach perhaps 2,500/s: 4 x 160,000 steps in
          ~5 min, plus ~1 min of evaluations. The authors' code: ~20 min per seed (152 steps/s,
          2.3 s per evaluation).
          Quick: measured 3.3 min wall (1.1 min CPU time, the CPU shared with other jobs) on a
          2-core CPU; validity crosses 1/2 near step 330 (level 1) and 1,500 (level 2), level 3
          reaches ~0.3 and copies ~0.04 by step 4096.
Expected: (SPEC section 5) validity ~0.97 / 0.89 / 0.69 for levels 1 / 2 / 3 after 1e4 epochs; rises
          start near 3e2, 5e2, 2e3 epochs; copies ~0 until ~4e3 epochs, ~0.33 at 1e4 epochs
          (uniform sampling of valid data would give 0.059).
"""
from __future__ import annotations

import ml_collections

from rhm_jax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The paper's training-time experiment; 'quick' shrinks width, P and steps for a CPU."""
    if arg not in (None, "", "quick"):
        raise ValueError(f"sweeps/hierarchy_in_time.py takes no argument or 'quick', got {arg!r}")
    config = config_lib.base_config()
    config.grammar.update(dict(v=8, n=8, m=3, s=2, L=3, seed=0))
    config.data.update(dict(num_train=(1024,), num_test=1024, seed=0))
    config.network.update(dict(name="bpunet", width=1024))
    config.train.update(dict(batch_size=64, lr=(1e-4,), num_steps=0, num_epochs=1e4, seeds=(0, 1, 2, 3)))
    config.eval.update(dict(num_samples=1024, per_octave=4, num_windows=10))
    if arg == "quick":
        _quick(config)
    return config


def _quick(config: ml_collections.ConfigDict) -> None:
    """Same grammar, P=256, width 64, lr 2e-3, 4096 steps, 2 seeds: a CPU minute or two.

    At this P level 1 is learned near step 1e3, level 2 near 2e3-4e3, and copies start to rise
    at the end (hierarchy_in_p's quick grid shows the same on a P axis).
    """
    config.data.update(dict(num_train=(256,), num_test=256))
    config.process.update(dict(T=50, beta2=0.2))
    config.network.width = 64
    config.train.update(dict(lr=(2e-3,), num_steps=4096, num_epochs=0.0, seeds=(0, 1), steps_per_call=128))
    config.eval.update(dict(num_samples=256, per_octave=2))
