"""Thresholds P*_l from the readings (``rhm_jax.analysis``): estimators, intervals, bounds, ratios, c, collapse.

Shape letters: K evaluation points of one curve. P*_l is where a model's reading of level l
(normalized above chance by default, at its best evaluation) crosses 1/2 as P grows.

Estimator (``METHODS``): 'interp' (the default), the isotonic (monotone least-squares) fit of the
reading against log P, interpolated linearly in log P at 1/2; it assumes no shape, so a curve
that plateaus below 1 (level 2 near 0.6 at CPU budgets) keeps its crossing. 'sigmoid' is a logistic
in log P with asymptotes fixed at 0 and 1, kept for comparison: on such a plateau it moves P* up.
Every threshold carries a 95 % bootstrap interval (``INTERVAL``) and is a bound, not a value, when
a model next to its crossing was still rising at the end of its budget (``dynamics.still_rising``;
at 'best', only where its test-loss minimum is not behind it: ``rising_set``);
bounds never enter ``ratios``, ``fit_constant`` or the collapse spread (``left_out`` names them).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.optimize

from rhm_jax import analysis, dynamics, results, theory
from rhm_jax.analysis import GRAMMAR_KEYS, crossing, curve_keys, curve_label, final_validity, isotonic

METHODS = {"interp": "isotonic fit in log P, interpolated at 1/2 (no plateau assumed)",
           "sigmoid": "logistic in log P with asymptotes fixed at 0 and 1"}
DEFAULT_METHOD = "interp"
BOOTSTRAP = 200  # resamples of each threshold's interval
INTERVAL = ("95 % bootstrap interval: replicates (grammar/data/model seeds) resampled with replacement, "
            "and each validity redrawn from its binomial sampling error over its N samples; a resample "
            "whose crossing falls outside the measured P counts at the smallest P, or as inf beyond the largest")

def sigmoid(x: np.ndarray, center: float, slope: float) -> np.ndarray:
    """Logistic 1 / (1 + exp(-slope (x - center))), which is 1/2 at ``center``."""
    return 1.0 / (1.0 + np.exp(-slope * (np.asarray(x, float) - center)))


def fit_sigmoid(x_K: np.ndarray, y_K: np.ndarray) -> tuple[float, float]:
    """Least-squares logistic fit (center, slope) of y against x (``scipy.optimize.least_squares``).

    Starts from the isotonic crossing of 1/2 so that the fit lands on the right side even for
    noisy curves (from the median x, slope following the trend, when y does not rise through 1/2).
    Returns NaNs when the data never cross 1/2: the center is then out of range.
    """
    x_K, y_K = np.asarray(x_K, float), np.asarray(y_K, float)
    ok = np.isfinite(x_K) & np.isfinite(y_K)
    x_K, y_K = x_K[ok], y_K[ok]
    if x_K.size < 2 or y_K.max() < 0.5 or y_K.min() >= 0.5:
        return float("nan"), float("nan")
    order = np.argsort(x_K, kind="stable")
    center = crossing(x_K[order], isotonic(y_K[order]))
    rising = True
    if not np.isfinite(center):
        center, rising = float(np.median(x_K)), bool(np.cov(x_K, y_K)[0, 1] >= 0)
    span = max(np.ptp(x_K), 1e-6)
    start = np.array([center, (8.0 if rising else -8.0) / span])  # 1/8 of the span per unit of logit
    fit = scipy.optimize.least_squares(lambda t: sigmoid(x_K, *t) - y_K, start, method="lm",
                                       xtol=1e-12, ftol=1e-12, gtol=1e-12)
    return float(fit.x[0]), float(fit.x[1])


def threshold(P_K: np.ndarray, validity_K: np.ndarray, method: str = DEFAULT_METHOD) -> float:
    """P at which validity crosses 1/2: monotone log-linear interpolation, or a logistic fit in log P."""
    logP_K = np.log10(np.asarray(P_K, float))
    if method == "sigmoid":
        center, slope = fit_sigmoid(logP_K, validity_K)
        # a learning threshold rises with P and lies among the measured P (no extrapolation)
        if not (slope > 0 and logP_K.min() <= center <= logP_K.max()):
            return float("nan")
        return float(10**center)
    if method == "interp":
        ok = np.isfinite(logP_K) & np.isfinite(np.asarray(validity_K, float))
        logP_K, validity_K = logP_K[ok], np.asarray(validity_K, float)[ok]
        order = np.argsort(logP_K, kind="stable")
        fit_K = isotonic(validity_K[order])
        # as for the fit: a crossing among the measured P, not a curve that starts above 1/2
        return float(10 ** crossing(logP_K[order], fit_K)) if fit_K.size and fit_K[0] < 0.5 else float("nan")
    raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")


# ----------------------------------------------------------------------------- thresholds in P

def _censor(P: pd.Series, validity: pd.Series, P_star: float) -> str:
    """Why a threshold is missing, one reason per level: 'no finite rows', 'one P' on the grid,
    'above' the largest P (never reaches 1/2), 'below' the smallest, or 'not rising' (crosses 1/2
    but falls with P, e.g. small-P models copying their data)."""
    ok = np.isfinite(validity.to_numpy(float))
    if not ok.any():
        return "no finite rows"
    P, validity = P[ok], validity[ok]
    if P.nunique() < 2:
        return "one P"
    if validity.max() < 0.5:
        return "above"
    if validity.min() >= 0.5:
        return "below"
    return "" if np.isfinite(P_star) else "not rising"


def _bootstrap(g: pd.DataFrame, reps: list[str], method: str, rng: np.random.Generator,
               num: int = BOOTSTRAP) -> tuple[float, float]:
    """95 % interval of the threshold of one curve's rows (``INTERVAL``): (lo, hi), inf when the
    upper end never reaches 1/2 within the measured P, the smallest P where resamples start above
    1/2 (their crossing is at or below it), NaN when fewer than half the resamples cross."""
    g = g[np.isfinite(g["validity"].to_numpy(float))]
    if g["P"].nunique() < 2:
        return np.nan, np.nan
    groups = [np.asarray(idx) for idx in g.groupby(reps, dropna=False).indices.values()] if reps else []
    if len(groups) < 2:
        groups = [np.arange(len(g))]
    P, raw, base = (g[c].to_numpy(float) for c in ("P", "raw", "base"))
    counts = g["num"].to_numpy(float)
    drawn = np.isfinite(counts) & (counts > 0)
    out = np.full(num, np.nan)
    for b in range(num):
        pick = (np.concatenate([groups[i] for i in rng.integers(len(groups), size=len(groups))])
                if len(groups) > 1 else groups[0])
        value = raw[pick].copy()
        d = drawn[pick]
        if d.any():
            n = counts[pick][d].astype(int)
            value[d] = rng.binomial(n, np.clip(value[d], 0, 1)) / n
        value = (value - base[pick]) / (1 - base[pick])
        p_star = threshold(P[pick], value, method)
        if np.isfinite(p_star):
            out[b] = p_star
        elif np.nanmax(value) < 0.5:
            out[b] = np.inf  # beyond the largest P
        elif _starts_above(P[pick], value):
            out[b] = P[pick].min()  # at or below the smallest P: counted there, not dropped
    out = out[~np.isnan(out)]
    if out.size < num / 2:
        return np.nan, np.nan
    lo, hi = np.quantile(out, [0.025, 0.975], method="inverted_cdf")
    return float(lo), float(hi)


def _starts_above(P_K: np.ndarray, y_K: np.ndarray) -> bool:
    """Whether the monotone fit of y against P is at or above 1/2 already at the smallest P."""
    ok = np.isfinite(y_K)
    order = np.argsort(P_K[ok], kind="stable")
    fit_K = isotonic(y_K[ok][order])
    return bool(fit_K.size and fit_K[0] >= 0.5)


def _bound(g: pd.DataFrame, P_star: float, rising: set) -> bool:
    """Whether a model at the P just below or just above ``P_star`` was still rising at this level."""
    if not np.isfinite(P_star) or not rising:
        return False
    P = g["P"].to_numpy(float)
    below, above = P[P <= P_star], P[P >= P_star]
    near: set = set()
    for edge in ((below.max(),) if below.size else ()) + ((above.min(),) if above.size else ()):
        near |= set(zip(g.loc[P == edge, "workdir"], g.loc[P == edge, "model"], g.loc[P == edge, "level"]))
    return bool(near & rising)


def rising_set(df: pd.DataFrame, reading: str = "normalized", at: str = "last") -> set:
    """(workdir, model, level) whose reading at ``at`` more training could still move up.

    At 'last': the models still rising at the end of their budget (``dynamics.still_rising``, on
    non-copied samples where logged: copies rise too when a model memorizes). At 'best' (early
    stopping), only those of them whose best band reaches their last evaluation: a model whose
    test-loss minimum lies inside its budget is read there, whatever it does after it.
    """
    samples = "noncopy" if "validity_l1_noncopy" in df else "all"
    flags = dynamics.still_rising(df, reading=reading, samples=samples)
    if flags.empty:
        return set()
    flags = flags[flags["rising"]]
    if at == "best" and len(flags):
        band = analysis.best_band(df, reading)
        last = df.groupby(["workdir", "model"])["step"].max()
        reaches = {(r.workdir, r.model) for r in band.itertuples(index=False)
                   if int(r.band_steps.split("..")[1]) >= last[(r.workdir, r.model)]}
        flags = flags[[(w, m) in reaches for w, m in zip(flags["workdir"], flags["model"])]]
    return set(zip(flags["workdir"], flags["model"], flags["level"]))


def table(df: pd.DataFrame, method: str = DEFAULT_METHOD, at: str = results.DEFAULT_READING,
               reading: str = "normalized", samples: str = "all", interval: bool = True) -> pd.DataFrame:
    """Per (curve, level, seed) and pooled over seeds (seed = -1): the threshold P*_l of a reading.

    A curve is a work directory, or one value of each key it sweeps (``curve_keys``); a seed is a
    replicate (grammar seed, data seed, model seed), and the pooled row has -1 in each of them.

    ``at`` picks each model's evaluation: 'best' (lowest test loss, i.e. early stopping, which keeps
    small-P models from counting memorized copies as learned rules) or 'last'. ``num_nan``: models
    whose reading is NaN (e.g. every sample a copy with samples='noncopy'), left out.
    ``P_star_lo`` / ``P_star_hi``: the interval (``INTERVAL``; ``interval=False`` skips it).
    ``P_star_band_lo`` / ``_hi``: the thresholds of the best band's upper and lower readings
    (selection error; equal to P_star at 'last'). ``bound``: a model next to the crossing was still
    rising at the end of its budget (at 'best': and its best band reaches its last evaluation), so
    the true P* is at or below P_star (never fitted; ``rising_set``).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    long = final_validity(df, at, reading, samples)
    rising = rising_set(analysis.keyed(df), reading, at) if "step" in df else set()
    keys_ = curve_keys(long)
    reps = analysis.replicates(long)
    rows = []
    for values, group in long.groupby([*keys_, "level"], dropna=False):
        ids = dict(zip([*keys_, "level"], values))
        grammar = {k: group[k].iloc[0] for k in GRAMMAR_KEYS if k in group}
        per_seed = [(dict(zip(reps, v)), g) for v, g in group.groupby(reps, dropna=False)] if reps else []
        for seeds, g in per_seed + [({c: -1 for c in reps}, group)]:
            finite = g[np.isfinite(g["validity"].to_numpy(float))]
            P_star = threshold(finite["P"], finite["validity"], method) if len(finite) else np.nan
            band = [threshold(finite["P"], finite[c], method) if len(finite) else np.nan for c in ("hi", "lo")]
            lo, hi = (_bootstrap(g, reps, method, np.random.default_rng(0)) if interval and len(finite)
                      else (np.nan, np.nan))
            rows.append({**ids, **seeds, **grammar, "P_star": P_star, "P_star_lo": lo, "P_star_hi": hi,
                         "P_star_band_lo": band[0], "P_star_band_hi": band[1],
                         "bound": _bound(finite, P_star, rising),
                         "censored": _censor(g["P"], g["validity"], P_star), "num_P": finite["P"].nunique(),
                         "num_nan": int(len(g) - len(finite)), "reading": reading, "samples": samples, "at": at,
                         "method": method})
    return pd.DataFrame(rows)


def text(P_star: float, bound: bool, lo: float = np.nan, hi: float = np.nan) -> str:
    """A threshold as text: '190 [150, 260]', '<= 190' for a bound, '-' when missing."""
    if not np.isfinite(P_star):
        return "-"
    if bound:
        return f"<= {P_star:.3g}"
    if np.isnan(lo) or np.isnan(hi):
        return f"{P_star:.3g}"
    return f"{P_star:.3g} [{lo:.3g}, {'inf' if np.isinf(hi) else f'{hi:.3g}'}]"


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (curve, level): pooled P* with its interval and bound flag, and mean +- std over per-seed
    thresholds (in P and in log10 P; bounds left out of them)."""
    keys_ = [*curve_keys(table), "level"]
    rows = []
    for values, g in table.groupby(keys_, dropna=False):
        pooled = g[g["seed"] == -1].iloc[0]
        per_seed = g[(g["seed"] != -1) & np.isfinite(g["P_star"])]
        if "bound" in g:
            per_seed = per_seed[~per_seed["bound"].astype(bool)]
        seeds = per_seed["P_star"].to_numpy(float)
        rows.append({
            **dict(zip(keys_, values)), **{k: pooled[k] for k in GRAMMAR_KEYS if k in g},
            "P_star": pooled["P_star"],
            **{k: pooled[k] for k in ("P_star_lo", "P_star_hi", "P_star_band_lo", "P_star_band_hi") if k in g},
            "bound": bool(pooled.get("bound", False)), "censored": pooled["censored"],
            "P_star_mean": seeds.mean() if seeds.size else np.nan,
            "P_star_std": seeds.std(ddof=1) if seeds.size > 1 else np.nan,
            "log10_P_star_std": np.log10(seeds).std(ddof=1) if seeds.size > 1 else np.nan,
            "num_seeds": int(seeds.size),
            **{k: pooled[k] for k in ("reading", "samples", "at", "method") if k in g}})
    return pd.DataFrame(rows)


def context_size(v: float, m: float, level: int | np.ndarray) -> np.ndarray:
    """The scale v * m**(l+1) that sets the threshold of level l."""
    return np.asarray(v, float) * np.asarray(m, float) ** (np.asarray(level) + 1)


def theory_threshold(v: int, m: int, level: int, c: float = 1.0) -> float:
    """Predicted P*_l = c * v * m**(l+1) (``rhm_jax.theory.sample_complexity``)."""
    return float(theory.sample_complexity(int(v), int(m), int(level), c))


def ratios(table: pd.DataFrame) -> pd.DataFrame:
    """P*_(l+1) / P*_l per curve and level (pooled, and mean +- std over seeds) next to m; a bound
    (``table``'s ``bound``) never enters: its ratio is NaN."""
    keys_ = curve_keys(table)
    reps = analysis.replicates(table)
    rows = []
    for values, g in table.groupby(keys_, dropna=False):
        for level in sorted(g["level"].unique())[:-1]:
            lo, hi = (measured(g[g["level"] == k]).set_index(reps)["P_star"] for k in (level, level + 1))
            pooled = (-1,) * len(reps) if len(reps) > 1 else -1
            per_seed = (hi / lo).drop(pooled, errors="ignore").dropna().to_numpy(float)
            rows.append({**dict(zip(keys_, values)), "level": level, "m": g["m"].iloc[0] if "m" in g else np.nan,
                         "ratio": hi.get(pooled, np.nan) / lo.get(pooled, np.nan),
                         "ratio_mean": per_seed.mean() if per_seed.size else np.nan,
                         "ratio_std": per_seed.std(ddof=1) if per_seed.size > 1 else np.nan})
    return pd.DataFrame(rows)


def measured(table: pd.DataFrame) -> pd.DataFrame:
    """The table with the thresholds that are bounds (``bound``) set to NaN: they are not values."""
    if "bound" not in table:
        return table
    return table.assign(P_star=table["P_star"].where(~table["bound"].astype(bool)))


def left_out(summary: pd.DataFrame) -> list[str]:
    """The thresholds that are bounds, as text ('quick level 2: <= 190'): left out of c, ratios and collapse."""
    if "bound" not in summary:
        return []
    keys_ = curve_keys(summary)
    out = []
    for r in summary[summary["bound"].astype(bool) & np.isfinite(summary["P_star"])].itertuples(index=False):
        named = r._asdict()
        name = curve_label(keys_, [named[k] for k in keys_])
        out.append(f"{name} level {named['level']}: <= {named['P_star']:.3g}")
    return out


def fit_constant(summary: pd.DataFrame) -> dict[str, float]:
    """Least squares in log space of P*_l = c * v * m**(l+1) over all finite thresholds that are not bounds.

    Returns c, the spread (std of log10 of the rescaled thresholds: 0 means perfect collapse),
    the number of thresholds used and ``left_out``: the bounds (``left_out``) it did not use.
    """
    for key in ("v", "m"):
        if key not in summary:
            raise ValueError(f"summary needs the grammar column {key!r} to fit c")
    ok = np.isfinite(measured(summary)["P_star"].to_numpy(float))
    s = summary[ok]
    if s.empty:
        return dict(c=np.nan, log10_spread=np.nan, num=0, left_out=left_out(summary))
    log_rescaled = np.log10(s["P_star"].to_numpy(float) / context_size(s["v"], s["m"], s["level"]))
    return dict(c=float(10 ** log_rescaled.mean()),
                log10_spread=float(log_rescaled.std(ddof=1)) if len(s) > 1 else np.nan,
                num=int(len(s)), left_out=left_out(summary))


def collapse(df: pd.DataFrame, at: str = results.DEFAULT_READING, reading: str = "normalized", samples: str = "all") -> pd.DataFrame:
    """Validity (the chosen reading) with the rescaled size x = P / (v m**(l+1)) for the collapse plot."""
    long = final_validity(df, at, reading, samples)
    for key in ("v", "m"):
        if key not in long:
            raise ValueError(f"metrics need the grammar column {key!r} for the collapse")
    return long.assign(x=long["P"] / context_size(long["v"], long["m"], long["level"]))


