"""Pieces both processes share: reading a config, checking the network's logits, window times."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def field(config: Any, name: str, default: Any = None) -> Any:
    """``config.name`` for a ConfigDict, a mapping or any attribute object; ``default`` if absent."""
    if isinstance(config, Mapping) or hasattr(config, "get"):
        return config.get(name, default)
    return getattr(config, name, default)


def x0_logits(logits_BxDxV: jax.Array, x_t_BxD: jax.Array, v: int) -> jax.Array:
    """The network's x0 logits as float32, after checking they have shape (B, D, v).

    Networks may run in bf16; every probability and loss is computed in float32. A network that
    also emits a logit for the mask token would let the sampler draw it, so that is an error.
    """
    expected = (*x_t_BxD.shape, v)
    if tuple(logits_BxDxV.shape) != expected:
        raise ValueError(
            f"apply_fn must return x0 logits of shape (B, D, v) = {expected}, got "
            f"{tuple(logits_BxDxV.shape)} (v counts x0 tokens only, never the mask)")
    return logits_BxDxV.astype(jnp.float32)


def row_mean(x_B: jax.Array, num_rows: jax.Array | None) -> jax.Array:
    """Mean of x over the first ``num_rows`` rows (traced; None: all rows); the others get zero weight.

    ``where``, not a multiply, so that rows past ``num_rows`` get exactly zero gradient even when
    their values are not finite.
    """
    if num_rows is None:
        return x_B.mean()
    keep_B = jnp.arange(x_B.shape[0]) < num_rows
    return jnp.sum(jnp.where(keep_B, x_B, 0.0)) / jnp.asarray(num_rows, x_B.dtype)


def window_times(num_windows: int, batch: int) -> np.ndarray:
    """(W, B) float64 times in (0, 1): window w holds B evenly spread points of (w/W, (w+1)/W).

    A fixed, stratified set of times per window makes window losses deterministic given the key
    and costs one network call per window.
    """
    if not isinstance(num_windows, (int, np.integer)) or num_windows < 1:
        raise ValueError(f"num_windows={num_windows!r} must be an integer >= 1")
    within_B = (np.arange(batch) + 0.5) / batch
    return (np.arange(num_windows)[:, None] + within_B[None, :]) / num_windows


def check_steps(steps: Any, upper: int | None = None) -> int:
    """``steps`` as an int, raising ValueError unless 1 <= steps (<= upper when given)."""
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"sampler steps={steps!r} must be an integer >= 1")
    if upper is not None and steps > upper:
        raise ValueError(f"sampler steps={steps} must be <= T={upper} for the uniform process")
    return int(steps)


def check_length(d: int | None, default: int | None) -> int:
    """Sequence length for the sampler: the argument, else the one given to ``make``."""
    d = default if d is None else d
    if d is None:
        raise ValueError("sample needs the sequence length d: pass d= to sample or to diffusion.make")
    if not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"sequence length d={d!r} must be an integer >= 1")
    return int(d)
