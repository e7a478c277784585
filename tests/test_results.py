"""Work directories: refusal of a different config, metrics rows (strict JSON, truncation), load."""
import json
import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest

from rhm_jax import config as config_lib
import rhm_jax
from rhm_jax import analysis, results, rundir

GRID = [dict(index=0, P=16, seed=0, lr=1e-3), dict(index=1, P=64, seed=0, lr=1e-3)]


def strict_rows(path):
    """Parse jsonl refusing NaN/Infinity tokens (what strict parsers such as jq or JS do)."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    with open(path) as f:
        return [json.loads(line, parse_constant=refuse) for line in f]


@pytest.fixture
def smoke():
    return config_lib.load("sweeps/smoke.py")


def row(model, step, **values):
    return dict(model=model, P=GRID[model]["P"], seed=0, lr=1e-3, step=step, **values)


def test_metrics_rows_are_strict_json(tmp_path):
    writer = results.MetricsWriter(str(tmp_path))
    writer.write([row(0, 1, loss=float("nan"), copy=np.float32(0.25), diverged=np.bool_(False),
                      window=np.array([1.0, np.inf]), count=np.int64(3))])
    writer.write([row(1, 2, loss=-float("inf"))])
    rows = strict_rows(writer.path)
    assert rows[0]["loss"] is None and rows[0]["copy"] == 0.25 and rows[0]["diverged"] is False
    assert rows[0]["window"] == [1.0, None] and rows[0]["count"] == 3
    assert rows[1]["loss"] is None
    assert writer.rows() == rows


def test_truncate_after_keeps_exactly_the_earlier_rows(tmp_path):
    writer = results.MetricsWriter(str(tmp_path))
    steps = [0, 1, 2, 4, 8, 16]
    for step in steps:
        writer.write([row(0, step, x=step), row(1, step, x=-step)])
    assert writer.truncate_after(4) == 4
    assert [(r["model"], r["step"]) for r in writer.rows()] == [(m, s) for s in steps[:4] for m in (0, 1)]
    assert writer.truncate_after(1, models=[1]) == 2  # model 0 untouched
    assert sorted((r["model"], r["step"]) for r in writer.rows()) == sorted(
        [(0, s) for s in steps[:4]] + [(1, 0), (1, 1)])
    assert writer.truncate_after(-1) == 6 and writer.rows() == []
    assert os.listdir(tmp_path) == ["metrics.jsonl"]  # no temporary file left behind


def test_torn_last_line_is_skipped_but_a_bad_middle_line_raises(tmp_path):
    writer = results.MetricsWriter(str(tmp_path))
    writer.write([row(0, 1), row(0, 2)])
    with open(writer.path, "a") as f:
        f.write('{"model": 0, "step": 4, "P"')  # a write cut short by a kill
    assert [r["step"] for r in writer.rows()] == [1, 2]
    writer.truncate_after(10)
    assert [r["step"] for r in strict_rows(writer.path)] == [1, 2]
    with open(writer.path, "a") as f:
        f.write("garbage\n" + json.dumps(row(0, 8)) + "\n")
    with pytest.raises(ValueError, match="line 3"):
        writer.rows()


def test_new_workdir_records_config_grid_and_provenance(tmp_path, smoke):
    workdir = str(tmp_path / "run")
    assert results.prepare_workdir(workdir, smoke, GRID) == "new"
    stored = results.read_config_json(workdir)
    assert config_lib.to_dict(config_lib.from_dict(stored["config"])) == config_lib.to_dict(smoke)
    assert stored["grid"] == GRID
    prov = stored["provenance"]
    assert prov["packages"]["jax"] and prov["packages"]["orbax-checkpoint"]
    assert prov["devices"]["count"] >= 1 and prov["date_utc"].endswith("+00:00")
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert prov["git"]["revision"] == head and isinstance(prov["git"]["dirty"], bool)


def test_git_revision_outside_a_checkout(tmp_path):
    assert results.git_revision(str(tmp_path)) == {"revision": None, "dirty": None}


def test_provenance_names_rhm_jax_scipy_and_matplotlib():
    packages = rundir.provenance()["packages"]
    assert packages["rhm_jax"] == rhm_jax.__version__
    assert packages["scipy"] and packages["matplotlib"]


def test_an_installed_package_outside_its_checkout_names_the_commit_it_was_built_from(monkeypatch):
    monkeypatch.setattr(rundir, "_git_checkout", lambda path, require_top=None: {"revision": None, "dirty": None})
    monkeypatch.setitem(sys.modules, "rhm_jax._build_info", types.SimpleNamespace(REVISION="abc123", DIRTY=False))
    assert rundir.git_revision() == {"revision": "abc123", "dirty": False, "from": "build"}
    monkeypatch.setitem(sys.modules, "rhm_jax._build_info", types.SimpleNamespace(REVISION=None, DIRTY=None))
    assert rundir.git_revision() == {"revision": None, "dirty": None}


def test_a_directory_inside_some_other_checkout_is_not_taken_for_the_package_checkout(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))  # tests/ of this checkout: a checkout, but not its top
    assert rundir._git_checkout(here, require_top=here) == {"revision": None, "dirty": None}
    assert rundir._git_checkout(here)["revision"] is not None


def test_same_config_resumes_and_execution_keys_may_differ(tmp_path, smoke):
    workdir = str(tmp_path)
    results.prepare_workdir(workdir, smoke, GRID)
    smoke.train.steps_per_call = 3
    smoke.run.keep_last = 1
    assert results.prepare_workdir(workdir, smoke, GRID) == "resume"


def drop_stored_key(workdir, section, key):
    """config.json as an older version wrote it: without ``section.key`` (added to the schema later)."""
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        stored = json.load(f)
    del stored["config"][section][key]
    with open(path, "w") as f:
        json.dump(stored, f)


def test_a_key_missing_from_an_older_config_json_reads_as_its_default(tmp_path, smoke):
    workdir = str(tmp_path)
    results.prepare_workdir(workdir, smoke, GRID)
    drop_stored_key(workdir, "train", "p_below_batch")
    assert smoke.train.p_below_batch == "repeat"  # the schema default: the behaviour before the key
    assert results.prepare_workdir(workdir, smoke, GRID) == "resume"
    smoke.train.p_below_batch = "full_batch"
    with pytest.raises(ValueError, match=r"train.p_below_batch: 'repeat' -> 'full_batch'"):
        results.prepare_workdir(workdir, smoke, GRID)


def test_a_directory_written_before_data_seed_set_the_batch_order_resumes_only_if_the_order_is_kept(tmp_path):
    now = [dict(g, grammar_seed=0, data_seed=0) for g in GRID]
    for seed, outcome in ((0, "resume"), (1, None)):
        workdir, config = str(tmp_path / f"seed{seed}"), config_lib.base_config()
        config.train.seeds = (seed,)
        before = [dict(g, seed=seed) for g in GRID]  # no grammar_seed / data_seed: an older version's rows
        os.makedirs(workdir)
        results.write_json_atomic(os.path.join(workdir, results.CONFIG_FILE),
                                  {"config": config_lib.to_dict(config), "grid": before})
        grid = [dict(g, seed=seed) for g in now]  # data.seed is 0: model seed 1 now reads another order
        if outcome:
            assert results.prepare_workdir(workdir, config, grid) == outcome
        else:
            with pytest.raises(ValueError, match="batch order"):
                results.prepare_workdir(workdir, config, grid)


def test_different_config_is_refused_and_nothing_changes(tmp_path, smoke):
    workdir = str(tmp_path)
    results.prepare_workdir(workdir, smoke, GRID)
    results.MetricsWriter(workdir).write([row(0, 1)])
    before = {name: open(os.path.join(workdir, name), "rb").read() for name in os.listdir(workdir)}
    smoke.train.batch_size = 4
    smoke.grammar.seed = 7
    with pytest.raises(ValueError, match=r"grammar.seed: 0 -> 7.*train.batch_size: 8 -> 4.*--force"):
        results.prepare_workdir(workdir, smoke, GRID)
    with pytest.raises(ValueError, match="different grid"):
        results.prepare_workdir(workdir, config_lib.load("sweeps/smoke.py"), GRID[:1])
    after = {name: open(os.path.join(workdir, name), "rb").read() for name in os.listdir(workdir)}
    assert after == before


def test_non_workdir_is_refused(tmp_path, smoke):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no config.json"):
        results.prepare_workdir(str(tmp_path), smoke, GRID)


def test_force_moves_the_old_run_aside(tmp_path, smoke):
    workdir = str(tmp_path / "run")
    results.prepare_workdir(workdir, smoke, GRID)
    results.MetricsWriter(workdir).write([row(0, 1)])
    smoke.train.batch_size = 4
    assert results.prepare_workdir(workdir, smoke, GRID, force=True) == "new"
    backups = [p for p in os.listdir(tmp_path) if p.startswith("run.bak-")]
    assert len(backups) == 1
    old = str(tmp_path / backups[0])
    assert results.read_config_json(old)["config"]["train"]["batch_size"] == 8
    assert results.MetricsWriter(old).rows() == [row(0, 1)]
    assert sorted(os.listdir(workdir)) == ["config.json"]
    assert results.read_config_json(workdir)["config"]["train"]["batch_size"] == 4


def _fake_run(workdir, smoke, grid, final):
    results.prepare_workdir(workdir, smoke, grid)
    writer = results.MetricsWriter(workdir)
    for step in (0, 8, 64):
        writer.write([row(m, step, validity_l1=final[m] * step / 64, validity_l2=0.1, validity_l3=0.0,
                          copy=0.0, diverged=(m == 1 and step >= 8)) for m in range(len(grid))])


def test_load_and_summary_table(tmp_path, smoke):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _fake_run(a, smoke, GRID, [0.5, 0.9])
    _fake_run(b, smoke, GRID[:1], [0.25])
    df = results.load([a, b])
    assert len(df) == 9 and set(df["workdir"]) == {a, b}
    assert (df["v"] == 4).all() and (df["L"] == 3).all() and (df["process"] == "uniform").all()
    assert (df["width"] == 16).all()
    final = df[df["step"] == 64].set_index(["workdir", "model"])["validity_l1"]
    assert final[(a, 1)] == 0.9 and final[(b, 0)] == 0.25
    # _fake_run writes the old column name ``copy``: it reads as ``copies``
    assert "copies" in df and "copy" not in df and (df["copies"] == 0.0).all()
    lines = results.summary_table(results.load(a), at="last").splitlines()
    assert lines[0] == "each model at its last evaluation:"
    assert lines[1].split() == ["model", "P", "seed", "step", "l1", "l2", "l3", "copies", "flagged"]
    assert lines[2].split() == ["0", "16", "0", "64", "0.5", "0.1", "0", "0", "-"]
    assert lines[3].split() == ["1", "64", "0", "64", "-", "-", "-", "-", "nan@8"]  # no validity shown
    assert results.summary_table(results.MetricsWriter(a).rows(), at="last") == "\n".join(lines)


def test_summary_reads_each_model_at_its_best_evaluation_by_default(tmp_path, smoke):
    """Best = lowest mean of the windowed test loss (test_loss when there are no windows), as the report."""
    workdir = str(tmp_path / "run")
    results.prepare_workdir(workdir, smoke, GRID)
    losses = {0: [0.9, 0.2, 0.5], 1: [0.9, 0.7, 0.4]}  # model 0 is best at step 8, model 1 at step 64
    results.MetricsWriter(workdir).write([
        row(m, step, validity_l1=step / 64, test_loss=9.0, test_loss_window_0=losses[m][i] - 0.1,
            test_loss_window_1=losses[m][i] + 0.1, copies=0.0)
        for i, step in enumerate((0, 8, 64)) for m in (0, 1)])
    lines = results.summary_table(results.MetricsWriter(workdir).rows()).splitlines()
    assert results.DEFAULT_READING == "best" and lines[0].startswith("each model at its best evaluation")
    assert [line.split()[3] for line in lines[2:]] == ["8", "64"]
    frame = results.load(workdir)
    best = analysis.final(frame, "best").set_index("model")["step"]
    assert best.to_dict() == {0: 8, 1: 64}  # the report's reading picks the same evaluations
    with pytest.raises(ValueError, match="at='first'"):
        results.summary_table(frame, at="first")


def test_load_needs_a_workdir(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        results.load(str(tmp_path))


def test_load_merges_the_slices_of_a_job_array(tmp_path, smoke):
    root = str(tmp_path / "array")
    results.prepare_workdir(root, smoke, GRID)
    for k in (1, 0):  # slice_10 would sort before slice_2 as text: order is numeric
        results.prepare_workdir(os.path.join(root, f"slice_{k}"), smoke, GRID[k:k + 1])
        results.MetricsWriter(os.path.join(root, f"slice_{k}")).write([row(k, 0), row(k, 8)])
    df = results.load(root)
    assert list(zip(df["model"], df["step"])) == [(0, 0), (0, 8), (1, 0), (1, 8)]
    assert set(df["workdir"]) == {root}


def test_load_has_grid_config_and_timing_columns_and_the_train_and_score_tables(tmp_path, smoke):
    workdir = str(tmp_path / "run")
    grid = [dict(g, budget_steps=64, budget_epochs=64 * 8 / g["P"]) for g in GRID]
    results.prepare_workdir(workdir, smoke, grid)
    results.MetricsWriter(workdir).write([row(m, step, copies=0.0) for step in (0, 8) for m in (0, 1)])
    train = [dict(model=m, step=step, epoch=step * 8 / GRID[m]["P"], loss=1.0 / step, wall_s=float(step),
                  model_steps_per_s=100.0 + step) for step in (4, 8) for m in (0, 1)]
    results.MetricsWriter(workdir, results.TRAIN_FILE).write(train)
    results.write_rows(os.path.join(workdir, "score_8_64_10.jsonl"), [row(1, 8, copies=0.5)])
    results.write_rows(os.path.join(workdir, "score_8_64_exact.jsonl"), [row(1, 8, copies=0.25)])  # masked exact
    df = results.load(workdir)
    assert len(df) == 4
    for column, value in dict(T=20, grammar_seed=0, data_seed=0, run_seed=0, batch_size=8, budget_steps=64).items():
        assert (df[column] == value).all(), column
    assert df["budget_epochs"].tolist() == [32.0, 8.0, 32.0, 8.0]
    at8 = df[df["step"] == 8].set_index("model")
    assert at8["wall_s"].tolist() == [8.0, 8.0] and at8["model_steps_per_s"].tolist() == [108.0, 108.0]
    assert df[df["step"] == 0]["wall_s"].isna().all()  # nothing trained before step 0
    loss = results.load(workdir, kind="train")
    assert len(loss) == 4 and set(loss) >= {"model", "step", "loss", "P", "seed", "lr", "budget_steps", "T"}
    scores = results.load(workdir, kind="scores")
    assert scores[["model", "step", "num_samples", "sampler_steps", "copies"]].values.tolist() == [
        [1, 8, 64, 10, 0.5], [1, 8, 64, "exact", 0.25]]
    with pytest.raises(ValueError, match="kind='losses'"):
        results.load(workdir, kind="losses")


def test_record_wall_time_goes_into_the_provenance(tmp_path, smoke):
    workdir = str(tmp_path / "run")
    results.prepare_workdir(workdir, smoke, GRID)
    results.record_wall_time(workdir, 12.3456)
    stored = results.read_config_json(workdir)
    assert stored["provenance"]["wall_time_s"] == 12.346 and "finished_utc" in stored["provenance"]
    assert results.prepare_workdir(workdir, smoke, GRID) == "resume"  # the provenance is not compared
    assert results.split_line(workdir) == ""  # recorded without a split (as before the split existed)
    results.record_report_time(workdir, 3.0)  # nothing to add it to
    assert "wall_split_s" not in results.read_config_json(workdir)["provenance"]


def test_the_wall_time_split_and_the_report_go_into_the_provenance_and_summary(tmp_path, smoke):
    workdir = str(tmp_path / "run")
    results.prepare_workdir(workdir, smoke, GRID)
    parts = dict(compile_train=2.0, compile_eval=1.0, train=4.0, sample=1.5, score=0.5, checkpoint=0.25,
                 setup=0.5, report=0.0)
    results.record_wall_time(workdir, 10.0, parts)
    split = results.read_config_json(workdir)["provenance"]["wall_split_s"]
    assert split == dict(parts, other=0.25)  # the remainder: wall time outside every part
    line = results.split_line(workdir)
    assert line.startswith("wall time 10.0 s: compile_train 2.0 s (20%), compile_eval 1.0 s (10%), train 4.0 s")
    assert line.endswith("report 0.0 s (0%), other 0.2 s (2%)")
    results.record_report_time(workdir, 10.0)  # launch.quickstart's learner and report, after the run
    assert results.read_config_json(workdir)["provenance"]["wall_split_s"]["report"] == 10.0
    line = results.split_line(workdir)
    assert line.startswith("wall time 20.0 s: ") and "report 10.0 s (50%)" in line and line.endswith("other 0.2 s (1%)")
    results.write_summary(workdir, "the table", line)
    assert open(os.path.join(workdir, "summary.txt")).read() == f"the table\n\n{line}\n"


def test_swept_key_columns_come_from_the_rows_and_win_over_the_config(tmp_path, smoke):
    """A sweep's config.json holds the base config (m=2 here); each model's m, width comes from its grid row."""
    from rhm_jax import plan

    planned = plan.make_plan(smoke, plan.zipped(plan.sweep("grammar.m", [2, 3]), plan.sweep("network.width", [16, 8])))
    grid = [r for program in planned.programs for r in program.rows]
    workdir = str(tmp_path / "sweep")
    assert results.prepare_workdir(workdir, smoke, grid, points=planned.points) == "new"
    results.MetricsWriter(workdir).write([dict(model=r["index"], step=8, copies=0.0) for r in grid])
    df = results.load(workdir).set_index("model")
    assert df["m"].tolist() == [2] * 4 + [3] * 4 and df["width"].tolist() == [16] * 4 + [8] * 4
    assert (df["v"] == smoke.grammar.v).all() and (df["T"] == smoke.process.T).all()  # constants still fill in
    header = results.summary_table(df.reset_index(), at="last").splitlines()[1].split()
    assert header[:5] == ["model", "P", "seed", "m", "width"]  # the swept values tell the models apart
    assert results.read_config_json(workdir)["points"] == [{"grammar.m": 2, "network.width": 16},
                                                           {"grammar.m": 3, "network.width": 8}]
    assert results.prepare_workdir(workdir, smoke, grid, points=planned.points) == "resume"
    with pytest.raises(ValueError, match="different sweep"):
        results.prepare_workdir(workdir, smoke, grid, points=planned.points[:1])
    old = str(tmp_path / "single")  # a work directory without points (a single run) resumes as [{}]
    results.prepare_workdir(old, smoke, GRID)
    assert results.prepare_workdir(old, smoke, GRID, points=[{}]) == "resume"


def test_disk_full_while_writing_names_the_file(tmp_path, monkeypatch, capsys):
    """Issue 26: disk full while writing rows, partition.json or config.json said only
    '[Errno 28] No space left on device', naming no file."""
    import errno

    from launch import local
    from rhm_jax import subgrids

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    rows = str(tmp_path / results.METRICS_FILE)
    with pytest.raises(OSError, match=re.escape(f"No space left on device: {rows!r}")):
        results.MetricsWriter(str(tmp_path)).write([dict(model=0, step=0)])
    partition = os.path.join(str(tmp_path), "checkpoints", subgrids.PARTITION_FILE)
    os.makedirs(os.path.dirname(partition))
    with pytest.raises(OSError, match=re.escape(f"No space left on device: {partition!r}")) as caught:
        results.write_json_atomic(partition, {"parts": []})
    assert caught.value.errno == errno.ENOSPC
    workdir = str(tmp_path / "run")
    assert local.main(["--config", os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "sweeps", "smoke.py"), "--workdir", workdir, "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (f"error: [Errno 28] No space left on device: "
                                    f"{os.path.join(workdir, results.CONFIG_FILE)!r}") and "Traceback" not in err
