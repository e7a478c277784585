"""The report writes every figure and a report.md whose numbers match the analysis."""
import json
import os
import re

import numpy as np
import pandas as pd
import pytest

from launch import report as launch_report
from rhm_jax import analysis, clustering, figures, report, results, tables, theory, thresholds
from test_analysis import quick_rows, synthetic_metrics, write_workdir


@pytest.fixture(scope="module")
def two_workdirs(tmp_path_factory):
    """Synthetic m=3 and m=2 runs with c = 1; the m=3 run finished (its wall time is in the provenance)."""
    base = tmp_path_factory.mktemp("runs")
    a = synthetic_metrics(m=3, c=1.0, seeds=(0, 1), num_P=8)
    b = synthetic_metrics(m=2, c=1.0, seeds=(0, 1), num_P=8)
    workdirs = write_workdir(base / "m3", a, m=3), write_workdir(base / "m2", b, m=2)
    path = os.path.join(workdirs[0], "config.json")
    with open(path) as f:
        stored = json.load(f)
    stored["provenance"]["wall_time_s"] = 409.6
    with open(path, "w") as f:
        json.dump(stored, f)
    return workdirs


@pytest.fixture(scope="module")
def written(two_workdirs, tmp_path_factory):
    """The report of both runs, written once for the tests that read it."""
    out = str(tmp_path_factory.mktemp("report"))
    return out, report.make_report(list(two_workdirs), out)


@pytest.mark.heavy
def test_report_writes_all_figures_and_markdown(written):
    out, paths = written
    names = sorted(os.listdir(out))
    for stem in ("validity_vs_P", "collapse", "time_0_m3", "time_1_m2", "windows_0_m3", "windows_1_m2",
                 "coherence_0_m3", "coherence_1_m2"):
        for fmt in ("png", "pdf"):
            assert f"{stem}.{fmt}" in names
            assert os.path.getsize(os.path.join(out, f"{stem}.{fmt}")) > 1000
    with open(os.path.join(out, "validity_vs_P.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert paths["report"] == [os.path.join(out, "report.md")]
    text = open(paths["report"][0]).read()
    for heading in ("Thresholds", "every reading", "Ratios", "Constant c", "Budget", "Learning time",
                    "Coherence length", "Memorization", "Creativity"):
        assert heading in text
    # every section states what its numbers are, right under its heading
    sections = text.split("\n## ")[2:-1]
    assert all(len(sec.split("\n\n")) >= 3 for sec in sections)
    assert text.count(analysis.NORMALIZED) >= 2 and "raw" in text
    assert "deadbeef" in text and "jax 0.12" in text and "1 x cpu (cpu) on testhost" in text
    assert "wall time: 410 s (provenance)" in text and "wall time: - s (unknown)" in text


@pytest.mark.heavy
def test_report_constant_matches_analysis(two_workdirs, written):
    text = open(written[1]["report"][0]).read()
    c_text = float(re.search(r"c = ([0-9.e+-]+);", text).group(1))
    summary = thresholds.summary(thresholds.table(analysis.load(list(two_workdirs))))
    assert c_text == pytest.approx(thresholds.fit_constant(summary)["c"], rel=0.01)
    assert c_text == pytest.approx(1.0, rel=0.1)  # the synthetic runs were built with c = 1


@pytest.mark.heavy
def test_coherence_table_reads_the_theory_with_each_runs_own_grammar(two_workdirs):
    table = tables.coherence_table(analysis.load(list(two_workdirs)), "last")
    for label, m in (("m3", 3), ("m2", 2)):
        rows = table[table["workdir"] == label]
        want = (rows["P"] / (8 * m)) ** (np.log(2) / np.log(m))
        np.testing.assert_allclose(rows["theory (P/(v m))^(log s/log m)"], want)


def test_a_seed_that_never_learned_makes_the_mean_learning_time_missing_not_shorter():
    times = pd.DataFrame(dict(workdir="w", P=[64, 64, 256, 256], seed=[0, 1, 0, 1], level=1,
                              step=[100.0, np.nan, 40.0, 60.0]))
    table = tables.mean_by_P(times, "step", "level", censored=True).set_index("P")
    assert np.isnan(table.loc[64, "level 1"]) and table.loc[256, "level 1"] == 50.0
    assert tables.mean_by_P(times, "step", "level").set_index("P").loc[64, "level 1"] == 100.0  # a plain mean


@pytest.mark.heavy
def test_launch_report_cli_defaults_out_to_workdir(two_workdirs, capsys):
    launch_report.main(["--workdir", two_workdirs[1], "--at", "best"])
    assert os.path.exists(os.path.join(two_workdirs[1], "report", "report.md"))
    assert os.path.exists(os.path.join(two_workdirs[1], "report", "time.pdf"))
    assert "report.md" in capsys.readouterr().out


def test_markdown_table_formats_and_marks_missing():
    table = tables.markdown_table(pd.DataFrame({"level": [1, 2], "P_star": [123.456, np.nan]}))
    assert table.splitlines() == ["| level | P_star |", "| --- | --- |", "| 1 | 123 |", "| 2 | - |"]
    assert tables.markdown_table(pd.DataFrame()) == "_(none)_\n"


def test_wall_time_reads_the_provenance_else_the_wall_column_else_unknown():
    df = pd.DataFrame({"step": [1, 2], "wall_s": [3.0, 40.0]})
    assert tables.wall_time({"provenance": {"wall_time_s": 12.5}}, df) == (12.5, "provenance")
    seconds, how = tables.wall_time({"provenance": {}}, df)
    assert seconds == 40.0 and "not finished" in how
    # columns that nothing writes are not guessed at
    seconds, how = tables.wall_time({}, pd.DataFrame({"time": ["2025-01-01T00:00:00", "2025-01-01T00:01:30"]}))
    assert np.isnan(seconds) and how == "unknown"


def test_make_report_rejects_empty_workdirs():
    with pytest.raises(ValueError, match="workdirs"):
        report.make_report([])


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """The report of the stored quick-sweep rows, with an extra thresholds table (the hook)."""
    workdir = write_workdir(tmp_path_factory.mktemp("quick") / "quick", quick_rows())
    extra = pd.DataFrame(dict(label=["clustering"] * 2, level=[1, 2], P_star=[60.0, 200.0]))
    out = str(tmp_path_factory.mktemp("quick_report"))
    return out, report.make_report(workdir, out, at="best", extra_thresholds=extra)


@pytest.mark.heavy
def test_report_of_the_quick_rows_shows_normalized_thresholds_and_every_reading(quick_report):
    out, paths = quick_report
    text = open(paths["report"][0]).read()
    main = text.split("## Thresholds")[1].split("## ")[0]
    # level 1 a value with its interval; level 2 too: 4 models next to its crossing still rise at the end of
    # the budget, but their test-loss minima lie inside it, so the early-stopped reading is no bound
    assert "| quick | 1 | 8 | 3 | 82.5 [61.5, 94.9] |" in main and "| quick | 3 | 8 | 3 | - | above |" in main
    level2 = next(line for line in main.splitlines() if line.startswith("| quick | 2 | 8 | 3 |"))
    assert "<=" not in level2 and level2.split(" | ")[4].startswith("220 [") and "| 216 | 1.02 | 4 |" in level2
    readings = text.split("every reading")[1].split("## ")[0]
    assert "| quick | raw | all | best | 19.7 | 201 | (above) |" in readings
    assert "| quick | normalized | noncopy | last |" in readings
    assert "| clustering | 1 | 60 |" in text  # the extra thresholds are listed
    assert os.path.exists(os.path.join(out, "validity_vs_P.png")) and os.path.exists(os.path.join(out, "coherence.png"))


@pytest.mark.heavy
def test_the_clustering_learners_stored_thresholds_are_drawn_by_default(tmp_path):
    """The P figure gets the learner's validity (like the networks'); its accuracy gets a table of its own."""
    workdir = write_workdir(tmp_path / "quick", quick_rows())
    chance = theory.uniform_validity(8, 3, 2, 3, 8)
    learner = [dict(learner="clustering", context="tokens", P=P, seed=0, v=8, n=8, m=3, s=2, L=3, grammar_seed=0,
                    data_seed=0, accuracy_l1=a1, accuracy_chance_l1=0.25, accuracy_l2=a2, accuracy_chance_l2=0.125,
                    validity_l1=1.0, validity_l2=chance[1] + y2 * (1 - chance[1]),
                    validity_l3=chance[2] + y3 * (1 - chance[2]))
               for P, a1, a2, y2, y3 in [(32, 0.25, 0.125, 0.0, 0.0), (128, 0.625, 0.125, 0.5, 0.0),
                                         (512, 1.0, 0.5625, 1.0, 1.0), (1024, 1.0, 1.0, 1.0, 1.0)]]
    results.write_rows(clustering.path(workdir), learner)
    paths = report.make_report(workdir, str(tmp_path / "out"), at="best")
    text = open(paths["report"][0]).read()
    drawn, accuracy = text.split("## Other thresholds drawn on the P figure")[1].split(
        "## The clustering learner's accuracy thresholds")[:2]
    assert "| clustering learner (tokens) validity | validity | 2 | 128 |" in drawn  # normalized 0.5 at P = 128
    assert "| clustering learner (tokens) validity | validity | 3 | 256 |" in drawn  # halfway 128..512 in log P
    assert "accuracy |" not in drawn and clustering.READING in drawn
    assert "| clustering learner (tokens) accuracy | accuracy | 1 | 128 |" in accuracy  # normalized 0.5 at P = 128
    assert "| clustering learner (tokens) accuracy | accuracy | 2 | 512 |" in accuracy
    assert clustering.ACCURACY_READING in accuracy


def test_one_p_run_gets_reasons_and_no_p_figure(tmp_path):
    rows = quick_rows()
    workdir = write_workdir(tmp_path / "oneP", rows[rows["P"] == 256])
    paths = report.make_report(workdir, str(tmp_path / "out"))
    assert not any("validity_vs_P" in p or "collapse" in p for p in paths["figures"])
    text = open(paths["report"][0]).read()
    assert "single P (oneP)" in text and text.count("| one P |") == 3


@pytest.mark.heavy
def test_extra_thresholds_need_label_level_and_p_star(two_workdirs, tmp_path):
    with pytest.raises(ValueError, match="extra_thresholds needs the columns label, level, P_star"):
        report.make_report(list(two_workdirs), str(tmp_path), extra_thresholds=pd.DataFrame({"level": [1]}))


@pytest.mark.heavy
def test_time_figures_take_epochs_or_steps(two_workdirs, tmp_path):
    df = analysis.load(two_workdirs[0])
    for axis in ("epoch", "step"):
        assert figures.plot_time(df, two_workdirs[0], str(tmp_path), f"time_{axis}", axis)
    with pytest.raises(ValueError, match="time axis must be one of"):
        figures.plot_time(df, two_workdirs[0], str(tmp_path), "t", "hours")


def test_the_provenance_lines_give_the_budget_as_configured():
    """A step budget reads as steps, an epoch budget as epochs of each model's P (never 'epochs 0.0')."""
    by_steps = tables.provenance_lines("w", {"config": {"train": {"num_steps": 4096, "num_epochs": 0.0}}},
                                           pd.DataFrame({"P": [8], "model": [0], "step": [0]}))
    by_epochs = tables.provenance_lines("w", {"config": {"train": {"num_steps": 0, "num_epochs": 1e4}}},
                                            pd.DataFrame({"P": [8], "model": [0], "step": [0]}))
    assert "budget 4096 steps" in by_steps[3] and "epochs" not in by_steps[3]
    assert "budget 10000 epochs of each model's P" in by_epochs[3]


@pytest.mark.heavy
def test_report_of_one_workdir_sweeping_m_reads_m_from_the_table(tmp_path):
    """One work directory with m in {2, 3}: thresholds, readings and panels per m; the collapse and c over both."""
    from test_analysis import write_sweep_workdir

    frames = [synthetic_metrics(m=m, c=1.0, seeds=(0, 1), num_P=8) for m in (3, 2)]
    workdir = write_sweep_workdir(tmp_path / "sweep", frames)
    out = str(tmp_path / "report")
    paths = report.make_report([workdir], out)
    text = open(paths["report"][0]).read()
    assert "- sweep of 2 points, the base config below; swept: grammar.m (m): 2, 3" in text
    main = text.split("## Thresholds")[1].split("## ")[0]
    for m in (2, 3):
        for level in (1, 2, 3):
            assert re.search(rf"\| sweep \| {m} \| {level} \| 8 \|", main), (m, level)
    every = text.split("every reading")[1].split("## ")[0]
    assert re.search(r"\| sweep \| 2 \| normalized \|", every) and re.search(r"\| sweep \| 3 \| normalized \|", every)
    c_text = float(re.search(r"c = ([0-9.e+-]+);", text).group(1))
    assert c_text == pytest.approx(1.0, rel=0.1)
    for stem in ("validity_vs_P", "collapse", "time_0_sweep_m3", "time_1_sweep_m2", "coherence_1_sweep_m2"):
        assert os.path.getsize(os.path.join(out, f"{stem}.png")) > 1000
    # models still rising are counted per m: the two curves' counts add up to the work directory's
    df = analysis.load(workdir)
    rising = report.dynamics.still_rising(df)
    table = tables.threshold_table(thresholds.summary(thresholds.table(df)), rising, df)
    per_level = table.groupby("level")["still_rising"].sum()
    assert per_level.to_dict() == rising.groupby("level")["rising"].sum().astype(int).to_dict()


def write_lr_seed_m_sweep(path) -> str:
    """A work directory sweeping lr x grammar seed x m (2 x 2 x 2), built from synthetic rows: the grid
    rows carry each model's lr, grammar seed and m, the metrics rows none of them."""
    frames, offset, grid = [], 0, []
    for m in (3, 2):
        for lr in (1e-4, 3e-4):
            for grammar_seed in (0, 1):
                df = synthetic_metrics(m=m, c=1.0 if lr == 1e-4 else 2.0, seeds=(0,), num_P=6,
                                       rng_seed=10 * grammar_seed + m)
                df = df.assign(model=df["model"] + offset)
                offset = df["model"].max() + 1
                grid += [dict(index=int(r.model), P=int(r.P), seed=0, lr=lr, grammar_seed=grammar_seed, data_seed=0,
                              budget_steps=4096, m=m) for r in df.drop_duplicates("model").itertuples()]
                frames.append(df.drop(columns="lr"))
    workdir = write_workdir(path, pd.concat(frames, ignore_index=True), m=4)
    with open(os.path.join(workdir, "config.json")) as f:
        stored = json.load(f)
    stored["config"]["train"]["lr"] = [1e-4, 3e-4]
    stored.update(grid=grid, points=[{"grammar.m": m, "grammar.seed": g} for m in (3, 2) for g in (0, 1)])
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(stored, f)
    return workdir


def _rows(text: str, heading: str) -> list[str]:
    """The table rows of the section whose heading starts with ``heading``."""
    section = text.split(f"\n## {heading}")[1].split("\n## ")[0]
    return [line for line in section.splitlines() if line.startswith("| sweep |")]


@pytest.mark.heavy
def test_launch_report_on_a_sweep_over_lr_grammar_seed_and_m_has_a_row_per_swept_value(tmp_path):
    """Issue 19: this crashed with KeyError 'lr'; three tables mixed m = 2 and 3 (grouped by P alone)."""
    workdir = write_lr_seed_m_sweep(tmp_path / "sweep")
    out = str(tmp_path / "report")
    assert launch_report.main(["--workdir", workdir, "--out", out]) == 0
    text = open(os.path.join(out, "report.md")).read()
    df = analysis.load(workdir)
    assert analysis.curve_keys(df) == ["workdir", "m", "lr"] and analysis.table_keys(df)[-1] == "grammar_seed"
    values = {(m, lr) for m in (2, 3) for lr in ("0.0001", "0.0003")}
    main = _rows(text, "Thresholds P*_l")
    assert {(int(r.split(" | ")[1]), r.split(" | ")[2]) for r in main} == values and len(main) == 4 * 3
    per_replicate = _rows(text, "Thresholds per replicate")
    assert len(per_replicate) == 8  # m x lr x grammar seed
    num_P = df.groupby(["m", "lr", "grammar_seed"])["P"].nunique().sum()
    for heading in ("Learning time per level", "Memorization onset", "Coherence length", "Creativity"):
        rows = _rows(text, heading)
        cells = {tuple(r.split(" | ")[1:5]) for r in rows}  # m, lr, grammar seed, P
        # one row per (m, lr, grammar seed, P); learning times in steps and in epochs
        assert len(cells) == num_P and len(rows) == num_P * (2 if heading == "Learning time per level" else 1), heading
    # figure sets per (m, lr), their titles naming the swept values they show
    assert os.path.exists(os.path.join(out, "time_3_sweep_m2_lr0.0003.png"))
    c = float(re.search(r"c = ([0-9.e+-]+);", text).group(1))
    assert 1.0 < c < 2.0  # half the curves built with c = 1, half with c = 2


@pytest.mark.heavy
def test_report_states_the_estimator_the_interval_and_the_bounds_beside_the_numbers(written):
    text = open(written[1]["report"][0]).read()
    main = text.split("## Thresholds P*_l")[1].split("\n## ")[0]
    assert thresholds.METHODS["interp"] in main and thresholds.INTERVAL in main and "`<= P`: a bound" in main
    assert re.search(r"\| m3 \| 1 \| 8 \| 3 \| [\d.]+ \[[\d.]+, [\d.]+\] \|", main)
    assert "No threshold is a bound." in text.split("## Constant c")[1]
    assert "## Selection: the best band" in text and "xi_C = 1 + the largest distance" in text


@pytest.mark.heavy
def test_report_reads_xi_from_correlations_and_says_where_c_is_below_its_error(tmp_path):
    """C(t) at every distance with its error and the data's own value: xi_C beside xi, the cells whose
    error is not smaller than the value named, and the best band of losses scored with common random numbers."""
    df = synthetic_metrics(seeds=(0,), num_P=6)
    reached = np.clip(np.log10(df["P"]) - 1.0, 0, 2) / 2  # the samples reach more of the data's C(t) at larger P
    for t in range(1, 8):
        data = 0.02 * 0.4 ** (t - 1)
        df[f"corr_data_t{t}"] = data
        df[f"corr_t{t}"] = data * reached ** (t / 2)
        df[f"corr_t{t}_se"] = 0.0004
    df["test_loss_se"] = 0.01
    workdir = write_workdir(tmp_path / "corr", df)
    text = open(report.make_report(workdir, str(tmp_path / "report"))["report"][0]).read()
    coherence = text.split("## Coherence length")[1].split("\n## ")[0]
    assert "xi_C (from C(t))" in coherence and "largest resolved t" in coherence
    xi_C = report.dynamics.correlation_length(analysis.final(analysis.load(workdir)))
    assert xi_C["xi_C"].is_monotonic_increasing and xi_C["xi_C"].iloc[0] == 1 and xi_C["xi_C"].iloc[-1] > 2
    assert (xi_C["t_resolved"] == 3).all()  # half the data's C(4) = 0.02 x 0.4**3 is below 2 x 0.0004
    corr = text.split("## Token-token correlations")[1].split("\n## ")[0]
    assert "t 1 data" in corr and "t 1 se" in corr and "is not larger than its standard error in" in corr
    assert "| corr | 8 |" not in corr.split("standard error in")[0]  # the cells are named in the text
    band = text.split("## Selection: the best band")[1].split("\n## ")[0]
    assert "common random numbers" in band and "| corr |" in band


def write_lr_sweep(path, lrs, flagged) -> str:
    """A work directory sweeping lr, the models at the lr values in ``flagged`` flagged non-finite."""
    frames, offset, grid = [], 0, []
    for lr in lrs:
        df = synthetic_metrics(m=3, seeds=(0,), num_P=4, rng_seed=1)
        df = df.assign(model=df["model"] + offset, diverged=lr in flagged)
        offset = df["model"].max() + 1
        grid += [dict(index=int(r.model), P=int(r.P), seed=0, lr=lr, budget_steps=4096)
                 for r in df.drop_duplicates("model").itertuples()]
        frames.append(df.drop(columns="lr"))
    workdir = write_workdir(path, pd.concat(frames, ignore_index=True))
    with open(os.path.join(workdir, "config.json")) as f:
        stored = json.load(f)
    stored["config"]["train"]["lr"] = list(lrs)
    stored["grid"] = grid
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(stored, f)
    return workdir


@pytest.mark.heavy
def test_report_on_a_sweep_whose_swept_value_is_all_flagged_lists_it_and_reads_the_rest(tmp_path, capsys):
    """Issue 26: lr = (3e-3, 100.) with every lr=100 model flagged gave 'Number of columns must be a
    positive integer, not 0' and no report."""
    workdir = write_lr_sweep(tmp_path / "sweep", (3e-3, 100.0), flagged=(100.0,))
    out = str(tmp_path / "report")
    assert launch_report.main(["--workdir", workdir, "--out", out]) == 0
    text = open(os.path.join(out, "report.md")).read()
    unread = text.split("Curves with no healthy model")[1].split("\n\n")[0]
    assert "lr=100.0" in unread and "lr=0.003" not in unread
    assert os.path.exists(os.path.join(out, "time_0_sweep_lr0.003.png"))
    assert not any("lr100" in name for name in os.listdir(out))
    assert text.split("## Flagged models")[1].count(f"| {workdir} |") == 4


def test_report_on_a_sweep_with_no_healthy_model_writes_a_line_not_a_traceback(tmp_path, capsys):
    """Issue 26: lr = (100.,), every model flagged, gave a KeyError 'workdir' traceback."""
    workdir = write_lr_sweep(tmp_path / "sweep", (100.0,), flagged=(100.0,))
    out = str(tmp_path / "report")
    assert launch_report.main(["--workdir", workdir, "--out", out]) == 0
    text = open(os.path.join(out, "report.md")).read()
    assert "No healthy model: all 4 models are flagged" in text
    assert text.split("## Flagged models")[1].count(f"| {workdir} |") == 4
