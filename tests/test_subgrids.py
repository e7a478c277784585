"""subgrids: the stored split of a program's models, and what a changed split does to what has not started."""
import json
import os

import pytest

from rhm_jax import config as config_lib
from rhm_jax import memory, plan, program, results, subgrids

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "sweeps", "smoke.py")


def built_with(*overrides):
    planned = plan.single(config_lib.load(SMOKE, list(overrides)))  # 4 models
    return program.build(planned.settings, planned.rows)


def stored(workdir):
    with open(os.path.join(workdir, "checkpoints", subgrids.PARTITION_FILE)) as f:
        return json.load(f)["parts"]


def crashed_at_step_0(workdir, parts, rows_at=(0,)):
    """A work directory as a run leaves it when it died after its step-0 checkpoint (an OOM at the first call)."""
    os.makedirs(os.path.join(workdir, "checkpoints"))
    results.write_json_atomic(os.path.join(workdir, "checkpoints", subgrids.PARTITION_FILE), {"parts": parts})
    os.makedirs(os.path.join(subgrids.part_dir(workdir, 0), "0"))
    results.write_rows(os.path.join(workdir, results.METRICS_FILE),
                       [{"model": m, "step": s} for m in parts[0] for s in rows_at])


def test_a_changed_cap_splits_again_what_has_not_passed_step_0(tmp_path):
    workdir = str(tmp_path)
    crashed_at_step_0(workdir, [[0, 1, 2, 3]])
    assert subgrids.partition(built_with("--config.run.max_models_per_program=2"), workdir) == [
        (0, [0, 1]), (1, [2, 3])]
    assert stored(workdir) == [[0, 1], [2, 3]]
    kept = [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.startswith("part_0.resplit-")]
    assert len(kept) == 1 and os.listdir(os.path.join(workdir, "checkpoints", kept[0])) == ["0"]  # moved, not lost
    assert not os.path.exists(subgrids.part_dir(workdir, 0))
    # the same cap again: nothing to do; a larger one joins the parts again (none has started)
    assert subgrids.partition(built_with("--config.run.max_models_per_program=2"), workdir) == [
        (0, [0, 1]), (1, [2, 3])]
    assert subgrids.partition(built_with(), workdir) == [(0, [0, 1, 2, 3])]


@pytest.mark.parametrize("progress", ["checkpoint", "rows"])
def test_a_part_that_went_past_step_0_keeps_its_split(tmp_path, progress):
    workdir = str(tmp_path)
    crashed_at_step_0(workdir, [[0, 1], [2, 3]], rows_at=(0, 8) if progress == "rows" else (0,))
    if progress == "checkpoint":
        os.makedirs(os.path.join(subgrids.part_dir(workdir, 0), "8"))
    # part 0 went on: kept; part 1 never started: split again for a cap of 1
    assert subgrids.partition(built_with("--config.run.max_models_per_program=1"), workdir) == [
        (0, [0, 1]), (1, [2]), (2, [3])]
    assert stored(workdir) == [[0, 1], [2], [3]]
    assert sorted(os.listdir(subgrids.part_dir(workdir, 0))) == ["0", "8"] if progress == "checkpoint" else ["0"]


def test_a_later_program_started_keeps_the_split(tmp_path):
    """Part numbers after a program's parts belong to the next program: they are not renumbered."""
    workdir = str(tmp_path)
    crashed_at_step_0(workdir, [[0, 1, 2, 3], [4]])
    assert subgrids.partition(built_with("--config.run.max_models_per_program=2"), workdir) == [(0, [0, 1, 2, 3])]
    assert stored(workdir) == [[0, 1, 2, 3], [4]]


def test_memory_decides_the_new_split_too(tmp_path, monkeypatch):
    workdir = str(tmp_path)
    crashed_at_step_0(workdir, [[0, 1, 2, 3]])
    built = built_with()
    need = memory.estimate(built.settings, built.grid_rows)
    monkeypatch.setattr(memory, "available", lambda: (int((need.total(1) + 1) / memory.MEMORY_FRACTION) + 1, "test"))
    assert subgrids.partition(built, workdir) == [(0, [0]), (1, [1]), (2, [2]), (3, [3])]


@pytest.mark.heavy
@pytest.mark.parametrize("per_batch", [0])  # k > 1 may move last bits by a model's place in its batch
def test_a_models_evaluation_does_not_depend_on_its_sub_grid(per_batch):
    """bpUNet at width 16 (where a vmap over M models rounded losses differently, issue 26): every metric
    of a model evaluated in the whole grid, in a sub-grid of two and alone is the same, bit for bit."""
    import jax
    import numpy as np
    built = built_with(f"--config.eval.models_per_batch={per_batch}")

    def evaluate(positions):
        part = subgrids.make_part(built, positions)
        state = built.place.init_state(built.settings.train, built.setup.network, part.grid)
        return jax.device_get(built.evaluator(state, part.grid, jax.random.key(3)))

    whole = evaluate([0, 1, 2, 3])
    for positions in ([0, 1], [2, 3], [0], [3]):
        alone = evaluate(positions)
        differing = [k for k in whole if not np.array_equal(np.asarray(whole[k])[positions], alone[k], equal_nan=True)]
        assert differing == [], positions


def quick(*overrides):
    """The CPU reproduction's quick sweep at width 64, two P x two seeds: 4 models (bpUNet, batch 64, v=8)."""
    return config_lib.load(os.path.join(ROOT, "sweeps", "reproduction_cpu_hour.py") + ":quick",
                           ["--config.network.width=64", "--config.train.seeds=(0,1)", *overrides])


def table(rows):
    return sorted(rows, key=lambda r: (r["model"], r["step"]))


@pytest.mark.slow
def test_layout_keys_give_the_same_rows(tmp_path):
    """Issue 26: the whole grid, sub-grids of two (run.max_models_per_program), job-array slices
    (run.grid_slice) give the same rows, every column, bit for bit,
    and the same training losses, at the shapes where each model's reductions are large enough for
    XLA's CPU backend to sum them alike at any M (keys.LAYOUT_ROUNDING)."""
    from rhm_jax import runner

    def run(name, *overrides):
        workdir = str(tmp_path / name)
        rows = runner.run(quick(*overrides), workdir, progress=False)
        return table(rows), table(results.read_rows(os.path.join(workdir, "train.jsonl")))

    whole, whole_train = run("whole")
    assert len(whole) == 4 * 7 and len(whole[0]) > 80
    capped = run("capped", "--config.run.max_models_per_program=2")
    assert stored(str(tmp_path / "capped")) == [[0, 1], [2, 3]]
    sliced = [run(f"slice{k}", f"--config.run.grid_slice={k}/2") for k in (0, 1)]
    for rows, train_rows in (capped, tuple(table(a + b) for a, b in zip(*sliced))):
        assert rows == whole  # every column of every row
        assert [(r["model"], r["step"], r["loss"]) for r in train_rows] == [
            (r["model"], r["step"], r["loss"]) for r in whole_train]


@pytest.mark.heavy
def test_a_rerun_with_a_smaller_cap_after_an_oom_splits_the_grid_and_finishes(tmp_path, monkeypatch, caplog):
    """Issue 26: a run that died of memory at its first training call (after its step-0 checkpoint)
    left a one-part partition; re-run with run.max_models_per_program=2 it splits again and finishes,
    with the same step-0 rows."""
    import logging
    from rhm_jax import runner
    workdir = str(tmp_path / "run")
    real_build = runner.build

    def out_of_memory(*args):
        raise RuntimeError("RESOURCE_EXHAUSTED: out of memory (simulated)")

    monkeypatch.setattr(runner, "build", lambda *args: real_build(*args)._replace(step_fn=out_of_memory))
    with pytest.raises(RuntimeError, match="RESOURCE_EXHAUSTED"):
        runner.run(config_lib.load(SMOKE), workdir, progress=False)
    assert stored(workdir) == [[0, 1, 2, 3]]
    first = table(results.read_rows(os.path.join(workdir, results.METRICS_FILE)))
    assert {r["step"] for r in first} == {0}
    monkeypatch.setattr(runner, "build", real_build)
    with caplog.at_level(logging.INFO):
        rows = runner.run(config_lib.load(SMOKE, ["--config.run.max_models_per_program=2"]), workdir, progress=False)
    assert "other layout settings" in caplog.text and "split again into 2 sub-grid(s) of at most 2" in caplog.text
    assert stored(workdir) == [[0, 1], [2, 3]]
    assert any(n.startswith("part_0.resplit-") for n in os.listdir(os.path.join(workdir, "checkpoints")))
    assert [r for r in table(rows) if r["step"] == 0] == first  # evaluated again, bit for bit
    assert len(rows) == 4 * 8  # smoke: 64 steps, one evaluation per octave
