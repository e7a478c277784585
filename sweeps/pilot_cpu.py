"""Pilot for the hour-long CPU reproduction (issue 20): width x learning rate on three P, m=3.

Launch:   python -m launch.local --config sweeps/pilot_cpu.py --workdir runs/pilot_cpu
          python -m launch.report --workdir runs/pilot_cpu --at best
Quick:    python -m launch.local --config sweeps/pilot_cpu.py:quick --workdir DIR (82 s at load 5,
          mostly three compilations; the same programs, tiny: for tests of the pipeline only)
Sweep:    get_sweep: network.width 32 and 64 with every P and lr, then 128 as one model (P=1024, lr
          4e-3) for its speed; width is static (one program each, run in this order, so the W=128
          program can be cut); train.lr and data.num_train are per-model grid axes in a program.
Grid:     v=n=8, m=3, s=2, L=3 (d=8, P_max = 17496) as the quick sweep and the CPU reproduction;
          P = 64, 256, 1024 (near v m**2 = 72, v m**3 = 216 and above v m**4 = 648); lr 2e-3, 4e-3,
          8e-3 (Adam, batch 64); one grammar, data and model seed (0); 9 models per width, 19 in all;
          T=50 with beta2=0.2 (the quick sweep's process: alphabar_T ~ 0.007, so x_T is almost
          uniform, at a quarter of the paper's T=200 sampling cost; the quick sweep read the same
          thresholds with it); 2**14 steps; 2 evaluations per octave of 256 samples.
Run time: measured 2026-12-07 (branch p20, ef070a0) on the 2-core CPU shared with a test run (load
          5.6-6.7, nice -n 5): 18 min 34 s for the 19 models (W=32: 308 s, 747 model-steps/s;
          W=64: 602 s, 300 model-steps/s; W=128: 134 s, ~180 model-steps/s for its one model);
          the report 31 s. Idle: about a third of that (W=64's benchmark rate is 3.1x the loaded one).
Expected: the level-1 and level-2 thresholds of the quick sweep (72, 216 by theory); the steps at
          which each P's test loss bottoms out, per width and lr, set the reproduction's budget.
Measured: every level reached at P=1024 within 2**14 steps at lr 4e-3 and 8e-3 (level 3 at the best
          evaluation 0.55-0.73 normalized, not still rising); lr 8e-3 best for both widths; test
          loss bottoms out at step 256-724 (P=64), 512-2048 (P=256), 11585 (P=1024). Thresholds (3 P,
          one seed) at W=64, lr 8e-3: P*_2 = 177, P*_3 = 587 (theory 216, 648). Choice for the
          hour-long reproduction: W=64, lr 8e-3, T=50, 2**16 steps (docs/results/pilot_cpu/README.md).
"""
from __future__ import annotations

import os

import ml_collections

from rhm_jax import config as config_lib
from rhm_jax import plan
from sweeps import plumbing_check

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hierarchy_in_p.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """v=8, m=3, L=3 at P = 64, 256, 1024, lr 2e-3 .. 8e-3, T=50, 2**14 steps; width from the sweep."""
    if arg not in (None, "", "quick"):
        raise ValueError(f"sweeps/pilot_cpu.py takes no argument or 'quick', got {arg!r}")
    config = config_lib.load(_BASE + ":quick")  # its v=8, L=3 grammar, T=50 process, batch 64
    config.data.update(dict(num_train=(64, 256, 1024), num_test=256, seed=0))
    config.network.width = 32
    config.train.update(dict(lr=(2e-3, 4e-3, 8e-3), num_steps=2**14, seeds=(0,), steps_per_call=128))
    config.eval.update(dict(num_samples=256, per_octave=2, num_windows=10))
    if arg == "quick":  # the same pipeline in seconds: short chain, a few steps, few samples
        plumbing_check(config, (32, 256))
    return config


def get_sweep(arg: str | None = None) -> list[dict]:
    """Width 32 and 64 with every P and lr; width 128 last, one model (P=1024, lr 4e-3) for its speed."""
    if arg not in (None, "", "quick"):
        raise ValueError(f"sweeps/pilot_cpu.py takes no argument or 'quick', got {arg!r}")
    return plan.sweep("network.width", [32, 64]) + [
        {"network.width": 128, "data.num_train": (1024,), "train.lr": (4e-3,)}]
