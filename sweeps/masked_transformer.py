"""Hierarchical learning in P with masked (MD4) diffusion and a transformer denoiser.

Launch:   python -m launch.local --config sweeps/masked_transformer.py --workdir runs/masked_transformer
          python -m launch.report --workdir runs/masked_transformer runs/hierarchy_in_p --at best
Quick:    python -m launch.local --config sweeps/masked_transformer.py:quick --workdir runs/masked_transformer_quick
Grid:     the grammar and P grid of hierarchy_in_p (v=n=16, m=4, s=2, L=4; P = 64 .. 65536, 11
          values; 3 seeds), masked process (linear schedule; evaluations sample with the exact
          sampler, one position revealed per step: 16 network calls per sample), bidirectional
          transformer width 512, depth 6, 8 heads, MLP ratio 4 (~19M parameters, our choice: about
          the bpUNet's size), batch 64, Adam 1e-4, 2**18 steps.
Run time: ESTIMATE, not yet measured: memory-bound like the bpUNet (~40 bytes per parameter per
          model-step): ~2,500 model-steps/s on an H100 at 19M parameters, 33 x 2**18 model-steps in
          about 1 h, plus a few minutes of evaluations (16 network calls per sample).
          Quick: measured 1.5 min wall on a 2-core CPU shared with other jobs (load average 6-8,
          2026-12-07, 1 evaluation per octave; 2 since issue 19); at its best evaluation validity
          rises with P to level 1 0.98, level 2 0.62, level 3 0.23 at P=2048 (a plumbing check,
          too short for thresholds). The same checkpoints sampled with the 16 steps this file had
          before (issue 19: they cap even the exact denoiser at full validity 0.80) read
          0.93 / 0.57 / 0.20.
Expected: the same questions as hierarchy_in_p: validity thresholds ordered by level with ratios
          ~ m and P*_l ~ c v m**(l+1); whether c differs from the bpUNet's is what this run measures
          (no reference number: the paper's masked-diffusion runs are on text).
"""
from __future__ import annotations

import os

import ml_collections

from rhm_jax import config as config_lib

_BASE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hierarchy_in_p.py")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Masked diffusion + transformer over the hierarchy_in_p grid; 'quick' is a CPU-sized version."""
    if arg not in (None, "", "quick"):
        raise ValueError(f"sweeps/masked_transformer.py takes no argument or 'quick', got {arg!r}")
    config = config_lib.load(_BASE)  # grammar, P grid, seeds, training and evaluation as there
    # sampler_steps None: the exact sampler (one position per step). MD4's step-count sampler capped
    # the exact denoiser's full validity at 0.90 with the 100 steps this file had (issue 19).
    config.process.update(dict(name="masked", schedule="linear", sampler_steps=None))
    config.network.update(dict(name="transformer", width=512, depth=6, heads=8, mlp_ratio=4.0))
    if arg == "quick":
        _quick(config)
    return config


def _quick(config: ml_collections.ConfigDict) -> None:
    """v=8, m=3, L=3 grid of 4 P values, a 2-layer width-32 transformer, 1500 steps: CPU minutes."""
    config.grammar.update(dict(v=8, n=8, m=3, s=2, L=3, seed=0))
    config.data.update(dict(num_train=(32, 128, 512, 2048), num_test=256, seed=0))
    config.network.update(dict(width=32, depth=2, heads=4, mlp_ratio=2.0))
    config.train.update(dict(lr=(1e-3,), num_steps=1500, seeds=(0,), steps_per_call=100))
    config.eval.update(dict(num_samples=256, per_octave=2))  # a P sweep: >= 2 evaluations per octave
