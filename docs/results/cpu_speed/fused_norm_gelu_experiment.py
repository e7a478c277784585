"""Issue 25 experiment: how much of the W=64 step does a hand-written LayerNorm+GELU backward win?

    XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python docs/results/cpu_speed/fused_norm_gelu_experiment.py [SECONDS]   # from the repository root

The per-op profile (step_profile_w64.txt) put LayerNorm's statistics, GELU and their backward at
8.2 ms of the 17 ms of core time of a W=64 step of 8 models, against the dots' 6.9 ms. JAX
differentiates ``bpunet.norm_gelu`` (flax LayerNorm, then exact GELU) op by op; this script
replaces it, for the length of one process and without touching the library, by one
``jax.custom_vjp`` whose backward is the closed form (the GELU derivative, then LayerNorm's
``r * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))`` and the scale and offset sums), so XLA
sees a few wide passes instead of autodiff's chain. Variants, each compiled into its own training
program of ``benchmarks/grid_throughput.py``'s setting (W=64, M=8, batch 64, 10 steps per call),
all timed call by call in turn in one process:
- shipped: the library as it is;
- erf: autodiff as shipped, GELU as ``y * (1 + erf(y / sqrt 2)) / 2`` (PyTorch's CPU form) instead
  of jax's ``y * erfc(-y / sqrt 2) / 2``;
- vjp: the closed-form backward, GELU in jax's erfc form (the forward's formulas as flax's);
- vjp+erf: both.
Split over the process's host devices as the runner splits a grid (``sharding.use_mesh``) when there
are several, else on one. "Of peak" counts the shipped program's FLOPs (XLA's cost analysis) for
every variant, over a 4096^3 fp32 product measured at the start. The loss of each variant after
its first 10 steps (the same initial state) is printed against the shipped one's: the variants
change rounding, not the function. Measured: docs/results/cpu_speed/README.md.
"""
from __future__ import annotations

import functools
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import grid_throughput as gt  # noqa: E402
from rhm_jax.networks import bpunet  # noqa: E402

M, K, WIDTH = 8, 10, 64
SQRT_HALF = float(np.sqrt(0.5))
INV_SQRT_2PI = float(1.0 / np.sqrt(2.0 * np.pi))


def normal_cdf(y: jax.Array, erf_form: bool) -> jax.Array:
    return 0.5 * (1.0 + jax.lax.erf(y * SQRT_HALF)) if erf_form else 0.5 * jax.lax.erfc(-y * SQRT_HALF)


@functools.cache  # one custom_vjp per form, shared by every layer
def closed_form_norm_gelu(erf_form: bool):
    """(x_BxNxW, scale_W, bias_W) -> GELU(LayerNorm(x)), differentiated by hand."""

    def forward(x, scale, bias):
        mean = jnp.mean(x, -1, keepdims=True)
        var = jnp.maximum(0.0, jnp.mean(x * x, -1, keepdims=True) - mean * mean)  # flax's fast variance
        r = jax.lax.rsqrt(var + bpunet.LN_EPS)
        y = (x - mean) * (r * scale) + bias
        return y * normal_cdf(y, erf_form), (x, mean, r, scale, bias)

    def backward(res, g):
        x, mean, r, scale, bias = res
        xhat = (x - mean) * r
        y = xhat * scale + bias
        dy = g * (normal_cdf(y, erf_form) + y * jnp.exp(-0.5 * y * y) * INV_SQRT_2PI)
        rows = tuple(range(dy.ndim - 1))
        dxhat = dy * scale
        dx = r * (dxhat - jnp.mean(dxhat, -1, keepdims=True) - xhat * jnp.mean(dxhat * xhat, -1, keepdims=True))
        return dx, jnp.sum(dy * xhat, rows), jnp.sum(dy, rows)

    fn = jax.custom_vjp(lambda x, scale, bias: forward(x, scale, bias)[0])
    fn.defvjp(forward, backward)
    return fn


class NormGelu(nn.Module):
    """Same parameters as ``nn.LayerNorm`` (scale 1, offset 0), so the trees match the shipped ones."""

    erf_form: bool

    @nn.compact
    def __call__(self, x):
        scale = self.param("scale", nn.initializers.ones, (x.shape[-1],), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],), jnp.float32)
        return closed_form_norm_gelu(self.erf_form)(x, scale, bias)


def autodiff_erf(x, name):
    y = nn.LayerNorm(epsilon=bpunet.LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32, name=name)(x)
    return y * normal_cdf(y, True)


VARIANTS = {
    "shipped": bpunet.norm_gelu,
    "erf": autodiff_erf,
    "vjp": lambda x, name: NormGelu(False, name=name)(x),
    "vjp+erf": lambda x, name: NormGelu(True, name=name)(x),
}


def main(seconds: float) -> None:
    peak = gt.matmul_peak()
    split = jax.local_device_count() > 1
    shipped = bpunet.norm_gelu
    runs = {}
    for name, norm_gelu in VARIANTS.items():
        bpunet.norm_gelu = norm_gelu  # read by BPUNet.__call__ when the program is traced
        try:
            runs[name] = gt.compile_training(gt.make_config(WIDTH, M, K, 1024, "float32"), split=split)
        finally:
            bpunet.norm_gelu = shipped
    first = {name: np.asarray(run["metrics"]["loss"])[:M] for name, run in runs.items()}
    flops = runs["shipped"]["flops_per_step"]
    for run in runs.values():
        run["flops_per_step"] = flops  # the same useful work for every variant
    print(f"W={WIDTH} M={M}, {runs['shipped']['devices']} device(s), fp32 peak {peak / 1e9:.1f} GFLOP/s, "
          f"load {gt.load()}", flush=True)
    rows = gt.time_training(runs, seconds * len(runs), 3)
    for name, row in rows.items():
        diff = np.max(np.abs(first[name] - first["shipped"]) / np.abs(first["shipped"]))
        print(f"{name:>8}: {row['model_steps_per_s']:7.1f} model-steps/s, {row['gflops'] * 1e9 / peak:.2f} of peak,"
              f" x{row['model_steps_per_s'] / rows['shipped']['model_steps_per_s']:.3f} shipped; {row['calls']} calls;"
              f" loss after 10 steps vs shipped: max rel diff {diff:.2e}")
    print(f"load {gt.load()}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0)
