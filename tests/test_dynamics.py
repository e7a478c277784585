"""dynamics: learning times, memorization onset, budgets, coherence length and C(t) tables."""
import numpy as np
import pandas as pd
import pytest

from rhm_jax import dynamics, theory, thresholds
from test_analysis import quick_rows


def test_crossing_time_interpolates_in_log_step():
    steps = np.array([0, 10, 100, 1000])
    y = np.array([0.0, 0.2, 0.4, 0.8])
    # 0.5 is a quarter of the way from 0.4 to 0.8, so a quarter of a decade above 100
    assert dynamics.crossing_time(steps, y) == pytest.approx(100 * 10**0.25)
    assert np.isnan(dynamics.crossing_time(steps, np.full(4, 0.1)))
    assert dynamics.crossing_time(steps, np.array([0.6, 0.7, 0.8, 0.9])) == 0.0


def time_curves(t_star: dict, copy_name: str = "copies", v=8, m=3, L=3) -> pd.DataFrame:
    """One model whose NORMALIZED validity at level l is a logistic in log step centred on t_star[l]."""
    chance = theory.uniform_validity(v, m, 2, L, v)
    rows = []
    for step in np.unique(np.round(np.logspace(0, 4, 33))).astype(int):
        row = dict(model=0, P=1024, seed=0, step=step, epoch=step * 64 / 1024, diverged=False)
        for l, t in t_star.items():
            norm = float(thresholds.sigmoid(np.log10(step), np.log10(t), 5.0))
            row[f"validity_l{l}"] = chance[l - 1] + (1 - chance[l - 1]) * norm
        row[copy_name] = float(thresholds.sigmoid(np.log10(step), np.log10(5000.0), 5.0) * 0.4)
        rows.append(row)
    return pd.DataFrame(rows).assign(v=v, n=v, m=m, s=2, L=L)


@pytest.mark.parametrize("copy_name", ["copies", "copy"])
def test_learning_times_read_normalized_validity_and_memorization_onset(copy_name):
    t_star = {1: 50.0, 2: 400.0, 3: 3000.0}
    df = time_curves(t_star, copy_name)
    times = dynamics.learning_times(df).set_index("level")
    for l, t in t_star.items():
        assert times.loc[l, "step"] == pytest.approx(t, rel=0.05)
        assert times.loc[l, "epoch"] == pytest.approx(t * 64 / 1024, rel=0.05)
    # raw validity starts at chance (0.375 at level 1) and so crosses 1/2 earlier
    assert dynamics.learning_times(df, reading="raw").set_index("level").loc[1, "step"] < 0.7 * t_star[1]
    onset = dynamics.memorization_onset(df, copy_level=0.2).iloc[0]
    assert onset["step"] == pytest.approx(5000.0, rel=0.05)
    assert onset["final_copies"] == pytest.approx(0.4 * thresholds.sigmoid(4.0, np.log10(5000.0), 5.0))


def test_still_rising_flags_levels_still_learning_over_the_last_doubling():
    df = time_curves({1: 50.0, 2: 400.0, 3: 8000.0})
    flags = dynamics.still_rising(df).set_index("level")
    assert flags["rising"].tolist() == [False, False, True]
    assert flags.loc[3, "rise"] > 0.3 and abs(flags.loc[1, "rise"]) < 1e-3
    # with few samples, the same rise can be sampling noise: not flagged
    small = df.assign(validity_l3=df["validity_l3"] * 0.2)  # a rise of ~0.09, above the 0.05 tolerance
    few = dynamics.still_rising(small.assign(num_samples=16)).set_index("level").loc[3]
    many = dynamics.still_rising(small.assign(num_samples=4096)).set_index("level").loc[3]
    assert few["rise"] == pytest.approx(many["rise"]) and few["rise"] > 0.05
    assert not few["rising"] and many["rising"]


def test_still_rising_on_noncopied_samples_weighs_the_rise_by_their_count():
    # Most samples are copies: the non-copied validity is read on few samples, hence noisier.
    small = time_curves({1: 50.0, 2: 400.0, 3: 8000.0})
    small["validity_l3"] *= 0.2  # a rise of ~0.09: real with 4096 samples, noise with 40
    small = small.assign(**{f"validity_l{l}_noncopy": small[f"validity_l{l}"] for l in (1, 2, 3)},
                         num_samples=4096)
    few = dynamics.still_rising(small.assign(noncopy_samples=40), samples="noncopy").set_index("level").loc[3]
    many = dynamics.still_rising(small.assign(noncopy_samples=4096), samples="noncopy").set_index("level").loc[3]
    assert few["rise"] == pytest.approx(many["rise"]) and few["rise"] > 0.05
    assert not few["rising"] and many["rising"]


def test_coherence_length_is_s_to_the_highest_level_above_half():
    df = time_curves({1: 10.0, 2: 100.0, 3: 1000.0})
    xi = dynamics.coherence_length(df).set_index("step")
    assert xi.loc[1, "xi"] == 1 and xi.loc[32, "level_star"] == 1 and xi.loc[316, "xi"] == 4
    assert xi.loc[10000, "xi"] == 8
    for level in (1, 2, 3):
        P_l = thresholds.theory_threshold(8, 3, level)
        assert dynamics.theory_coherence_length(P_l, 8, 3, 2) == pytest.approx(2**level)


def test_correlations_pair_samples_with_training_rows_per_distance():
    df = quick_rows().assign(corr_t1=0.02, corr_train_t1=0.04, corr_t2=0.01, corr_train_t2=0.0)
    corr = dynamics.correlations(df)
    assert sorted(corr["t"].unique()) == [1, 2] and len(corr) == 2 * df["model"].nunique()
    assert corr.query("t == 1")["ratio"].eq(0.5).all() and corr.query("t == 2")["ratio"].isna().all()
    assert dynamics.correlations(quick_rows()).empty


def correlation_rows(samples: dict, data: dict, se: float | None = 0.001, step=100) -> pd.DataFrame:
    """One evaluation of one model with C(t) columns: the samples' value, its error and the data's."""
    row = dict(model=0, P=256, seed=0, step=step, epoch=1.0, diverged=False, validity_l1=0.9, test_loss=0.1)
    for t in samples:
        row[f"corr_t{t}"] = samples[t]
        row[f"corr_data_t{t}"] = data[t]
        if se is not None:
            row[f"corr_t{t}_se"] = se
    return pd.DataFrame([row]).assign(v=8, n=8, m=3, s=2, L=3)


def test_coherence_length_from_correlations_reads_half_the_datas_value_where_resolved():
    data = {1: 0.02, 2: 0.0016, 3: 0.0012, 4: 0.0009, 5: 0.0002, 6: 0.0001, 7: 0.0001}
    # reproduced at t = 1..4 (>= half the data's), not at 5: with se = 0.0001 every t is resolved
    samples = {1: 0.018, 2: 0.001, 3: 0.0007, 4: 0.0005, 5: 0.00005, 6: 0.0001, 7: 0.0001}
    row = dynamics.correlation_length(correlation_rows(samples, data, se=0.00001)).iloc[0]
    assert row["xi_C"] == 5 and row["t_resolved"] == 7 and not row["xi_C_bound"] and row["reference"] == "data"
    # with se = 0.0003 half the data's value is below 2 se from t = 3 on: only t = 1, 2 resolved
    coarse = dynamics.correlation_length(correlation_rows(samples, data, se=0.0003)).iloc[0]
    assert coarse["t_resolved"] == 2 and coarse["xi_C"] == 3 and coarse["xi_C_bound"]
    # a miss at t = 2 stops it there, whatever larger distances show
    gap = dynamics.correlation_length(correlation_rows({**samples, 2: 0.0001}, data, se=0.00001)).iloc[0]
    assert gap["xi_C"] == 2
    none = dynamics.correlation_length(correlation_rows({**samples, 1: 0.001}, data, se=0.00001)).iloc[0]
    assert none["xi_C"] == 1
    # older rows: no error, the training rows as reference
    old = correlation_rows(samples, data, se=None)
    old = old.rename(columns={f"corr_data_t{t}": f"corr_train_t{t}" for t in data})
    assert dynamics.correlation_length(old).iloc[0][["xi_C", "reference"]].tolist() == [5, "train"]
    assert dynamics.correlation_length(quick_rows()).empty


def test_correlations_prefer_the_datas_own_value_and_carry_the_error():
    df = correlation_rows({1: 0.01, 2: 0.001}, {1: 0.02, 2: 0.004}).assign(corr_train_t1=0.05, corr_train_t2=0.05)
    corr = dynamics.correlations(df).set_index("t")
    assert corr["ratio"].tolist() == [0.5, 0.25] and corr["se"].tolist() == [0.001, 0.001]
    assert corr["data"].tolist() == [0.02, 0.004] and corr["train"].tolist() == [0.05, 0.05]


def test_dynamics_tables_carry_every_swept_key():
    """Learning times and memorization onset keep m, lr and grammar seed, so the report can group by them."""
    df = pd.concat([time_curves({1: 50.0}).assign(model=i, lr=lr, grammar_seed=g, m=m)
                    for i, (lr, g, m) in enumerate([(1e-3, 0, 3), (1e-4, 1, 2)])], ignore_index=True)
    for table in (dynamics.learning_times(df), dynamics.memorization_onset(df), dynamics.still_rising(df)):
        assert {"lr", "grammar_seed", "m"} <= set(table) and len(table.drop_duplicates(["lr", "m"])) == 2


def test_time_order_reads_levels_in_order_then_copies_over_realizations():
    """Three realizations: two learn every level in order and memorize after (copies reach 0.1 near step
    3000); the third memorizes before its level 3 (at 8000); then one that never learns level 3."""
    def model(k, t_star, best):
        df = time_curves(t_star)
        return df.assign(model=k, seed=k, test_loss=(np.log10(df["step"]) - np.log10(best)) ** 2)

    df = pd.concat([model(0, {1: 50.0, 2: 400.0, 3: 2500.0}, 2000), model(1, {1: 60.0, 2: 500.0, 3: 2000.0}, 3000),
                    model(2, {1: 40.0, 2: 300.0, 3: 8000.0}, 4000)]).assign(workdir="w")
    per_model = dynamics.time_order(df).set_index("model")
    assert per_model.loc[0, "t_l3"] == pytest.approx(2500, rel=0.05)
    assert per_model["onset"].tolist() == pytest.approx([3000] * 3, rel=0.05)
    assert per_model["best"].tolist() == pytest.approx([2000, 3000, 4000], rel=0.15)
    row = dynamics.time_order_summary(per_model.reset_index()).iloc[0]
    assert row["in order"] == "3/3" and row["copies after"] == "2/3" and row["models"] == 3
    median, low, high = (float(x) for x in row["t_l2"].replace("[", "").replace("]", "").replace(",", "").split())
    assert (low, median, high) == pytest.approx((300, 400, 500), rel=0.05)
    # a realization that never learns level 3: its median is unknown ('-'), and it is not 'in order'
    slow = pd.concat([df[df["model"] < 2], model(2, {1: 40.0, 2: 300.0, 3: 1e6}, 4000).assign(workdir="w")])
    row = dynamics.time_order_summary(dynamics.time_order(slow)).iloc[0]
    assert row["t_l3"] == "-" and row["in order"] == "2/3"
