"""Companion of hierarchy_in_p with m=3 (v=16): do the thresholds collapse across m?

Launch:   python -m launch.local --config sweeps/hierarchy_in_p_m3.py --workdir runs/hierarchy_in_p_m3
          python -m launch.report --workdir runs/hierarchy_in_p runs/hierarchy_in_p_m3 --at best
Quick:    python -m launch.local --config sweeps/hierarchy_in_p_m3.py:quick --workdir runs/hierarchy_in_p_m3_quick
Grid:     v=n=16, m=3, s=2, L=4 (d=16, P_max = 16 * 3**15 ~ 2.3e8), P = 32 .. 16384 (10 values, one
          per octave, from about v m**2 / 4 to 4 v m**(L+1)), 3 seeds: 30 bpUNets (W=1024, 25.2M
          parameters each), batch 64, Adam 1e-4, 2**18 steps each: everything but m as in
          hierarchy_in_p.
Run time: ESTIMATE, not yet measured: as hierarchy_in_p (same network, memory-bound training at
          ~2,400 model-steps/s on an H100), 30 x 2**18 model-steps in about 55 min plus ~2 min of
          evaluations. Quick: measured 2.7 min wall (2.0 min CPU time) on a 2-core CPU.
Expected: P*_l ~ c v m**(l+1) = c * (144, 432, 1296, 3888) with ratios ~ m = 3 and the same c as the
          m=4 sweep: validity vs P / (v m**(l+1)) of both sweeps and all levels on one curve.
          Quick (v=8, m=2, L=3; --at best, seed 0): P*_1 = 20, P*_2 = 97 (theory 32, 64); reported
          together with hierarchy_in_p's quick run, c = 0.67 with a log10 spread of 0.34.
"""
from __future__ import annotations

import os

import ml_collections

from rhm_jax import config as config_lib

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hierarchy_in_p.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """hierarchy_in_p with m=3 (P = 32 .. 16384); 'quick' is its quick grid with m=2, P <= 512."""
    if arg not in (None, "", "quick"):
        raise ValueError(f"sweeps/hierarchy_in_p_m3.py takes no argument or 'quick', got {arg!r}")
    config = config_lib.load(f"{_BASE}:{arg}" if arg else _BASE)  # everything but m and P as there
    if arg == "quick":  # v=8, m=2, L=3 (P_max = 1024): thresholds ~ 32, 64, 128
        config.grammar.m = 2
        config.data.num_train = (8, 16, 32, 64, 128, 256, 512)
    else:
        config.grammar.m = 3
        config.data.num_train = tuple(32 * 2**k for k in range(10))
    return config
