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

Input (the only time conditioning): the standardized features BxDxC that the diffusion process
provides (``process.input_features``; C = ``process.input_vocab``): the BP leaf message for the
uniform process (optionally on the authors' network schedule, ``authors_schedule``), a one-hot
with the mask channel for the masked one. See rhm_jax/diffusion/.

Layout is channels-last (B, D, C): a kernel-s stride-s convolution is a reshape to
(B, D/s, s*C) and one matmul, the transposed one a matmul to (B, n, s*W) and a reshape. Skips
follow the authors: the first up block concatenates the bottleneck with itself, the next ones the
down-path activation of matching length, the readout the embedding; the upsampled signal comes
first in each concatenation.

Backward pass, a setting (``Backward``; ``network.backward`` in the config): JAX's own rule, or
the row-major rule tuned for XLA's CPU backend described next. ``RULES`` names the two.
Row-major rule (issue 12: on XLA's CPU backend one model trained at half the per-model rate of
a vmapped grid, and a grid lost time to one generic dot): the down and up kernels (sW x W and
2W x sW) are differentiated through ``matmul``, whose products transpose activations, never a
kernel; the thin embedding and readout kernels (C x W, 2W x V) through ``thin_matmul``, which
keeps JAX's own input gradient and forms only the kernel gradient as ``matmul`` does. Gradients
are bit-identical to JAX's rule at batch 64 and widths in multiples of 64, except the thin
kernels' own (float32 rounding: XLA sums their rows in another order). Every layer but the
readout puts its output's cotangent behind ``fence``, so the elementwise backward of the next
layer is not evaluated inside a transpose; the readout's cotangent (the loss gradient) is left
as it is, because behind a fence XLA orders the readout's products differently and every
gradient moved in the last bits.
In a bf16 network (``network.dtype='bfloat16'``) the row-major rule casts each product's float32
cotangent to bf16 before its two backward products (``_as_operands``; issue 25), so all three
products of every layer run on the bf16 path. JAX's own rule ('jax', also what 'auto' picks off the
CPU) is left as JAX writes it: in bf16 the two rules give close, not equal, gradients (tested).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

LN_EPS = 1e-5


def plain_matmul(x_BxNxK: jax.Array, kernel_KxF: jax.Array) -> jax.Array:
    """x @ kernel in float32 accumulation, differentiated by JAX's own rule."""
    return jnp.dot(x_BxNxK, kernel_KxF, preferred_element_type=jnp.float32)


@jax.custom_vjp
def matmul(x_BxNxK: jax.Array, kernel_KxF: jax.Array) -> jax.Array:
    """``plain_matmul`` whose backward products XLA's CPU backend needs no large transpose for.

    JAX's rule forms the kernel gradient as ``(dy^T x)^T`` and the input gradient as
    ``dy kernel^T``. In a vmapped grid (M >= 2) XLA folds both transposes into its batched dots,
    but with one model it drops the size-1 batch axis and its unbatched dots take neither: it
    keeps the FxK product and fuses its transpose into every Adam pass as a strided read (15
    reads of 16 MB per step at W = 1024), and it copies each kernel transposed before the input
    gradient. Here the kernel gradient is ``x^T dy`` (KxF directly) and the input gradient is
    ``(kernel dy^T)^T``, which transposes activations instead (8 to 32 times smaller than the
    kernels at W = 1024, batch 64). Every entry is the same sum of the same products: XLA's dot
    kernels add them in the same order at batch 64 and widths in multiples of 64 (bit-identical,
    tested), its kernels for small shapes may not (float32 rounding).
    """
    return plain_matmul(x_BxNxK, kernel_KxF)


def _matmul_fwd(x_BxNxK: jax.Array, kernel_KxF: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return plain_matmul(x_BxNxK, kernel_KxF), (x_BxNxK, kernel_KxF)


def _as_operands(dy_BxNxF: jax.Array, x_BxNxK: jax.Array, kernel_KxF: jax.Array) -> jax.Array:
    """The cotangent in the forward operands' compute dtype, so every backward product runs in it.

    The forward product accumulates in float32, so its cotangent arrives in float32; multiplied as
    it is with bf16 operands, those would be promoted and all backward products of a bf16 network
    would run in float32 (issue 25: 15 of bpUNet's 23 dots, and training gained 1.04-1.09x of the
    1.97x that XLA's bf16 dots give). Cast to bf16 here, the two backward products of each layer
    take bf16 operands and still accumulate in float32. For float32 networks this is no cast at all.
    """
    return dy_BxNxF.astype(jnp.promote_types(x_BxNxK.dtype, kernel_KxF.dtype))


def _kernel_grad(x_BxNxK: jax.Array, dy_BxNxF: jax.Array) -> jax.Array:
    """x^T dy summed over every row (KxF), accumulated in float32 as JAX's rule does.

    ``dy`` should already be in ``x``'s compute dtype (``_as_operands``).
    """
    rows = tuple(range(x_BxNxK.ndim - 1))
    return jax.lax.dot_general(x_BxNxK, dy_BxNxF, ((rows, rows), ((), ())), preferred_element_type=jnp.float32)


def _matmul_bwd(res: tuple[jax.Array, jax.Array], dy_BxNxF: jax.Array) -> tuple[jax.Array, jax.Array]:
    x_BxNxK, kernel_KxF = res
    dy_BxNxF = _as_operands(dy_BxNxF, x_BxNxK, kernel_KxF)
    # accumulate in float32, then cast to each operand's dtype, as JAX's rule does
    dx_KxBxN = jax.lax.dot_general(kernel_KxF, dy_BxNxF, (((1,), (dy_BxNxF.ndim - 1,)), ((), ())),
                                   preferred_element_type=jnp.float32)
    dkernel_KxF = _kernel_grad(x_BxNxK, dy_BxNxF)
    return jnp.moveaxis(dx_KxBxN, 0, -1).astype(x_BxNxK.dtype), dkernel_KxF.astype(kernel_KxF.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


@jax.custom_vjp
def thin_matmul(x_BxNxK: jax.Array, kernel_KxF: jax.Array) -> jax.Array:
    """``plain_matmul`` for a thin kernel (the embedding's C x W, the readout's 2W x V).

    The input gradient is JAX's own ``dy kernel^T`` (a thin kernel's transpose costs nothing, and
    this keeps every gradient that flows back through the readout bit-identical to JAX's rule);
    the kernel gradient is ``x^T dy`` as in ``matmul``: in a vmapped grid JAX's ``(dy^T x)^T`` was
    the one batched dot XLA's CPU backend left to its slow generic kernel (about 7% of a W=256
    model-step at M >= 2). Only the thin kernels' own gradients change, in float32 rounding.
    """
    return plain_matmul(x_BxNxK, kernel_KxF)


def _thin_matmul_bwd(res: tuple[jax.Array, jax.Array], dy_BxNxF: jax.Array) -> tuple[jax.Array, jax.Array]:
    x_BxNxK, kernel_KxF = res
    dy_BxNxF = _as_operands(dy_BxNxF, x_BxNxK, kernel_KxF)
    dx_BxNxK = jax.lax.dot_general(dy_BxNxF, kernel_KxF, (((dy_BxNxF.ndim - 1,), (1,)), ((), ())),
                                   preferred_element_type=jnp.float32)
    return dx_BxNxK.astype(x_BxNxK.dtype), _kernel_grad(x_BxNxK, dy_BxNxF).astype(kernel_KxF.dtype)


thin_matmul.defvjp(_matmul_fwd, _thin_matmul_bwd)


@jax.custom_vjp
def fence(y: jax.Array) -> jax.Array:
    """Identity whose cotangent is materialized before the backward products read it.

    Without it XLA fuses the elementwise backward of what follows a layer (LayerNorm, GELU, the
    1/sqrt(fan_in) scale) into the transpose that feeds the layer's backward dots, so erf and exp
    are evaluated in transposed, strided order: on the CPU that fusion took 8% of a W=1024 step
    (issue 12). Behind the fence the elementwise pass runs in row order and the transpose is a
    plain copy. Values are unchanged: the same operations on the same numbers.
    """
    return y


fence.defvjp(lambda y: (y, None), lambda _, dy: (jax.lax.optimization_barrier(dy),))


@dataclasses.dataclass(frozen=True)
class Backward:
    """How bpUNet's products are differentiated; hashable, so a static field of the module.

    Each flag picks the row-major rule of this module (True) or JAX's own (False) for one part.
    """

    rowmajor_kernels: bool = True  # down and up kernels: ``matmul``, else ``plain_matmul``
    rowmajor_thin: bool = True  # embedding and readout kernels: ``thin_matmul``, else ``plain_matmul``
    fenced: bool = True  # every layer's output cotangent but the readout's behind ``fence``


# 'rowmajor': issue 12's rule, tuned for XLA's CPU backend (and bit-identical to 'jax' there but in
# the thin kernels' own gradients, see the module docstring); 'jax': JAX's own transpose rule.
RULES = {"jax": Backward(False, False, False), "rowmajor": Backward(True, True, True)}


class ScaledDense(nn.Module):
    """Bias-free matmul with an N(0, 1) kernel, output divided by `divisor` (authors' MyConv1d)."""

    features: int
    divisor: float
    dtype: Any = jnp.float32
    thin: bool = False  # a thin kernel (embedding, readout): ``thin_matmul``, else ``matmul``
    fenced: bool = True  # the output's cotangent behind ``fence`` (False: the readout, see BPUNet)
    rowmajor: bool = True  # False: ``plain_matmul``, JAX's own backward rule

    @nn.compact
    def __call__(self, x_BxNxK: jax.Array) -> jax.Array:
        kernel_KxF = self.param("kernel", nn.initializers.normal(1.0), (x_BxNxK.shape[-1], self.features), jnp.float32)
        product = (thin_matmul if self.thin else matmul) if self.rowmajor else plain_matmul
        y_BxNxF = product(x_BxNxK.astype(self.dtype), kernel_KxF.astype(self.dtype))
        y_BxNxF = fence(y_BxNxF) if self.fenced else y_BxNxF
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
    backward: Backward = RULES["rowmajor"]

    @nn.compact
    def __call__(self, feats_BxDxC: jax.Array) -> jax.Array:
        s, W, rule = self.s, self.width, self.backward
        B, D, C = feats_BxDxC.shape
        thick = dict(fenced=rule.fenced, rowmajor=rule.rowmajor_kernels)  # the down and up kernels
        embed = ScaledDense(W, np.sqrt(C), self.dtype, thin=True, fenced=rule.fenced,
                            rowmajor=rule.rowmajor_thin, name="embed")
        h_BxNxW = jax.nn.gelu(embed(feats_BxDxC), approximate=False)
        skips = [h_BxNxW]  # N: the current length, d / s**level
        for i in range(self.L):
            n = h_BxNxW.shape[1] // s
            patches_BxnxsW = h_BxNxW.reshape(B, n, s * W)  # position j*s+k -> row j, columns k*W..k*W+W
            down_BxnxW = ScaledDense(W, np.sqrt(s * W), self.dtype, **thick, name=f"down_{i}")(patches_BxnxsW)
            h_BxNxW = norm_gelu(down_BxnxW, f"down_{i}_norm")
            self.sow("intermediates", "down", h_BxNxW)
            skips.append(h_BxNxW)
        for i in range(self.L):
            n = h_BxNxW.shape[1]
            cat_Bxnx2W = jnp.concatenate([h_BxNxW, skips.pop()], axis=-1)
            up_BxnxsW = ScaledDense(s * W, np.sqrt(s * 2 * W), self.dtype, **thick, name=f"up_{i}")(cat_Bxnx2W)
            h_BxNxW = norm_gelu(up_BxnxsW.reshape(B, n * s, W), f"up_{i}_norm")
            self.sow("intermediates", "up", h_BxNxW)
        cat_BxDx2W = jnp.concatenate([h_BxNxW, skips.pop()], axis=-1)  # N = D again
        readout = ScaledDense(self.v, 2.0 * W, self.dtype, thin=True, fenced=False, rowmajor=rule.rowmajor_thin,
                              name="readout")
        return readout(cat_BxDx2W)


def init_std(name: str, shape: tuple[int, ...]) -> float | None:
    """Init of a parameter by name: kernels N(0, 1) (scaled in the forward), LayerNorm constants."""
    del shape
    return 1.0 if name.endswith("kernel") else None


def param_count(v_in: int, v: int, s: int, L: int, width: int) -> int:
    """Closed-form parameter count: embedding, L down and L up blocks (kernel + LN), readout."""
    W = width
    return v_in * W + L * (s * W * W + 2 * W) + L * (2 * W * s * W + 2 * W) + 2 * W * v
