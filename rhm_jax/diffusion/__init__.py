"""Discrete diffusion processes: ``uniform`` (D3PM, the paper's grammar runs) and ``masked`` (MD4).

``make(process_config, v)`` validates the config (ValueError before any compilation) and returns a
frozen, hashable Process. Every process exposes ``v``, ``input_vocab``, ``loss``,
``window_losses``, ``sample``, ``corrupt``, ``leaf_likelihood``, ``alphabar`` and the network's
input (``input_features``, ``feature_stats``, ``tokens_reveal_time``) with the signatures of
docs/architecture.md; ``apply_fn(params, x_t_BxD, t_B) -> logits_BxDxV`` predicts x0.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Union

import ml_collections
import numpy as np

from rhm_jax.diffusion.base import field
from rhm_jax.diffusion.masked import SCHEDULES, MaskedProcess
from rhm_jax.diffusion.uniform import UniformProcess

Process = Union[UniformProcess, MaskedProcess]
NAMES = ("uniform", "masked")

__all__ = ["EXACT", "MaskedProcess", "NAMES", "Process", "UniformProcess", "default_config", "make",
           "sampler_label", "sampler_steps_setting", "validate"]


def _field_defaults(cls: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


# The process section's defaults, read from the processes' own fields (one source): uniform's T,
# beta1, beta2; masked's schedule, power, eps; sampler_steps None means each process's exact
# sampler (uniform: its T ancestral steps; masked: one position revealed per step, d steps).
DEFAULTS = {**{k: _field_defaults(UniformProcess)[k] for k in ("T", "beta1", "beta2")},
            **{k: _field_defaults(MaskedProcess)[k] for k in ("schedule", "power", "eps")},
            "sampler_steps": None}


def default_config(name: str = "uniform") -> ml_collections.ConfigDict:
    """The SPEC defaults for ``process`` (``DEFAULTS``); the fields of the other process are kept, unused.

    uniform: T steps of the chain, beta at step 0 (beta1) and at step T (beta2); masked: schedule
    'linear' | 'cosine' | 'poly', its exponent ``power``, alpha(t) within [eps, 1 - eps]; both:
    ``sampler_steps`` of the evaluations: None, the process's exact sampler (uniform: its T
    ancestral steps; masked: one position revealed per step, d steps); an integer, the uniform
    sampler striding over its T-step chain (at most T) or MD4's step-count sampler (any number;
    not exact: tokens revealed together are drawn independently).
    """
    return ml_collections.ConfigDict(dict(name=name, **DEFAULTS))


def _get(config: Any, name: str) -> Any:
    """``config.name``, or its default when the config lacks it."""
    return field(config, name, DEFAULTS[name])


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value)


# the least normal float32: a positive value below it rounds to 0 or loses its digits
F32_TINY = float(np.finfo(np.float32).tiny)


def below_float32(value: Any) -> bool:
    """True for a positive number too small for the float32 it is computed in (1e-300 becomes 0)."""
    return 0 < abs(value) < F32_TINY


def _check_uniform(config: Any) -> None:
    beta1, beta2 = _get(config, "beta1"), _get(config, "beta2")
    for name, value in (("beta1", beta1), ("beta2", beta2)):
        if not _is_real(value):
            raise ValueError(f"process.{name}={value!r} must be a finite number")
    if beta1 <= 0 or below_float32(beta1):
        raise ValueError(f"process.beta1={beta1} must be >= {F32_TINY:.4g} (> 0, and not 0 in float32)")
    if beta2 <= beta1:
        raise ValueError(f"process.beta2={beta2} must be > beta1={beta1}")
    if beta2 >= 1:
        raise ValueError(f"process.beta2={beta2} must be < 1")


def _check_masked(config: Any) -> None:
    schedule, power, eps = _get(config, "schedule"), _get(config, "power"), _get(config, "eps")
    if schedule not in SCHEDULES:
        raise ValueError(f"process.schedule={schedule!r} must be one of {SCHEDULES}")
    if not _is_real(eps) or not 0 < eps < 0.5 or below_float32(eps):
        raise ValueError(f"process.eps={eps!r} must be in [{F32_TINY:.4g}, 0.5) (> 0, and not 0 in float32)")
    if not _is_real(power) or power <= 0 or below_float32(power):
        raise ValueError(f"process.power={power!r} must be a finite number >= {F32_TINY:.4g} (the 'poly' schedule's"
                         " exponent: > 0, and not 0 in float32)")


def validate(process_config: Any) -> None:
    """Raise ValueError naming the parameter and its bound if ``process_config`` is unusable."""
    name = field(process_config, "name", None)
    if name not in NAMES:
        raise ValueError(f"process.name={name!r} must be one of {NAMES}")
    T = _get(process_config, "T")  # the masked process does not use it
    if not _is_int(T) or T < 1:
        raise ValueError(f"process.T={T!r} must be an integer >= 1")
    steps = _get(process_config, "sampler_steps")
    if steps is not None and (not _is_int(steps) or steps < 1):
        raise ValueError(f"process.sampler_steps={steps!r} must be an integer >= 1")
    if name == "uniform" and steps is not None and steps > T:
        raise ValueError(f"process.sampler_steps={steps} must be <= T={T} for the uniform process")
    own, other = (_check_uniform, _check_masked) if name == "uniform" else (_check_masked, _check_uniform)
    own(process_config)
    try:  # the other process's keys: unused, but config.json records them, so they must be valid too
        other(process_config)
    except ValueError as err:
        raise ValueError(f"{err} (unused by process.name={name!r}, but recorded in config.json)") from None


def make(process_config: Any, v: int, d: int | None = None) -> Process:
    """The Process named by ``process_config`` over ``v`` tokens; ``d`` is the sampler's length.

    ``d`` is optional here (it may be passed to ``sample`` instead).
    """
    validate(process_config)
    if not _is_int(v) or v < 2:
        raise ValueError(f"vocabulary v={v!r} must be an integer >= 2")
    if d is not None and (not _is_int(d) or d < 1):
        raise ValueError(f"sequence length d={d!r} must be an integer >= 1")
    d = None if d is None else int(d)
    steps, T = _get(process_config, "sampler_steps"), int(_get(process_config, "T"))
    if field(process_config, "name") == "uniform":
        return UniformProcess(v=int(v), T=T, beta1=float(_get(process_config, "beta1")),
                              beta2=float(_get(process_config, "beta2")), d=d,
                              sampler_steps=None if steps is None else int(steps))
    return MaskedProcess(v=int(v), schedule=str(_get(process_config, "schedule")),
                         power=float(_get(process_config, "power")), eps=float(_get(process_config, "eps")),
                         sampler_steps=None if steps is None else int(steps), d=d)


EXACT = "exact"  # the masked process's exact sampler, in score file names and re-scoring arguments


def sampler_label(process: Process) -> str:
    """The evaluations' sampler in words for file names: its step count, or 'exact' (masked, None).

    The uniform process's None is its T ancestral steps, labelled T.
    """
    if process.sampler_steps is not None:
        return str(int(process.sampler_steps))
    return EXACT if isinstance(process, MaskedProcess) else str(int(process.T))


def sampler_steps_setting(value: Any) -> int | None:
    """A re-scoring's sampler argument as ``process.sampler_steps``: 'exact' is None, else an int.

    Raises ValueError naming ``sampler_steps`` for anything else (None is not accepted: callers
    treat it as "the run's own").
    """
    if value == EXACT:
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise ValueError(f"sampler_steps={value!r} must be an integer >= 1 or {EXACT!r}") from None
    if not _is_int(value) or value < 1:
        raise ValueError(f"sampler_steps={value!r} must be an integer >= 1 or {EXACT!r}")
    return int(value)
