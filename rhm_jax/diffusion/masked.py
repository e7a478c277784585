"""Masked (absorbing) discrete diffusion in continuous time, as in google-deepmind/md4.

Conventions (MD4's ``MaskingSchedule`` and continuous-time loss):

- Token ``v`` is the mask, so the network sees ``v + 1`` ids but returns ``v`` logits (x0 only):
  the mask can never be sampled.
- Keep probability ``alpha(t) = (1 - 2 eps) * a(t) + eps`` with a(t) = 1 - t (linear),
  1 - cos(pi/2 (1 - t)) (cosine) or 1 - t**power (poly); so alpha(0) = 1 - eps, alpha(1) = eps.
- Loss: ``w(t) * sum_{masked i} -log p_theta(x0_i | z_t)`` with ``w(t) = -alpha'(t) / (1 - alpha(t))``
  (about 1/t for linear), t stratified across the batch (t_b = (b + u) / B, one u per batch),
  divided by D so it is per token like the uniform process (MD4 reports it per sequence). Only
  MD4's diffusion term: its reconstruction and prior terms are constants of order eps.
- Network input (``input_features``): one-hot over v + 1 channels (token v = mask), no time
  input (the mask pattern carries the noise level, as in MD4), standardized by the constants of a
  uniform one-hot, ``(x - 1/(v+1)) / sqrt(1/(v+1) * (1 - 1/(v+1)))``, so that a linear embedding's
  pre-activations start at unit variance as with the uniform process.
- Two samplers. ``sampler_steps=None`` (the default): the exact one, d steps, each revealing
  exactly one masked position, in a uniformly random order per sample, with a draw of
  p_theta(x0_i | z) at that position. For an exact denoiser this is ancestral sampling of the data
  distribution (any-order autoregression on the denoiser's marginals), whatever the schedule: the
  network sees the mask pattern only; it is given the time at which the schedule's expected mask
  fraction is the current one. An integer: MD4's step-count sampler on the grid
  t_k = (steps - k) / steps, s_k = t_k - 1/steps; a masked token is revealed with probability
  (alpha(s) - alpha(t)) / (1 - alpha(t)) and takes a sample of p_theta(x0 | z_t), so tokens
  revealed in the same step are drawn independently given z_t, which is not exact: it caps an
  exact denoiser's full validity (0.90 at 100 steps, d = 16). The last step (s = 0) reveals every
  remaining mask (MD4 instead leaves the about-eps remainder to an argmax decode at t = 0).
  Revealed tokens are never touched again by either sampler.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax.diffusion import base

ApplyFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
SCHEDULES = ("linear", "cosine", "poly")
_T_MIN = 1e-6  # keeps w(t) finite at t = 0 for poly with power < 1


@dataclasses.dataclass(frozen=True)
class MaskedProcess:
    """MD4 absorbing diffusion over ``v`` tokens plus a mask; hashable, so static under jit."""

    name: ClassVar[str] = "masked"
    v: int
    schedule: str = "linear"
    power: float = 1.0
    eps: float = 1e-4
    sampler_steps: int | None = None  # None: the exact sampler (one position per step, d steps)
    d: int | None = None  # sequence length for ``sample`` (optional, may be passed there)

    @property
    def input_vocab(self) -> int:
        """Token ids the network sees: x0 tokens 0..v-1 and the mask v."""
        return self.v + 1

    @property
    def tokens_reveal_time(self) -> bool:
        """Whether x_t alone shows the noise level: yes, through the fraction of masks."""
        return True

    @property
    def mask_id(self) -> int:
        """The id of the mask token."""
        return self.v

    def _raw_alpha(self, t: jax.Array) -> jax.Array:
        if self.schedule == "linear":
            return 1.0 - t
        if self.schedule == "cosine":
            return 1.0 - jnp.cos(jnp.pi / 2 * (1.0 - t))
        return 1.0 - t**self.power

    def _raw_dalpha(self, t: jax.Array) -> jax.Array:
        if self.schedule == "linear":
            return -jnp.ones_like(t)
        if self.schedule == "cosine":
            return -jnp.pi / 2 * jnp.sin(jnp.pi / 2 * (1.0 - t))
        return -self.power * t ** (self.power - 1.0)

    def alphabar(self, t_B: jax.Array) -> jax.Array:
        """Keep probability alpha(t) of each token at time t."""
        return (1.0 - 2 * self.eps) * self._raw_alpha(jnp.asarray(t_B, jnp.float32)) + self.eps

    def weight(self, t_B: jax.Array) -> jax.Array:
        """ELBO weight -alpha'(t) / (1 - alpha(t)) > 0."""
        t_B = jnp.asarray(t_B, jnp.float32)
        return -(1.0 - 2 * self.eps) * self._raw_dalpha(t_B) / (1.0 - self.alphabar(t_B))

    def corrupt(self, key: jax.Array, x0_BxD: jax.Array, t_B: jax.Array) -> jax.Array:
        """Replace each token by the mask with probability 1 - alpha(t), int32 (B, D)."""
        keep_BxD = jax.random.uniform(key, x0_BxD.shape) < self.alphabar(t_B)[:, None]
        return jnp.where(keep_BxD, x0_BxD, self.mask_id).astype(jnp.int32)

    def leaf_likelihood(self, x_t_BxD: jax.Array, t_B: jax.Array) -> jax.Array:
        """p(z_t_i | x0_i = b) up to a per-position constant: onehot if unmasked, ones if masked."""
        del t_B  # the per-position constant alpha(t) or 1 - alpha(t) cancels in any posterior
        onehot_BxDxV = jax.nn.one_hot(x_t_BxD, self.v, dtype=jnp.float32)
        return jnp.where((x_t_BxD == self.mask_id)[..., None], 1.0, onehot_BxDxV)

    def feature_stats(self, authors_schedule: bool = False) -> tuple[float, float]:
        """(mean, std) of a uniform one-hot over v + 1 channels, standardizing the network's input."""
        if authors_schedule:
            raise ValueError("network authors_schedule=True needs the uniform process, got the masked process "
                             "(it is a quirk of the authors' uniform-noise message)")
        p = 1.0 / (self.v + 1)
        return p, float(np.sqrt(p * (1.0 - p)))

    def input_features(self, x_t_BxD: jax.Array, t_B: jax.Array, authors_schedule: bool = False) -> jax.Array:
        """The denoiser's input, float32 (B, D, v + 1): the standardized one-hot of z_t; no time."""
        del t_B  # the mask pattern carries the noise level
        mean, std = self.feature_stats(authors_schedule)
        return (jax.nn.one_hot(x_t_BxD, self.v + 1, dtype=jnp.float32) - mean) / std

    def _losses_B(self, params: Any, apply_fn: ApplyFn, key: jax.Array, x0_BxD: jax.Array,
                  t_B: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Per-example weighted masked NLL per token; masked count; correct masked count."""
        z_BxD = self.corrupt(key, x0_BxD, t_B)
        logits_BxDxV = base.x0_logits(apply_fn(params, z_BxD, t_B), z_BxD, self.v)
        log_p_BxDxV = jax.nn.log_softmax(logits_BxDxV)
        nll_BxD = -jnp.take_along_axis(log_p_BxDxV, x0_BxD[..., None], axis=-1)[..., 0]
        masked_BxD = z_BxD == self.mask_id
        # where (not multiply) so that unmasked positions get exactly zero gradient
        nll_B = jnp.sum(jnp.where(masked_BxD, nll_BxD, 0.0), axis=-1)
        loss_B = self.weight(t_B) * nll_B / x0_BxD.shape[1]
        correct_B = jnp.sum(masked_BxD & (jnp.argmax(logits_BxDxV, -1) == x0_BxD), axis=-1)
        return loss_B, masked_BxD.sum(axis=-1), correct_B

    def _drawn_losses_B(self, params: Any, apply_fn: ApplyFn, key: jax.Array, x0_BxD: jax.Array,
                        num_rows: jax.Array | None) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``_losses_B`` at times stratified over the (first ``num_rows``) rows with one offset from ``key``."""
        key_t, key_z = jax.random.split(key)
        batch = x0_BxD.shape[0]
        if num_rows is None:
            t_B = (jnp.arange(batch) + jax.random.uniform(key_t)) / batch
        else:
            n = jnp.asarray(num_rows, jnp.int32)
            t_B = (jnp.arange(batch) % n + jax.random.uniform(key_t)) / n.astype(jnp.float32)
        t_B = jnp.clip(t_B, _T_MIN, 1.0)
        return self._losses_B(params, apply_fn, key_z, x0_BxD, t_B)

    def row_losses(self, params: Any, apply_fn: ApplyFn, key: jax.Array, x0_BxD: jax.Array) -> jax.Array:
        """(B,) per-row loss whose mean is ``loss(...)[0]`` with the same key. The rows' times are
        stratified, so std / sqrt(B) of these overstates the error of their mean (a safe bound)."""
        return self._drawn_losses_B(params, apply_fn, key, x0_BxD, None)[0]

    def loss(self, params: Any, apply_fn: ApplyFn, key: jax.Array, x0_BxD: jax.Array,
             num_rows: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Continuous-time ELBO per token with stratified t; aux: mask fraction, masked accuracy.

        With ``num_rows`` (traced) only the first ``num_rows`` rows count, and t is stratified
        over them as in a batch of exactly those rows.
        """
        batch = x0_BxD.shape[0]
        loss_B, masked_B, correct_B = self._drawn_losses_B(params, apply_fn, key, x0_BxD, num_rows)
        if num_rows is not None:
            keep_B = jnp.arange(batch) < num_rows
            masked_B, correct_B = jnp.where(keep_B, masked_B, 0), jnp.where(keep_B, correct_B, 0)
        num_masked = masked_B.sum()
        rows = batch if num_rows is None else num_rows
        aux = {
            "mask_fraction": num_masked / (rows * x0_BxD.shape[1]),
            "x0_accuracy": correct_B.sum() / jnp.maximum(num_masked, 1),
        }
        return base.row_mean(loss_B, num_rows), aux

    def window_losses(self, params: Any, apply_fn: ApplyFn, key: jax.Array, x0_BxD: jax.Array,
                      num_windows: int = 10) -> jax.Array:
        """(W,) mean loss per window of t, each at B evenly spread times inside the window."""
        t_WxB = jnp.asarray(base.window_times(num_windows, x0_BxD.shape[0]), jnp.float32)

        def one_window(args: tuple[jax.Array, jax.Array]) -> jax.Array:
            w, t_B = args
            loss_B, _, _ = self._losses_B(params, apply_fn, jax.random.fold_in(key, w), x0_BxD, t_B)
            return loss_B.mean()

        return jax.lax.map(one_window, (jnp.arange(num_windows), t_WxB))

    def time_of_mask_fraction(self, fraction: jax.Array) -> jax.Array:
        """The time t at which 1 - alpha(t) equals ``fraction`` (clipped to [0, 1])."""
        raw = jnp.clip((1.0 - fraction - self.eps) / (1.0 - 2 * self.eps), 0.0, 1.0)  # a(t)
        if self.schedule == "linear":
            t = 1.0 - raw
        elif self.schedule == "cosine":
            t = 1.0 - 2.0 / jnp.pi * jnp.arccos(1.0 - raw)
        else:
            t = (1.0 - raw) ** (1.0 / self.power)
        return jnp.clip(t, 0.0, 1.0)

    def sample(self, params: Any, apply_fn: ApplyFn, key: jax.Array, num: int,
               steps: int | None = None, d: int | None = None) -> jax.Array:
        """(num, d) int32 samples from an all-mask start; steps defaults to ``sampler_steps``.

        Steps None (both here and in ``sampler_steps``): the exact sampler, d network calls.
        """
        steps = self.sampler_steps if steps is None else steps
        d = base.check_length(d, self.d)
        if steps is None:
            return self._sample_exact(params, apply_fn, key, num, d)
        return self._sample_steps(params, apply_fn, key, num, base.check_steps(steps), d)

    def _sample_exact(self, params: Any, apply_fn: ApplyFn, key: jax.Array, num: int, d: int) -> jax.Array:
        """Reveal one position per step, in a random order per sample: d steps."""
        key_order, key_steps = jax.random.split(key)
        # argsort of i.i.d. uniforms: a uniformly random permutation (a permutation even on ties)
        order_NxD = jnp.argsort(jax.random.uniform(key_order, (num, d)), axis=-1).astype(jnp.int32)
        rows_N = jnp.arange(num)

        def step(z_NxD: jax.Array, inputs: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
            k, step_key = inputs
            t = self.time_of_mask_fraction((d - k) / d)  # d - k positions are masked now
            logits_NxDxV = base.x0_logits(apply_fn(params, z_NxD, jnp.full((num,), t)), z_NxD, self.v)
            position_N = order_NxD[:, k]
            token_N = jax.random.categorical(step_key, logits_NxDxV[rows_N, position_N]).astype(jnp.int32)
            return z_NxD.at[rows_N, position_N].set(token_N), None

        z_NxD = jnp.full((num, d), self.mask_id, jnp.int32)
        z_NxD, _ = jax.lax.scan(step, z_NxD, (jnp.arange(d), jax.random.split(key_steps, d)))
        return z_NxD

    def _sample_steps(self, params: Any, apply_fn: ApplyFn, key: jax.Array, num: int, steps: int,
                      d: int) -> jax.Array:
        """MD4's sampler on ``steps`` equal time steps (independent reveals within a step)."""
        t_S = (steps - np.arange(steps)) / steps
        s_S = (steps - 1 - np.arange(steps)) / steps  # exactly 0 at the last step

        def step(z_NxD: jax.Array, inputs: tuple[jax.Array, ...]) -> tuple[jax.Array, None]:
            t, s, step_key = inputs
            key_reveal, key_token = jax.random.split(step_key)
            logits_NxDxV = base.x0_logits(apply_fn(params, z_NxD, jnp.full((num,), t)), z_NxD, self.v)
            alpha_t, alpha_s = self.alphabar(t), self.alphabar(s)
            reveal_prob = jnp.where(s > 0, (alpha_s - alpha_t) / (1.0 - alpha_t), 1.0)
            reveal_NxD = jax.random.uniform(key_reveal, z_NxD.shape) < reveal_prob
            token_NxD = jax.random.categorical(key_token, logits_NxDxV).astype(jnp.int32)
            return jnp.where((z_NxD == self.mask_id) & reveal_NxD, token_NxD, z_NxD), None

        z_NxD = jnp.full((num, d), self.mask_id, jnp.int32)
        inputs = (jnp.asarray(t_S, jnp.float32), jnp.asarray(s_S, jnp.float32),
                  jax.random.split(key, steps))
        z_NxD, _ = jax.lax.scan(step, z_NxD, inputs)
        return z_NxD
