"""Readings in time of the online regime on synthetic tables whose answers are known."""
import numpy as np
import pandas as pd
import pytest

from rhm_jax import theory, timescales

STEPS = np.unique(np.round(2 ** np.arange(0, 14.01, 0.25)).astype(int))


def table(t1=(90.0, 100.0, 110.0), ratio=3.0, m=3, P=0, extra=None):
    """Rows of one online model per t1 (grammar v=n=8, s=2, L=3): level l crosses 1/2 (normalized)
    at t1 * ratio**(l-1); test loss flat at 1.0."""
    base = theory.uniform_validity(8, m, 2, 3, 8)
    rows = []
    for model, t in enumerate(t1):
        for step in STEPS:
            row = dict(workdir="w", model=model, P=P, seed=model, grammar_seed=model, data_seed=model, v=8, n=8,
                       m=m, s=2, L=3, batch_size=64, step=int(step), test_loss=1.0, test_loss_se=0.001)
            for level in (1, 2, 3):
                x = 1.0 / (1.0 + (t * ratio ** (level - 1) / step) ** 4)  # 1/2 at the crossing
                row[f"validity_l{level}"] = base[level - 1] + (1 - base[level - 1]) * x
            row.update(extra(model, step) if extra else {})
            rows.append(row)
    return pd.DataFrame(rows)


def test_learning_times_their_ratios_and_the_exponent_are_read_back():
    times = timescales.learning_times(table())
    assert times.loc[(times["model"] == 1) & (times["level"] == 2), "step"].item() == pytest.approx(300, rel=0.02)
    assert (times["samples"] == 64 * times["step"]).all()
    t = timescales.time_table(times).set_index("level")
    assert t.loc[1, "t"] == pytest.approx((90 * 100 * 110) ** (1 / 3), rel=0.02)
    assert t.loc[3, "t_lo"] <= t.loc[3, "t"] <= t.loc[3, "t_hi"] and t.loc[3, "reached"] == "3/3"
    ratios = timescales.ratios(times)
    assert ratios["ratio"].to_numpy() == pytest.approx([3.0, 3.0], rel=0.03) and (ratios["m"] == 3).all()
    fit = timescales.exponent(times).iloc[0]
    assert fit["exponent"] == pytest.approx(np.log(2) / np.log(3), rel=0.03)
    assert fit["theory"] == pytest.approx(np.log(2) / np.log(3)) and fit["levels"] == "1,2,3"
    assert fit["exponent_lo"] <= fit["exponent"] <= fit["exponent_hi"]
    # a grammar that learns each level 5x later reads a smaller exponent: the fit can fail
    slow = timescales.exponent(timescales.learning_times(table(ratio=5.0))).iloc[0]
    assert slow["exponent"] == pytest.approx(np.log(2) / np.log(5), rel=0.03)


def test_a_level_never_reached_is_counted_and_left_out_of_the_exponent():
    times = timescales.learning_times(table(t1=(90.0, 100.0, 5000.0)))  # model 2 reaches level 3 past the last step
    t = timescales.time_table(times).set_index("level")
    assert t.loc[3, "reached"] == "2/3" and t.loc[1, "reached"] == "3/3"
    assert timescales.exponent(times).iloc[0]["levels"] == "1,2"


def test_xi_from_validity_fits_the_power_law_of_the_learning_times():
    xi = timescales.coherence(table())
    assert set(xi["xi"]) <= {1.0, 2.0, 4.0, 8.0} and (xi["samples"] == 64 * xi["step"]).all()
    fit = timescales.xi_fit(xi.assign(xi_C=xi["xi"], xi_C_bound=xi["xi"] >= 8), "xi_C").iloc[0]
    assert 0.4 < fit["exponent"] < 0.9 and fit["models"] == 3


def test_a_finite_P_model_leaves_the_online_curve_where_its_test_loss_rises():
    def loss(P):
        return lambda model, step: dict(test_loss=1.0 + (0.05 * np.log2(step / 512) if P and step > 512 else 0.0),
                                        copies=(0.5 if P and step >= 2048 else 0.0) if P else None)
    online = table(extra=loss(0))
    finite = table(P=256, extra=loss(256)).assign(model=lambda d: d["model"] + 3)
    out = timescales.departures(pd.concat([online, finite], ignore_index=True))
    assert list(out["model"]) == [3, 4, 5] and (out["P"] == 256).all()
    first_above = STEPS[STEPS > 512][0]  # 0.05 log2(step/512) > 2 sqrt(2) 0.001 from the next step on
    assert (out["departure"] == first_above).all()
    assert (out["departure_samples"] == 64 * first_above).all()
    assert (out["departure_epochs"] == 64 * first_above / 256).all()
    assert (out["onset"] > 1024).all() and (out["onset"] <= 2048).all()


def test_the_time_table_reads_the_theorys_constant_and_xi_at_powers_of_two():
    t = timescales.time_table(timescales.learning_times(table(t1=(100.0, 100.0, 100.0)))).set_index("level")
    assert t.loc[2, "c"] == pytest.approx(64 * 300 / (8 * 3**3), rel=0.02)
    xi = timescales.xi_table(timescales.coherence(table()))
    assert list(xi["step"]) == [2**k for k in range(15)]
    assert xi["xi"].iloc[-1] == 8.0 and xi["xi"].iloc[0] == 1.0


def test_the_report_section_lists_every_reading_and_draws_its_figures(tmp_path):
    from rhm_jax import online_report
    def loss(P):
        return lambda model, step: dict(test_loss=1.0 + (0.05 * np.log2(step / 512) if P and step > 512 else 0.0),
                                        copies=(0.5 if step >= 2048 else 0.0) if P else None)
    df = pd.concat([table(extra=loss(0)), table(P=256, extra=loss(256)).assign(model=lambda d: d["model"] + 3)],
                   ignore_index=True)
    lines, paths = online_report.section(df, str(tmp_path))
    text = "\n".join(lines)
    for heading in ("learning times t_l", "t_(l+1) / t_l against m", "coherence length in time",
                    "power law of the coherence length", "leaves the online curve"):
        assert heading in text
    assert sorted(p.rsplit("/", 1)[1] for p in paths) == ["departure.pdf", "departure.png", "online_time.pdf",
                                                           "online_time.png"]
    assert online_report.section(df[df["P"] > 0], str(tmp_path)) == ([], [])


def test_two_grammars_of_different_depth_with_the_same_P_each_get_their_departures(tmp_path):
    """A sweep over (m, L), an online and a P=256 model per grammar: the shallower grammar has no level-4
    chance floor (NaN, not an IndexError), and each departure figure marks only its own grammar's models."""
    from rhm_jax import analysis, online_report

    def loss(P):
        return lambda model, step: dict(test_loss=1.0 + (0.05 * np.log2(step / 512) if P and step > 512 else 0.0),
                                        copies=(0.5 if step >= 2048 else 0.0) if P else None)
    one = pd.concat([table(t1=(100.0,), extra=loss(0)), table(t1=(100.0,), P=256, extra=loss(256)).assign(model=1)])
    deep = one.assign(m=2, L=4, model=one["model"] + 2, validity_l4=0.0)
    df = pd.concat([one, deep], ignore_index=True)
    assert np.isnan(analysis.baseline(df, 4)[0]) and np.isfinite(analysis.baseline(df, 4)[-1])
    lines, paths = online_report.section(df, str(tmp_path))
    assert sorted(p.rsplit("/", 1)[1] for p in paths if p.endswith(".png")) == [
        "departure_0.png", "departure_1.png", "online_time_0.png", "online_time_1.png"]
