"""launch.slurm: job-array planning, resubmission, requeue on preemption, merged results.

The end-to-end test runs a two-slice array with submitit's local executor: slice 0 is preempted
(SIGUSR2, as SLURM signals before a requeue: submitit calls SliceTask.checkpoint and restarts it),
slice 1 is SIGKILLed and resubmitted by running the launcher again. Both resume from their rhm_jax
checkpoints, and the merged table equals a single-process run of the whole grid, value for value.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import submitit

from launch import slurm
from rhm_jax import config as config_lib
from rhm_jax import results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "sweeps", "smoke.py")
# Smaller compiled programs in the worker processes: the LLVM optimization level only costs time
# here, and both sides of every comparison use the same flags.
FAST_XLA = "--xla_backend_optimization_level=0"


def smoke(*overrides: str):
    return config_lib.load(SMOKE, list(overrides))


# ----------------------------------------------------------------------------- planning (no jax work)


def test_slice_config_changes_only_the_slice():
    config = smoke()
    sliced = slurm.slice_config(config, 1, 3)
    assert sliced.run.grid_slice == "1/3" and config.run.grid_slice == ""
    assert config_lib.differences(config_lib.to_dict(config), config_lib.to_dict(sliced)) == ["run.grid_slice"]


def test_prepare_writes_the_array_and_resubmits_only_unfinished(tmp_path):
    root = str(tmp_path / "array")
    config = smoke()
    assert slurm.prepare(config, root, 2) == [0, 1]
    stored = results.read_config_json(root)
    assert [row["index"] for row in stored["grid"]] == [0, 1, 2, 3]  # the full grid
    os.makedirs(slurm.slice_dir(root, 0))
    open(os.path.join(slurm.slice_dir(root, 0), results.SUMMARY_FILE), "w").close()
    assert slurm.prepare(config, root, 2) == [1]
    with pytest.raises(ValueError, match="--slices=3"):
        slurm.prepare(config, root, 3)
    with pytest.raises(ValueError, match="different config"):
        slurm.prepare(smoke("--config.train.num_steps=32"), root, 2)


@pytest.mark.parametrize("K", [0, 5])
def test_slices_must_fit_the_grid(tmp_path, K):
    with pytest.raises(ValueError, match=r"--slices=.* must lie in \[1, M=4\]"):
        slurm.prepare(smoke(), str(tmp_path), K)


def test_checkpoint_requeues_the_same_call():
    task = slurm.SliceTask()
    delayed = task.checkpoint({"a": 1}, "/w/slice_0", [{"grammar.m": 3}])
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function is task and delayed.args == ({"a": 1}, "/w/slice_0", [{"grammar.m": 3}])


def test_bad_executor_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="--executor"):
        slurm.make_executor("pbs", str(tmp_path))
    assert slurm.make_executor("local", str(tmp_path)).cluster == "local"


def _fake_workdir(path: str, config, models: list[int], rows_per_model: int) -> None:
    """A work directory with a config.json and hand-written metrics rows for the given models."""
    os.makedirs(path)
    grid = [dict(index=m, P=16, seed=m, lr=3e-3, budget_steps=8, budget_epochs=4.0) for m in models]
    results.write_json_atomic(os.path.join(path, results.CONFIG_FILE),
                              {"config": config_lib.to_dict(config), "provenance": {}, "grid": grid})
    results.write_rows(os.path.join(path, results.METRICS_FILE),
                       [dict(model=m, step=s, P=16, seed=m, lr=3e-3, validity_l1=0.1 * m + 0.01 * s)
                        for m in models for s in range(rows_per_model)])


def test_load_merges_slices_into_one_run(tmp_path):
    root = str(tmp_path / "array")
    config = smoke()
    slurm.prepare(config, root, 2)
    _fake_workdir(slurm.slice_dir(root, 0), slurm.slice_config(config, 0, 2), [0, 1], 3)
    _fake_workdir(slurm.slice_dir(root, 1), slurm.slice_config(config, 1, 2), [2, 3], 3)
    table = results.load(root)
    assert sorted(set(table["model"])) == [0, 1, 2, 3] and len(table) == 12
    assert set(table["workdir"]) == {os.path.abspath(root)}  # one run for the report
    assert (table["v"] == config.grammar.v).all()
    merged = table.sort_values(["model", "step"])
    np.testing.assert_allclose(merged["validity_l1"], [0.1 * m + 0.01 * s for m in range(4) for s in range(3)])


def test_one_layout_per_work_directory(tmp_path, capsys):
    """Issue 26: launch.local on a job-array root and launch.slurm on a local work directory resumed in
    the other layout, and results.load merged both (two versions of every model)."""
    from launch import local
    from rhm_jax import runner

    root = str(tmp_path / "array")
    config = smoke()
    slurm.prepare(config, root, 2)
    _fake_workdir(slurm.slice_dir(root, 0), slurm.slice_config(config, 0, 2), [0, 1], 3)
    with pytest.raises(ValueError, match=r"is a job-array root .*: run launch.slurm"):
        runner.run(config, root, progress=False)
    assert local.main(["--config", SMOKE, "--workdir", root, "--no_progress"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not os.path.exists(os.path.join(root, "checkpoints")) and not os.path.exists(os.path.join(root, ".lock"))
    run_dir = str(tmp_path / "local")
    _fake_workdir(run_dir, config, [0, 1, 2, 3], 3)
    with pytest.raises(ValueError, match=r"is a run's own work directory .*: run launch.local"):
        slurm.prepare(config, run_dir, 2)
    assert not os.path.exists(os.path.join(run_dir, slurm.ARRAY_FILE))
    # both layouts in one directory: refused, not merged
    results.write_rows(os.path.join(root, results.METRICS_FILE), [dict(model=0, step=0, validity_l1=0.5)])
    with pytest.raises(ValueError, match="holds two layouts"):
        results.load(root)


SLICE_HANG = """
import sys, time
from rhm_jax import config as config_lib
from rhm_jax import runner
real_build = runner.build


def slow_build(*args, **kwargs):
    sys.stderr.write("HANG setup\\n")
    sys.stderr.flush()
    time.sleep(600)  # a Python handler runs, then the sleep goes on: as a compilation in C++ would
    return real_build(*args, **kwargs)


runner.build = slow_build
from launch import slurm
config = slurm.slice_config(config_lib.load(sys.argv[1], []), 0, 2)
slurm.SliceTask()(config_lib.to_dict(config), sys.argv[2])
"""


@pytest.mark.heavy
def test_a_slice_task_stops_at_once_on_sigterm_during_set_up(tmp_path):
    """Issue 26's fault recount: a job-array task sent SIGTERM while it built its program went on
    building (and compiling) until its first device call; it now ends at once with one line, as
    launch.local does (its SIGUSR2, submitit's requeue signal, still waits for the boundary)."""
    script = tmp_path / "slice_hang.py"
    script.write_text(SLICE_HANG)
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, str(script), SMOKE, str(tmp_path / "slice_0")], cwd=ROOT, env=env,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stderr:
            lines.append(line)
            if line.startswith("HANG setup"):
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        try:
            rest = proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            rest = "still running 60 s after SIGTERM"
    finally:
        proc.kill()
    err = "".join(lines) + rest
    assert proc.wait() == 143, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("stopped by SIGTERM during set-up or compilation"), err[-3000:]
    assert "Traceback" not in err


# ----------------------------------------------------------------------------- end to end


def _task_pid(job, timeout: float = 300) -> int:
    """Pid of the task process that submitit's local controller started for ``job``."""
    controller = job._process.pid
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with open(f"/proc/{controller}/task/{controller}/children") as f:
                children = f.read().split()
        except FileNotFoundError:
            children = []
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise AssertionError(f"job {job.job_id} started no task within {timeout} s")


def _freeze_after_checkpoint(pids: dict[str, int], at_least: int, timeout: float = 600) -> list[int]:
    """SIGSTOP each process as soon as its work directory has a checkpoint at a step >= at_least;
    returns those steps, in the order of ``pids``."""
    deadline = time.time() + timeout
    steps: dict[str, int] = {}
    while len(steps) < len(pids) and time.time() < deadline:
        for workdir, pid in pids.items():
            if workdir not in steps:
                step = _newest_checkpoint(workdir)
                if step is not None and step >= at_least:
                    os.kill(pid, signal.SIGSTOP)
                    steps[workdir] = step
        time.sleep(0.02)
    assert len(steps) == len(pids), f"no checkpoint at step >= {at_least} within {timeout} s: {steps}"
    return [steps[w] for w in pids]


def _signal_quietly(pid: int, signum: int) -> None:
    """Send a signal to a process that may have ended."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _newest_checkpoint(workdir: str) -> int | None:
    """Newest committed checkpoint step of the slice's first part, or None."""
    directory = os.path.join(workdir, "checkpoints", "part_0")
    steps = [int(n) for n in (os.listdir(directory) if os.path.isdir(directory) else []) if n.isdigit()]
    return max(steps) if steps else None


def _comparable(table):
    """Rows sorted by (model, step), without the columns that name the directory or time the run."""
    table = table.drop(columns=[c for c in ("workdir", "wall_s", "model_steps_per_s") if c in table])
    table = table.sort_values(["model", "step"])
    return table.reset_index(drop=True)


@pytest.mark.slow
def test_preempted_and_killed_slices_merge_into_the_single_process_table(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", FAST_XLA)
    monkeypatch.setenv("PYTHONPATH", ROOT)
    # Five processes compile the same two programs: share them through jax's persistent cache.
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax_cache"))
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
    monkeypatch.chdir(ROOT)
    overrides: list[str] = []  # smoke: checkpoints at the 8 evaluation steps 0, 1, 2, 4, ..., 64
    reference_dir = str(tmp_path / "single")
    # Sub-grids of 2 models, as in the slices: the same compiled program, so the tables must be
    # identical (a program holding 4 models may round float32 sums differently and flip a sample).
    reference = subprocess.Popen(
        [sys.executable, "-m", "launch.local", "--config", SMOKE, "--workdir", reference_dir, "--no_progress",
         *overrides, "--config.run.max_models_per_program=2"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)

    jobs, pids = [], []
    try:
        root = str(tmp_path / "array")
        config = smoke(*overrides)
        slices = slurm.prepare(config, root, 2)
        executor = slurm.make_executor("local", os.path.join(root, "submitit"), timeout_min=30)
        jobs += slurm.submit(config, root, slices, 2, executor)
        pids += [_task_pid(job) for job in jobs]
        preempted, killed = pids
        # Each slice is frozen (SIGSTOP) as soon as it has a checkpoint, so the signals below land
        # mid-run however loaded the machine is (unfrozen, a slice could finish first).
        at = _freeze_after_checkpoint({slurm.slice_dir(root, 0): preempted, slurm.slice_dir(root, 1): killed}, 2)
        os.kill(preempted, signal.SIGUSR2)  # SLURM's warning before a preemption: checkpoint and requeue
        os.kill(killed, signal.SIGKILL)  # no warning at all: the job dies
        os.kill(preempted, signal.SIGCONT)  # the pending SIGUSR2 is handled at the next device-call boundary
        assert jobs[0].result() == slurm.slice_dir(root, 0)  # requeued by submitit, resumed, finished
        assert slurm.wait(jobs[1:], [1]) == [1]
        assert "Requeued" in (jobs[0].stdout() or "") + (jobs[0].stderr() or "")

        assert slurm.prepare(config, root, 2) == [1]  # the launcher run again resubmits the dead slice only
        again = slurm.submit(config, root, [1], 2, executor)
        jobs += again
        assert slurm.wait(again, [1]) == []
        assert slurm.prepare(config, root, 2) == []
        manifest = json.load(open(os.path.join(root, slurm.ARRAY_FILE)))
        assert [sorted(s["jobs"]) for s in manifest["submissions"]] == [["0", "1"], ["1"]]
        output, _ = reference.communicate(timeout=600)
        assert reference.returncode == 0, output[-3000:]
    finally:  # never leave workers behind (or frozen) when an assertion fails midway
        for pid in pids:
            _signal_quietly(pid, signal.SIGCONT)
        if reference.poll() is None:
            reference.kill()
        for job in jobs:
            if job.state == "RUNNING":
                job.cancel()
    merged, single = _comparable(results.load(root)), _comparable(results.load(reference_dir))
    assert list(merged["model"]) == list(single["model"]) and list(merged["step"]) == list(single["step"])
    assert max(at) < 64  # both slices really were interrupted mid-run
    assert sorted(merged.columns) == sorted(single.columns)
    for column in single.columns:
        left, right = merged[column].to_numpy(), single[column].to_numpy()
        assert all(a == b or (a != a and b != b) for a, b in zip(left, right)), column  # NaN == NaN
