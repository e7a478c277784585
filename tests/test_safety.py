"""Nothing lost, nothing silently wrong: read errors, locks, checkpoint integrity, signals,
divergence, hangs and one-line errors (issue 14; each test names the finding it covers).

Reuses test_sweep's smoke reference run and its persistent compilation cache (module fixtures).
"""
import errno
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import chex
import orbax.checkpoint as ocp
import pytest

from launch import local as launch_local
from launch import report as launch_report
from launch import score as launch_score
from rhm_jax import analysis, checkpoint, lock, rescore, results, runner
from test_checkpoint import flip_a_byte
from test_runner import (ROOT, SMOKE, _damage_latest, by_key, final_state,  # noqa: F401
                        reference, smoke, snapshot)


@pytest.fixture(autouse=True)
def no_stale_log_handlers():
    """launch.*.main points the root logger at the sys.stderr of its test (pytest's capture, closed
    afterwards): drop such handlers so a later test's log lines do not print logging errors."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, logging.StreamHandler) and getattr(handler.stream, "closed", False):
            root.removeHandler(handler)


def copy_of(ref_dir, tmp_path, name="run"):
    workdir = str(tmp_path / name)
    shutil.copytree(ref_dir, workdir)
    return workdir


def metrics(workdir):
    return results.read_rows(os.path.join(workdir, "metrics.jsonl"))


def step_dir(workdir, step):
    return os.path.join(runner.part_dir(workdir, 0), str(step))


def last_line(text):
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def launch(workdir, cache, *extra):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "launch.local", "--config", SMOKE, "--workdir", workdir,
                             "--no_progress", *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


# ----------------------------------------------------------------------------- 1. read failures

@pytest.mark.heavy
def test_1_a_transient_read_error_stops_with_one_line_and_changes_nothing(reference, tmp_path, monkeypatch, capsys):
    config, ref_dir, _ = reference
    workdir = copy_of(ref_dir, tmp_path)
    before = snapshot(workdir)

    def eio(self, *args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(ocp.CheckpointManager, "restore", eio)
    with pytest.raises(checkpoint.ReadFailure, match="could not read the checkpoint at step 64 .*nothing was changed"):
        runner.run(config, workdir, progress=False)
    assert snapshot(workdir) == before  # no checkpoint moved aside, no row dropped
    assert launch_local.main(["--config", SMOKE, "--workdir", workdir, "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert last_line(err).startswith("error: could not read the checkpoint") and "Traceback" not in err
    assert snapshot(workdir) == before


@pytest.mark.heavy
def test_1_no_readable_checkpoint_refuses_to_start_over_existing_rows(reference, tmp_path):
    """The user deleted checkpoints/ to save disk and re-ran: 32 rows must not become 0."""
    config, ref_dir, ref_rows = reference
    workdir = copy_of(ref_dir, tmp_path)
    shutil.rmtree(os.path.join(workdir, "checkpoints"))
    with pytest.raises(ValueError, match=r"holds 28 rows of models 0..3 up to step 64, but no readable checkpoint"):
        runner.run(config, workdir, progress=False)
    assert metrics(workdir) == ref_rows


# ----------------------------------------------------------------------------- 2. locks

@pytest.mark.heavy
def test_2_a_locked_workdir_is_refused_by_run_force_and_score(reference, tmp_path):
    config, ref_dir, _ = reference
    workdir = copy_of(ref_dir, tmp_path)
    before = snapshot(workdir)
    with lock.hold(workdir):
        with pytest.raises(lock.Busy, match="is in use by another process .*changed nothing"):
            runner.run(config, workdir, progress=False)
        with pytest.raises(lock.Busy):
            runner.run(smoke("--config.train.batch_size=4"), workdir, force=True, progress=False)
        with pytest.raises(lock.Busy):
            rescore.score(workdir, step=16)
        assert launch_report.main(["--workdir", workdir]) == 2  # it would write into workdir/report
    assert snapshot(workdir) == before and os.listdir(tmp_path) == ["run"]  # --force moved nothing


@pytest.mark.slow
def test_2_two_processes_on_one_workdir_one_runs_one_is_refused(reference, tmp_path, compile_cache):
    _, _, ref_rows = reference
    workdir = str(tmp_path / "run")
    # checkpoint_every=1 (an execution setting) keeps the winner busy long after the loser starts
    first, second = (launch(workdir, compile_cache, "--config.run.checkpoint_every=1") for _ in range(2))
    errs = [p.communicate(timeout=600)[1] for p in (first, second)]
    codes = [first.returncode, second.returncode]
    assert sorted(codes) == [0, 2], errs
    loser = errs[codes.index(2)]
    assert re.search(r"is in use by another (unknown )?process", last_line(loser)) and "Traceback" not in loser
    assert by_key(metrics(workdir)) == by_key(ref_rows)  # no duplicate (model, step) rows


# ----------------------------------------------------------------------------- 3. integrity

@pytest.mark.heavy
def test_3_a_flipped_byte_is_caught_by_score_and_run_falls_back(reference, tmp_path, caplog):
    """A run stopped after its step-32 checkpoint (64 not yet written), whose newest checkpoint then
    lost a bit: score refuses it; the run falls back to 16 and ends with the reference's rows."""
    config, ref_dir, ref_rows = reference
    workdir = copy_of(ref_dir, tmp_path)
    shutil.rmtree(step_dir(workdir, 64))
    flip_a_byte(runner.part_dir(workdir, 0), 32)
    # The flip fails the checksum, or, when it lands in a compressed chunk's framing, the decoding:
    # either way the checkpoint is caught as broken (seen intermittently in CI).
    with pytest.raises(checkpoint.BrokenCheckpoint, match="step 32 .*(fails its checksum|is unreadable)"):
        rescore.score(workdir, step=32)
    with caplog.at_level(logging.INFO):
        rows = runner.run(config, workdir, progress=False)
    assert "checkpoint at step 32 is broken" in caplog.text
    assert "fails its checksum" in caplog.text or "is unreadable" in caplog.text
    assert "from the checkpoint at step 16" in caplog.text
    assert rows == ref_rows
    chex.assert_trees_all_equal(final_state(workdir, config), final_state(ref_dir, config))
    copies = [f for f in os.listdir(workdir) if f.startswith("metrics.dropped-")]
    assert len(copies) == 1  # the rows of steps 32 and 64 were copied before being dropped
    assert by_key(results.read_rows(os.path.join(workdir, copies[0]))) == by_key(
        [r for r in ref_rows if r["step"] > 16])


# ----------------------------------------------------------------------------- 4. divergence

@pytest.mark.heavy
def test_4_lr_100_collapse_is_flagged_in_rows_summary_and_analysis(tmp_path):
    config = smoke("--config.train.seeds=(0,)", "--config.train.lr=(3e-3, 100.0)")  # same program size
    rows = runner.run(config, str(tmp_path), progress=False)
    blown = [r for r in rows if r["lr"] == 100.0 and r["step"] >= 1]
    assert blown and all(r["collapsed"] and r["loss_blowup"] for r in blown)
    assert all(r["validity_l1"] > 0.9 for r in blown)  # what made them look like the best models
    assert not any(r["collapsed"] or r["loss_blowup"] or r["diverged"] for r in rows if r["lr"] != 100.0)
    summary = open(tmp_path / "summary.txt").read().split("\n\n")[0].splitlines()  # the table
    for line in summary[2:]:  # after the line saying the reading, and the header
        cells = line.split()
        if cells[3] == "100":
            assert cells[5:9] == ["-"] * 4 and cells[-1] == "loss@1", line  # no validity shown
        else:
            assert cells[-1] == "-", line
    df = results.load(str(tmp_path))
    assert sorted(analysis.healthy(df)["model"].unique()) == [0, 2]
    assert analysis.diverged_models(df)["flag"].tolist() == ["loss@1", "loss@1"]


# ----------------------------------------------------------------------------- 5. lost rows

@pytest.mark.heavy
def test_5_deleted_metrics_rows_are_re_evaluated_from_kept_checkpoints(reference, tmp_path, caplog):
    config, ref_dir, ref_rows = reference
    workdir = copy_of(ref_dir, tmp_path)
    os.remove(os.path.join(workdir, "metrics.jsonl"))
    with caplog.at_level(logging.WARNING):
        rows = runner.run(config, workdir, progress=False)
    assert "re-evaluating them from their checkpoints" in caplog.text
    assert by_key(rows) == by_key(ref_rows)


@pytest.mark.heavy
def test_5_missing_rows_without_their_checkpoint_are_refused(reference, tmp_path):
    config, ref_dir, ref_rows = reference
    workdir = copy_of(ref_dir, tmp_path)
    results.write_rows(os.path.join(workdir, "metrics.jsonl"), [r for r in ref_rows if r["step"] != 8])
    shutil.rmtree(step_dir(workdir, 8))
    before = snapshot(workdir)
    with pytest.raises(ValueError, match=r"lacks the rows of evaluation steps \[8\] of models 0..3"):
        runner.run(config, workdir, progress=False)
    assert snapshot(workdir) == before


# ----------------------------------------------------------------------------- 6. signals

@pytest.mark.heavy
def test_6_sigint_saves_a_checkpoint_and_the_resume_equals_an_uninterrupted_run(reference, tmp_path, monkeypatch):
    """SIGINT arrives during the device call from step 32: it finishes (step 48, not an evaluation
    step), a checkpoint is saved there, and a re-run continues from it."""
    config, ref_dir, ref_rows = reference
    workdir = str(tmp_path)
    real = runner.build
    calls = []

    def interrupting(typed, rows):
        progs = real(typed, rows)

        def step_fn(*args):
            calls.append(1)
            if len(calls) == 7:  # the call from step 32 to 48 (steps_per_call=16)
                os.kill(os.getpid(), signal.SIGINT)
            return progs.step_fn(*args)

        return progs._replace(step_fn=step_fn)

    monkeypatch.setattr(runner, "build", interrupting)
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(runner.Interrupted, match="stopped by SIGINT at step 48 of models 0..3"):
        runner.run(config, workdir, progress=False)
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    with checkpoint.Checkpointer(runner.part_dir(workdir, 0), read_only=True) as ckpt:
        assert ckpt.steps()[-1] == 48
    assert max(r["step"] for r in metrics(workdir)) == 32
    monkeypatch.setattr(runner, "build", real)
    assert runner.run(config, workdir, progress=False) == ref_rows
    chex.assert_trees_all_equal(final_state(workdir, config), final_state(ref_dir, config))


@pytest.mark.slow
def test_6_sigterm_in_a_subprocess_then_resume_equals_an_uninterrupted_run(reference, tmp_path, compile_cache):
    config, ref_dir, ref_rows = reference
    workdir = str(tmp_path / "run")
    part = runner.part_dir(workdir, 0)
    process = launch(workdir, compile_cache, "--config.run.checkpoint_every=1")
    deadline = time.time() + 300
    # a checkpoint past step 0: training has begun (before, during compilation, SIGTERM stops at once)
    while not (os.path.isdir(part) and any(p.isdigit() and int(p) > 0 for p in os.listdir(part))):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert last_line(err).startswith("stopped: stopped by SIGTERM at step") and "Traceback" not in err
    assert not os.path.exists(os.path.join(workdir, "summary.txt"))
    restart = launch(workdir, compile_cache)
    _, err = restart.communicate(timeout=600)
    assert restart.returncode == 0, err[-3000:]
    assert by_key(metrics(workdir)) == by_key(ref_rows)
    chex.assert_trees_all_equal(final_state(workdir, config), final_state(ref_dir, config))


# ----------------------------------------------------------------------------- 7. hangs

def test_7_a_huge_depth_is_rejected_without_computing_p_max(tmp_path):
    """L=40 used to hang computing m**((s**L-1)//(s-1)); the timeout only bounds a regression."""
    workdir = str(tmp_path / "run")
    done = subprocess.run([sys.executable, "-m", "launch.local", "--config", SMOKE, "--workdir", workdir,
                           "--config.grammar.L=40"], cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert last_line(done.stderr).startswith("error: grammar.L=40 with grammar.s=2 gives sequences of s**L = 2**40")
    assert not os.path.exists(workdir)


# ----------------------------------------------------------------------------- 8-11. one-line errors

def run_cli(workdir, *extra):
    return launch_local.main(["--config", SMOKE, "--workdir", workdir, "--no_progress", *extra])


@pytest.mark.heavy
@pytest.mark.parametrize("content, message", [
    ("[1, 2]", "config.json must hold a JSON object"),
    ('{"config": ', "config.json is not valid JSON"),
])
def test_8_a_damaged_config_json_is_one_line_naming_it(reference, tmp_path, capsys, content, message):
    _, ref_dir, _ = reference
    workdir = copy_of(ref_dir, tmp_path)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(content)
    assert run_cli(workdir) == 2
    err = capsys.readouterr().err
    assert message in last_line(err) and "Traceback" not in err


@pytest.mark.heavy
@pytest.mark.parametrize("parts, message", [
    ([[0, 1], [2, 3]], r"holds models \[0, 1, 2, 3\] but partition.json assigns models \[0, 1\]"),
    ([[0, 5]], r"partition.json must split the models' positions 0, 1, ... into runs of consecutive models"),
])
def test_8_an_edited_partition_is_named(reference, tmp_path, capsys, parts, message):
    _, ref_dir, _ = reference
    workdir = copy_of(ref_dir, tmp_path)
    with open(os.path.join(workdir, "checkpoints", runner.PARTITION_FILE), "w") as f:
        json.dump({"parts": parts}, f)
    assert run_cli(workdir) == 2
    assert re.search(message, last_line(capsys.readouterr().err))


def test_8_workdir_that_is_a_file_is_one_line(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("mine")
    assert run_cli(str(path)) == 2
    assert last_line(capsys.readouterr().err) == f"error: workdir={str(path)!r} is a file, not a directory"


@pytest.mark.heavy
def test_8_disk_full_while_writing_rows_or_a_checkpoint_is_one_line(reference, tmp_path, monkeypatch, capsys):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path))

    with monkeypatch.context() as patch:
        patch.setattr(results.MetricsWriter, "write", full)
        assert run_cli(str(tmp_path / "a")) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in last_line(err) and "Traceback" not in err

    def full_in_orbax(*args, **kwargs):  # orbax raises its own errors from the OS error
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as cause:
            raise RuntimeError("Task exception was never retrieved\n  ... asyncio ...") from cause

    with monkeypatch.context() as patch:
        patch.setattr(ocp.CheckpointManager, "save", full_in_orbax)
        assert run_cli(str(tmp_path / "b")) == 2
    err = capsys.readouterr().err
    assert last_line(err).startswith("error: [Errno 28] could not write the checkpoint of step 0 in")
    assert last_line(err).endswith("No space left on device")


@pytest.mark.heavy
def test_9_a_directory_holding_only_a_stale_temp_file_is_a_new_run(tmp_path):
    config = smoke()
    (tmp_path / "config.json.tmp").write_text('{"config": {"gram')  # a first write cut short
    rows = runner.run(config, str(tmp_path), progress=False)
    assert {r["step"] for r in rows} == {0, 1, 2, 4, 8, 16, 32, 64}


@pytest.mark.heavy
def test_10_score_refuses_an_empty_checkpoint_folder_and_skips_broken_steps(reference, tmp_path, capsys, caplog):
    _, ref_dir, ref_rows = reference
    workdir = copy_of(ref_dir, tmp_path)
    _damage_latest(runner.part_dir(workdir, 0), 8)
    with caplog.at_level(logging.WARNING):
        by_step = rescore.score(workdir)
    assert sorted(by_step) == [0, 1, 2, 4, 16, 32, 64] and "skipping step 8" in caplog.text
    assert by_step[16] == [r for r in ref_rows if r["step"] == 16]
    empty = copy_of(ref_dir, tmp_path, "empty")
    for name in os.listdir(runner.part_dir(empty, 0)):
        shutil.rmtree(os.path.join(runner.part_dir(empty, 0), name))
    assert launch_score.main(["--workdir", empty]) == 2
    assert "holds no checkpoint to score" in last_line(capsys.readouterr().err)


@pytest.mark.heavy
def test_11_prefixes_are_not_options_and_force_moves_only_work_directories(reference, tmp_path, monkeypatch, capsys):
    _, ref_dir, _ = reference
    with pytest.raises(SystemExit) as exited:  # not --force: argparse's unknown-option exit
        run_cli(str(tmp_path / "x"), "--f")
    assert exited.value.code == 2
    assert "unknown option --f; did you mean --force?" in last_line(capsys.readouterr().err)
    assert not (tmp_path / "x").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert run_cli(str(mine), "--force") == 2
    assert "not an rhm_jax work directory" in last_line(capsys.readouterr().err)
    assert (mine / "notes.txt").read_text() == "keep me"
    workdir = copy_of(ref_dir, tmp_path)
    monkeypatch.chdir(workdir)
    assert launch_local.main(["--config", SMOKE, "--workdir", ".", "--force"]) == 2
    assert "it is the current directory or holds it" in last_line(capsys.readouterr().err)
    assert sorted(os.listdir(tmp_path)) == ["mine", "run"]  # nothing moved, nothing created


@pytest.mark.parametrize("case", ["empty_name", "foreign", "foreign_force"])
def test_a_refused_workdir_is_left_without_a_lock_file(tmp_path, monkeypatch, capsys, case):
    """Issue 26: `--workdir ''` and a non-empty directory that is not a work directory were refused
    with one line but left a `.lock` file there."""
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("not a run")
    monkeypatch.chdir(here)
    args = ["--config", SMOKE, "--workdir", "" if case == "empty_name" else str(here), "--no_progress"]
    assert launch_local.main(args + (["--force"] if case == "foreign_force" else [])) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert sorted(os.listdir(here)) == ["notes.txt"]


@pytest.mark.heavy
def test_config_json_edited_to_another_width_is_one_line_and_renames_no_checkpoint(reference, tmp_path, capsys):
    """Issue 26: every checkpoint (10 of 10) was renamed broken-<step>-..., then 'no readable checkpoint
    is left'; the checkpoints were intact, written for width 16."""
    _, ref_dir, ref_rows = reference
    workdir = copy_of(ref_dir, tmp_path)
    path = os.path.join(workdir, results.CONFIG_FILE)
    with open(path) as f:
        stored = json.load(f)
    stored["config"]["network"]["width"] = 24
    with open(path, "w") as f:
        json.dump(stored, f)
    before = sorted(os.listdir(runner.part_dir(workdir, 0)))
    assert run_cli(workdir, "--config.network.width=24") == 2
    line = last_line(capsys.readouterr().err)
    assert re.match(r"error: checkpoint at step 64 in .* was written for another state or config than this run's"
                    r" \(leaf .* was saved with per-model shape \(.*16.*\) float32, the run expects \(.*24.*\)", line)
    assert sorted(os.listdir(runner.part_dir(workdir, 0))) == before
    assert metrics(workdir) == metrics(ref_dir)


HANG = """
import sys, time
from rhm_jax import runner
real_build, calls = runner.build, []


def hang(where):
    sys.stderr.write(f"HANG {where}\\n")
    sys.stderr.flush()
    time.sleep(600)  # a Python handler runs, then the sleep goes on: as a compilation in C++ would


def slow_build(*args, **kwargs):
    if sys.argv[1] == "setup":
        hang("setup")
    built = real_build(*args, **kwargs)
    step_fn = built.step_fn

    def step(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            hang("device")
        return step_fn(*a, **k)
    return built._replace(step_fn=step)


runner.build = slow_build
from launch import local
sys.exit(local.main(sys.argv[2:]))
"""


@pytest.mark.heavy
@pytest.mark.parametrize("where, signals, status, message", [
    ("setup", [signal.SIGTERM], 143, "stopped by SIGTERM during set-up or compilation: nothing to save yet"),
    ("setup", [signal.SIGINT], 130, "stopped by SIGINT during set-up or compilation: nothing to save yet"),
    ("device", [signal.SIGINT, signal.SIGINT], 130, "stopped at once by a second Ctrl-C"),
])
def test_a_stop_signal_outside_a_device_call_ends_the_run_at_once(tmp_path, where, signals, status, message):
    """Issue 26: SIGTERM during set-up or compilation was ignored for 10-15 min (its handler only set a
    flag read after the next device call); issue 22: a second Ctrl-C stops at once."""
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    workdir = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, str(script), where, "--config", SMOKE, "--workdir", workdir,
                             "--no_progress"], cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith(f"HANG {where}"):
            break
    for signum in signals:
        time.sleep(1.0)
        proc.send_signal(signum)
    try:
        rest = proc.communicate(timeout=120)[1]
    finally:
        proc.kill()
    err = "".join(lines) + rest
    assert proc.returncode == status, err
    assert last_line(err).startswith(message) and "Traceback" not in err
