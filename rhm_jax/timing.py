"""Where a run's wall time goes: compilation, training, evaluation, checkpoints, set-up, the report.

A ``Split`` adds the seconds spent inside named phases (``with split.phase("train"): ...``), read
from ``time.monotonic`` at the boundaries the run loop already has; it adds no wait of its own but
one: between the sampler's program and the scoring program of an evaluation (``subgrids.
evaluation_rows``), which the scoring waits for anyway. A phase entered inside another pauses the
outer one, so no second is counted twice. JAX's own compilation events (tracing, lowering and
XLA's compilation, ``jax.monitoring``) that happen inside a phase are moved out of it: inside
'train' they go to 'compile_train', inside 'sample' or 'score' to 'compile_eval'; elsewhere (a
small program compiled while building or restoring) they stay in that phase.

PARTS, in seconds, summed over the processes that ran the run (like its ``wall_s``):
- compile_train: tracing and compiling the training chunk (each program's first call);
- compile_eval: the same of the evaluator's two programs (each program's or sub-grid size's first);
- train: the training calls, compilation excluded (dispatch and waits on the chunks' results);
- sample: the ancestral sampler of every evaluation (forward passes; ``evaluate.Evaluator.sample``);
- score: coherence (parsing), copies, correlations and the train/test losses of every evaluation,
  and turning them into rows;
- checkpoint: checkpoint saves, and restoring (or initializing) each sub-grid's state;
- setup: planning, drawing the datasets, the evaluation references, the partition into sub-grids;
- report: what the entry point does after training (``launch.quickstart``: the clustering learner,
  tables and figures; 0 for ``launch.local``).
The remainder, ``other`` = wall - sum(PARTS) (``remainder``), is what lies between the phases:
writing the rows and event files, the summary table, progress lines, the interpreter's start-up
and imports before the run began (not in ``wall_s``, so not here either).
"""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator, Mapping

PARTS = ("compile_train", "compile_eval", "train", "sample", "score", "checkpoint", "setup", "report")
COMPILED_IN = {"train": "compile_train", "sample": "compile_eval", "score": "compile_eval"}
# jax.monitoring's time spans of one compilation (jax._src.dispatch): tracing to a jaxpr (nested
# for a jit traced inside another, hence the union of spans), lowering to MLIR, XLA's compilation.
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


class Split:
    """Seconds per part (``PARTS``) of a run, with the parts of earlier processes as ``base``."""

    def __init__(self, base: Mapping[str, float] | None = None, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self.seconds = {part: float((base or {}).get(part) or 0.0) for part in PARTS}
        self._stack: list[list] = []  # open phases, innermost last: [name, segment start, compile spans]

    def rebase(self, base: Mapping[str, float]) -> None:
        """Add an earlier process's parts (read back from its rows on resume)."""
        for part in PARTS:
            self.seconds[part] += float(base.get(part) or 0.0)

    @contextlib.contextmanager
    def phase(self, name: str | None) -> Iterator[None]:
        """Count the time inside as ``name`` (a part; None: the remainder), pausing the enclosing phase."""
        if name is not None and name not in PARTS:
            raise ValueError(f"phase {name!r} must be one of {PARTS} or None")
        now = self._clock()
        if self._stack:
            self._close_segment(self._stack[-1], now)
        self._stack.append([name, now, []])
        try:
            yield
        finally:
            now = self._clock()
            self._close_segment(self._stack.pop(), now)
            if self._stack:
                self._stack[-1][1] = now  # the enclosing phase resumes

    def _close_segment(self, frame: list, now: float) -> None:
        """Credit the time since the frame's segment began: compilation to its compile part."""
        name, began, spans = frame
        frame[2] = []
        if name is None:
            return
        elapsed = max(now - began, 0.0)
        compiling = min(sum(end - start for start, end in spans), elapsed)
        target = COMPILED_IN.get(name, name)
        self.seconds[target] += compiling
        self.seconds[name] += elapsed - compiling

    def compile_span(self, event: str, start: float, end: float, **_: object) -> None:
        """A ``jax.monitoring`` time span: a compilation inside the open phase (spans it contains are
        replaced by it: an inner jit's tracing happens inside the outer one's)."""
        if event not in COMPILE_EVENTS or not self._stack:
            return
        spans = self._stack[-1][2]
        spans[:] = [(s, e) for s, e in spans if not (start <= s and e <= end)] + [(start, end)]

    @contextlib.contextmanager
    def listening(self) -> Iterator["Split"]:
        """Receive JAX's compilation events while inside (one listener, removed on exit)."""
        import jax  # here: readers of a work directory import this module without JAX
        jax.monitoring.register_event_time_span_listener(self.compile_span)
        try:
            yield self
        finally:
            jax.monitoring.unregister_event_time_span_listener(self.compile_span)

    def snapshot(self) -> dict:
        """The parts so far (an open phase's current segment included), rounded to ms."""
        now = self._clock()
        seconds = dict(self.seconds)
        for name, began, spans in self._stack[-1:]:
            if name is not None:
                elapsed = max(now - began, 0.0)
                compiling = min(sum(end - start for start, end in spans), elapsed)
                seconds[COMPILED_IN.get(name, name)] += compiling
                seconds[name] += elapsed - compiling
        return {part: round(value, 3) for part, value in seconds.items()}


class NoSplit:
    """A Split that counts nothing (callers that time nothing)."""

    @contextlib.contextmanager
    def phase(self, name: str | None) -> Iterator[None]:
        yield


NO_SPLIT = NoSplit()


def remainder(parts: Mapping[str, float], wall_s: float) -> float:
    """The wall time outside every part: ``other``."""
    return float(wall_s) - sum(float(parts.get(part) or 0.0) for part in PARTS)


def format_split(parts: Mapping[str, float], wall_s: float) -> str:
    """One line: each part's seconds and share of the wall time, then the remainder."""
    cells = [f"{part} {float(parts.get(part) or 0.0):.1f} s ({100 * float(parts.get(part) or 0.0) / wall_s:.0f}%)"
             if wall_s > 0 else f"{part} {float(parts.get(part) or 0.0):.1f} s" for part in PARTS]
    rest = remainder(parts, wall_s)
    cells.append(f"other {rest:.1f} s" + (f" ({100 * rest / wall_s:.0f}%)" if wall_s > 0 else ""))
    return f"wall time {wall_s:.1f} s: " + ", ".join(cells)
