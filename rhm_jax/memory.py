"""Memory of a program before anything compiles: what its models need, what is available, how many fit.

Shape letters: M models, B batch, N samples, R loss rows, D = s**L length, W width, G datasets of the
program, Q pool rows (its largest P), T test rows, k models evaluated at once.

``estimate(settings, rows)`` (bytes; no compilation: the state's shapes come from ``jax.eval_shape``):
- ``state``: one model's train state (parameters, Adam's moments, EMA), exact;
- ``step``: what one model's training step adds: its gradient and the update (2 x its parameters)
  and the activations kept for the backward pass, B x D x W floats per layer (``_TRAIN_FACTOR``
  of them per bpUNet layer, a generous guess);
- ``init``: what one model adds while its state is initialized (``train.init_state``, one jitted
  program for the grid): ``_INIT_FACTOR`` x its state. Measured (benchmarks/memory_check.py, CPU,
  2026-12-08): the process's peak grew by 3.1-3.2 x the state per model at W = 256 and 1024, i.e.
  2.1-2.2 x beyond the state, and that memory was reused by the later phases (no later phase raised
  the peak of a W=1024 grid): so a model counts ``state + max(step, init)``. Without it the sum
  fell below the measured peak from W=1024 grids of about 8 models on;
- ``evaluation``: one model of an evaluation batch: a copy of its parameters and the sampler's
  live (max(N, R), D, W) tensors (``_EVAL_FACTOR`` of them, the guess the evaluator used before);
- ``datasets``: the program's pools, tests and copy lookups, on the device once for all its models;
- ``compilation``: XLA's compiler and the per-program host buffers around it (the references and
  lookups, eager operations) on the host (``COMPILE_BYTES``; 0 on an accelerator, whose memory the
  compiler does not use). Measured: these fixed parts were 0.45-0.5 GiB for bpUNet and up to 0.74
  GiB for the transformer (W=64), above the 0.5 GiB the estimate counted before 2026-12-08.
A sub-grid of M models needs ``datasets + compilation + M (state + max(step, init)) + k evaluation``.
Checked against the peak resident memory of real sub-grids (bpUNet W = 64-1024, M = 1-8,
transformer W=64; docs/results/memory/, 2026-12-08, the 2-core AMD EPYC CPU): the estimate is 1.5-3.5
x the measured peak (before: 0.85-2.8, below it for the transformer and large W=1024 grids); on a GPU
(``bytes_limit``) it has not been measured.

``available()`` is what a run may plan to use: a GPU's ``bytes_limit`` (jax memory_stats); on the
CPU the least of /proc/meminfo's MemAvailable, the cgroup's limit less its usage (v2 or v1), the
address-space rlimit less this process's size, and the free pages (``os.sysconf``).
``models_that_fit`` takes ``MEMORY_FRACTION`` of it; a program of which not even one model fits is
refused with one line (``check``), before anything is compiled or written.
"""
from __future__ import annotations

import functools
import math
import os
import resource
from typing import Any, NamedTuple, Sequence

import jax
import numpy as np

from rhm_jax import networks, settings, train

MEMORY_FRACTION = 0.8  # of the available memory that one program may plan to use
COMPILE_BYTES = 2**30  # XLA's CPU compiler and a program's fixed host buffers (measured up to 0.74 GiB)
_TRAIN_FACTOR = 8  # B x D x W float32 activations kept per layer for the backward pass
_INIT_FACTOR = 3  # bytes beyond the state while a model is initialized, per byte of state (measured 2.2)
_EVAL_FACTOR = 24  # live (max(N, R), D, W) float32 tensors while sampling and scoring
_GIB = 2**30


class Estimate(NamedTuple):
    """Bytes a program needs: per model (state, step), per evaluated model, and once."""

    state: int
    step: int
    evaluation: int
    datasets: int
    compilation: int
    per_batch: int  # k, models evaluated at once
    init: int = 0  # bytes beyond the state while one model's state is initialized

    @property
    def per_model(self) -> int:
        """Bytes one more model of the sub-grid adds: its state, and its training step or its init."""
        return self.state + max(self.step, self.init)

    def total(self, M: int) -> int:
        """Bytes of a sub-grid of M models."""
        return self.datasets + self.compilation + M * self.per_model + self.per_batch * self.evaluation

    def describe(self) -> str:
        """One model's parts in GiB, for messages."""
        return (f"state {self.state / _GIB:.3g}, training step {self.step / _GIB:.3g}, init"
                f" {self.init / _GIB:.3g}, evaluation"
                f" {self.per_batch} x {self.evaluation / _GIB:.3g}, datasets {self.datasets / _GIB:.3g},"
                f" compilation {self.compilation / _GIB:.3g} GiB")


@functools.lru_cache(maxsize=16)
def _state_bytes(typed: settings.Settings) -> tuple[int, int]:
    """(bytes of one model's train state, of its parameters), from shapes alone."""
    g = typed.grammar
    network = networks.build(typed.network, g.v, g.s, g.L, typed.process)
    grid = train.grid_arrays([{"P": 1, "grammar_seed": 0, "data_seed": 0, "seed": 0, "lr": 0.0, "budget_steps": 1,
                               "warmup_steps": 0, "b1": 0.9, "b2": 0.999, "adam_eps": 1e-8}])
    state = jax.eval_shape(lambda: train.init_state(typed.train, network, grid))
    nbytes = lambda tree: sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))
    return nbytes(state), nbytes(state.params)


def _layers(typed: settings.Settings) -> int:
    """Layers whose B x D x W activations a training step keeps (an upper bound on their count)."""
    net, g = typed.network, typed.grammar
    if net.get("name") == "bpunet":
        return 2 * g.L + 2  # embedding, L down, L up (2W wide), readout
    return int(net.get("depth") or 1) * (4 + math.ceil(float(net.get("mlp_ratio") or 4)))


def estimate(typed: settings.Settings, rows: Sequence[dict], on_host: bool | None = None) -> Estimate:
    """What a program of these settings and grid rows needs (see the module docstring).

    ``on_host``: whether the program runs on the CPU, where compilation shares the memory (default:
    jax's default backend is the CPU).
    """
    state, params = _state_bytes(typed.compiled())
    g, t, e = typed.grammar, typed.train, typed.eval
    width = int(typed.network.get("width") or 1)
    activations = t.batch_size * g.d * width * 4 * _layers(typed) * _TRAIN_FACTOR
    evaluation = params + max(e.num_samples, e.loss_rows) * g.d * width * 4 * _EVAL_FACTOR
    pools = len(train.datasets_of(rows)) * (max(int(r["P"]) for r in rows) + typed.num_test) * g.d * 4
    on_host = jax.default_backend() == "cpu" if on_host is None else on_host
    return Estimate(state=state, step=2 * params + activations, evaluation=evaluation, datasets=4 * pools,
                    compilation=COMPILE_BYTES if on_host else 0, per_batch=max(1, e.models_per_batch),
                    init=_INIT_FACTOR * state)


# ----------------------------------------------------------------------------- what is available

def device_bytes_limit() -> int | None:
    """The first device's memory limit in bytes; None where the backend does not report it (CPU)."""
    try:
        return (jax.devices()[0].memory_stats() or {}).get("bytes_limit")
    except Exception:  # backends without memory stats raise or return None
        return None


def _read_int(path: str) -> int | None:
    """An integer file (a cgroup's limit or usage); None if absent, unlimited ('max') or unreadable."""
    try:
        with open(path) as f:
            text = f.read().strip()
        return None if text == "max" else int(text)
    except (OSError, ValueError):
        return None


def _meminfo(field: str) -> int | None:
    """A /proc/meminfo field in bytes, or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _process_size() -> int:
    """This process's virtual size in bytes (what RLIMIT_AS counts), 0 if unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def host_available() -> tuple[int | None, str]:
    """(bytes of host memory available to this process, what limits it); (None, ...) if nothing says."""
    found = []
    if (avail := _meminfo("MemAvailable")) is not None:
        found.append((avail, "MemAvailable in /proc/meminfo"))
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit = _read_int(limit_file)
        if limit is not None and limit < 2**60:
            found.append((max(0, limit - (_read_int(usage_file) or 0)), f"the cgroup limit {limit_file}"))
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        found.append((max(0, soft - _process_size()), "the address-space limit (ulimit -v)"))
    if not found:
        try:
            found.append((os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free pages (os.sysconf)"))
        except (ValueError, OSError, AttributeError):
            return None, "nothing reports the host's memory"
    return min(found)


def available() -> tuple[int | None, str]:
    """(bytes a program's device may hold, what says so): a device's bytes_limit, else the host's memory."""
    limit = device_bytes_limit()
    if limit:
        return int(limit), "the device's memory (jax memory_stats bytes_limit)"
    if jax.default_backend() != "cpu":
        return None, "the device reports no memory limit"
    return host_available()


# ----------------------------------------------------------------------------- how many fit

def models_that_fit(need: Estimate, limit: int | None) -> int | None:
    """How many models of a program fit in ``MEMORY_FRACTION`` of ``limit`` bytes (None: no limit known)."""
    if limit is None:
        return None
    room = MEMORY_FRACTION * limit - need.total(0)
    return max(0, int(room // max(1, need.per_model)))


def refusal(need: Estimate, limit: int, source: str, what: str = "a program") -> str:
    """The one line refusing a program of which not even one model fits."""
    return (f"one model of {what} needs about {need.total(1) / _GIB:.3g} GiB ({need.describe()}), more than"
            f" {MEMORY_FRACTION:.0%} of the {limit / _GIB:.3g} GiB available ({source}): lower network.width,"
            " train.batch_size, eval.num_samples, eval.loss_rows or eval.models_per_batch, or free memory")


def check(programs: Sequence[Any]) -> None:
    """ValueError (one line) if one model of some planned program (``plan.Program``) does not fit."""
    limit, source = available()
    if limit is None:
        return
    for program in programs:
        need = estimate(program.settings, program.rows)
        if models_that_fit(need, limit) == 0:
            raise ValueError(refusal(need, limit, source, f"program {program.index + 1} (models"
                                     f" {program.rows[0]['index']}..{program.rows[-1]['index']})"))
