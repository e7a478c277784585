"""Progress of a run: model-steps done, rate and ETA measured after compilation, terminal or log lines.

The clock that sets the rate starts when the first training call has returned (its compilation is
not counted), steps restored from a checkpoint count as done but not toward the rate, and the
pauses for evaluations and checkpoints are timed apart. The ETA is the sum of what is left:

- the remaining model-steps at the training rate;
- the remaining pauses at the median pause that compiled nothing (the first pause of each program
  compiles its evaluator, so no ETA is given before one other pause is measured);
- for every program not yet begun, the start-up cost of the programs begun so far: everything that
  was neither training nor an ordinary pause (building, the training and evaluator compilations),
  per program compiled.

No ETA is given before ``min_timed_s`` seconds of training are timed. On a terminal one line is
redrawn in place; otherwise (a log file, a batch job) a plain line is printed every ``interval``
seconds and at the end.
"""
from __future__ import annotations

import contextlib
import statistics
import sys
import time
from typing import IO, Iterator


def format_seconds(seconds: float | None) -> str:
    """'1:02:03' or '2:03' for a duration in seconds, '?' when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _count(value: float) -> str:
    """A count with a k / M suffix."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return f"{value:.3g}"


class Progress:
    """Counts model-steps and pauses of one run; prints to ``stream`` (stderr) unless disabled."""

    def __init__(self, total_steps: int, total_pauses: int, enabled: bool = True, stream: IO[str] | None = None,
                 interval: float | None = None, clock=time.monotonic, programs: int = 1, min_timed_s: float = 1.0):
        self.total_steps, self.total_pauses = int(total_steps), int(total_pauses)
        self.programs = int(programs)  # compiled programs of the run, one after another
        self.min_timed_s = float(min_timed_s)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = bool(isatty and isatty())
        self.interval = (0.2 if self.terminal else 60.0) if interval is None else float(interval)
        self._clock = clock
        self.started = clock()
        self.done = 0  # model-steps done (restored ones included)
        self.pauses_done = 0  # restored ones included
        self.programs_begun = 0
        self._timed_steps = 0  # model-steps trained after the clock started, compiling calls left out
        self._untimed_steps = 0  # model-steps of the compiling calls (each program's first)
        self._compilations = 0  # programs whose first training call has returned in this process
        self._train_start: float | None = None  # when the first training call had returned
        self._paused = 0.0  # pause and untimed time since the clock started
        self._pauses_here = 0  # pauses of this process
        self._clean_costs: list[float] = []  # pauses that compiled nothing
        self._compiling_pause = True  # the next pause is the first of a program: it compiles the evaluator
        self._last_print = -float("inf")
        self._last_line = ""
        self.first_eta: float | None = None  # the first estimate (seconds left), for the record
        self.first_eta_at: float | None = None  # seconds since start when it was made

    # ------------------------------------------------------------------ events
    def restored(self, steps: int, pauses: int = 0) -> None:
        """Model-steps (and pauses) already done by an earlier process: done, but never timed."""
        self.done += int(steps)
        self.pauses_done += int(pauses)

    def begin_program(self) -> None:
        """A program begins: its build, its first pause and its first training call compile."""
        self.programs_begun += 1
        self.compiling()

    def compiling(self) -> None:
        """The next pause compiles an evaluator (a program's, or a sub-grid's of another size)."""
        self._compiling_pause = True

    def compiled(self, steps: int = 0) -> None:
        """A program's first training call has returned (``steps`` model-steps it made): start the clock."""
        self.done += int(steps)
        self._untimed_steps += int(steps)
        self._compilations += 1
        if self._train_start is None:
            self._train_start = self._clock()
        self._show()

    def advance(self, steps: int) -> None:
        """``steps`` more model-steps trained."""
        self.done += int(steps)
        if self._train_start is not None:
            self._timed_steps += int(steps)
        self._show()

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """Time an evaluation / checkpoint: kept out of the training rate, counted as a pause."""
        begin = self._clock()
        try:
            yield
        finally:
            cost = self._clock() - begin
            if not self._compiling_pause:
                self._clean_costs.append(cost)
            self._compiling_pause = False
            if self._train_start is not None:
                self._paused += cost
            self.pauses_done += 1
            self._pauses_here += 1
            self._show()

    @contextlib.contextmanager
    def untimed(self) -> Iterator[None]:
        """Work that is neither training nor a pause (a later program's build or compiling first call):
        kept out of the rate; it counts toward the start-up cost of a program."""
        begin = self._clock()
        try:
            yield
        finally:
            if self._train_start is not None:
                self._paused += self._clock() - begin

    # ------------------------------------------------------------------ estimates
    @property
    def clock_started(self) -> bool:
        """True once ``compiled`` was called."""
        return self._train_start is not None

    def _trained_s(self) -> float:
        """Seconds of timed training (pauses and untimed work excluded)."""
        return 0.0 if self._train_start is None else self._clock() - self._train_start - self._paused

    def rate(self) -> float | None:
        """Model-steps per second of training (pauses excluded), None before it can be measured."""
        seconds = self._trained_s()
        if self._timed_steps <= 0 or seconds <= 0:
            return None
        return self._timed_steps / seconds

    def pause_cost(self) -> float | None:
        """Median seconds of a pause that compiled nothing; None before one was measured."""
        return statistics.median(self._clean_costs) if self._clean_costs else None

    def startup_cost(self) -> float:
        """Seconds per program compiled so far that were neither training nor an ordinary pause: the
        build, the compilations of the training call and of the evaluator, the planning before."""
        rate, pause = self.rate(), self.pause_cost() or 0.0
        if not self._compilations or rate is None:
            return 0.0
        ordinary = self._trained_s() + self._pauses_here * pause + self._untimed_steps / rate
        return max(self.elapsed() - ordinary, 0.0) / self._compilations

    def eta(self) -> float | None:
        """Seconds left (module docstring), None until it can be measured."""
        rate = self.rate()
        if rate is None or self._trained_s() < self.min_timed_s:
            return None
        pauses_left = max(self.total_pauses - self.pauses_done, 0)
        pause = self.pause_cost()
        if pauses_left and pause is None:
            return None
        left = max(self.total_steps - self.done, 0) / rate + pauses_left * (pause or 0.0)
        begun = max(self.programs_begun, self._compilations)
        return left + max(self.programs - begun, 0) * self.startup_cost()

    def line(self) -> str:
        """One status line: percent, model-steps, rate, pauses, elapsed, ETA."""
        rate, eta = self.rate(), self.eta()
        percent = 100.0 * self.done / self.total_steps if self.total_steps else 100.0
        program = f"program {max(self.programs_begun, 1)}/{self.programs}  " if self.programs > 1 else ""
        return (f"training {percent:5.1f}%  {program}{_count(self.done)}/{_count(self.total_steps)} model-steps  "
                f"{_count(rate) if rate else '?'} model-step/s  evaluations+checkpoints "
                f"{self.pauses_done}/{self.total_pauses}  elapsed {format_seconds(self._clock() - self.started)}"
                f"  ETA {format_seconds(eta)}")

    # ------------------------------------------------------------------ output
    def _show(self, force: bool = False) -> None:
        eta = self.eta()
        if self.first_eta is None and eta is not None:
            self.first_eta, self.first_eta_at = eta, self._clock() - self.started
        if not self.enabled:
            return
        now = self._clock()
        if not force and now - self._last_print < self.interval:
            return
        self._last_print, line = now, self.line()
        if line == self._last_line:
            return
        self._last_line = line
        self.stream.write("\r" + line + "\x1b[K" if self.terminal else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Print the final line (and end the terminal line)."""
        if self.enabled:
            self._show(force=True)
            if self.terminal:
                self.stream.write("\n")
                self.stream.flush()

    def elapsed(self) -> float:
        """Seconds since this object was made."""
        return self._clock() - self.started
