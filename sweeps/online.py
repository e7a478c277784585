"""The online regime: a fresh batch from the grammar at every step, and the coherence length in time.

Launch:   python -m launch.local --config sweeps/online.py --workdir runs/online          # GPU, paper scale
          python -m launch.local --config sweeps/online.py:cpu --workdir runs/online_cpu  # the CPU variant
          python -m launch.report --workdir runs/online_cpu --time_axis step
Quick:    python -m launch.local --config sweeps/online.py:quick --workdir DIR (seconds; plumbing only)
Grid:     online models (data.num_train = 0: each step's batch drawn from the model's own grammar,
          keyed by (data seed, step)) beside finite-P models of the same grammar, in one program per
          grammar shape; three realizations (grammar seed = data seed = model seed = 0, 1, 2).
          GPU (default): v=n=8, s=2 and (m=3, L=4: d=16, P_max = 8 * 3**15 ~ 1.1e8) and (m=2, L=5: d=32,
          P_max = 8 * 2**31 ~ 1.7e10; at L=4 m=2 has only 262,144 sequences, fewer than the 1.7e7 an
          online model sees); P = online, 1024, 4096, 16384; bpUNet W=1024, the paper's process
          (T=200) and Adam 1e-4, batch 64, 2**18 steps (1.7e7 samples seen: 15 % of P_max at m=3),
          4 evaluations per octave of 1024 samples. 24 models in two programs.
          CPU (':cpu'): m=3, L=4 (P_max ~ 1.1e8 against 64 x 16384 = 1.0e6 samples seen: 0.9 %) with
          P = online, 256, 2048 and 16384 steps; m=2, L=5 (P_max ~ 1.7e10) with P = online, 256 and
          8192 steps (twice the cost per step); bpUNet W=64, T=50 (beta2 0.2) and Adam 2e-3 as the
          quick time sweep (`sweeps/hierarchy_in_time.py:quick`), batch 64, 2 evaluations per octave of
          256 samples. 15 models in two programs.
Run time: GPU: ESTIMATE, not measured: 24 models x 2**18 steps at W=1024 is 6.3e6 model-steps; at
          the ~2,500-4,000 model-steps/s of a few W=1024 models on an H100 (SPEC section 6) 30-45 min
          of training (the m=2, L=5 program costs about twice per step), plus ~72 evaluations of 24 x
          1024 samples x 200 steps (~1 s each per model; 69 per model): ~30 min. About 1-1.5 h in all.
          CPU: ESTIMATE from short runs of each program (2026-12-07, commit of this file, 2-core CPU at
          load average 5-8 from other jobs, `nice -n 19`: the process got ~0.5 cores): m=3 program
          (9 models) 204 model-steps per CPU second, one evaluation 4.1 CPU s, compilation ~35 CPU s;
          m=2, L=5 program (6 models) 104 model-steps per CPU second, one evaluation 5.5 CPU s,
          compilation ~45 CPU s. Totals: 147,456 model-steps (720 CPU s) + 29 evaluations (120 s) and
          49,152 model-steps (475 s) + 27 evaluations (150 s), plus compilation: about 1,550 CPU s,
          i.e. 26 CPU minutes; on the idle machine (1.2-2 cores used) about 13-22 min wall, at the
          load measured about 50 min. Quick: seconds of training, ~1 min with compilation.
Expected: (theory, SPEC sections 5 and 7) level l is learned once the samples seen reach
          P*_l ~ c v m^(l+1) (c ~ 1 at the CPU budgets), so t_(l+1) / t_l ~ m and xi ~ t^(log s / log m)
          = t^0.63 at m=3 (t^1 at m=2); a finite-P model follows the online curve until it starts to
          memorize, then its test loss rises above it (its departure), near its copy onset.
Measured: ':cpu', 2026-12-07 (docs/results/online_cpu/, README Results): 32.5 min wall at load average 3-5
          (the test suite ran beside it). m=3, L=4: t_l = 545, 1420, 7980 steps (levels 1-3; level 4
          not reached), ratios 2.6 and 5.6; exponent from t_l 0.52 [0.47, 0.58] against 0.63. m=2, L=5:
          t_l = 488, 1020, 2080, 4760, ratios 2.1, 2.0, 2.3; exponent 0.92 [0.91, 0.93] against 1. The
          samples seen at t_l are 400-1200 times v m^(l+1): at lr 2e-3 the steps, not the samples, set
          the pace. P=256 models leave the online curve at 4096-5793 steps; P=2048 never within 16384.
"""
from __future__ import annotations

import ml_collections

from rhm_jax import config as config_lib
from rhm_jax import plan
from sweeps import plumbing_check

ARGS = (None, "", "cpu", "quick")


def _check(arg: str | None) -> None:
    if arg not in ARGS:
        raise ValueError(f"sweeps/online.py takes no argument (GPU), 'cpu' or 'quick', got {arg!r}")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """GPU scale by default; 'cpu' the 2-core variant; 'quick' that variant shrunk to seconds."""
    _check(arg)
    config = config_lib.base_config()
    config.grammar.update(dict(v=8, n=8, m=3, s=2, L=4, seed=0))
    config.data.update(dict(num_train=(0, 1024, 4096, 16384), num_test=1024, seed=0))
    config.network.update(dict(name="bpunet", width=1024))
    config.train.update(dict(batch_size=64, lr=(1e-4,), num_steps=2**18, num_epochs=0.0, seeds=(0,),
                             steps_per_call=256))
    config.eval.update(dict(num_samples=1024, per_octave=4))
    if arg in ("cpu", "quick"):
        config.data.update(dict(num_train=(0, 256, 2048), num_test=512))
        config.process.update(dict(T=50, beta2=0.2))
        config.network.width = 64
        config.train.update(dict(lr=(2e-3,), num_steps=16384, steps_per_call=128))
        config.eval.update(dict(num_samples=256, per_octave=2, loss_rows=256))
    if arg == "quick":
        plumbing_check(config, (0, 64))
    return config


def get_sweep(arg: str | None = None) -> list[dict]:
    """Three realizations (grammar, data and model seed together) of m=3 at L=4 and of m=2 at L=5."""
    _check(arg)
    seeds = [0, 1] if arg == "quick" else [0, 1, 2]
    realizations = plan.zipped(*(plan.sweep(key, seeds) for key in ("grammar.seed", "data.seed", "train.seeds")))
    if arg == "quick":
        return realizations
    shapes = [plan.sweep("grammar.m", [3, 2]), plan.sweep("grammar.L", [4, 5])]
    if arg == "cpu":  # m=2 costs twice per step (d=32): fewer models and steps
        shapes += [plan.sweep("data.num_train", [(0, 256, 2048), (0, 256)]),
                   plan.sweep("train.num_steps", [16384, 8192])]
    return plan.product(plan.zipped(*shapes), realizations)
