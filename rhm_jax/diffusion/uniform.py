"""Uniform discrete diffusion (D3PM-uniform), the process of the paper's grammar experiments.

Conventions, chosen to match SPEC section 2 and the authors' code (AntonioScl/minimal_diffusion_rhm,
``diffusion/ddpm.py``: ``ddpm_schedules`` and ``DiscreteDDPM``):

- Schedule index i = 0..T: ``beta_i = beta1 + (beta2 - beta1) * i / T`` and
  ``alphabar_i = prod_{k=0..i} (1 - beta_k)``. The product includes k = 0, so
  ``alphabar_0 = 1 - beta1 < 1``: index 0 is itself slightly noisy (the authors' cumsum of logs).
- Time ``t = i / T``; a float t maps to step ``round(t * T)``.
- Loss: i uniform in 1..T, KL(q(x_{i-1} | x_i, x0) || q(x_{i-1} | x_i, p_theta(x0))) summed over the
  vocabulary, averaged over positions and batch. At i = 1 it is the same KL with ``alphabar_0 =
  1 - beta1``; there is no separate reconstruction term -log p(x0 | x1) (the authors have none).
  The model's posterior plugs p_theta(x0) into the x0 slot of the Bayes formula (D3PM's
  x0-parameterization). Computed exactly in log space: every factor is >= (1 - alpha)/v > 0, so
  no ``+1e-8`` as in the authors' code is needed.
- Network input (``input_features``): the BP leaf message ``alphabar_t * onehot(x_t) + (1 -
  alphabar_t) / v`` (= ``leaf_likelihood``), standardized by ``mean = avg_i(a_i + (1 - a_i)/v)``
  and ``std = sqrt(avg_i(a_i + (1 - a_i)/v**2) - mean**2)`` over the T+1 schedule points
  (SPEC section 3). ``authors_schedule=True`` reproduces a quirk of the authors' bpUNet: its
  message uses the network's own default schedule (beta 1e-4..0.02 over 1000 steps, float32),
  looked up at ``(t * 1000).long()`` with ``t = i / T`` as torch computes both in float32.
- Sampler: x_T uniform, then ``steps`` ancestral steps on the index grid round(linspace(T, 0)).
  A step hi -> lo draws x_lo from q(x_lo | x_hi, p_theta(x0)), whose forward kernel keeps the
  token with probability alphabar_hi / alphabar_lo; with steps = T this is the authors' sampler.
  The last step (lo = 0) draws x_0 from that same posterior (not argmax, not a sample of
  p_theta(x0)): exactly the authors' final step, so a perfect denoiser leaves each token
  resampled with probability about beta1 * (v - 1) / v.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax.diffusion import base

ApplyFn = Callable[[Any, jax.Array, jax.Array], jax.Array]


AUTHORS_BETAS = (1e-4, 0.02)  # the authors' bpUNet default schedule (diffusion/unet.py)
AUTHORS_T = 1000


@functools.lru_cache(maxsize=64)
def log_alphabar_table(T: int, beta1: float, beta2: float) -> np.ndarray:
    """(T+1,) float64 log alphabar_i for i = 0..T (see the module docstring for the index)."""
    beta_i = beta1 + (beta2 - beta1) * np.arange(T + 1) / T
    table = np.cumsum(np.log1p(-beta_i))
    table.flags.writeable = False  # shared by the cache
    return table


def authors_alphabar() -> np.ndarray:
    """(1001,) float32 alphabar_k, k = 0..1000, of the authors' network default, computed as theirs."""
    beta1, beta2 = (np.float32(b) for b in AUTHORS_BETAS)
    beta_K = (beta2 - beta1) * np.arange(AUTHORS_T + 1, dtype=np.float32) / np.float32(AUTHORS_T) + beta1
    return np.exp(np.cumsum(np.log(np.float32(1) - beta_K), dtype=np.float32)).astype(np.float32)


@functools.lru_cache(maxsize=64)
def authors_index(T: int) -> np.ndarray:
    """(T+1,) int64 index into ``authors_alphabar`` that the authors' network reads at step i.

    Torch computes ``t = i / T`` and ``(t * 1000).long()`` in float32, each operation correctly
    rounded (IEEE); NumPy's float32 arithmetic is the same. XLA instead divides by a constant
    through its reciprocal, which is one ulp low at some steps and then floors to the index
    below (59 of the 201 steps at T = 200): so the index is taken from this host table, by step.
    """
    t_T1 = np.arange(T + 1, dtype=np.float32) / np.float32(T)
    table = np.floor(t_T1 * np.float32(AUTHORS_T)).astype(np.int64)
    table.flags.writeable = False  # shared by the cache
    return table


def message_stats(alphabar_T1: np.ndarray, v: int) -> tuple[float, float]:
    """(mean, std) of the leaf message over the schedule points ``alphabar_T1``, SPEC section 3."""
    a_T1 = np.asarray(alphabar_T1, np.float64)
    mean = float(np.mean(a_T1 + (1.0 - a_T1) / v))
    second = float(np.mean(a_T1 + (1.0 - a_T1) / v**2))
    return mean, float(np.sqrt(second - mean**2))


def leaf_message(x_t_BxD: jax.Array, alphabar_B: jax.Array, v: int) -> jax.Array:
    """alphabar * onehot(x_t) + (1 - alphabar) / v, float32 (B, D, V): p(x_t | x0 = b) for each b."""
    ab_Bx1x1 = alphabar_B.astype(jnp.float32)[:, None, None]
    return ab_Bx1x1 * jax.nn.one_hot(x_t_BxD, v, dtype=jnp.float32) + (1.0 - ab_Bx1x1) / v


def posterior_logits(x_t_BxD: jax.Array, x0_probs_BxDxV: jax.Array, log_ab_hi_B: jax.Array,
                     log_ab_lo_B: jax.Array) -> jax.Array:
    """Unnormalized log q(x_lo = a | x_hi = x_t, x0 ~ probs), a in 0..V-1, float32 (B, D, V).

    Bayes: q(x_hi | x_lo) * q(x_lo | x0); the first keeps x_lo with probability
    alphabar_hi / alphabar_lo, the second with alphabar_lo, otherwise uniform.
    """
    v = x0_probs_BxDxV.shape[-1]
    log_keep_B = log_ab_hi_B - log_ab_lo_B
    keep = jnp.exp(log_keep_B)[:, None, None]
    flip = -jnp.expm1(log_keep_B)[:, None, None]  # 1 - keep without cancellation for small beta
    ab_lo = jnp.exp(log_ab_lo_B)[:, None, None]
    noise_lo = -jnp.expm1(log_ab_lo_B)[:, None, None]
    forward_BxDxV = keep * jax.nn.one_hot(x_t_BxD, v, dtype=jnp.float32) + flip / v
    prior_BxDxV = ab_lo * x0_probs_BxDxV + noise_lo / v
    return jnp.log(forward_BxDxV) + jnp.log(prior_BxDxV)


@dataclasses.dataclass(frozen=True)
class UniformProcess:
    """D3PM with uniform noise over ``v`` tokens; hashable, so it can be static under jit."""

    name: ClassVar[str] = "uniform"
    v: int
    T: int = 200
    beta1: float = 1e-3
    beta2: float = 0.1
    d: int | None = None  # sequence length for ``sample`` (optional, may be passed there)
    sampler_steps: int | None = None  # default steps of ``sample``; None means T

    @property
    def input_vocab(self) -> int:
        """Token ids the network sees: the x0 vocabulary (no extra token)."""
        return self.v

    @property
    def tokens_reveal_time(self) -> bool:
        """Whether x_t alone shows the noise level: no, uniform noise looks like data."""
        return False

    def alphabar_schedule(self) -> np.ndarray:
        """(T+1,) float64 alphabar_i for i = 0..T (t = i / T), e.g. for input standardization."""
        return np.exp(log_alphabar_table(self.T, self.beta1, self.beta2))

    def _log_ab(self) -> jax.Array:
        return jnp.asarray(log_alphabar_table(self.T, self.beta1, self.beta2), jnp.float32)

    def step_index(self, t_B: jax.Array) -> jax.Array:
        """Schedule index round(t * T) in 0..T, int32."""
        return jnp.clip(jnp.round(jnp.asarray(t_B, jnp.float32) * self.T), 0, self.T).astype(jnp.int32)

    def alphabar(self, t_B: jax.Array) -> jax.Array:
        """Probability that x_t is still x0's own token (not resampled) at time t."""
        return jnp.exp(self._log_ab()[self.step_index(t_B)])

    def corrupt(self, key: jax.Array, x0_BxD: jax.Array, t_B: jax.Array) -> jax.Array:
        """Sample x_t ~ alphabar_t onehot(x0) + (1 - alphabar_t)/v, int32 (B, D)."""
        # One uniform draw decides both: u < alphabar keeps x0, otherwise (u - alphabar) is uniform
        # on [0, 1 - alphabar) and picks the noise token. A second draw would double XLA's compile
        # time of this function (it constant-folds the small PRNG counters), for no statistical gain
        # beyond the 2**-23 resolution of u.
        u_BxD = jax.random.uniform(key, x0_BxD.shape)
        ab_Bx1 = self.alphabar(t_B)[:, None]
        noise_BxD = jnp.floor((u_BxD - ab_Bx1) / (1.0 - ab_Bx1) * self.v)
        noise_BxD = jnp.clip(noise_BxD, 0, self.v - 1).astype(jnp.int32)
        return jnp.where(u_BxD < ab_Bx1, x0_BxD, noise_BxD).astype(jnp.int32)

    def leaf_likelihood(self, x_t_BxD: jax.Array, t_B: jax.Array) -> jax.Array:
        """p(x_t_i | x0_i = b) for every b, float32 (B, D, V)."""
        return leaf_message(x_t_BxD, self.alphabar(t_B), self.v)

    def feature_stats(self, authors_schedule: bool = False) -> tuple[float, float]:
        """(mean, std) standardizing the network's input message (see the module docstring)."""
        if authors_schedule:  # the authors average over their own 1001 network steps
            return message_stats(authors_alphabar(), self.v)
        return message_stats(self.alphabar_schedule(), self.v)

    def message_alphabar(self, t_B: jax.Array, authors_schedule: bool = False) -> jax.Array:
        """alphabar_t of the network's input message: the process's own, or the authors' network's."""
        if not authors_schedule:
            return self.alphabar(t_B)
        # t is read as its step i (the process only uses t = i / T), so the authors' index does
        # not depend on how the caller rounded i / T.
        return jnp.asarray(authors_alphabar()[authors_index(self.T)])[self.step_index(t_B)]

    def input_features(self, x_t_BxD: jax.Array, t_B: jax.Array, authors_schedule: bool = False) -> jax.Array:
        """The denoiser's input, float32 (B, D, V): the standardized leaf message at time t."""
        mean, std = self.feature_stats(authors_schedule)
        return (leaf_message(x_t_BxD, self.message_alphabar(t_B, authors_schedule), self.v) - mean) / std

    def _losses_B(self, params: Any, apply_fn: ApplyFn, key: jax.Array, x0_BxD: jax.Array,
                  i_B: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Per-example KL averaged over positions, and x0 accuracy, at steps ``i_B`` in 1..T."""
        t_B = i_B.astype(jnp.float32) / self.T
        x_t_BxD = self.corrupt(key, x0_BxD, t_B)
        logits_BxDxV = base.x0_logits(apply_fn(params, x_t_BxD, t_B), x_t_BxD, self.v)
        log_ab = self._log_ab()
        hi_B, lo_B = log_ab[i_B], log_ab[i_B - 1]
        x0_onehot_BxDxV = jax.nn.one_hot(x0_BxD, self.v, dtype=jnp.float32)
        log_q_BxDxV = jax.nn.log_softmax(posterior_logits(x_t_BxD, x0_onehot_BxDxV, hi_B, lo_B))
        log_p_BxDxV = jax.nn.log_softmax(
            posterior_logits(x_t_BxD, jax.nn.softmax(logits_BxDxV), hi_B, lo_B))
        kl_BxD = jnp.sum(jnp.exp(log_q_BxDxV) * (log_q_BxDxV - log_p_BxDxV), axis=-1)
        correct_BxD = jnp.argmax(logits_BxDxV, axis=-1) == x0_BxD
        return kl_BxD.mean(axis=-1), correct_BxD.mean(axis=-1)

    def _drawn_losses_B(self, params: Any, apply_fn: ApplyFn, key: jax.Array,
                        x0_BxD: jax.Array) -> tuple[jax.Array, jax.Array]:
        """``_losses_B`` at a step i drawn uniformly in 1..T per row from ``key``."""
        key_t, key_x = jax.random.split(key)
        u_B = jax.random.uniform(key_t, (x0_BxD.shape[0],))
        i_B = jnp.clip(jnp.floor(u_B * self.T).astype(jnp.int32) + 1, 1, self.T)  # uniform in 1..T
        return self._losses_B(params, apply_fn, key_x, x0_BxD, i_B)

    def loss(self, params: Any, apply_fn: ApplyFn, key: jax.Array, x0_BxD: jax.Array,
             num_rows: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Mean KL over the batch (its first ``num_rows`` rows if given), i uniform in 1..T per row; aux: x0 accuracy."""
        kl_B, acc_B = self._drawn_losses_B(params, apply_fn, key, x0_BxD)
        return base.row_mean(kl_B, num_rows), {"x0_accuracy": base.row_mean(acc_B, num_rows)}

    def row_losses(self, params: Any, apply_fn: ApplyFn, key: jax.Array, x0_BxD: jax.Array) -> jax.Array:
        """(B,) per-row KL whose mean is ``loss(...)[0]`` with the same key (for a standard error)."""
        return self._drawn_losses_B(params, apply_fn, key, x0_BxD)[0]

    def window_losses(self, params: Any, apply_fn: ApplyFn, key: jax.Array, x0_BxD: jax.Array,
                      num_windows: int = 10) -> jax.Array:
        """(W,) mean loss per window of t; window w uses steps ceil(t * T) for stratified t in it."""
        t_WxB = base.window_times(num_windows, x0_BxD.shape[0])
        i_WxB = jnp.asarray(np.clip(np.ceil(t_WxB * self.T - 1e-9), 1, self.T), jnp.int32)

        def one_window(args: tuple[jax.Array, jax.Array]) -> jax.Array:
            w, i_B = args
            kl_B, _ = self._losses_B(params, apply_fn, jax.random.fold_in(key, w), x0_BxD, i_B)
            return kl_B.mean()

        return jax.lax.map(one_window, (jnp.arange(num_windows), i_WxB))

    def sample(self, params: Any, apply_fn: ApplyFn, key: jax.Array, num: int,
               steps: int | None = None, d: int | None = None) -> jax.Array:
        """(num, d) int32 samples by ancestral sampling from uniform x_T; steps defaults to sampler_steps, else T."""
        steps = self.sampler_steps if steps is None else steps
        steps = base.check_steps(self.T if steps is None else steps, upper=self.T)
        d = base.check_length(d, self.d)
        grid = np.floor(np.linspace(self.T, 0, steps + 1) + 0.5).astype(np.int32)
        log_ab = self._log_ab()
        key_init, key_steps = jax.random.split(key)
        u_NxD = jax.random.uniform(key_init, (num, d))
        x_NxD = jnp.clip(jnp.floor(u_NxD * self.v), 0, self.v - 1).astype(jnp.int32)

        def step(x_NxD: jax.Array, inputs: tuple[jax.Array, ...]) -> tuple[jax.Array, None]:
            hi, lo, step_key = inputs
            t_N = jnp.full((num,), hi / self.T, jnp.float32)
            probs_NxDxV = jax.nn.softmax(base.x0_logits(apply_fn(params, x_NxD, t_N), x_NxD, self.v))
            logits_NxDxV = posterior_logits(x_NxD, probs_NxDxV, jnp.full((num,), log_ab[hi]),
                                            jnp.full((num,), log_ab[lo]))
            return jax.random.categorical(step_key, logits_NxDxV).astype(jnp.int32), None

        inputs = (jnp.asarray(grid[:-1]), jnp.asarray(grid[1:]), jax.random.split(key_steps, steps))
        x_NxD, _ = jax.lax.scan(step, x_NxD, inputs)
        return x_NxD
