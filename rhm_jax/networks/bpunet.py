"""bpUNet, the paper's denoiser (SPEC section 3), as a pure ``Network(init, apply)``.

Shape letters: B batch, D = s**L sequence length, C input channels, W width, V = v output classes.

Why flax.linen and not NNX: linen's ``Module.init(key, ...)`` / ``Module.apply(variables, ...)``
are already pure functions of (key) and (params, inputs), so ``jax.vmap(net.init)(keys_M)`` and
``jax.vmap(net.apply)(params_M, x_MxBxD, t_MxB)`` work with no split/merge step, and the traced
program is just the arithmetic (NNX would rebuild a module graph inside every trace). The linen
API has been stable across the flax versions this project supports (0.12.8 to 0.12.12).

Parameterization follows the authors' PyTorch code exactly: every kernel is stored as N(0, 1) and
the layer's output is divided by ``sqrt(fan_in)`` (the readout by ``fan_in``) in the forward pass,
with ``fan_in = kernel_size * in_channels`` (also for the transposed convolutions, as theirs).
This is not the same as storing pre-scaled weights: Adam moves every stored parameter by about
``lr`` per step, so the effective weights move by ``lr / sqrt(fan_in)``; pre-scaling would make
training about ``sqrt(fan_in)`` (~45 at W = 1024) times faster than the paper and shift every
learning time it reports. LayerNorms carry scale (init 1) and offset (init 0), epsilon 1e-5,
biased variance; GELU is the exact erf form (PyTorch ``nn.GELU()`` default).

Input (the only time conditioning):
- uniform process: the BP leaf message ``alphabar_t * onehot(x_t) + (1 - alphabar_t) / v``,
  standardized by ``mean = avg_t(a_t + (1 - a_t)/v)`` and
  ``std = sqrt(avg_t(a_t + (1 - a_t)/v**2) - mean**2)`` over the T+1 points of the schedule.
  ``authors_schedule=True`` reproduces the authors' quirk: alphabar (and the standardization
  constants) come from their network default, beta 1e-4..0.02 over 1000 steps, indexed at
  ``floor(t * 1000)`` in float32, not from the process.
- masked process: one-hot over v + 1 channels (token v = mask), no message and no time input
  (MD4's denoiser needs none: the mask pattern carries the noise level); standardized by the
  constants of a uniform one-hot, ``(x - 1/(v+1)) / sqrt(1/(v+1) * (1 - 1/(v+1)))``, so that the
  embedding's pre-activations start at unit variance as in the uniform case.

Layout is channels-last (B, D, C): a kernel-s stride-s convolution is a reshape to
(B, D/s, s*C) and one matmul, the transposed one a matmul to (B, n, s*W) and a reshape. Skips
follow the authors: the first up block concatenates the bottleneck with itself, the next ones the
down-path activation of matching length, the readout the embedding; the upsampled signal comes
first in each concatenation.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LN_EPS = 1e-5
AUTHORS_BETAS = (1e-4, 0.02)
AUTHORS_T = 1000


def authors_alphabar() -> np.ndarray:
    """alphabar_t, t = 0..1000, of the authors' network default (beta 1e-4..0.02), float32 as theirs."""
    beta1, beta2 = (np.float32(b) for b in AUTHORS_BETAS)
    beta_T1 = (beta2 - beta1) * np.arange(AUTHORS_T + 1, dtype=np.float32) / np.float32(AUTHORS_T) + beta1
    return np.exp(np.cumsum(np.log(np.float32(1) - beta_T1), dtype=np.float32)).astype(np.float32)


def authors_alphabar_at(t_B: jax.Array) -> jax.Array:
    """The authors' alphabar looked up at floor(t * 1000), computed in float32 like their code."""
    index_B = jnp.floor(t_B.astype(jnp.float32) * np.float32(AUTHORS_T)).astype(jnp.int32)
    return jnp.asarray(authors_alphabar())[jnp.clip(index_B, 0, AUTHORS_T)]


def message_stats(alphabar_T1: np.ndarray, v: int) -> tuple[float, float]:
    """(mean, std) standardizing the leaf message over the schedule points, SPEC section 3."""
    a_T1 = np.asarray(alphabar_T1, np.float64)
    mean = float(np.mean(a_T1 + (1.0 - a_T1) / v))
    second = float(np.mean(a_T1 + (1.0 - a_T1) / v**2))
    return mean, float(np.sqrt(second - mean**2))


def leaf_message(x_t_BxD: jax.Array, alphabar_B: jax.Array, v: int) -> jax.Array:
    """BP leaf message alphabar * onehot(x_t) + (1 - alphabar)/v, shape BxDxV."""
    a_Bx1x1 = alphabar_B.astype(jnp.float32)[:, None, None]
    return a_Bx1x1 * jax.nn.one_hot(x_t_BxD, v, dtype=jnp.float32) + (1.0 - a_Bx1x1) / v


def make_features(
    process_name: str, v: int, alphabar_fn: Callable[[jax.Array], jax.Array] | None, mean: float, std: float
) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Build (x_t_BxD, t_B) -> standardized input features BxDxC for bpUNet."""
    if process_name == "uniform":

        def features(x_t_BxD: jax.Array, t_B: jax.Array) -> jax.Array:
            return (leaf_message(x_t_BxD, alphabar_fn(t_B), v) - mean) / std

    else:
        p = 1.0 / (v + 1)
        p_std = float(np.sqrt(p * (1.0 - p)))

        def features(x_t_BxD: jax.Array, t_B: jax.Array) -> jax.Array:
            del t_B  # masked bpUNet is not conditioned on time
            return (jax.nn.one_hot(x_t_BxD, v + 1, dtype=jnp.float32) - p) / p_std

    return features


class ScaledDense(nn.Module):
    """Bias-free matmul with an N(0, 1) kernel, output divided by `divisor` (authors' MyConv1d)."""

    features: int
    divisor: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_BxNxK: jax.Array) -> jax.Array:
        kernel_KxF = self.param("kernel", nn.initializers.normal(1.0), (x_BxNxK.shape[-1], self.features), jnp.float32)
        y_BxNxF = jnp.dot(x_BxNxK.astype(self.dtype), kernel_KxF.astype(self.dtype), preferred_element_type=jnp.float32)
        return y_BxNxF / self.divisor


def norm_gelu(x_BxNxW: jax.Array, name: str) -> jax.Array:
    """Channel LayerNorm (scale and offset, eps 1e-5) then exact GELU, in float32."""
    y_BxNxW = nn.LayerNorm(epsilon=LN_EPS, dtype=jnp.float32, param_dtype=jnp.float32, name=name)(x_BxNxW)
    return jax.nn.gelu(y_BxNxW, approximate=False)


class BPUNet(nn.Module):
    """bpUNet on standardized features BxDxC (D = s**L) -> logits BxDxV."""

    v: int
    s: int
    L: int
    width: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, feats_BxDxC: jax.Array) -> jax.Array:
        s, W = self.s, self.width
        B, D, C = feats_BxDxC.shape
        h_BxNxW = jax.nn.gelu(ScaledDense(W, np.sqrt(C), self.dtype, name="embed")(feats_BxDxC), approximate=False)
        skips = [h_BxNxW]  # N: the current length, d / s**level
        for i in range(self.L):
            n = h_BxNxW.shape[1] // s
            patches_BxnxsW = h_BxNxW.reshape(B, n, s * W)  # position j*s+k -> row j, columns k*W..k*W+W
            down_BxnxW = ScaledDense(W, np.sqrt(s * W), self.dtype, name=f"down_{i}")(patches_BxnxsW)
            h_BxNxW = norm_gelu(down_BxnxW, f"down_{i}_norm")
            self.sow("intermediates", "down", h_BxNxW)
            skips.append(h_BxNxW)
        for i in range(self.L):
            n = h_BxNxW.shape[1]
            cat_Bxnx2W = jnp.concatenate([h_BxNxW, skips.pop()], axis=-1)
            up_BxnxsW = ScaledDense(s * W, np.sqrt(s * 2 * W), self.dtype, name=f"up_{i}")(cat_Bxnx2W)
            h_BxNxW = norm_gelu(up_BxnxsW.reshape(B, n * s, W), f"up_{i}_norm")
            self.sow("intermediates", "up", h_BxNxW)
        cat_BxDx2W = jnp.concatenate([h_BxNxW, skips.pop()], axis=-1)  # N = D again
        return ScaledDense(self.v, 2.0 * W, self.dtype, name="readout")(cat_BxDx2W)


def init_std(name: str, shape: tuple[int, ...]) -> float | None:
    """Init of a parameter by name: kernels N(0, 1) (scaled in the forward), LayerNorm constants."""
    del shape
    return 1.0 if name.endswith("kernel") else None


def param_count(v_in: int, v: int, s: int, L: int, width: int) -> int:
    """Closed-form parameter count: embedding, L down and L up blocks (kernel + LN), readout."""
    W = width
    return v_in * W + L * (s * W * W + 2 * W) + L * (2 * W * s * W + 2 * W) + 2 * W * v
