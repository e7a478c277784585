"""CPU-sized reproduction of the P sweep: the paper's process and optimizer, a 4x narrower bpUNet.

Launch:   bash launch/reproduce.sh                 # all of it, resumable; RUNS=runs/repro_cpu SEEDS="0 1 2"
          which runs, for each grammar seed K in 0 1 2 (one work directory per grammar):
            python -m launch.local --config sweeps/reproduction_cpu.py:seed=K --workdir runs/repro_cpu/seedK
            python -m launch.cluster --workdir runs/repro_cpu/seedK      # the clustering learner, overlaid
          then  python -m launch.report --workdir runs/repro_cpu/seed0 runs/repro_cpu/seed1
                    runs/repro_cpu/seed2 --at best --out runs/repro_cpu/report
Quick:    python -m launch.local --config sweeps/reproduction_cpu.py:seed=0,quick --workdir DIR (seconds;
          for tests of the pipeline, not a measurement)
Grid:     v=n=8, m=3, s=2, L=3 (d=8, P_max = 17496) as in the paper's figures; P = 32 .. 2048 (7
          values, one per octave: two below v m**2 = 72, two above v m**4 = 648); per grammar seed K
          one model seed (K); bpUNet W=256 (about 1/16 of the W=1024 parameters), the paper's
          process (uniform, T=200, beta 1e-3 .. 0.1 linear), Adam 5e-4, batch 64, 8192 steps;
          evaluations at 0, 1, 2, 4, ..., 8192 (15) with 128 samples of 200 ancestral steps each.
Choice:   lr and budget. Adam moves weights by ~lr per step, so "lr x steps" is the comparable
          clock: the paper (W=1024, lr 1e-4, P=1024) learns level 1 near 300 epochs = 4,800 steps
          (lr x steps ~ 0.5) and level 2 near 500 epochs = 8,000 steps (~0.8); the quick sweep
          (W=64, lr 2e-3) near steps 300 (~0.6) and 1,500 (~3). Both sit on lr ~ 0.1 / W (1.6e-3 at
          W=64, 1e-4 at W=1024), which gives 4e-4 at W=256; 5e-4 is a little above it and keeps
          Adam's effective lr below the quick run's, where W=64 was stable at 2e-3. At 5e-4, level 1
          is expected near step 1,000-1,200 and level 2 near 1,600-6,000: inside 8,192 steps, with
          room for --at best to find each model's early-stopping point. Level 3 (paper: ~2,000
          epochs at 1e-4, lr x steps ~ 3) may not be reached within the budget.
Run time: ESTIMATE from a short measurement (2-core CPU, `nice -n 10`, load average 5.9-9.3 from
          other sessions; the W=256, 9-model, P = 16 .. 4096 grid of an earlier draft of this file):
          training 36 model-steps/s (384 steps of the 9 models in 97 s after a 74 s compilation);
          one evaluation of 9 models x 512 samples x T=200 took 226 s, i.e. ~4,100 sample-steps/s
          (sampling is the bulk of an evaluation; the losses use 2 x 1024 rows x 10 windows). The
          process got 343 s of CPU time in 612 s of wall time (0.56 cores); the quick sweep used
          1.2 cores of the idle machine, so idle is taken as 2.1x faster (an assumption, not a
          measurement). Per grammar seed: 7 x 8192 = 57k model-steps (idle ~13 min, at the measured
          load ~27 min) and 7 x 15 x 128 x 200 = 2.7M sample-steps (idle ~5 min, loaded ~11 min), plus
          ~2-4 min of compilation. All three seeds: about 1 h on an idle 2-core CPU (training ~65 %,
          sampling ~25 %, compilation ~10 %); about 2 h at the load it was measured under. The
          clustering learner and the report take a minute or two.
Expected: UNMEASURED (this grid has not been run). Theory (SPEC sections 5 and 7): P*_l ~ v m**(l+1)
          = 72, 216, 648 for levels 1, 2, 3, with ratio P*_2 / P*_1 ~ m = 3; normalized thresholds
          read --at best. The quick sweep (W=64, T=50) measured P*_1 = 53-91 and P*_2 = 255-411
          over four grammar seeds; this run should land within a factor 2 of 72 and 216, and level
          3 is likely censored 'above' (not learned within 8192 steps).
"""
from __future__ import annotations

import os

import ml_collections

from rhm_jax import config as config_lib

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hierarchy_in_p.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """v=n=8, m=3, L=3, P = 32 .. 2048, W=256, T=200; 'seed=K' picks grammar K, 'quick' shrinks it."""
    seed, quick = _parse(arg)
    config = config_lib.load(_BASE)  # its process (the paper's T=200 and betas), Adam, batch 64
    config.grammar.update(dict(v=8, n=8, m=3, s=2, L=3, seed=seed))
    config.data.update(dict(num_train=tuple(32 * 2**k for k in range(7)), num_test=1024, seed=seed))
    config.network.width = 256
    config.train.update(dict(lr=(5e-4,), num_steps=8192, seeds=(seed,), steps_per_call=128))
    config.eval.update(dict(num_samples=128, per_octave=1))
    config.run.seed = seed  # every seed as the quick sweep's grammar seeds 1-3 (README, Results)
    if quick:  # the same pipeline in seconds: tiny network, short chain, a few steps
        config.data.update(dict(num_train=(32, 256), num_test=64))
        config.process.T = 20
        config.network.width = 32
        config.train.update(dict(num_steps=8, steps_per_call=8))
        config.eval.update(dict(num_samples=16, loss_rows=64))
    return config


def _parse(arg: str | None) -> tuple[int, bool]:
    """'', 'quick', 'seed=K' or 'seed=K,quick' -> (grammar seed K, quick)."""
    seed, quick = 0, False
    for part in filter(None, (arg or "").split(",")):
        key, _, value = part.partition("=")
        if part == "quick":
            quick = True
        elif key == "seed" and value.isdigit():
            seed = int(value)
        else:
            raise ValueError(f"sweeps/reproduction_cpu.py takes 'seed=K' (K >= 0) and/or 'quick', got {arg!r}")
    return seed, quick
