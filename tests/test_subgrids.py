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
