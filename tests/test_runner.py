"""The run loop on the smoke grid (4 models): records, resume after a stop or a SIGKILL, fallback past
a broken checkpoint, re-scoring, sub-grids, refusals.

All runs share one persistent compilation cache (also used by the subprocesses), and the in-process
runs share program.build's memo, so the grid is compiled once per size.
"""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import chex
import jax
import jax.numpy as jnp
import pytest

from launch import local as launch_local
from launch import score as launch_score
from rhm_jax import checkpoint, plan, program, rescore, results, sharding, runner, subgrids, timing
from rhm_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "sweeps", "smoke.py")
STEPS = [0, 1, 2, 4, 8, 16, 32, 64]  # smoke: 64 steps, one evaluation per octave


def smoke(*overrides):
    return config_lib.load(SMOKE, list(overrides))


def by_key(rows):
    return sorted(rows, key=lambda r: (r["model"], r["step"]))


def assert_rows_close(rows, expected):
    """Same rows; floats to 1e-5 (a grid of another size vectorizes its reductions differently)."""
    assert [sorted(r) for r in rows] == [sorted(r) for r in expected]
    for row, want in zip(rows, expected):
        for key, value in want.items():
            if isinstance(value, float):
                assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (key, row, want)
            else:
                assert row[key] == value, (key, row, want)


def final_state(workdir, config):
    """The newest checkpointed state of every model, stacked in grid order."""
    planned = plan.single(config)
    progs = program.build(planned.settings, planned.rows)
    states = []
    for i, part in subgrids.stored_parts(progs, workdir):
        with checkpoint.Checkpointer(runner.part_dir(workdir, i), read_only=True) as ckpt:
            state, _ = ckpt.restore(ckpt.steps()[-1], subgrids.restore_target(progs, part.grid))
        states.append(sharding.unpad(state, len(part.rows)))
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *states)


def train_rows(workdir):
    """The train table without its timing columns (which differ from run to run)."""
    rows = results.read_rows(os.path.join(workdir, results.TRAIN_FILE))
    timing_columns = ("wall_s", "model_steps_per_s", "wall_split_s")
    return by_key([{k: v for k, v in r.items() if k not in timing_columns} for r in rows])


def table_lines(workdir):
    """summary.txt's table (the wall-time line after it left out)."""
    return open(os.path.join(workdir, "summary.txt")).read().split("\n\n")[0].splitlines()


def assert_split_adds_up(split, wall_s):
    """Every part of a wall-time split >= 0 and, with the remainder, the wall time."""
    assert set(split) == set(timing.PARTS) | {"other"}
    assert all(split[part] >= 0 for part in timing.PARTS), split
    assert sum(split.values()) == pytest.approx(wall_s, abs=0.01)
    # the remainder (rows, summary, progress lines) is a small share of a run, even one of seconds
    assert -0.01 <= split["other"] <= 0.25 * wall_s + 0.5, split


def snapshot(workdir):
    """Every file under workdir with its bytes (to show that something was left untouched); the
    lock file is left out: taking the lock rewrites its holder line."""
    out = {}
    for d, _, files in os.walk(workdir):
        for f in files:
            if f == ".lock":
                continue
            path = os.path.join(d, f)
            with open(path, "rb") as fh:
                out[os.path.relpath(path, workdir)] = fh.read()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, compile_cache):
    """An uninterrupted run of the smoke grid: (config, workdir, rows)."""
    config = smoke()
    workdir = str(tmp_path_factory.mktemp("reference"))
    rows = runner.run(config, workdir, progress=False)
    return config, workdir, rows


@pytest.mark.heavy
def test_run_records_every_evaluation(reference):
    config, workdir, rows = reference
    assert [(r["model"], r["step"]) for r in by_key(rows)] == [(m, s) for m in range(4) for s in STEPS]
    assert results.read_rows(os.path.join(workdir, "metrics.jsonl")) == rows
    # one train row per model and chunk (16 steps per call, cut at every evaluation step)
    chunk_ends = [1, 2, 4, 8, 16, 32, 48, 64]
    assert [(r["model"], r["step"]) for r in train_rows(workdir)] == [(m, s) for m in range(4) for s in chunk_ends]
    assert all(r["loss"] > 0 and r["epoch"] == r["step"] * 8 / grid_P for r, grid_P in
               ((r, [16, 16, 64, 64][r["model"]]) for r in train_rows(workdir)))
    provenance = results.read_config_json(workdir)["provenance"]
    assert provenance["wall_time_s"] > 0
    split = provenance["wall_split_s"]  # where the wall time went
    assert_split_adds_up(split, provenance["wall_time_s"])
    assert all(split[part] > 0 for part in ("train", "sample", "score", "checkpoint", "setup")), split
    assert split["report"] == 0  # runner.run draws no report
    for row in results.read_rows(os.path.join(workdir, results.TRAIN_FILE)):  # as they stood at each chunk
        assert set(row["wall_split_s"]) == set(timing.PARTS) and sum(row["wall_split_s"].values()) <= row["wall_s"]
    assert open(os.path.join(workdir, "summary.txt")).read().splitlines()[-1] == results.split_line(workdir)
    assert results.split_line(workdir).startswith(f"wall time {provenance['wall_time_s']:.1f} s: compile_train ")
    grid = results.read_config_json(workdir)["grid"]
    assert [(g["P"], g["seed"]) for g in grid] == [(16, 0), (16, 1), (64, 0), (64, 1)]
    for r in rows:
        assert r["P"] == grid[r["model"]]["P"] and r["epoch"] == r["step"] * 8 / r["P"]
        assert 0 <= r["validity_l1"] <= 1 and r["diverged"] is False
    with checkpoint.Checkpointer(runner.part_dir(workdir, 0), read_only=True) as ckpt:
        assert ckpt.steps() == STEPS  # evaluation steps are kept
    assert (final_state(workdir, config).step == 64).all()
    summary = table_lines(workdir)
    assert summary[0] == ("each model at its best evaluation (lowest test loss: with common random numbers where"
                          " test_loss_se is logged, else the mean over diffusion-time windows):")
    best = {r["model"]: r["step"] for r in (results.pick([r for r in rows if r["model"] == m]) for m in range(4))}
    assert len(summary) == 6 and [line.split()[:4] for line in summary[2:]] == [
        [str(m), str(P), str(seed), str(best[m])] for m, (P, seed) in enumerate([(16, 0), (16, 1), (64, 0), (64, 1)])]


@pytest.mark.heavy
def test_kept_evaluation_checkpoints_follow_run_keep_evaluations(reference, tmp_path):
    _, _, ref_rows = reference
    points = {0, 1, 2, 3, 4, 6, 8, 11, 16, 23, 30}
    assert runner.kept_evaluations(points, "all", [30]) == points
    assert runner.kept_evaluations(points, "octaves", [23, 30]) == {0, 1, 2, 4, 8, 16, 23, 30}
    assert runner.kept_evaluations(points, "none", [30]) == set()
    workdir = str(tmp_path)
    rows = runner.run(smoke("--config.run.keep_evaluations=none"), workdir, progress=False)
    assert by_key(rows) == by_key(ref_rows)  # the same run, only fewer checkpoints on disk
    with checkpoint.Checkpointer(runner.part_dir(workdir, 0), read_only=True) as ckpt:
        assert ckpt.steps() == [32, 64]  # run.keep_last=2
    with pytest.raises(ValueError, match=r"run.keep_evaluations='some' must be one of"):
        config_lib.validate(smoke("--config.run.keep_evaluations=some"))


class _Stop(Exception):
    pass


@pytest.mark.heavy
def test_resume_after_a_stop_equals_an_uninterrupted_run(reference, tmp_path, monkeypatch, caplog):
    config, ref_dir, ref_rows = reference
    config = smoke("--config.run.checkpoint_every=24")  # an execution setting: same results
    workdir = str(tmp_path)
    save = checkpoint.Checkpointer.save

    def stop_at_32(self, step, state, meta):
        if step == 32:  # the rows of step 32 are written, its checkpoint is not
            raise _Stop
        save(self, step, state, meta)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", stop_at_32)
    with pytest.raises(_Stop):
        runner.run(config, workdir, progress=False)
    assert max(r["step"] for r in results.read_rows(os.path.join(workdir, "metrics.jsonl"))) == 32
    monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
    kept = [r for r in results.read_rows(os.path.join(workdir, results.TRAIN_FILE)) if r["step"] <= 24]
    earlier = max(kept, key=lambda r: r["wall_s"])  # what the resumed process starts from
    with caplog.at_level(logging.INFO):
        rows = runner.run(config, workdir, progress=False)
    assert "from the checkpoint at step 24 (4 later metrics rows dropped)" in caplog.text
    assert rows == ref_rows
    # the resumed process adds its parts to the earlier one's (up to its last kept chunk)
    provenance = results.read_config_json(workdir)["provenance"]
    assert_split_adds_up(provenance["wall_split_s"], provenance["wall_time_s"])
    assert provenance["wall_time_s"] > earlier["wall_s"]
    for part in ("train", "sample", "score", "checkpoint", "setup"):
        assert provenance["wall_split_s"][part] > earlier["wall_split_s"][part] > 0, part
    # the chunks after step 24 were dropped, then redone once (checkpoint_every=24 also cuts a chunk)
    ends = [1, 2, 4, 8, 16, 24, 32, 48, 64]
    assert [(r["model"], r["step"]) for r in train_rows(workdir)] == [(m, s) for m in range(4) for s in ends]
    chex.assert_trees_all_equal(final_state(workdir, config), final_state(ref_dir, config))
    with checkpoint.Checkpointer(runner.part_dir(workdir, 0), read_only=True) as ckpt:
        assert ckpt.steps() == sorted(STEPS + [48])  # 24 pruned: neither among the last 2 nor evaluated


@pytest.mark.heavy
def test_a_work_directory_older_than_a_schema_key_resumes_from_its_checkpoints(reference, tmp_path, monkeypatch):
    config, _, ref_rows = reference
    workdir = str(tmp_path)
    # config.json and checkpoints as a version without train.p_below_batch wrote them
    old = config_lib.to_dict(config)
    del old["train"]["p_below_batch"]
    grid = results.to_json_value(plan.make_grid(config)[1])
    results.write_json_atomic(os.path.join(workdir, "config.json"), {"config": old, "provenance": {}, "grid": grid})
    save, hashes = checkpoint.Checkpointer.save, set()

    def stop_at_32(self, step, state, meta):
        if step == 32:
            raise _Stop
        hashes.add(meta["config_hash"])
        save(self, step, state, meta)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", stop_at_32)
    with pytest.raises(_Stop):
        runner.run(config, workdir, progress=False)
    monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
    assert hashes == {config_lib.config_hash(old)}  # the hash that version saved its checkpoints with
    assert runner.run(config, workdir, progress=False) == ref_rows


def _damage_latest(part_directory, step):
    data = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(part_directory, str(step))) for f in fs
            if f"state{os.sep}d{os.sep}" in os.path.join(d, f)]
    biggest = max(data, key=os.path.getsize)
    with open(biggest, "r+b") as f:
        f.truncate(os.path.getsize(biggest) // 2)


@pytest.mark.heavy
def test_broken_latest_checkpoint_falls_back_and_completes(reference, tmp_path, caplog):
    config, ref_dir, ref_rows = reference
    workdir = str(tmp_path / "run")
    shutil.copytree(ref_dir, workdir)
    _damage_latest(runner.part_dir(workdir, 0), 64)
    with caplog.at_level(logging.INFO):
        rows = runner.run(config, workdir, progress=False)
    assert "checkpoint at step 64 is broken, falling back to the previous one" in caplog.text
    assert "from the checkpoint at step 32 (4 later metrics rows dropped)" in caplog.text
    assert rows == ref_rows and train_rows(workdir) == train_rows(ref_dir)
    chex.assert_trees_all_equal(final_state(workdir, config), final_state(ref_dir, config))
    assert any(p.startswith("broken-64-") for p in os.listdir(runner.part_dir(workdir, 0)))


@pytest.mark.heavy
def test_score_reproduces_evaluation_rows_and_touches_nothing(reference, capsys):
    config, workdir, ref_rows = reference
    before = snapshot(os.path.join(workdir, "checkpoints")), snapshot(workdir)["metrics.jsonl"]
    assert launch_score.main(["--workdir", workdir, "--step", "16"]) == 0
    scored = results.read_rows(os.path.join(workdir, "score_16_32_20.jsonl"))
    assert scored == [r for r in ref_rows if r["step"] == 16]
    assert "step 16:" in capsys.readouterr().out
    assert (snapshot(os.path.join(workdir, "checkpoints")), snapshot(workdir)["metrics.jsonl"]) == before
    assert launch_score.main(["--workdir", workdir, "--step", "5"]) == 2
    assert "no checkpoint at step 5" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"available steps: \[0, 1, 2, 4, 8, 16, 32, 64\]"):
        rescore.score(workdir, step=5)
    strided = rescore.score(workdir, step=16, sampler_steps=10)[16]  # 10 of the T=20 steps
    assert os.path.exists(os.path.join(workdir, f"score_16_{len_samples(workdir)}_10.jsonl"))
    assert [r["model"] for r in strided] == [r["model"] for r in rescore.score(workdir, step=16)[16]]
    with pytest.raises(ValueError, match=r"process.sampler_steps=21 must be <= T=20"):
        rescore.score(workdir, step=16, sampler_steps=21)
    # 'exact' is the process's exact sampler: for the uniform process its T steps, the run's own here
    assert rescore.score(workdir, step=16, sampler_steps="exact")[16] == scored
    with pytest.raises(ValueError, match=r"sampler_steps='fast' must be an integer >= 1 or 'exact'"):
        rescore.score(workdir, step=16, sampler_steps="fast")


@pytest.mark.heavy
def test_score_at_each_models_best_or_last_evaluation_reproduces_those_rows(reference, tmp_path, capsys):
    _, ref_dir, ref_rows = reference
    workdir = str(tmp_path / "run")
    shutil.copytree(ref_dir, workdir)
    for at in ("best", "last"):
        assert launch_score.main(["--workdir", workdir, "--step", at]) == 0
        want = {m: results.pick([r for r in ref_rows if r["model"] == m], at) for m in range(4)}
        got = {r["model"]: r for s in {w["step"] for w in want.values()}
               for r in results.read_rows(os.path.join(workdir, f"score_{s}_{len_samples(workdir)}_20.jsonl"))}
        assert got == want, at
    assert "step 64:" in capsys.readouterr().out


@pytest.mark.heavy
def test_score_of_a_broken_checkpoint_is_a_clear_error(reference, tmp_path):
    _, ref_dir, _ = reference
    workdir = str(tmp_path / "run")
    shutil.copytree(ref_dir, workdir)
    _damage_latest(runner.part_dir(workdir, 0), 8)
    with pytest.raises(ValueError, match="checkpoint at step 8 .*is unreadable"):
        rescore.score(workdir, step=8)


@pytest.mark.heavy
def test_model_cap_splits_the_grid_with_the_same_rows(reference, tmp_path, caplog):
    """8 models (seeds 0..3) capped at 4 per program: two sub-grids of the reference's size (so no
    new compilation); the models the reference also trained (seeds 0, 1) give its rows and states."""
    config, ref_dir, ref_rows = reference
    capped = smoke("--config.train.seeds=(0,1,2,3)", "--config.run.max_models_per_program=4")
    with caplog.at_level(logging.INFO):
        rows = runner.run(capped, str(tmp_path), progress=False)
    assert "splitting the grid of 8 models into 2 sub-grids of at most 4" in caplog.text
    with open(tmp_path / "checkpoints" / runner.PARTITION_FILE) as f:
        assert json.load(f) == {"parts": [[0, 1, 2, 3], [4, 5, 6, 7]]}
    same = {0: 0, 1: 1, 4: 2, 5: 3}  # capped-grid index -> reference index (P=16, 64 x seeds 0, 1)
    assert_rows_close(by_key([dict(r, model=same[r["model"]]) for r in rows if r["model"] in same]),
                      by_key(ref_rows))
    assert len(rows) == 8 * len(STEPS)
    state = final_state(str(tmp_path), capped)
    chex.assert_trees_all_close(jax.tree.map(lambda x: x[jnp.array(list(same))], state),
                                final_state(ref_dir, config), rtol=1e-6, atol=1e-6)


@pytest.mark.heavy
def test_per_model_budgets_freeze_each_model_without_touching_the_others(reference, tmp_path):
    config, ref_dir, ref_rows = reference
    config = smoke("--config.train.num_steps=0", "--config.train.num_epochs=4.0")  # 4 * P / 8 steps
    rows = runner.run(config, str(tmp_path), progress=False)
    budgets = {0: 8, 1: 8, 2: 32, 3: 32}
    assert [(r["model"], r["step"]) for r in by_key(rows)] == [
        (m, s) for m in range(4) for s in STEPS if s <= budgets[m]]
    assert by_key(rows) == by_key([r for r in ref_rows if r["step"] <= budgets[r["model"]]])
    assert final_state(str(tmp_path), config).step.tolist() == [8, 8, 32, 32]


@pytest.mark.heavy
def test_diverged_models_are_reported_and_the_others_unharmed(reference, tmp_path, caplog):
    _, _, ref_rows = reference
    config = smoke("--config.train.seeds=(0,)", "--config.train.lr=(3e-3, 1e30)")  # 4 models again
    with caplog.at_level(logging.WARNING):
        rows = runner.run(config, str(tmp_path), progress=False)
    blown = [r for r in rows if r["lr"] == 1e30]
    assert all(r["diverged"] for r in blown if r["step"] >= 2) and "diverged at step" in caplog.text
    healthy = by_key([dict(r, model=r["model"] // 2 * 2) for r in rows if r["lr"] != 1e30])
    assert healthy == by_key([r for r in ref_rows if r["seed"] == 0])
    summary = table_lines(tmp_path)
    at = {r["diverged_step"] for r in blown if r["diverged"]}
    assert len(at) == 1 and summary[1].split()[-1] == "flagged"  # summary[0] says the reading
    assert summary[3].split()[-1] == f"nan@{at.pop()}" and summary[3].split()[5] == "-"  # no validity shown


@pytest.mark.heavy
def test_bad_input_is_refused_before_anything_is_written(reference, tmp_path, capsys):
    _, ref_dir, _ = reference
    fresh = str(tmp_path / "fresh")
    with pytest.raises(ValueError, match="P_max=256"):
        runner.run(smoke("--config.data.num_train=(16,250)"), fresh, progress=False)
    assert launch_local.main(["--config", SMOKE, "--workdir", fresh, "--config.train.lrate=1"]) == 2
    assert "unknown config key 'train.lrate'" in capsys.readouterr().err
    assert not os.path.exists(fresh)
    before = snapshot(ref_dir)
    with pytest.raises(ValueError, match=r"train.batch_size: 8 -> 4.*--force"):
        runner.run(smoke("--config.train.batch_size=4"), ref_dir, progress=False)
    assert snapshot(ref_dir) == before


def _launch(workdir, cache, config=SMOKE, overrides=()):
    """``launch.local`` of ``config`` (with ``overrides``) in a subprocess sharing the compilation cache."""
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PLATFORMS="cpu")
    return subprocess.Popen([sys.executable, "-m", "launch.local", "--config", config, "--workdir", workdir,
                             "--no_progress", *overrides], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def kill_after_checkpoints(process, part, count, timeout=300.0):
    """SIGKILL ``process`` as soon as ``part`` holds ``count`` checkpoints; its stderr."""
    deadline = time.time() + timeout
    while not (os.path.isdir(part) and sum(p.isdigit() for p in os.listdir(part)) >= count):
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.time() < deadline, f"fewer than {count} checkpoint(s) within {timeout:.0f} s"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    _, err = process.communicate()
    assert process.returncode == -signal.SIGKILL, err[-3000:]
    return err


@pytest.mark.slow
def test_sigkill_mid_run_then_restart_equals_an_uninterrupted_run(reference, tmp_path, compile_cache):
    config, ref_dir, ref_rows = reference
    workdir = str(tmp_path / "run")
    part = runner.part_dir(workdir, 0)
    process = _launch(workdir, compile_cache)
    killed_err = kill_after_checkpoints(process, part, 1)
    assert not os.path.exists(os.path.join(workdir, "summary.txt")), killed_err[-3000:]  # killed mid-run
    restart = _launch(workdir, compile_cache)
    _, err = restart.communicate(timeout=600)
    assert restart.returncode == 0, err[-3000:]
    assert "resuming models 0..3 from the checkpoint at step" in err, err[-3000:]
    assert by_key(results.read_rows(os.path.join(workdir, "metrics.jsonl"))) == by_key(ref_rows), err[-3000:]
    assert train_rows(workdir) == train_rows(ref_dir)
    chex.assert_trees_all_equal(final_state(workdir, config), final_state(ref_dir, config))


def len_samples(workdir: str) -> int:
    """eval.num_samples of the run stored in ``workdir``."""
    with open(os.path.join(workdir, "config.json")) as f:
        return json.load(f)["config"]["eval"]["num_samples"]


@pytest.mark.slow
def test_a_masked_run_scores_with_the_exact_sampler_by_default(tmp_path):
    """A masked run's evaluations and re-scorings use the exact sampler (issue 19): its score file
    is named 'exact' and reproduces the evaluation's rows; a step count is still available."""
    config = smoke()
    config.process.update(dict(name="masked", sampler_steps=None))
    config.data.num_train = (16,)
    config.train.update(dict(num_steps=4, seeds=(0,), steps_per_call=4))
    workdir = str(tmp_path / "masked")
    rows = runner.run(config, workdir, progress=False)
    scored = rescore.score(workdir, step=4)[4]
    assert os.path.exists(os.path.join(workdir, "score_4_32_exact.jsonl"))
    assert scored == [r for r in rows if r["step"] == 4]
    rescore.score(workdir, step=4, sampler_steps=3)
    assert os.path.exists(os.path.join(workdir, "score_4_32_3.jsonl"))
    assert set(results.load(workdir, kind="scores")["sampler_steps"]) == {3, "exact"}
