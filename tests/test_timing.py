"""The wall-time split: phases on a fake clock, compilation moved to its own part, JAX's events."""
import jax
import jax.numpy as jnp
import pytest

from rhm_jax import timing

BACKEND = timing.COMPILE_EVENTS[2]
TRACE = timing.COMPILE_EVENTS[0]


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_nested_phases_pause_the_outer_one_and_none_counts_nowhere():
    clock = Clock()
    split = timing.Split(clock=clock)
    with split.phase("train"):
        clock.now += 3
        with split.phase("sample"):
            clock.now += 2
            with split.phase(None):  # writing rows: the remainder
                clock.now += 7
            clock.now += 1
        with split.phase("checkpoint"):
            clock.now += 0.5
        clock.now += 4
    clock.now += 10  # outside every phase
    assert split.snapshot() == dict(dict.fromkeys(timing.PARTS, 0.0), train=7.0, sample=3.0, checkpoint=0.5)
    assert timing.remainder(split.snapshot(), 27.5) == pytest.approx(17.0)


def test_compilation_inside_a_phase_moves_to_its_compile_part():
    clock = Clock()
    split = timing.Split(clock=clock)
    with split.phase("train"):
        clock.now += 10
        split.compile_span(TRACE, 1.0, 2.0)
        split.compile_span(TRACE, 0.5, 3.0)  # an outer jit's tracing holds the inner one: counted once
        split.compile_span(BACKEND, 3.0, 7.0)
        split.compile_span("/jax/something/else", 0.0, 9.0)  # not a compilation
    with split.phase("score"):
        clock.now += 1
        split.compile_span(BACKEND, 0.0, 5.0)  # never more than the phase's own time
    with split.phase("setup"):
        clock.now += 2
        split.compile_span(BACKEND, 0.0, 1.0)  # small programs of the set-up stay set-up
    got = split.snapshot()
    assert got["train"] == 3.5 and got["compile_train"] == 6.5
    assert got["score"] == 0.0 and got["compile_eval"] == 1.0
    assert got["setup"] == 2.0
    assert sum(got.values()) == pytest.approx(13.0)


def test_snapshot_counts_the_open_phase_and_rebase_adds_an_earlier_process():
    clock = Clock()
    split = timing.Split(base={"train": 5.0, "sample": 1.0}, clock=clock)
    split.rebase({"train": 1.0, "report": None})
    with split.phase("train"):
        clock.now += 2
        assert split.snapshot()["train"] == 8.0  # mid-phase, as a train row is written
    assert split.snapshot()["train"] == 8.0 and split.snapshot()["sample"] == 1.0
    with pytest.raises(ValueError, match="phase 'training' must be one of"):
        with split.phase("training"):
            pass


def test_jax_compilations_are_heard_while_listening_only():
    split = timing.Split()
    f = jax.jit(lambda x: jnp.sin(x) * 3.0 + jnp.arange(17.0))
    with split.listening():
        with split.phase("sample"):
            jax.block_until_ready(f(jnp.float32(1.0)))
        compiled = split.snapshot()["compile_eval"]
        with split.phase("sample"):
            jax.block_until_ready(f(jnp.float32(2.0)))  # compiled already: nothing more
        assert split.snapshot()["compile_eval"] == compiled
    assert compiled > 0
    g = jax.jit(lambda x: jnp.cos(x) - 1.0)
    with split.phase("train"):
        jax.block_until_ready(g(jnp.float32(1.0)))  # not listening: counted as training
    assert split.snapshot()["compile_train"] == 0.0 and split.snapshot()["train"] > 0


def test_format_split_names_every_part_and_the_remainder():
    parts = dict(dict.fromkeys(timing.PARTS, 0.0), train=6.0, sample=3.0)
    line = timing.format_split(parts, 10.0)
    assert line.startswith("wall time 10.0 s: compile_train 0.0 s (0%)")
    assert "train 6.0 s (60%)" in line and "sample 3.0 s (30%)" in line and line.endswith("other 1.0 s (10%)")
    with timing.NO_SPLIT.phase("train"):  # counts nothing, accepts any phase
        pass
