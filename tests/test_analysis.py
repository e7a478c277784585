"""Analysis on synthetic metrics tables whose thresholds are known by construction, and on the
stored rows of a real quick P sweep (tests/data/quick_p_sweep_rows.csv, no training)."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from rhm_jax import analysis, theory, thresholds

QUICK_ROWS = os.path.join(os.path.dirname(__file__), "data", "quick_p_sweep_rows.csv")


def synthetic_metrics(v=8, m=3, L=3, c=1.5, seeds=(0, 1, 2), jitter=0.05, noise=0.02,
                      num_P=12, slope=6.0, steps=(0, 64, 256, 1024, 4096), batch=64, rng_seed=0):
    """A metrics table whose final NORMALIZED validity at level l is a logistic in log10 P centred
    on c * v * m**(l+1) (times a per-seed factor 10**(jitter * z)), plus noise; earlier steps are
    scaled-down copies so the time curves rise too, reaching their final value at the second-to-last
    step (so that no level is still rising over the last doubling: a threshold read there would be a
    bound). Raw validity adds back the chance floor."""
    rng = np.random.default_rng(rng_seed)
    chance = theory.uniform_validity(v, m, 2, L, v)
    P_grid = np.unique(np.round(np.logspace(np.log10(v * m**2 / 4), np.log10(4 * v * m ** (L + 1)), num_P)))
    rows, model = [], 0
    for seed in seeds:
        shift = {l: jitter * rng.standard_normal() for l in range(1, L + 1)}
        for P in P_grid:
            # one draw per model and level: the model's error at P, the same at every step
            error = {l: noise * rng.standard_normal() for l in range(1, L + 1)}
            for step in steps:
                frac = step / steps[-1]
                learned = min(1.0, step / steps[-2])
                row = dict(model=model, P=int(P), seed=seed, lr=1e-4, step=step, epoch=step * batch / P,
                           train_loss=1.0 - 0.5 * frac, test_loss=1.0 - 0.4 * frac, diverged=False)
                for l in range(1, L + 1):
                    center = np.log10(c * v * m ** (l + 1)) + shift[l]
                    val = learned * thresholds.sigmoid(np.log10(P), center, slope) + error[l]
                    row[f"validity_l{l}"] = float(chance[l - 1] + (1 - chance[l - 1]) * np.clip(val, 0, 1))
                row["valid"] = row[f"validity_l{L}"]
                row["copies"] = float(frac**2 * min(1.0, 30 / P))
                row["novel_valid"] = max(0.0, row["valid"] - row["copies"])
                for w in range(10):
                    row[f"train_loss_window_{w}"] = row["train_loss"] * (w + 1) / 10
                    row[f"test_loss_window_{w}"] = row["test_loss"] * (w + 1) / 10
                rows.append(row)
            model += 1
    df = pd.DataFrame(rows)
    return df.assign(v=v, n=v, m=m, s=2, L=L)


def write_workdir(path, df, v=8, m=3, L=3):
    """A work directory in the documented schema: config.json ({config, provenance, grid}) + metrics.jsonl."""
    os.makedirs(path, exist_ok=True)
    config = dict(grammar=dict(v=v, n=v, m=m, s=2, L=L, seed=0),
                  data=dict(num_train=sorted(df["P"].unique().tolist()), num_test=256, seed=0),
                  train=dict(batch_size=64, lr=1e-4, seeds=sorted(df["seed"].unique().tolist())))
    provenance = dict(git=dict(revision="deadbeef", dirty=False), python="3.12", packages=dict(jax="0.12"),
                      devices=dict(platform="cpu", kind="cpu", count=1), hostname="testhost",
                      date_utc="2025-01-01T00:00:00+00:00")
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(dict(config=config, provenance=provenance, grid=dict(num_models=int(df["model"].nunique()))), f)
    metrics = df.drop(columns=["v", "n", "m", "s", "L"], errors="ignore")
    metrics.to_json(os.path.join(path, "metrics.jsonl"), orient="records", lines=True)
    return str(path)


def test_fit_sigmoid_recovers_center_and_slope_from_noiseless_curve():
    x = np.linspace(0, 4, 15)
    center, slope = thresholds.fit_sigmoid(x, thresholds.sigmoid(x, 2.3, 3.1))
    assert center == pytest.approx(2.3, abs=1e-6)
    assert slope == pytest.approx(3.1, rel=1e-5)


def test_fit_sigmoid_returns_nan_when_curve_never_crosses_half():
    x = np.linspace(0, 4, 10)
    assert np.isnan(thresholds.fit_sigmoid(x, np.full(10, 0.3))[0])
    assert np.isnan(thresholds.fit_sigmoid(x, np.full(10, 0.7))[0])


def test_isotonic_is_monotone_and_preserves_mean():
    y = np.array([0.1, 0.4, 0.2, 0.6, 0.5, 0.9])
    fit = analysis.isotonic(y)
    assert np.all(np.diff(fit) >= 0)
    assert fit.mean() == pytest.approx(y.mean())
    np.testing.assert_allclose(fit, [0.1, 0.3, 0.3, 0.55, 0.55, 0.9])


@pytest.mark.heavy
@pytest.mark.parametrize("method", ["sigmoid", "interp"])
def test_thresholds_recover_known_centers(method):
    c, v, m = 1.5, 8, 3
    df = synthetic_metrics(c=c, v=v, m=m, jitter=0.0)
    summary = thresholds.summary(thresholds.table(df, method))
    for _, row in summary.iterrows():
        truth = c * v * m ** (row["level"] + 1)
        tol = 0.03 if method == "sigmoid" else 0.08  # in log10 P; interpolation is coarser
        assert abs(np.log10(row["P_star"]) - np.log10(truth)) < tol
        assert row["num_seeds"] == 3


@pytest.mark.heavy
def test_per_seed_spread_reflects_seed_jitter():
    df = synthetic_metrics(jitter=0.1, noise=0.0, seeds=tuple(range(6)), num_P=20)
    table = thresholds.table(df)
    summary = thresholds.summary(table)
    # with per-seed shifts of 0.1 decades the measured spread is of that order, not zero
    assert summary["log10_P_star_std"].between(0.03, 0.25).all()
    clean = thresholds.summary(thresholds.table(synthetic_metrics(jitter=0.0, noise=0.0)))
    assert (clean["log10_P_star_std"] < 1e-3).all()


def test_ratio_and_constant_recovered():
    c, v, m = 0.7, 8, 3
    df = synthetic_metrics(c=c, v=v, m=m, jitter=0.0, noise=0.01, L=3)
    table = thresholds.table(df)
    ratios = thresholds.ratios(table)
    np.testing.assert_allclose(ratios["ratio"], m, rtol=0.08)
    np.testing.assert_allclose(ratios["ratio_mean"], m, rtol=0.08)
    fit = thresholds.fit_constant(thresholds.summary(table))
    assert fit["c"] == pytest.approx(c, rel=0.08)
    assert fit["log10_spread"] < 0.05
    assert fit["num"] == 3


def test_collapse_across_m_has_small_spread_and_wrong_scaling_has_large():
    a = synthetic_metrics(m=3, c=1.0, jitter=0.0).assign(workdir="m3")
    b = synthetic_metrics(m=2, c=1.0, jitter=0.0, v=8).assign(workdir="m2")
    both = pd.concat([a, b], ignore_index=True)
    summary = thresholds.summary(thresholds.table(both))
    assert thresholds.fit_constant(summary)["log10_spread"] < 0.05
    # thresholds that do not scale with m**(l+1) must show up as a poor collapse
    bad = summary.assign(P_star=summary["P_star"] * 10.0 ** summary["level"])
    assert thresholds.fit_constant(bad)["log10_spread"] > 0.5
    points = thresholds.collapse(both)
    assert set(points["workdir"]) == {"m2", "m3"}
    np.testing.assert_allclose(points["x"], points["P"] / (points["v"] * points["m"] ** (points["level"] + 1)))


def test_censored_thresholds_are_flagged_not_extrapolated():
    df = synthetic_metrics(c=100.0, jitter=0.0)  # level 3 threshold far above the largest P
    summary = thresholds.summary(thresholds.table(df)).set_index("level")
    assert summary.loc[3, "censored"] == "above"
    assert np.isnan(summary.loc[3, "P_star"])


def test_final_takes_last_evaluation_per_model_and_skips_diverged():
    df = synthetic_metrics(seeds=(0,), num_P=4)
    df.loc[(df["model"] == 2) & (df["step"] == 256), "diverged"] = True
    last = analysis.final(df)
    assert (last["step"] == 4096).all() and len(last) == 4
    long = analysis.final_validity(df)
    assert 2 not in set(long["model"])
    assert analysis.diverged_models(df)["model"].tolist() == [2]


def test_creativity_is_novel_share_of_valid():
    df = synthetic_metrics(seeds=(0,), num_P=5)
    out = analysis.creativity(df)
    expected = out["novel_valid"] / out["valid"]
    np.testing.assert_allclose(out["novel_share"][out["valid"] > 0], expected[out["valid"] > 0])
    assert (out["novel_share"].dropna() <= 1).all()


def test_window_losses_from_columns():
    df = synthetic_metrics(seeds=(0,), num_P=3)
    cols = analysis.window_losses(df, "train")
    np.testing.assert_allclose(cols[:, 4], df["train_loss"] * 0.5)
    with pytest.raises(ValueError, match="split"):
        analysis.window_losses(df, "valid")


def test_load_tags_workdir_and_grammar(tmp_path):
    df = synthetic_metrics(seeds=(0,), num_P=3)
    a = write_workdir(tmp_path / "a", df, m=3)
    b = write_workdir(tmp_path / "b", df, m=2)
    loaded = analysis.load([a, b])
    assert len(loaded) == 2 * len(df)
    assert loaded.groupby("workdir")["m"].first().to_dict() == {a: 3, b: 2}
    assert analysis.levels(loaded) == [1, 2, 3]


def test_grammars_of_different_depths_keep_their_own_levels(tmp_path):
    """A sweep joining L = 2 and L = 3 (as the online sweep joins L = 4 and 5): the L = 2 grammar's
    figures, tables and thresholds list levels 1-2 only, not an empty level 3."""
    shallow = write_workdir(tmp_path / "L2", synthetic_metrics(L=2, seeds=(0,), num_P=6), L=2)
    deep = write_workdir(tmp_path / "L3", synthetic_metrics(L=3, seeds=(0,), num_P=6), L=3)
    loaded = analysis.load([shallow, deep])
    assert analysis.levels(loaded) == [1, 2, 3]
    assert analysis.levels(loaded[loaded["workdir"] == shallow]) == [1, 2]
    long = analysis.final_validity(loaded, "best")
    assert sorted(long[long["workdir"] == shallow]["level"].unique()) == [1, 2]
    assert sorted(long[long["workdir"] == deep]["level"].unique()) == [1, 2, 3]
    assert long["validity"].notna().all()


def test_bad_input_raises_clear_value_errors(tmp_path):
    with pytest.raises(ValueError, match="workdirs"):
        analysis.load([])
    with pytest.raises(ValueError, match="config.json"):
        analysis.load(str(tmp_path))
    write_workdir(tmp_path / "empty", synthetic_metrics(seeds=(0,), num_P=3).iloc[:0])
    with pytest.raises(ValueError, match="no evaluation rows in metrics.jsonl"):
        analysis.load(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="method"):
        thresholds.threshold([1, 2], [0.1, 0.9], method="spline")
    with pytest.raises(ValueError, match="validity_l"):
        analysis.levels(pd.DataFrame({"P": [1]}))


def test_learning_rates_on_one_grid_give_separate_curves():
    fast = synthetic_metrics(c=1.0, jitter=0.0, seeds=(0,), num_P=24).assign(lr=1e-3)
    slow = synthetic_metrics(c=4.0, jitter=0.0, seeds=(0,), num_P=24).assign(lr=1e-4)
    slow["model"] += fast["model"].max() + 1
    summary = thresholds.summary(thresholds.table(pd.concat([fast, slow], ignore_index=True)))
    by_lr = summary.set_index(["lr", "level"])["P_star"]
    for level in (1, 2):
        assert by_lr[(1e-4, level)] / by_lr[(1e-3, level)] == pytest.approx(4.0, rel=0.1)


def test_best_evaluation_ignores_memorized_small_p_models():
    """Small-P models that end up copying their data (valid, but overfit) count at their test-loss minimum."""
    rows, truth = [], 200.0
    for model, P in enumerate(np.logspace(1, 4, 13).round()):
        learned = float(thresholds.sigmoid(np.log10(P), np.log10(truth), 8.0))
        overfit = P < truth
        rows.append(dict(model=model, P=P, seed=0, step=100, validity_l1=learned, test_loss=1.0))
        rows.append(dict(model=model, P=P, seed=0, step=200, validity_l1=1.0 if overfit else learned,
                         test_loss=2.0 if overfit else 0.5))
    df = pd.DataFrame(rows)
    best = thresholds.summary(thresholds.table(df, at="best", reading="raw")).iloc[0]
    assert best["P_star"] == pytest.approx(truth, rel=0.02)
    last = thresholds.summary(thresholds.table(df, at="last", reading="raw")).iloc[0]
    assert last["censored"] == "below"  # memorized copies look like learned rules
    assert set(analysis.final(df, "best").query("P < 200")["step"]) == {100}
    with pytest.raises(ValueError, match="at"):
        analysis.final(df, "first")


def test_best_prefers_window_mean_over_noisy_test_loss():
    """With window losses logged, early stopping follows their mean, not the noisier test_loss."""
    rows = []
    for step, window_mean, noisy in [(100, 0.30, 0.20), (200, 0.25, 0.40), (400, 0.28, 0.30)]:
        row = dict(model=0, P=64, seed=0, step=step, validity_l1=step / 1000, test_loss=noisy)
        row.update({f"test_loss_window_{w}": window_mean * (0.5 + w / 9) for w in range(10)})
        rows.append(row)
    df = pd.DataFrame(rows)
    assert analysis.final(df, "best")["step"].tolist() == [200]
    assert analysis.final(df.filter(regex="^(?!test_loss_window)"), "best")["step"].tolist() == [100]


def test_falling_curve_gives_no_threshold_but_a_reason():
    """Validity that falls with P (copies at small P) crosses 1/2 but is no learning threshold."""
    P = np.logspace(1, 3, 9)
    falling = thresholds.sigmoid(np.log10(P), 2.0, -6.0)
    center, slope = thresholds.fit_sigmoid(np.log10(P), falling)
    assert center == pytest.approx(2.0, abs=1e-4) and slope == pytest.approx(-6.0, rel=1e-3)
    assert np.isnan(thresholds.threshold(P, falling))
    assert np.isnan(thresholds.threshold(P, falling, "interp"))  # its isotonic fit starts above 1/2
    df = pd.DataFrame(dict(model=range(9), P=P, seed=0, step=1, validity_l1=falling))
    assert thresholds.table(df, at="last", reading="raw").iloc[0]["censored"] == "not rising"
    one_P = df.assign(P=64.0)
    assert thresholds.table(one_P, at="last", reading="raw").iloc[0]["censored"] == "one P"
    with pytest.raises(ValueError, match="test_loss"):  # the default reading needs a test loss
        thresholds.table(df, reading="raw")


# ----------------------------------------------------------------------------- readings


def test_normalized_reading_is_the_fraction_of_the_way_from_chance():
    df = synthetic_metrics(seeds=(0,), num_P=3)
    read = analysis.readout(df)
    chance = theory.uniform_validity(8, 3, 2, 3, 8)
    assert chance[0] == pytest.approx(0.375)  # m / v**(s-1)
    for l in (1, 2, 3):
        np.testing.assert_allclose(read[f"validity_l{l}_raw"], df[f"validity_l{l}"])
        np.testing.assert_allclose(read[f"validity_l{l}"], (df[f"validity_l{l}"] - chance[l - 1]) / (1 - chance[l - 1]))
    np.testing.assert_allclose(analysis.readout(df, "raw")["validity_l1"], df["validity_l1"])
    with pytest.raises(ValueError, match=r"grammar columns \['v', 'm', 's', 'L'\]"):
        analysis.readout(df.drop(columns=["v", "n", "m", "s", "L"]))
    with pytest.raises(ValueError, match="validity_l1_noncopy"):
        analysis.readout(df, samples="noncopy")
    with pytest.raises(ValueError, match="reading"):
        analysis.readout(df, "chance")


def test_noncopy_reading_leaves_out_models_with_too_few_noncopied_samples():
    df = synthetic_metrics(seeds=(0,), num_P=4)
    df = df.assign(validity_l1_noncopy=0.5, validity_l2_noncopy=0.5, validity_l3_noncopy=np.nan,
                   noncopy_samples=np.where(df["model"] == 0, analysis.MIN_NONCOPY - 1, 100))
    read = analysis.readout(df, "raw", "noncopy")
    assert read.loc[df["model"] == 0, "validity_l1"].isna().all()
    assert (read.loc[df["model"] != 0, "validity_l1"] == 0.5).all()
    table = thresholds.table(df, reading="raw", samples="noncopy").set_index(["level", "seed"])
    assert table.loc[(1, -1), "num_nan"] == 1 and table.loc[(3, -1), "censored"] == "no finite rows"


def quick_rows() -> pd.DataFrame:
    """Rows of `python -m launch.local --config sweeps/hierarchy_in_p.py:quick` (CPU, grammar seed 0)."""
    return pd.read_csv(QUICK_ROWS)


def test_quick_sweep_normalized_thresholds_match_theory_and_raw_ones_do_not():
    """SPEC section 7 on real rows: read above chance, P*_l ~ v m**(l+1) and P*_2 / P*_1 ~ m."""
    df = quick_rows()
    summary = thresholds.summary(thresholds.table(df, at="best")).set_index("level")
    for level in (1, 2):
        ratio = summary.loc[level, "P_star"] / thresholds.theory_threshold(8, 3, level)
        assert 0.5 < ratio < 2, (level, summary.loc[level, "P_star"])
    assert 1.5 < summary.loc[2, "P_star"] / summary.loc[1, "P_star"] < 6  # within a factor 2 of m = 3
    assert summary.loc[3, "censored"] == "above"  # level 3 never gets half way from chance
    raw = thresholds.summary(thresholds.table(df, at="best", reading="raw")).set_index("level")
    # raw validity at 1/2 is a fifth of the way from chance at level 1: P*_1 about 4x too small
    assert raw.loc[1, "P_star"] < summary.loc[1, "P_star"] / 3


def test_quick_sweep_copies_cannot_fool_the_noncopy_reading():
    """At the last evaluation the small-P models copy their data: level 3 looks learned on all
    samples (validity falls with P: 'not rising'), not on the non-copied ones (never reaches 1/2)."""
    df = quick_rows()
    all_samples = thresholds.table(df, at="last").query("seed == -1").set_index("level")
    noncopy = thresholds.table(df, at="last", samples="noncopy").query("seed == -1").set_index("level")
    assert all_samples.loc[3, "censored"] == "not rising"
    assert noncopy.loc[3, "censored"] == "above" and noncopy.loc[3, "num_nan"] >= 2


@pytest.mark.heavy
def test_scipy_fits_give_the_hand_written_fits_results_on_the_quick_rows():
    """The Levenberg-Marquardt and pool-adjacent-violators code these replace (commit b6ef361) gave
    these thresholds on the stored rows; scipy's least_squares / isotonic_regression give the same."""
    df = quick_rows()
    expected = {("sigmoid", "raw"): (16.8003978, 219.237200), ("interp", "raw"): (19.6875356, 200.921258),
                ("sigmoid", "normalized"): (70.3629814, 255.243740)}
    for (method, reading), want in expected.items():
        got = thresholds.summary(thresholds.table(df, method, "best", reading))["P_star"]
        np.testing.assert_allclose(got[:2], want, rtol=1e-6)


def test_fit_sigmoid_reaches_the_least_squares_minimum_of_a_grid_search():
    long = analysis.final_validity(quick_rows(), "best").query("level == 2")
    x, y = np.log10(long["P"].to_numpy()), long["validity"].to_numpy()
    center, slope = thresholds.fit_sigmoid(x, y)
    sse = lambda c, k: ((thresholds.sigmoid(x, c, k) - y) ** 2).sum()
    grid = min(sse(c, k) for c in np.linspace(1.5, 3.5, 201) for k in np.linspace(0.5, 8, 151))
    assert sse(center, slope) <= grid + 1e-12


def test_bad_input_gives_one_reason_per_level_never_a_number():
    df = quick_rows()
    one_P = thresholds.table(df[df["P"] == 256], at="best").query("seed == -1")
    assert one_P["censored"].tolist() == ["one P"] * 3 and one_P["P_star"].isna().all()
    flat = df.assign(validity_l1=0.375, validity_l2=0.06, validity_l3=0.0)  # at chance: nothing rises
    flat_table = thresholds.table(flat).query("seed == -1")
    assert flat_table["censored"].tolist() == ["above"] * 3 and flat_table["P_star"].isna().all()
    nan_rows = df.assign(validity_l2=np.nan)
    nan_table = thresholds.table(nan_rows, at="best").query("seed == -1").set_index("level")
    assert nan_table.loc[2, "censored"] == "no finite rows" and np.isnan(nan_table.loc[2, "P_star"])
    assert nan_table.loc[1, "P_star"] == pytest.approx(82.53, rel=1e-3)  # other levels unaffected


def test_divergence_flag_excludes_the_model_and_old_copy_column_is_read():
    df = quick_rows()
    df.loc[(df["P"] == 64) & (df["step"] == 512), "diverged"] = True
    assert 64 not in set(analysis.final_validity(df)["P"])
    assert analysis.diverged_models(df)["P"].tolist() == [64]
    assert analysis.copies_column(df) == "copy" and analysis.copies_column(df.rename(columns={"copy": "copies"})) == "copies"
    assert "copies" in analysis.creativity(df).columns


def write_sweep_workdir(path, frames, config_m=4):
    """One work directory of a sweep over m: the grid rows carry each model's m (config.json's grammar
    says m=``config_m``, the base of the sweep), the metrics rows carry no grammar column."""
    parts, offset = [], 0
    for df in frames:
        parts.append(df.assign(model=df["model"] + offset))
        offset += df["model"].nunique()
    both = pd.concat(parts, ignore_index=True)
    models = both.drop_duplicates("model")
    grid = [dict(index=int(r.model), P=int(r.P), seed=int(r.seed), lr=1e-4, grammar_seed=0, data_seed=0,
                 budget_steps=4096, m=int(r.m)) for r in models.itertuples()]
    path = write_workdir(path, both, m=config_m)
    with open(os.path.join(path, "config.json")) as f:
        stored = json.load(f)
    stored.update(grid=grid, points=[{"grammar.m": int(m)} for m in models["m"].unique()])
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(stored, f)
    return path


@pytest.mark.heavy
def test_one_workdir_sweeping_m_gives_per_m_thresholds_and_the_collapse(tmp_path):
    """m read from the rows (not config.json's constant m=4): a curve per m, ratios ~ m, one c."""
    frames = [synthetic_metrics(m=3, c=1.0, jitter=0.0), synthetic_metrics(m=2, c=1.0, jitter=0.0)]
    workdir = write_sweep_workdir(tmp_path / "sweep", frames)
    df = analysis.load(workdir)
    assert sorted(df["m"].unique()) == [2, 3] and df["v"].unique().tolist() == [8]
    assert analysis.curve_keys(df) == ["workdir", "m"]
    summary = thresholds.summary(thresholds.table(df))
    assert len(summary) == 6 and sorted(summary["m"].unique()) == [2, 3]
    for row in summary.itertuples():
        assert abs(np.log10(row.P_star / (8 * row.m ** (row.level + 1)))) < 0.05, row
    ratios = thresholds.ratios(thresholds.table(df))
    np.testing.assert_allclose(ratios["ratio"], ratios["m"], rtol=0.1)
    fit = thresholds.fit_constant(summary)
    assert fit["c"] == pytest.approx(1.0, rel=0.1) and fit["log10_spread"] < 0.05 and fit["num"] == 6
    points = thresholds.collapse(df)
    np.testing.assert_allclose(points["x"], points["P"] / (8 * points["m"] ** (points["level"] + 1)))


def test_per_seed_fits_are_per_grammar_seed_too():
    """Seeds of a curve are replicates (grammar, data, model seed): three grammars with model seed 0 are
    three per-seed fits, not one."""
    df = synthetic_metrics(jitter=0.1, noise=0.0, seeds=(0, 1, 2), num_P=20)
    df = df.assign(grammar_seed=df["seed"], data_seed=df["seed"], seed=0)
    summary = thresholds.summary(thresholds.table(df))
    assert (summary["num_seeds"] == 3).all()
    assert summary["log10_P_star_std"].between(0.02, 0.25).all()


# ----------------------------------------------------------------------------- issue 19: estimator, bounds, band

def plateau_rows(plateau=0.6, center=2.3, slope=4.0, num_P=13, seeds=(0, 1, 2), num_samples=4096, rng_seed=0):
    """Final rows whose normalized level-1 validity rises as ``plateau`` * logistic(log10 P; center, slope):
    it never reaches 1, and crosses 1/2 where the logistic reaches 1/(2 plateau)."""
    rng = np.random.default_rng(rng_seed)
    chance = theory.uniform_validity(8, 3, 2, 2, 8)[0]
    rows, model = [], 0
    for seed in seeds:
        for P in np.logspace(1, 4, num_P).round():
            norm = plateau * thresholds.sigmoid(np.log10(P), center, slope)
            raw = rng.binomial(num_samples, chance + (1 - chance) * norm) / num_samples
            for step in (512, 1024):
                rows.append(dict(model=model, P=P, seed=seed, step=step, validity_l1=raw, test_loss=1.0 - step / 1e4,
                                 num_samples=num_samples))
            model += 1
    return pd.DataFrame(rows).assign(v=8, n=8, m=3, s=2, L=2)


def test_a_curve_that_plateaus_at_06_keeps_its_crossing():
    """The default estimator recovers the 1/2 crossing of a curve with a plateau at 0.6 within 10 %;
    the logistic with its asymptote fixed at 1 does not (it was the default before issue 19)."""
    center, slope, plateau = 2.3, 4.0, 0.6
    truth = 10 ** (center + np.log(1 / (1 / (2 * plateau)) - 1) / -slope)  # logistic = 1 / (2 plateau)
    df = plateau_rows(plateau, center, slope)
    row = thresholds.summary(thresholds.table(df)).iloc[0]
    assert row["method"] == "interp" and row["P_star"] == pytest.approx(truth, rel=0.1)
    assert row["P_star_lo"] < truth < row["P_star_hi"] and row["P_star_hi"] < 2 * truth  # the interval covers it
    logistic = thresholds.summary(thresholds.table(df, "sigmoid", interval=False)).iloc[0]
    assert logistic["P_star"] > 1.2 * truth


def test_the_interval_grows_with_fewer_samples_and_fewer_replicates():
    many = thresholds.summary(thresholds.table(plateau_rows(num_samples=4096))).iloc[0]
    few = thresholds.summary(thresholds.table(plateau_rows(num_samples=64))).iloc[0]
    assert np.log(few["P_star_hi"] / few["P_star_lo"]) > np.log(many["P_star_hi"] / many["P_star_lo"])


def test_a_level_still_rising_near_its_crossing_is_a_bound_left_out_of_c_and_ratios():
    """Level 2 rises over the last doubling of steps at every P: its P* is '<= P*', not a value."""
    done = synthetic_metrics(c=1.0, jitter=0.0, seeds=(0, 1), num_P=16)
    df = done.copy()
    half = df["step"] == 1024
    df.loc[half, "validity_l2"] = 0.7 * df.loc[half, "validity_l2"]  # level 2 was much lower at half the steps
    table = thresholds.table(df)
    summary = thresholds.summary(table).set_index("level")
    assert not summary.loc[1, "bound"] and summary.loc[2, "bound"]
    fit = thresholds.fit_constant(summary.reset_index())
    assert fit["num"] == 2 and fit["left_out"] == [f"run level 2: <= {summary.loc[2, 'P_star']:.3g}"]
    ratios = thresholds.ratios(table).set_index("level")
    assert np.isnan(ratios.loc[1, "ratio"]) and np.isnan(ratios.loc[2, "ratio"])  # both touch level 2
    assert thresholds.text(100.0, True) == "<= 100" and thresholds.text(100.0, False, 80, np.inf) \
        == "100 [80, inf]"
    # without the rise, the same table gives values that enter c
    assert thresholds.fit_constant(thresholds.summary(thresholds.table(done)))["num"] == 3


def test_an_early_stopped_reading_is_no_bound_once_the_test_loss_minimum_is_behind_it():
    """The same late rise of level 2 (after the best step, as when a model memorizes): at 'last' it is a
    bound; at 'best' it is one only while the best evaluation is the last one (the minimum not yet passed)."""
    df = synthetic_metrics(c=1.0, jitter=0.0, seeds=(0, 1), num_P=16)
    half, last = df["step"] == 1024, df["step"] == 4096
    df.loc[half, "validity_l2"] = 0.7 * df.loc[half, "validity_l2"]
    assert thresholds.summary(thresholds.table(df, at="best")).set_index("level").loc[2, "bound"]  # minimum at the end
    passed = df.copy()
    for column in [c for c in df if c.startswith("test_loss")]:  # the minimum moves to step 1024
        passed.loc[last, column] += 1.0
    for at, bound in (("best", False), ("last", True)):
        summary = thresholds.summary(thresholds.table(passed, at=at, interval=False)).set_index("level")
        assert bool(summary.loc[2, "bound"]) is bound, at


def best_history():
    """One model, five evaluations with known losses (common random numbers) and standard errors."""
    losses = [0.50, 0.41, 0.40, 0.43, 0.45]
    return pd.DataFrame(dict(model=0, P=64, seed=0, step=[100, 200, 400, 800, 1600], test_loss=losses,
                             test_loss_se=0.01, validity_l1=[0.4, 0.55, 0.7, 0.9, 0.95],
                             **{f"test_loss_window_{w}": [0.5, 0.5, 0.5, 0.1, 0.5] for w in range(2)}))


def test_best_band_spans_the_evaluations_within_two_standard_errors():
    df = best_history().assign(v=8, n=8, m=3, s=2, L=1)
    band = analysis.best_band(df, "raw").iloc[0]
    # minimum 0.40 at step 400; within 0.40 + 2 x 0.01: steps 200, 400 (0.43 is outside)
    assert band["step"] == 400 and band["band_evals"] == 2 and band["band_steps"] == "200..400"
    assert band["validity_l1_lo"] == 0.55 and band["validity_l1_hi"] == 0.7
    wider = analysis.best_band(df.assign(test_loss_se=0.02), "raw").iloc[0]
    assert wider["band_evals"] == 3 and wider["validity_l1_hi"] == 0.9  # 0.43 <= 0.40 + 2 x 0.02
    # older rows without test_loss_se: the band is the best evaluation alone, picked by the window mean
    old = analysis.best_band(df.drop(columns="test_loss_se"), "raw").iloc[0]
    assert old["step"] == 800 and old["band_evals"] == 1 and old["validity_l1_lo"] == old["validity_l1_hi"] == 0.9
    long = analysis.final_validity(df, "best", "raw")
    assert long[["step", "validity", "lo", "hi"]].iloc[0].tolist() == [400, 0.7, 0.55, 0.7]


def test_one_rule_for_best_in_results_and_analysis():
    """``results.pick`` (dicts or a DataFrame) and ``analysis.final`` pick the same evaluation: with
    test_loss_se logged the lowest test_loss (common random numbers), else the lowest window mean."""
    from rhm_jax import results

    df = best_history()
    assert results.pick(df, "best")["step"] == 400 == analysis.final(df, "best")["step"].iloc[0]
    assert results.pick(df.to_dict("records"), "best")["step"] == 400
    old = df.drop(columns="test_loss_se")
    assert results.pick(old, "best")["step"] == 800 == analysis.final(old, "best")["step"].iloc[0]
    assert results.pick(df, "last")["step"] == 1600
    with pytest.raises(ValueError, match="at"):
        results.pick(df, "first")
    two = pd.concat([df.assign(model=0), df.assign(model=1)])  # a whole table is not one model's history
    with pytest.raises(ValueError, match=r"history holds 2 models.*analysis.final\(df, at=...\)"):
        results.pick(two, "best")
    assert analysis.final(two, "best")["step"].tolist() == [400, 400]


def test_the_interval_holds_its_threshold_when_resamples_cross_below_the_smallest_p():
    """A curve crossing 1/2 just above its smallest P: resamples that start above 1/2 cross at or
    below that P and count there, not dropped (dropping them pushed the interval above its own P*)."""
    chance = theory.uniform_validity(8, 3, 2, 2, 8)[0]
    rows = [dict(model=i, P=P, seed=0, step=step, validity_l1=chance + (1 - chance) * norm, test_loss=1.0 - step / 1e4,
                 num_samples=256)
            for i, (P, norm) in enumerate([(64, 0.47), (256, 0.8), (1024, 0.9)]) for step in (512, 1024)]
    row = thresholds.summary(thresholds.table(pd.DataFrame(rows).assign(v=8, n=8, m=3, s=2, L=2))).iloc[0]
    assert 64 < row["P_star"] < 256
    assert row["P_star_lo"] == 64 and row["P_star_lo"] <= row["P_star"] <= row["P_star_hi"]


def test_final_picks_one_row_per_model_of_concatenated_frames():
    """Frames concatenated without a new index repeat index labels; each model still gets one row."""
    rows = quick_rows()
    twice = pd.concat([rows.assign(workdir="a"), rows.assign(workdir="b")])
    for at in ("best", "last"):
        picked = analysis.final(twice, at)
        assert len(picked) == 2 * rows["model"].nunique()
        assert picked.groupby("workdir")["model"].nunique().tolist() == [rows["model"].nunique()] * 2
