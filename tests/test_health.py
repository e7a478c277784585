"""Divergence beyond NaN: loss blow-ups and collapsed samples are flagged, memorizers are not."""
import pandas as pd
import pytest

from rhm_jax import analysis, health


def row(model, step, loss, duplicates=0.0, P=16, **extra):
    return dict(model=model, step=step, P=P, seed=0, train_loss=loss, duplicates=duplicates, diverged=False,
                diverged_step=-1, validity_l1=1.0, **extra)


def test_expected_distinct_of_a_copier():
    assert health.expected_distinct(64, 16) == pytest.approx(16 * (1 - (15 / 16) ** 64))
    assert health.expected_distinct(1024, 1024) == pytest.approx(1024 * (1 - (1023 / 1024) ** 1024))
    assert health.expected_distinct(10, 1) == 1.0


def test_lr_100_collapse_is_flagged_and_a_memorizer_is_not():
    """Rows measured on the smoke grid at lr=100 (loss 0.064 -> 0.26, 2-4 distinct of 64 samples)
    against a model that copies its 16 training rows (about 16 distinct of 64: duplicates 0.75)."""
    tracker = health.Tracker(num_samples=64)
    first = tracker.flag([row(0, 0, 0.064), row(1, 0, 0.064)])
    assert not any(r["loss_blowup"] or r["collapsed"] for r in first)
    blown, copier = tracker.flag([row(0, 1, 0.263, duplicates=0.94), row(1, 1, 0.050, duplicates=0.75)])
    assert blown["loss_blowup"] and blown["collapsed"]
    assert not copier["loss_blowup"] and not copier["collapsed"]
    assert health.first_flag(first[:1] + [blown]) == "loss@1"


def test_loss_noise_near_zero_is_not_a_blowup():
    tracker = health.Tracker(num_samples=64, earlier=[row(0, 0, 1.0), row(0, 8, 0.001)])
    assert not tracker.flag([row(0, 16, 0.003)])[0]["loss_blowup"]  # 3x, but 0.2% of the first loss
    assert tracker.flag([row(0, 32, 0.5)])[0]["loss_blowup"]


def test_nan_flag_reports_the_divergence_step_not_the_evaluation_step():
    rows = [row(0, 1, 0.1), dict(row(0, 2, None), diverged=True, diverged_step=1)]
    assert health.first_flag(rows) == "nan@1"
    rows[0]["collapsed"] = True  # going non-finite is the headline, even after an earlier flag
    assert health.first_flag(rows) == "nan@1"


def test_flagged_models_are_excluded_from_analysis_and_listed():
    tracker = health.Tracker(num_samples=64)
    rows = tracker.flag([row(0, 0, 0.064), row(1, 0, 0.064)])
    rows += tracker.flag([row(0, 1, 0.263, duplicates=0.94), row(1, 1, 0.06)])
    df = pd.DataFrame(rows).assign(workdir="w")
    assert analysis.healthy(df)["model"].unique().tolist() == [1]
    listed = analysis.diverged_models(df)
    assert listed[["model", "flag"]].to_dict("records") == [{"model": 0, "flag": "loss@1"}]
