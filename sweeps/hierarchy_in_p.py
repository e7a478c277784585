"""Hierarchical learning in P, over m = 3 and 4: validity per level vs training-set size, one sweep.

Launch:   python -m launch.local --config sweeps/hierarchy_in_p.py --workdir runs/hierarchy_in_p
          python -m launch.report --workdir runs/hierarchy_in_p --at best
Quick:    python -m launch.local --config sweeps/hierarchy_in_p.py:quick --workdir runs/hierarchy_in_p_quick
Sweep:    get_sweep: m zipped with its P grid, times three realizations K = 0, 1, 2 (grammar seed,
          data seed and model seed K together); one work directory, one table, two programs (m
          changes the rule tables' shapes; the grammars, datasets and P of one m train side by side).
Grid:     v=n=16, s=2, L=4 (d=16), bpUNet W=1024 (25.2M parameters each), batch 64, Adam 1e-4,
          2**18 steps each. m=4: P_max = 16 * 4**15 ~ 1.7e10, P = 64 .. 65536 (11 values, one per
          octave, from about v m**2 / 4 to 4 v m**(L+1)); m=3: P_max = 16 * 3**15 ~ 2.3e8, P = 32 ..
          16384 (10 values). 3 realizations each: 33 + 30 = 63 models. (get_config alone is the m=4
          program with model seeds 0, 1, 2 of grammar 0; reproduction_cpu_hour.py reads its ':quick'.)
Run time: ESTIMATE, not yet measured: the sum of the two former runs. Training is memory bound at
          about 40 bytes per parameter per model-step, so an H100 (3.0 TB/s) allows ~3,000
          model-steps/s at 25.2M parameters; at the ~80 % of roofline a plain-JAX prototype reached,
          ~2,400/s: m=4, 33 x 2**18 model-steps in about 1 h, and m=3, 30 x 2**18 in about 55 min,
          plus ~2 min of evaluations each: about 2 h in all. The authors' code (one model per
          process, 127 steps/s) would need about 36 GPU-hours for the same 63 models.
          Quick (two programs: m=3, 8 models, and m=2, 7 models, x 4096 steps) on the idle 2-core
          CPU, as one sweep from a fresh clone (main b6a9da7, 2026-12-07, 2 evaluations per
          octave): 2 min 50 s of training and evaluation, 3 min 58 s with the install and the
          report (main b268bac, 1 evaluation per octave: 2 min 22 s and 3 min 15 s).
Expected: final validity rises with P level by level; thresholds P*_l ~ c v m**(l+1) with ratios
          P*_(l+1) / P*_l ~ m and P*_4 ~ 16384 at m=4 (SPEC section 5), i.e. c ~ 1, far below P_max;
          at m=3, P*_l ~ c * (144, 432, 1296, 3888). The collapse: validity vs P / (v m**(l+1)) of
          both m and all levels on one curve, with one c.
          Quick, m=3 (v=8, L=3; --at best), measured for grammar/data/model seeds 0, 1, 2, 3 as
          separate runs, read above chance (normalized validity (V_l - V_l^unif) / (1 - V_l^unif) =
          1/2, the report's default): P*_1 = 70, 53, 91, 64 and P*_2 = 255, 275, 346, 411 (theory v
          m**(l+1): 72, 216); level 3 is not reached (normalized validity <= 0.3). Raw validity = 1/2
          (biased low at level 1, where chance is 0.375): P*_1 = 17, 17, 22, 15. Quick, m=2 (seed 0):
          P*_1 = 20, P*_2 = 97 (theory 32, 64); both m together: c = 0.67 with a log10 spread of
          0.34 (measured with the two work directories of the former separate runs).
Measure:  read thresholds with `--at best` (each model at its lowest test loss, i.e. early
          stopping). With one step budget for the whole grid the small-P models end up copying
          their training set, and copies are valid at every level: at their last evaluation they
          would look as if they had learned the rules.
"""
from __future__ import annotations

import ml_collections

from rhm_jax import config as config_lib
from rhm_jax import plan


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The paper's P sweep; 'quick' is a v=8, m=3, L=3 grid small enough for a CPU in minutes."""
    if arg not in (None, "", "quick"):
        raise ValueError(f"sweeps/hierarchy_in_p.py takes no argument or 'quick', got {arg!r}")
    config = config_lib.base_config()
    config.grammar.update(dict(v=16, n=16, m=4, s=2, L=4, seed=0))
    config.data.update(dict(num_train=tuple(64 * 2**k for k in range(11)), num_test=1024, seed=0))
    config.network.update(dict(name="bpunet", width=1024))
    config.train.update(dict(batch_size=64, lr=(1e-4,), num_steps=2**18, num_epochs=0.0, seeds=(0, 1, 2)))
    config.eval.update(dict(num_samples=1024, per_octave=2, num_windows=10))
    if arg == "quick":
        _quick(config)
    return config


def get_sweep(arg: str | None = None) -> list[dict]:
    """m zipped with its P grid (one program per m), times realizations K: grammar, data and model seed K."""
    if arg not in (None, "", "quick"):
        raise ValueError(f"sweeps/hierarchy_in_p.py takes no argument or 'quick', got {arg!r}")
    if arg == "quick":  # v=8, L=3: m=3 as get_config('quick'), and m=2 (P_max = 1024: thresholds ~ 32, 64)
        return plan.zipped(plan.sweep("grammar.m", [3, 2]),
                           plan.sweep("data.num_train", [tuple(8 * 2**k for k in range(8)),
                                                         tuple(8 * 2**k for k in range(7))]))
    sizes = plan.zipped(plan.sweep("grammar.m", [4, 3]),
                        plan.sweep("data.num_train", [tuple(64 * 2**k for k in range(11)),
                                                      tuple(32 * 2**k for k in range(10))]))
    realizations = plan.zipped(*(plan.sweep(key, [0, 1, 2]) for key in ("grammar.seed", "data.seed", "train.seeds")))
    return plan.product(sizes, realizations)


def _quick(config: ml_collections.ConfigDict) -> None:
    """v=8, m=3, L=3: P*_1 ~ 72 and P*_2 ~ 216 are apart by m = 3 and both inside the grid.

    T=50 with beta2=0.2 keeps x_T almost uniform (alphabar_T ~ 0.007) at a quarter of the sampling
    cost; lr 2e-3 and width 64 learn levels 1 and 2 at large P within the step budget.
    """
    config.grammar.update(dict(v=8, n=8, m=3, s=2, L=3, seed=0))
    config.data.update(dict(num_train=(8, 16, 32, 64, 128, 256, 512, 1024), num_test=256, seed=0))
    config.process.update(dict(T=50, beta2=0.2))
    config.network.width = 64
    config.train.update(dict(batch_size=64, lr=(2e-3,), num_steps=4096, seeds=(0,), steps_per_call=128))
    config.eval.update(dict(num_samples=256, per_octave=2, num_windows=10))  # thresholds need >= 2 per octave
