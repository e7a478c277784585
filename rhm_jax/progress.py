"""Progress of a run: model-steps done, rate and ETA measured after compilation, terminal or log lines.

The clock that sets the rate starts when the first training call has returned (its compilation is
not counted), steps restored from a checkpoint count as done but not toward the rate, and the
pauses for evaluations and checkpoints are timed apart: the ETA is the remaining model-steps at the
training rate plus the remaining pauses at the median pause (the first one, which compiles the
evaluator, is left out once others exist). On a terminal one line is redrawn in place; otherwise
(a log file, a batch job) a plain line is printed every ``interval`` seconds and at the end.
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
                 interval: float | None = None, clock=time.monotonic):
        self.total_steps, self.total_pauses = int(total_steps), int(total_pauses)
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.terminal = bool(isatty and isatty())
        self.interval = (0.2 if self.terminal else 60.0) if interval is None else float(interval)
        self._clock = clock
        self.started = clock()
        self.done = 0  # model-steps done (restored ones included)
        self.pauses_done = 0
        self._timed_steps = 0  # model-steps trained after the clock started
        self._train_start: float | None = None  # when the first training call had returned
        self._paused = 0.0  # pause time since the clock started
        self._pause_costs: list[float] = []
        self._last_print = -float("inf")
        self._last_line = ""
        self.first_eta: float | None = None  # the first estimate (seconds left), for the record
        self.first_eta_at: float | None = None  # seconds since start when it was made

    # ------------------------------------------------------------------ events
    def restored(self, steps: int, pauses: int = 0) -> None:
        """Model-steps (and pauses) already done by an earlier process: done, but never timed."""
        self.done += int(steps)
        self.pauses_done += int(pauses)

    def compiled(self, steps: int = 0) -> None:
        """The first training call has returned (``steps`` model-steps it made): start the clock."""
        self.done += int(steps)
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
            self._pause_costs.append(cost)
            if self._train_start is not None:
                self._paused += cost
            self.pauses_done += 1
            self._show()

    @contextlib.contextmanager
    def untimed(self) -> Iterator[None]:
        """A training call that compiles (a later program's first): kept out of the rate, not a pause."""
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

    def rate(self) -> float | None:
        """Model-steps per second of training (pauses excluded), None before it can be measured."""
        if self._train_start is None or self._timed_steps <= 0:
            return None
        seconds = self._clock() - self._train_start - self._paused
        return self._timed_steps / seconds if seconds > 0 else None

    def eta(self) -> float | None:
        """Seconds left: steps at the training rate plus pauses at the median pause (None if unknown)."""
        rate = self.rate()
        if rate is None:
            return None
        left = max(self.total_steps - self.done, 0) / rate
        pauses_left = max(self.total_pauses - self.pauses_done, 0)
        if pauses_left:
            costs = self._pause_costs[1:] or self._pause_costs  # the first one compiles the evaluator
            if not costs:
                return None
            left += pauses_left * statistics.median(costs)
        return left

    def line(self) -> str:
        """One status line: percent, model-steps, rate, pauses, elapsed, ETA."""
        rate, eta = self.rate(), self.eta()
        percent = 100.0 * self.done / self.total_steps if self.total_steps else 100.0
        return (f"training {percent:5.1f}%  {_count(self.done)}/{_count(self.total_steps)} model-steps  "
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
