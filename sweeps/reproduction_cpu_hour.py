"""Issue 20's hour-long CPU reproduction of the P sweep: m = 3 and 2, three realizations, one sweep.

Launch:   bash launch/reproduce.sh   (the sweep, the learner and the report; resumable), or by hand:
          python -m launch.local --config sweeps/reproduction_cpu_hour.py --workdir runs/repro_cpu_hour
          python -m launch.report --workdir runs/repro_cpu_hour --at best
Quick:    python -m launch.local --config sweeps/reproduction_cpu_hour.py:quick --workdir DIR (the same
          two programs, tiny: for tests of the pipeline only)
Sweep:    get_sweep: m zipped with its P grid (one program per m), times realizations K = 0, 1, 2
          (grammar, data and model seed K together), as hierarchy_in_p.py.
Grid:     v=n=8, s=2, L=3; m=3: P = 16 .. 2048 (8 values, P_max 17496; theory 72, 216, 648);
          m=2: P = 8 .. 512 (7 values, P_max 1024; theory 32, 64, 128); 45 models. bpUNet W=64, Adam
          lr 8e-3, batch 64, T=50 (beta 1e-3 .. 0.2), 2**16 steps, 2 evaluations per octave of 256
          samples. Chosen by the pilot (sweeps/pilot_cpu.py, docs/results/pilot_cpu/README.md).
Run time: measured 2026-12-07 21:27-22:38 UTC (`bash launch/reproduce.sh`, the whole command, main
          682ffc5, nothing else computing: 1-minute load average 1.1-2.2, i.e. the run's own two
          threads): 1 h 10 min 49 s (4,249 s). m=3 program (24 models) 35 min 43 s, m=2 program (21
          models) 34 min 31 s, the clustering learner 10 s, the report 22 s. The runner's first
          ETA after compilation said 1:12:15 left, the truth was 1:09:18. (A first run beside four
          helpers' tests, load 5-9, took 1 h 41 min.) Again 2026-12-08, one after the other alone
          (main 8cf8326, load 1.6-2.0): 1 h 2 min 52 s (3,772 s; the same rows bit for bit) with one
          host device, 55 min 15 s (3,315 s, 0.88 of it) with RHM_CPU_DEVICES=cores (a device per
          core; rows then move by rounding, docs/results/cpu_speed/README.md).
Measured: P*_l (best evaluation, normalized, isotonic, 95 % bootstrap interval) m=3: 43 [32, 64],
          252 [171, 334], 694 [582, 833]; m=2: 24 [16, 33], 64 [39, 69], 128 [92, 165]; no bound;
          c = 0.91, log10 spread 0.11; ratios 5.8, 2.8 (m=3) and 2.7, 2.0 (m=2). At m=3, P=1024:
          levels learned at steps 185, 617, 4282, copies pass 0.1 at 17,297, test-loss minimum
          11,585 (medians of 3). docs/results/reproduction_cpu/ and the README's Results.
Expected: (before the run, from the pilot: m=3, one seed, 2**14 steps) P*_2 ~ 177, P*_3 ~ 587 (theory
          216, 648); P=1024 bottoms out near step 11,585 (measured: 11,585), P=2048 inside 2**16.
"""
from __future__ import annotations

import os

import ml_collections

from rhm_jax import config as config_lib
from rhm_jax import plan
from sweeps import plumbing_check

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hierarchy_in_p.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """m=3 program of the sweep (P = 16 .. 2048), W=64, lr 8e-3, T=50, 2**16 steps; 'quick' shrinks it."""
    if arg not in (None, "", "quick"):
        raise ValueError(f"sweeps/reproduction_cpu_hour.py takes no argument or 'quick', got {arg!r}")
    config = config_lib.load(_BASE + ":quick")  # its v=8, L=3 grammar, T=50 process, batch 64
    config.data.update(dict(num_train=tuple(16 * 2**k for k in range(8)), num_test=256, seed=0))
    config.network.width = 64
    config.train.update(dict(lr=(8e-3,), num_steps=2**16, seeds=(0,), steps_per_call=128))
    config.eval.update(dict(num_samples=256, per_octave=2, num_windows=10))
    if arg == "quick":  # the same pipeline in seconds
        plumbing_check(config, (16, 64))
    return config


def get_sweep(arg: str | None = None) -> list[dict]:
    """m zipped with its P grid, times realizations K: grammar, data and model seed K."""
    if arg not in (None, "", "quick"):
        raise ValueError(f"sweeps/reproduction_cpu_hour.py takes no argument or 'quick', got {arg!r}")
    grids = ((16, 64), (8, 32)) if arg == "quick" else (tuple(16 * 2**k for k in range(8)),
                                                         tuple(8 * 2**k for k in range(7)))
    sizes = plan.zipped(plan.sweep("grammar.m", [3, 2]), plan.sweep("data.num_train", list(grids)))
    realizations = plan.zipped(*(plan.sweep(key, [0, 1, 2]) for key in ("grammar.seed", "data.seed", "train.seeds")))
    return plan.product(sizes, realizations)
