"""memory: a program's needs estimated before compiling, the memory available, the split and the refusal."""
import math
import os

import jax
import numpy as np
import pytest

from rhm_jax import config as config_lib
from rhm_jax import memory, plan, program, runner, settings, subgrids, train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "sweeps", "smoke.py")


def smoke(*overrides):
    return config_lib.load(SMOKE, list(overrides))


def nbytes(tree) -> int:
    return sum(x.nbytes for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("overrides", [(), ("--config.train.ema_decay=0.99", "--config.train.mu_dtype=bfloat16"),
                                       ("--config.network.width=48",)])
def test_state_estimate_is_the_bytes_of_a_built_state(overrides):
    planned = plan.single(smoke(*overrides))
    built = program.build(planned.settings, planned.rows)
    state = train.init_state(planned.settings.train, built.setup.network, built.grid)
    need = memory.estimate(planned.settings, planned.rows)
    assert len(planned.rows) * need.state == nbytes(state)  # exact, from shapes alone
    assert need.step >= 2 * nbytes(state.params) // len(planned.rows)
    assert need.total(3) - need.total(2) == need.per_model == need.state + max(need.step, need.init)


def test_compilation_counts_on_the_host_only():
    planned = plan.single(smoke())
    assert memory.estimate(planned.settings, planned.rows, on_host=True).compilation == memory.COMPILE_BYTES
    assert memory.estimate(planned.settings, planned.rows, on_host=False).compilation == 0


def test_models_that_fit():
    need = memory.Estimate(state=100, step=50, evaluation=30, datasets=20, compilation=0, per_batch=2)
    assert need.total(4) == 20 + 4 * 150 + 2 * 30
    assert memory.models_that_fit(need, None) is None  # nothing known: no split
    assert memory.models_that_fit(need, math.ceil((need.total(4) + 1) / memory.MEMORY_FRACTION)) == 4
    assert memory.models_that_fit(need, int(need.total(1) / memory.MEMORY_FRACTION) - 1) == 0


def test_host_memory_is_the_tightest_limit(monkeypatch):
    monkeypatch.setattr(memory, "_meminfo", lambda field: 64 * 2**30)
    files = {"/sys/fs/cgroup/memory.max": 8 * 2**30, "/sys/fs/cgroup/memory.current": 2**30}
    monkeypatch.setattr(memory, "_read_int", files.get)
    assert memory.host_available() == (7 * 2**30, "the cgroup limit /sys/fs/cgroup/memory.max")
    files["/sys/fs/cgroup/memory.max"] = None  # 'max': no cgroup limit
    assert memory.host_available() == (64 * 2**30, "MemAvailable in /proc/meminfo")


def test_the_real_host_reports_some_memory():
    available, source = memory.host_available()
    assert available is not None and available > 0 and source


def limit_for(planned, models: int) -> int:
    """A memory limit in which exactly ``models`` models of the program fit."""
    need = memory.estimate(planned.settings, planned.rows)
    return math.ceil((need.total(models) + need.state // 2) / memory.MEMORY_FRACTION)


def test_a_grid_larger_than_memory_is_split_before_compiling(monkeypatch, tmp_path):
    planned = plan.single(smoke())  # 4 models
    built = program.build(planned.settings, planned.rows)
    monkeypatch.setattr(memory, "available", lambda: (limit_for(planned, 2), "a test's limit"))
    assert subgrids.models_per_program(built) == 2
    assert subgrids.partition(built, str(tmp_path)) == [(0, [0, 1]), (1, [2, 3])]
    monkeypatch.setattr(memory, "available", lambda: (limit_for(planned, 3), "a test's limit"))
    assert subgrids.models_per_program(built) == 3
    capped = plan.single(smoke("--config.run.max_models_per_program=1"))
    assert subgrids.models_per_program(program.build(capped.settings, capped.rows)) == 1  # the least of both


def test_a_grid_that_cannot_hold_one_model_is_refused_with_one_line(monkeypatch, tmp_path):
    planned = plan.single(smoke())
    monkeypatch.setattr(memory, "available", lambda: (limit_for(planned, 1) // 2, "a test's limit"))
    workdir = tmp_path / "run"
    with pytest.raises(ValueError) as refused:
        runner.run(smoke(), str(workdir), progress=False)
    message = str(refused.value)
    assert "\n" not in message and "GiB available (a test's limit)" in message
    assert message.startswith("one model of program 1 (models 0..3) needs about")
    assert not workdir.exists()  # refused before anything was written
    with pytest.raises(ValueError, match="GiB available"):  # and by the sub-grid split itself
        subgrids.models_per_program(program.build(planned.settings, planned.rows))


def test_the_launcher_prints_the_refusal_and_exits_2(monkeypatch, tmp_path, capsys):
    from launch import local as launch_local
    monkeypatch.setattr(memory, "available", lambda: (2**20, "a test's limit"))
    assert launch_local.main(["--config", SMOKE, "--workdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: one model of program 1") and "a test's limit" in errors[0]
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()
