"""Analysis on synthetic metrics tables whose thresholds and times are known by construction."""
import json
import os

import numpy as np
import pandas as pd
import pytest

from rhm_jax import analysis


def synthetic_metrics(v=8, m=3, L=3, c=1.5, seeds=(0, 1, 2), jitter=0.05, noise=0.02,
                      num_P=12, slope=6.0, steps=(0, 64, 256, 1024, 4096), batch=64, rng_seed=0):
    """A metrics table whose final validity at level l is a logistic in log10 P centred on
    c * v * m**(l+1) (times a per-seed factor 10**(jitter * z)), plus noise; earlier steps are
    scaled-down copies so the time curves rise too."""
    rng = np.random.default_rng(rng_seed)
    P_grid = np.unique(np.round(np.logspace(np.log10(v * m**2 / 4), np.log10(4 * v * m ** (L + 1)), num_P)))
    rows, model = [], 0
    for seed in seeds:
        shift = {l: jitter * rng.standard_normal() for l in range(1, L + 1)}
        for P in P_grid:
            for step in steps:
                frac = step / steps[-1]
                row = dict(model=model, P=int(P), seed=seed, lr=1e-4, step=step, epoch=step * batch / P,
                           train_loss=1.0 - 0.5 * frac, test_loss=1.0 - 0.4 * frac, diverged=False)
                for l in range(1, L + 1):
                    center = np.log10(c * v * m ** (l + 1)) + shift[l]
                    val = frac * analysis.sigmoid(np.log10(P), center, slope) + noise * rng.standard_normal()
                    row[f"validity_l{l}"] = float(np.clip(val, 0, 1))
                row["valid"] = row[f"validity_l{L}"]
                row["copy"] = float(frac**2 * min(1.0, 30 / P))
                row["novel_valid"] = max(0.0, row["valid"] - row["copy"])
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
    center, slope = analysis.fit_sigmoid(x, analysis.sigmoid(x, 2.3, 3.1))
    assert center == pytest.approx(2.3, abs=1e-6)
    assert slope == pytest.approx(3.1, rel=1e-5)


def test_fit_sigmoid_returns_nan_when_curve_never_crosses_half():
    x = np.linspace(0, 4, 10)
    assert np.isnan(analysis.fit_sigmoid(x, np.full(10, 0.3))[0])
    assert np.isnan(analysis.fit_sigmoid(x, np.full(10, 0.7))[0])


def test_isotonic_is_monotone_and_preserves_mean():
    y = np.array([0.1, 0.4, 0.2, 0.6, 0.5, 0.9])
    fit = analysis.isotonic(y)
    assert np.all(np.diff(fit) >= 0)
    assert fit.mean() == pytest.approx(y.mean())
    np.testing.assert_allclose(fit, [0.1, 0.3, 0.3, 0.55, 0.55, 0.9])


@pytest.mark.parametrize("method", ["sigmoid", "interp"])
def test_thresholds_recover_known_centers(method):
    c, v, m = 1.5, 8, 3
    df = synthetic_metrics(c=c, v=v, m=m, jitter=0.0)
    summary = analysis.threshold_summary(analysis.thresholds(df, method))
    for _, row in summary.iterrows():
        truth = c * v * m ** (row["level"] + 1)
        tol = 0.03 if method == "sigmoid" else 0.08  # in log10 P; interpolation is coarser
        assert abs(np.log10(row["P_star"]) - np.log10(truth)) < tol
        assert row["num_seeds"] == 3


def test_per_seed_spread_reflects_seed_jitter():
    df = synthetic_metrics(jitter=0.1, noise=0.0, seeds=tuple(range(6)), num_P=20)
    table = analysis.thresholds(df)
    summary = analysis.threshold_summary(table)
    # with per-seed shifts of 0.1 decades the measured spread is of that order, not zero
    assert summary["log10_P_star_std"].between(0.03, 0.25).all()
    clean = analysis.threshold_summary(analysis.thresholds(synthetic_metrics(jitter=0.0, noise=0.0)))
    assert (clean["log10_P_star_std"] < 1e-3).all()


def test_ratio_and_constant_recovered():
    c, v, m = 0.7, 8, 3
    df = synthetic_metrics(c=c, v=v, m=m, jitter=0.0, noise=0.01, L=3)
    table = analysis.thresholds(df)
    ratios = analysis.ratios(table)
    np.testing.assert_allclose(ratios["ratio"], m, rtol=0.08)
    np.testing.assert_allclose(ratios["ratio_mean"], m, rtol=0.08)
    fit = analysis.fit_constant(analysis.threshold_summary(table))
    assert fit["c"] == pytest.approx(c, rel=0.08)
    assert fit["log10_spread"] < 0.05
    assert fit["num"] == 3


def test_collapse_across_m_has_small_spread_and_wrong_scaling_has_large():
    a = synthetic_metrics(m=3, c=1.0, jitter=0.0).assign(workdir="m3")
    b = synthetic_metrics(m=2, c=1.0, jitter=0.0, v=8).assign(workdir="m2")
    both = pd.concat([a, b], ignore_index=True)
    summary = analysis.threshold_summary(analysis.thresholds(both))
    assert analysis.fit_constant(summary)["log10_spread"] < 0.05
    # thresholds that do not scale with m**(l+1) must show up as a poor collapse
    bad = summary.assign(P_star=summary["P_star"] * 10.0 ** summary["level"])
    assert analysis.fit_constant(bad)["log10_spread"] > 0.5
    points = analysis.collapse(both)
    assert set(points["workdir"]) == {"m2", "m3"}
    np.testing.assert_allclose(points["x"], points["P"] / (points["v"] * points["m"] ** (points["level"] + 1)))


def test_censored_thresholds_are_flagged_not_extrapolated():
    df = synthetic_metrics(c=100.0, jitter=0.0)  # level 3 threshold far above the largest P
    summary = analysis.threshold_summary(analysis.thresholds(df)).set_index("level")
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


def test_crossing_time_interpolates_in_log_step():
    steps = np.array([0, 10, 100, 1000])
    y = np.array([0.0, 0.2, 0.4, 0.8])
    # 0.5 is a quarter of the way from 0.4 to 0.8, so a quarter of a decade above 100
    assert analysis.crossing_time(steps, y) == pytest.approx(100 * 10**0.25)
    assert np.isnan(analysis.crossing_time(steps, np.full(4, 0.1)))
    assert analysis.crossing_time(steps, np.array([0.6, 0.7, 0.8, 0.9])) == 0.0


def test_learning_times_and_memorization_onset_on_synthetic_curves():
    steps = np.unique(np.round(np.logspace(0, 4, 33))).astype(int)
    t_star = {1: 50.0, 2: 400.0, 3: 3000.0}
    rows = []
    for step in steps:
        row = dict(model=0, P=1024, seed=0, step=step, epoch=step * 64 / 1024, diverged=False)
        for l, t in t_star.items():
            row[f"validity_l{l}"] = float(analysis.sigmoid(np.log10(step), np.log10(t), 5.0))
        row["copy"] = float(analysis.sigmoid(np.log10(step), np.log10(5000.0), 5.0) * 0.4)
        rows.append(row)
    df = pd.DataFrame(rows)
    times = analysis.learning_times(df).set_index("level")
    for l, t in t_star.items():
        assert times.loc[l, "step"] == pytest.approx(t, rel=0.05)
        assert times.loc[l, "epoch"] == pytest.approx(t * 64 / 1024, rel=0.05)
    assert list(times["step"]) == sorted(times["step"])  # levels learned in order
    onset = analysis.memorization_onset(df, copy_level=0.2).iloc[0]
    assert onset["step"] == pytest.approx(5000.0, rel=0.05)
    assert onset["final_copy"] == pytest.approx(0.4 * analysis.sigmoid(4.0, np.log10(5000.0), 5.0))


def test_creativity_is_novel_share_of_valid():
    df = synthetic_metrics(seeds=(0,), num_P=5)
    out = analysis.creativity(df)
    expected = out["novel_valid"] / out["valid"]
    np.testing.assert_allclose(out["novel_share"][out["valid"] > 0], expected[out["valid"] > 0])
    assert (out["novel_share"].dropna() <= 1).all()


def test_window_losses_from_columns_or_lists():
    df = synthetic_metrics(seeds=(0,), num_P=3)
    cols = analysis.window_losses(df, "train")
    np.testing.assert_allclose(cols[:, 4], df["train_loss"] * 0.5)
    as_lists = pd.DataFrame({"test_loss_windows": [list(r) for r in analysis.window_losses(df, "test")]})
    np.testing.assert_allclose(analysis.window_losses(as_lists, "test"), analysis.window_losses(df, "test"))
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


def test_bad_input_raises_clear_value_errors(tmp_path):
    with pytest.raises(ValueError, match="workdirs"):
        analysis.load([])
    with pytest.raises(ValueError, match="config.json"):
        analysis.load(str(tmp_path))
    with pytest.raises(ValueError, match="method"):
        analysis.threshold([1, 2], [0.1, 0.9], method="spline")
    with pytest.raises(ValueError, match="validity_l"):
        analysis.levels(pd.DataFrame({"P": [1]}))


def test_learning_rates_on_one_grid_give_separate_curves():
    fast = synthetic_metrics(c=1.0, jitter=0.0, seeds=(0,)).assign(lr=1e-3)
    slow = synthetic_metrics(c=4.0, jitter=0.0, seeds=(0,)).assign(lr=1e-4)
    slow["model"] += fast["model"].max() + 1
    summary = analysis.threshold_summary(analysis.thresholds(pd.concat([fast, slow], ignore_index=True)))
    by_lr = summary.set_index(["lr", "level"])["P_star"]
    for level in (1, 2):
        assert by_lr[(1e-4, level)] / by_lr[(1e-3, level)] == pytest.approx(4.0, rel=0.1)
    assert analysis.learning_times(fast)["lr"].eq(1e-3).all()


def test_best_evaluation_ignores_memorized_small_p_models():
    """Small-P models that end up copying their data (valid, but overfit) count at their test-loss minimum."""
    rows, truth = [], 200.0
    for model, P in enumerate(np.logspace(1, 4, 13).round()):
        learned = float(analysis.sigmoid(np.log10(P), np.log10(truth), 8.0))
        overfit = P < truth
        rows.append(dict(model=model, P=P, seed=0, step=100, validity_l1=learned, test_loss=1.0))
        rows.append(dict(model=model, P=P, seed=0, step=200, validity_l1=1.0 if overfit else learned,
                         test_loss=2.0 if overfit else 0.5))
    df = pd.DataFrame(rows)
    best = analysis.threshold_summary(analysis.thresholds(df, at="best")).iloc[0]
    assert best["P_star"] == pytest.approx(truth, rel=0.02)
    last = analysis.threshold_summary(analysis.thresholds(df, at="last")).iloc[0]
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
    falling = analysis.sigmoid(np.log10(P), 2.0, -6.0)
    center, slope = analysis.fit_sigmoid(np.log10(P), falling)
    assert center == pytest.approx(2.0, abs=1e-4) and slope == pytest.approx(-6.0, rel=1e-3)
    assert np.isnan(analysis.threshold(P, falling))
    df = pd.DataFrame(dict(model=range(9), P=P, seed=0, step=1, validity_l1=falling))
    assert analysis.thresholds(df).iloc[0]["censored"] == "not rising"
    one_P = df.assign(P=64.0)
    assert analysis.thresholds(one_P).iloc[0]["censored"] == "one P"
