"""Progress: the rate starts after compilation, restored steps are not timed, pauses are apart, and
off a terminal the lines are plain and periodic."""
import io

import pytest

from rhm_jax import progress


class Clock:
    """A settable clock."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_rate_ignores_restored_steps_and_compilation():
    clock = Clock()
    bar = progress.Progress(10_000, 0, enabled=False, clock=clock)
    bar.restored(6_000)  # done by an earlier process: 6k steps in "no time" would give a huge rate
    clock.now = 30.0  # compiling
    bar.compiled(100)
    assert bar.rate() is None and bar.eta() is None  # nothing timed yet
    clock.now = 32.0
    bar.advance(200)
    assert bar.rate() == pytest.approx(100.0)  # 200 steps in the 2 s after compilation
    assert bar.eta() == pytest.approx((10_000 - 6_300) / 100.0)
    assert bar.first_eta == pytest.approx(37.0) and bar.first_eta_at == pytest.approx(32.0)


def test_pauses_are_not_training_time_and_the_eta_counts_those_left():
    clock = Clock()
    bar = progress.Progress(1_000, 4, enabled=False, clock=clock)
    with bar.pause():  # the first evaluation compiles the evaluator: slow, and not a typical pause
        clock.now = 20.0
    bar.compiled(0)
    clock.now = 21.0
    bar.advance(100)
    with bar.pause():
        clock.now = 23.0  # a 2 s evaluation
    clock.now = 24.0
    bar.advance(100)
    assert bar.rate() == pytest.approx(100.0)  # 200 steps in 4 s minus the 2 s pause
    assert bar.eta() == pytest.approx(800 / 100.0 + 2 * 2.0)  # 2 pauses left at 2 s, not 20 s


def test_off_a_terminal_prints_plain_lines_every_interval():
    clock, stream = Clock(), io.StringIO()
    bar = progress.Progress(1_000, 0, stream=stream, interval=10.0, clock=clock)
    bar.compiled(0)
    for second in range(1, 36):
        clock.now = float(second)
        bar.advance(10)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert len(lines) == 5  # at 0 s, 10, 20, 30 s and the final line
    assert lines[-1].startswith("training  35.0%  350/1k model-steps  10 model-step/s")
    assert lines[-1].endswith("elapsed 0:35  ETA 1:05")


def test_on_a_terminal_redraws_one_line():
    clock, stream = Clock(), Terminal()
    bar = progress.Progress(100, 0, stream=stream, clock=clock)
    bar.compiled(0)
    clock.now = 1.0
    bar.advance(100)
    bar.close()
    text = stream.getvalue()
    assert text.startswith("\r") and text.count("\n") == 1 and "100.0%" in text


def test_disabled_prints_nothing_and_format_seconds():
    stream = io.StringIO()
    bar = progress.Progress(10, 1, enabled=False, stream=stream)
    bar.compiled(10)
    bar.close()
    assert stream.getvalue() == ""
    assert progress.format_seconds(3725) == "1:02:05" and progress.format_seconds(65) == "1:05"
    assert progress.format_seconds(None) == "?"
