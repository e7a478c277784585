"""Learning in time, read where data never repeat (the online regime, P = 0): t_l, xi(t), departures.

Pandas tables in, pandas tables out (no arrays with shape letters). Time is read in training steps
and in samples seen, ``samples = batch_size x steps`` (each online step draws a fresh batch).

- ``learning_times``: per model and level, t_l = the first step where normalized validity crosses
  1/2 (``dynamics.learning_times``, interpolated in log step), and t_l in samples seen.
- ``time_table``: per curve and level, the geometric mean of t_l over the replicates that reached
  it, with a 95 % bootstrap interval (models resampled) and how many reached it.
- ``ratios``: t_(l+1) / t_l per curve, from the same bootstrap, beside m (the theory: level l is
  learned once samples seen reach P*_l ~ c v m^(l+1), so each level takes m times longer).
- ``exponent``: the slope b of log t_l against l (least squares over the levels every model
  reached); since xi = s^l at t_l, xi ~ t^(log s / b), so the exponent is log s / b, with a
  bootstrap interval, beside the theory's log s / log m.
- ``coherence``: xi(t) per evaluation, from validity (``dynamics.coherence_length``, xi = s^l*) and
  from C(t) (``dynamics.correlation_length``, xi_C); ``xi_table`` their means at powers of two; ``xi_fit``: a log-log least-squares fit of
  xi_C (or xi) against steps over the rising part, with a bootstrap interval.
- ``departures``: the step at which each finite-P model leaves the online curve of its grammar
  (``DEPARTURE``), beside its memorization onset (copies >= 0.1, ``dynamics.memorization_onset``).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from rhm_jax import analysis, dynamics

ONLINE = 0  # the P of an online model (``rhm_jax.data.ONLINE``)
BOOTSTRAP = 1000  # resamples of the models of a curve
SEED = 0  # the bootstrap's generator: every reading of the same rows gives the same interval
DEPARTURE_SE = 2.0
DEPARTURE = (
    "the first evaluation step from which on, at every later evaluation, the finite-P model's test loss "
    f"lies above the online curve (the mean test loss of the online models of the same grammar at that "
    f"step) by more than {DEPARTURE_SE:g} combined standard errors (its own `test_loss_se` and the online "
    "mean's: their mean squared `test_loss_se` and spread over models, over the number of models)")


def online(df: pd.DataFrame) -> pd.DataFrame:
    """The rows of online models (P = 0)."""
    return df[df["P"] == ONLINE]


def curve_keys(df: pd.DataFrame) -> list[str]:
    """Columns that separate curves in time (``analysis.curve_keys``: the workdir and its swept keys)."""
    return analysis.curve_keys(analysis.keyed(df))


def _batch(df: pd.DataFrame) -> pd.Series:
    """Rows per step of each row (``batch_size``; NaN where not logged)."""
    return df["batch_size"].astype(float) if "batch_size" in df else pd.Series(np.nan, index=df.index)


def learning_times(df: pd.DataFrame, reading: str = "normalized") -> pd.DataFrame:
    """Per model and level: ``step`` (t_l, NaN if never crossed) and ``samples`` (batch_size x t_l)."""
    df = analysis.keyed(df)
    times = dynamics.learning_times(df, reading=reading)
    if times.empty:
        return times
    batch = df.groupby(["workdir", "model"])["batch_size"].first() if "batch_size" in df else None
    where = pd.MultiIndex.from_frame(times[["workdir", "model"]])
    size = batch.reindex(where).to_numpy(float) if batch is not None else np.nan
    return times.assign(samples=times["step"].to_numpy(float) * size)


def _draws(n: int, rng: np.random.Generator) -> np.ndarray:
    """BOOTSTRAP resamples (BOOTSTRAP, n) of n models, the first the models themselves."""
    draws = rng.integers(0, n, size=(BOOTSTRAP, n))
    draws[0] = np.arange(n)
    return draws


def _per_curve(times: pd.DataFrame):
    """(curve values, {level: log t per model (models in one order)}, models) per curve."""
    keys_ = curve_keys(times)
    for values, g in times.groupby(keys_, dropna=False, sort=False):
        wide = g.pivot_table(index="model", columns="level", values="step", aggfunc="first", dropna=False)
        with np.errstate(divide="ignore"):
            yield keys_, values, np.log(wide.to_numpy(float)), list(wide.columns), g


def _interval(x: np.ndarray) -> tuple[float, float]:
    finite = x[np.isfinite(x)]
    return (float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))) if finite.size > 1 else (np.nan, np.nan)


def _geo_means(log_KxL: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """(BOOTSTRAP, L) mean log t over the resampled models that reached each level."""
    sample = log_KxL[draws]  # (BOOTSTRAP, n, L)
    finite = np.isfinite(sample)
    with np.errstate(invalid="ignore"):
        return np.where(finite, sample, 0.0).sum(1) / np.where(finite.sum(1) > 0, finite.sum(1), np.nan)


def time_table(times: pd.DataFrame) -> pd.DataFrame:
    """Per curve and level: ``t`` (geometric mean of t_l in steps over the models that reached it),
    ``t_lo`` / ``t_hi`` (95 % bootstrap interval), ``samples`` (batch_size x t), ``c`` = samples / (v m^(l+1))
    (the theory's constant if level l is learned at P*_l = c v m^(l+1) samples), ``reached`` ('k/n')."""
    rows, rng = [], np.random.default_rng(SEED)
    for keys_, values, log_KxL, levels, g in _per_curve(times):
        means = _geo_means(log_KxL, _draws(len(log_KxL), rng))
        batch = float(_batch(g).iloc[0]) if len(g) else np.nan
        for j, level in enumerate(levels):
            lo, hi = _interval(np.exp(means[1:, j]))
            t = float(np.exp(means[0, j]))
            grammar = _grammar(g)
            context = grammar.get("v", np.nan) * grammar.get("m", np.nan) ** (level + 1)
            rows.append(dict(zip(keys_, values), level=level, t=t, t_lo=lo, t_hi=hi, samples=t * batch,
                             c=t * batch / context, reached=f"{int(np.isfinite(log_KxL[:, j]).sum())}/{len(log_KxL)}"))
    return pd.DataFrame(rows)


def _grammar(g: pd.DataFrame) -> dict:
    return {k: float(g[k].iloc[0]) for k in ("v", "m", "s", "L") if k in g}


def ratios(times: pd.DataFrame) -> pd.DataFrame:
    """Per curve and l: ``ratio`` = t_(l+1) / t_l of the geometric means, its 95 % bootstrap interval, and m."""
    rows, rng = [], np.random.default_rng(SEED)
    for keys_, values, log_KxL, levels, g in _per_curve(times):
        means = _geo_means(log_KxL, _draws(len(log_KxL), rng))
        for j in range(len(levels) - 1):
            step = np.exp(means[:, j + 1] - means[:, j])
            lo, hi = _interval(step[1:])
            rows.append(dict(zip(keys_, values), level=f"{levels[j + 1]}/{levels[j]}", ratio=float(step[0]),
                             ratio_lo=lo, ratio_hi=hi, m=_grammar(g).get("m", np.nan)))
    return pd.DataFrame(rows)


def _slope(levels: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Least-squares slope of each row of ``means`` (BOOTSTRAP, L) against ``levels``."""
    x = levels - levels.mean()
    return (means - means.mean(1, keepdims=True)) @ x / (x @ x)


def exponent(times: pd.DataFrame) -> pd.DataFrame:
    """Per curve: ``slope`` of log t_l against l over the levels every model reached (>= 2 of them),
    ``exponent`` = log s / slope of xi ~ t^exponent, their 95 % bootstrap intervals, and the
    theory's log s / log m; ``levels`` used. NaN with fewer than two levels reached by all."""
    rows, rng = [], np.random.default_rng(SEED)
    for keys_, values, log_KxL, levels, g in _per_curve(times):
        grammar = _grammar(g)
        every = np.isfinite(log_KxL).all(0)
        row = dict(zip(keys_, values), levels=",".join(str(l) for l, ok in zip(levels, every) if ok),
                   theory=np.log(grammar.get("s", np.nan)) / np.log(grammar.get("m", np.nan)))
        if every.sum() >= 2:
            used = log_KxL[:, every]
            means = used[_draws(len(used), rng)].mean(1)
            slope = _slope(np.asarray(levels, float)[every], means)
            power = np.log(grammar.get("s", np.nan)) / slope
            row.update(slope=float(slope[0]), slope_lo=_interval(slope[1:])[0], slope_hi=_interval(slope[1:])[1],
                       exponent=float(power[0]), exponent_lo=_interval(power[1:])[0],
                       exponent_hi=_interval(power[1:])[1], ratio_per_level=float(np.exp(slope[0])))
        else:
            row.update(slope=np.nan, exponent=np.nan, exponent_lo=np.nan, exponent_hi=np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def coherence(df: pd.DataFrame, reading: str = "normalized") -> pd.DataFrame:
    """Per evaluation: ``xi`` (s^l*, from validity), ``xi_C`` and ``xi_C_bound`` (from C(t)), ``samples``."""
    df = analysis.keyed(df)
    xi = dynamics.coherence_length(df, reading=reading)
    corr = dynamics.correlation_length(df)
    if len(corr):
        xi = xi.merge(corr[["workdir", "model", "step", "xi_C", "xi_C_bound"]], on=["workdir", "model", "step"],
                      how="left")
    batch = analysis.healthy(df).groupby(["workdir", "model"])["batch_size"].first() if "batch_size" in df else None
    size = batch.reindex(pd.MultiIndex.from_frame(xi[["workdir", "model"]])).to_numpy(float) if batch is not None \
        else np.nan
    return xi.assign(samples=xi["step"].to_numpy(float) * size)


def xi_table(xi: pd.DataFrame) -> pd.DataFrame:
    """Per curve and evaluation step that is a power of two: mean xi and xi_C over models, and samples seen."""
    keys_ = curve_keys(xi)
    steps = xi["step"].to_numpy(int)
    part = xi[(steps > 0) & (steps & (steps - 1) == 0)]
    columns = {c: (c, "mean") for c in ("samples", "xi", "xi_C") if c in part}
    return part.groupby([*keys_, "step"], dropna=False).agg(**columns).reset_index()


def xi_fit(xi: pd.DataFrame, column: str = "xi_C") -> pd.DataFrame:
    """Per curve: the log-log least-squares slope of ``column`` against steps over its rising part
    (steps > 0, 1 < xi, and below saturation: not ``xi_C_bound``, or xi < s^L), a 95 % bootstrap
    interval (models resampled), and the theory's log s / log m."""
    rows, rng = [], np.random.default_rng(SEED)
    if column not in xi:
        return pd.DataFrame()
    keys_ = curve_keys(xi)
    for values, g in xi.groupby(keys_, dropna=False, sort=False):
        grammar = _grammar(g)
        keep = (g["step"] > 0) & (g[column] > 1)
        keep &= ~g["xi_C_bound"].fillna(False).astype(bool) if column == "xi_C" and "xi_C_bound" in g else \
            g[column] < grammar.get("s", np.inf) ** grammar.get("L", np.inf)
        part = g[keep]
        models = part["model"].unique()
        fit = dict(zip(keys_, values), points=len(part), models=len(models),
                   theory=np.log(grammar.get("s", np.nan)) / np.log(grammar.get("m", np.nan)))
        slopes = []
        for draw in _draws(len(models), rng) if len(models) else []:
            chosen = pd.concat([part[part["model"] == models[i]] for i in draw])
            x, y = np.log(chosen["step"].to_numpy(float)), np.log(chosen[column].to_numpy(float))
            slopes.append(np.polyfit(x, y, 1)[0] if np.ptp(x) > 0 else np.nan)
        slopes = np.asarray(slopes, float)
        lo, hi = _interval(slopes[1:]) if slopes.size > 1 else (np.nan, np.nan)
        rows.append(dict(fit, exponent=float(slopes[0]) if slopes.size else np.nan, exponent_lo=lo, exponent_hi=hi))
    return pd.DataFrame(rows)


def online_curve(df: pd.DataFrame, match: list[str]) -> pd.DataFrame:
    """Per (match keys, step): the online models' mean test loss and its standard error (``DEPARTURE``)."""
    part = online(analysis.healthy(df))
    se = part["test_loss_se"].astype(float) if "test_loss_se" in part else pd.Series(0.0, index=part.index)
    part = part.assign(se2=se**2)
    stats = part.groupby([*match, "step"]).agg(loss=("test_loss", "mean"), spread=("test_loss", "var"),
                                                se2=("se2", "mean"), models=("test_loss", "size")).reset_index()
    stats["loss_se"] = np.sqrt((stats["se2"] + stats["spread"].fillna(0.0)) / stats["models"])
    return stats.drop(columns=["se2", "spread"])


def departures(df: pd.DataFrame) -> pd.DataFrame:
    """Per finite-P model with online models of its grammar beside it: ``departure`` (``DEPARTURE``,
    in steps, samples seen and epochs of its P) and ``onset`` (copies >= 0.1, ``dynamics.memorization_onset``)."""
    df = analysis.keyed(df)
    match = [*curve_keys(df), *[c for c in ("grammar_seed",) if c in df]]
    curve = online_curve(df, match)
    finite = analysis.healthy(df)
    finite = finite[finite["P"] != ONLINE]
    if curve.empty or finite.empty:
        return pd.DataFrame()
    onset = dynamics.memorization_onset(finite).set_index(["workdir", "model"])["step"]
    merged = finite.merge(curve, on=[*match, "step"], how="inner")
    rows = []
    for (workdir, model), g in merged.sort_values("step").groupby(["workdir", "model"]):
        se = g["test_loss_se"].astype(float).fillna(0.0) if "test_loss_se" in g else 0.0
        above = (g["test_loss"] - g["loss"] > DEPARTURE_SE * np.sqrt(se**2 + g["loss_se"] ** 2)).to_numpy()
        stays = np.flip(np.logical_and.accumulate(np.flip(above)))  # above here and at every later evaluation
        step = float(g["step"].to_numpy()[np.argmax(stays)]) if stays.any() else np.nan
        P, batch = float(g["P"].iloc[0]), float(_batch(g).iloc[0])
        rows.append(dict(**{k: g[k].iloc[0] for k in match}, model=model, P=int(P), seed=g["seed"].iloc[0],
                         departure=step, departure_samples=step * batch, departure_epochs=step * batch / P,
                         onset=float(onset.get((workdir, model), np.nan)), last_step=float(g["step"].max())))
    return pd.DataFrame(rows)
