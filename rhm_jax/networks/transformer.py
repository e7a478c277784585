"""A bidirectional pre-LayerNorm transformer encoder denoiser (ours, MD4-style), flax.linen.

Shape letters: B batch, D sequence length, W width, H heads, K = W / H head size, F = mlp_ratio * W.

Tokens (``input_vocab`` classes, the mask included for the masked process) get a learned token
and a learned positional embedding; ``depth`` blocks of [LayerNorm -> full (unmasked) multi-head
self-attention -> residual, LayerNorm -> GELU MLP -> residual]; a final LayerNorm and a linear
readout to ``v`` logits (never the mask class). Optional time conditioning adds
``MLP(sinusoidal features of t)`` to every position's embedding; it is on by default for the
uniform process (its noise level is not visible in the tokens) and off for the masked one.
``Network.init`` draws kernels N(0, 1/fan_in) (LeCun normal, untruncated), embeddings
N(0, 1/W), zero biases, unit LayerNorm scales (``init_std``); with ``dtype=bfloat16`` the
matmuls run in bf16, parameters stay float32, LayerNorm/softmax run in float32 and the logits are
returned in float32. Linen for the same reason as bpUNet (pure init/apply, nothing to split).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

NUM_TIME_FREQS = 32


def time_features(t_B: jax.Array) -> jax.Array:
    """Sinusoidal features of t in [0, 1], shape Bx(2*NUM_TIME_FREQS), periods from 2 down to 2e-3."""
    freqs_F = jnp.pi * jnp.geomspace(1.0, 1000.0, NUM_TIME_FREQS)
    angle_BxF = t_B.astype(jnp.float32)[:, None] * freqs_F
    return jnp.concatenate([jnp.sin(angle_BxF), jnp.cos(angle_BxF)], axis=-1)


def layer_norm(name: str) -> nn.LayerNorm:
    """LayerNorm in float32 (scale and offset)."""
    return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class Block(nn.Module):
    """One pre-LN encoder block: bidirectional attention then MLP, each with a residual."""

    width: int
    heads: int
    mlp_ratio: float
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h_BxDxW: jax.Array) -> jax.Array:
        B, D, W = h_BxDxW.shape
        H, K = self.heads, self.width // self.heads
        dense = lambda f, name: nn.Dense(f, dtype=self.dtype, param_dtype=jnp.float32, name=name)
        qkv_BxDx3W = dense(3 * W, "qkv")(layer_norm("ln_attn")(h_BxDxW))
        q_BxDxHxK, k_BxDxHxK, v_BxDxHxK = jnp.split(qkv_BxDx3W.reshape(B, D, 3 * H, K), 3, axis=2)
        scores_BxHxDxD = jnp.einsum("bqhk,bphk->bhqp", q_BxDxHxK, k_BxDxHxK, preferred_element_type=jnp.float32)
        attn_BxHxDxD = jax.nn.softmax(scores_BxHxDxD / np.sqrt(K), axis=-1)
        out_BxDxHxK = jnp.einsum("bhqp,bphk->bqhk", attn_BxHxDxD.astype(self.dtype), v_BxDxHxK)
        h_BxDxW = h_BxDxW + dense(W, "out")(out_BxDxHxK.reshape(B, D, W)).astype(jnp.float32)
        hidden = int(round(self.mlp_ratio * W))
        mlp_BxDxF = jax.nn.gelu(dense(hidden, "mlp_in")(layer_norm("ln_mlp")(h_BxDxW)), approximate=False)
        return h_BxDxW + dense(W, "mlp_out")(mlp_BxDxF).astype(jnp.float32)


class Transformer(nn.Module):
    """Encoder over tokens x_t_BxD (values < input_vocab) and times t_B -> logits BxDxV."""

    input_vocab: int
    v: int
    length: int
    width: int
    depth: int
    heads: int
    mlp_ratio: float
    time_conditioning: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x_t_BxD: jax.Array, t_B: jax.Array) -> jax.Array:
        W = self.width
        h_BxDxW = nn.Embed(self.input_vocab, W, name="token_embed")(x_t_BxD)
        pos_DxW = self.param("pos_embed", nn.initializers.normal(W**-0.5), (self.length, W), jnp.float32)
        h_BxDxW = h_BxDxW + pos_DxW
        if self.time_conditioning:
            temb_BxW = nn.Dense(W, name="time_in")(time_features(t_B))
            temb_BxW = nn.Dense(W, name="time_out")(jax.nn.gelu(temb_BxW, approximate=False))
            h_BxDxW = h_BxDxW + temb_BxW[:, None, :]
        for i in range(self.depth):
            h_BxDxW = Block(W, self.heads, self.mlp_ratio, self.dtype, name=f"block_{i}")(h_BxDxW)
        readout = nn.Dense(self.v, dtype=self.dtype, param_dtype=jnp.float32, name="readout")
        logits_BxDxV = readout(layer_norm("ln_final")(h_BxDxW))
        return logits_BxDxV.astype(jnp.float32)


def init_std(name: str, shape: tuple[int, ...]) -> float | None:
    """Init by name: kernels LeCun normal 1/sqrt(fan_in), embeddings 1/sqrt(W), biases/LN constants."""
    if name.endswith("kernel"):
        return shape[0] ** -0.5
    if name.endswith("embedding") or name.endswith("pos_embed"):
        return shape[-1] ** -0.5
    return None


def param_count(
    input_vocab: int, v: int, length: int, width: int, depth: int, mlp_ratio: float, time_conditioning: bool
) -> int:
    """Closed-form parameter count (every Dense has a bias, every LayerNorm scale and offset)."""
    W, F = width, int(round(mlp_ratio * width))
    block = 2 * W + (W * 3 * W + 3 * W) + (W * W + W) + 2 * W + (W * F + F) + (F * W + W)
    time = (2 * NUM_TIME_FREQS * W + W) + (W * W + W) if time_conditioning else 0
    return input_vocab * W + length * W + time + depth * block + 2 * W + (W * v + v)
