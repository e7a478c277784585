"""Process-level XLA settings for CPU runs, set by the entry points before jax is imported.

This module imports nothing of jax (it must run before jax reads ``XLA_FLAGS``, which it does once,
when its CPU backend starts).

Why (issue 25): split over ``n`` emulated host devices (one per core,
``--xla_force_host_platform_device_count``), each device runs its own share of a grid's models
(``run.shard_models``, ``rhm_jax/sharding.py``) as a program of its own. On the 2-core CPU that
trained W=64 grids of 4-24 models 11-25% faster than one device with XLA's two threads per op,
W=256 M=8 8% and W=1024 M=2 6% faster, and the quick job in 0.80 of the time; but one model (which
keeps one device: ``sharding.use_mesh`` never gives a program more devices than models) ran
4-10% slower in a two-device process than in a one-device one, small-width grids round their
training differently on another device count (the bits of a run then depend on the machine's
cores), and ``rhm_jax.memory`` does not count the per-device copies of the datasets
(docs/results/cpu_speed/README.md, 2026-12-07). So it is asked for, not the default:
``RHM_CPU_DEVICES=cores`` (one per core, at most ``MAX_DEVICES``) or ``RHM_CPU_DEVICES=n``.

What ``apply`` does, only when all of these hold: jax is not yet imported in this process, the
platform will be the CPU (``JAX_PLATFORMS`` unset or ``cpu``, and no GPU or TPU plugin of jax is
installed), ``XLA_FLAGS`` does not already name the flag (the user's value wins), and
``RHM_CPU_DEVICES`` asks for more than one device. Then it adds
``--xla_force_host_platform_device_count=n``. Unset (or 1), XLA's default stays: one device.
``record`` gives what was decided, for the run's provenance (``config.json``).
"""
from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, Mapping, MutableMapping

ENV = "RHM_CPU_DEVICES"
DEVICE_FLAG = "--xla_force_host_platform_device_count"
MAX_DEVICES = 8  # beyond a few cores a device per core leaves each model fewer threads than it can use
# jax plugins whose presence means the default backend is not the CPU
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin", "libtpu")

_applied: dict[str, Any] = {}


def cpu_count() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def requested_devices(environ: Mapping[str, str], cores: int) -> int:
    """The host device count: ``RHM_CPU_DEVICES`` if set (an integer >= 1, or 'cores' for
    min(cores, MAX_DEVICES)), else 1 (XLA's default)."""
    text = environ.get(ENV)
    if text is None or text.strip() == "":
        return 1
    if text.strip().lower() == "cores":
        return max(1, min(int(cores), MAX_DEVICES))
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{ENV}={text!r} must be an integer >= 1 or 'cores' (1: one host device, XLA's default)")
    return value


def on_cpu(environ: Mapping[str, str], plugins: tuple[str, ...] = ACCELERATOR_PLUGINS) -> bool:
    """True when jax will run on the CPU: JAX_PLATFORMS unset or 'cpu', and no accelerator plugin installed."""
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms.split(",")[0] == "cpu"
    return not any(importlib.util.find_spec(name) is not None for name in plugins)


def flags_for(environ: Mapping[str, str], cores: int,
              plugins: tuple[str, ...] = ACCELERATOR_PLUGINS) -> tuple[str | None, str]:
    """(the XLA_FLAGS value to set, or None to leave it; why), for this environment."""
    current = environ.get("XLA_FLAGS", "")
    if not on_cpu(environ, plugins):
        return None, "not a CPU run"
    if DEVICE_FLAG in current:
        return None, "XLA_FLAGS already names the host device count"
    n = requested_devices(environ, cores)
    if n == 1:
        return None, f"one host device (XLA's default; {ENV}=cores asks for one per core)"
    return f"{current} {DEVICE_FLAG}={n}".strip(), f"{n} host devices, one per core"


def apply(environ: MutableMapping[str, str] | None = None) -> dict[str, Any]:
    """Set XLA_FLAGS for this process (see the module docstring); returns ``record()``.

    Called at the top of every entry point, before anything imports jax. Bad ``RHM_CPU_DEVICES``
    raises ValueError naming the variable.
    """
    environ = os.environ if environ is None else environ
    before = environ.get("XLA_FLAGS")
    if "jax" in sys.modules:
        _applied.update(set_by_rhm_jax=False, reason="jax was imported before the entry point set its flags",
                        XLA_FLAGS=before)
        return record()
    value, reason = flags_for(environ, cpu_count())
    if value is not None:
        environ["XLA_FLAGS"] = value
    _applied.update(set_by_rhm_jax=value is not None, reason=reason, XLA_FLAGS_before=before)
    return record()


def record() -> dict[str, Any]:
    """What the process runs with: XLA_FLAGS now, and whether and why rhm_jax set them (for provenance)."""
    out = {"XLA_FLAGS": os.environ.get("XLA_FLAGS"), ENV: os.environ.get(ENV)}
    out.update({k: v for k, v in _applied.items() if k != "XLA_FLAGS"})
    if not _applied:
        out.update(set_by_rhm_jax=False, reason="no entry point applied rhm_jax's flags")
    return out
