"""Thresholds, ratios, the constant c and the collapse from the metrics table of one or more runs.

Shape letters: K evaluation points of one curve (P values or steps). Every function takes and
returns pandas DataFrames in long format so that grids, seeds and work directories mix freely.
Level l = 1 is the tuple just above the leaves, l = L the root (as in ``rhm_jax.grammar``).

Readings (SPEC section 7). ``reading='normalized'`` (the default) measures level l on
``(V_l - V_l^unif) / (1 - V_l^unif)``, the fraction of the way from chance (i.i.d. uniform tokens,
``theory.uniform_validity``) to perfect; ``'raw'`` on V_l itself. ``samples='noncopy'`` reads the
validity over the samples that are not copies of the model's training set
(``validity_l<l>_noncopy``) instead of over all of them. P*_l is where the reading crosses 1/2.

Estimator (``METHODS``): 'interp' (the default), the isotonic (monotone least-squares) fit of the
reading against log P, interpolated linearly in log P at 1/2; it assumes no shape, so a curve
that plateaus below 1 (level 2 near 0.6 at CPU budgets) keeps its crossing. 'sigmoid' is a logistic
in log P with asymptotes fixed at 0 and 1, kept for comparison: on such a plateau it moves P* up.
Every threshold carries a 95 % bootstrap interval (``INTERVAL``) and is a bound, not a value, when
a model next to its crossing was still rising at the end of its budget (``dynamics.still_rising``).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.optimize

from rhm_jax import health, keys, results, theory

GRAMMAR_KEYS = ("v", "n", "m", "s", "L")
# Columns of the seeds a curve pools over (per-seed fits are per replicate: grammar, data and model seed).
REPLICATES = tuple(keys.KEYS[k].column for k in ("grammar.seed", "data.seed", "train.seeds"))
# Columns that may separate curves of one work directory (a sweep over m, width, lr, ...): every
# result-determining key but the replicate seeds, the evaluation seed and P itself.
CURVE_COLUMNS = tuple(key.column for name, key in keys.KEYS.items()
                      if key.kind != "execution" and key.column not in REPLICATES
                      and name not in ("data.num_train", "run.seed"))
READINGS = ("normalized", "raw")
METHODS = {"interp": "isotonic fit in log P, interpolated at 1/2 (no plateau assumed)",
           "sigmoid": "logistic in log P with asymptotes fixed at 0 and 1"}
DEFAULT_METHOD = "interp"
BOOTSTRAP = 200  # resamples of each threshold's interval
INTERVAL = ("95 % bootstrap interval: replicates (grammar/data/model seeds) resampled with replacement, "
            "and each validity redrawn from its binomial sampling error over its N samples")
BAND_SE = 2.0  # the best band: evaluations whose test loss is within BAND_SE standard errors of the minimum
SAMPLES = ("all", "noncopy")
# Per-row flags of a model that went non-finite: its rows are reported, never fitted.
DIVERGENCE_COLUMNS = health.FLAG_COLUMNS  # diverged, loss_blowup, collapsed
MIN_NONCOPY = 32  # fewest non-copied samples whose validity is read (binomial error <= 0.09)
_VALIDITY = re.compile(r"^validity_l(\d+)$")
NORMALIZED = "(V_l - V_l^unif) / (1 - V_l^unif)"  # how every normalized number is defined


# ----------------------------------------------------------------------------- loading

def read_config(workdir: str) -> dict:
    """The ``config.json`` of a work directory as a dict ({config, provenance, grid})."""
    return results.read_config_json(str(workdir))


def load(workdirs: str | Sequence[str]) -> pd.DataFrame:
    """Metrics of one or more work directories, each row tagged with ``workdir`` and the grammar."""
    df = results.load(workdirs)
    if "step" not in df or "model" not in df:
        raise ValueError(f"no evaluation rows in {results.METRICS_FILE} of {workdirs}: nothing to analyse yet")
    return df


def levels(df: pd.DataFrame) -> list[int]:
    """Levels l with a ``validity_l<l>`` column, ascending."""
    found = sorted(int(m.group(1)) for c in df.columns if (m := _VALIDITY.match(str(c))))
    if not found:
        raise ValueError("metrics table has no validity_l<l> column")
    return found


def copies_column(df: pd.DataFrame) -> str | None:
    """Name of the copy-fraction column: ``copies`` (current) or ``copy`` (older work directories)."""
    return next((c for c in ("copies", "copy") if c in df), None)


def curve_keys(df: pd.DataFrame) -> list[str]:
    """Columns that separate validity-vs-P curves: the workdir, and each column a work directory sweeps
    (e.g. m, width or lr; its seeds are replicates of one curve)."""
    if "workdir" not in df:
        return ["workdir"]
    per_workdir = df.groupby("workdir")
    return ["workdir", *[c for c in CURVE_COLUMNS if c in df and per_workdir[c].nunique(dropna=False).max() > 1]]


def table_keys(df: pd.DataFrame) -> list[str]:
    """Columns the report's per-P tables group by: ``curve_keys`` and the replicate seeds of another
    grammar or data draw that a work directory sweeps (their rows are different data, not noise of
    one model): every swept key but the model seed, over which the tables average."""
    keys_ = curve_keys(df)
    if "workdir" not in df:
        return keys_
    per_workdir = df.groupby("workdir")
    return [*keys_, *[c for c in REPLICATES[:2] if c in df and per_workdir[c].nunique(dropna=False).max() > 1]]


def curve_label(keys_: Sequence[str], values: Sequence) -> str:
    """A curve's name: the work directory's last path part, then its swept values (``run m=3``)."""
    named = dict(zip(keys_, values))
    head = str(named.pop("workdir", "")).rstrip("/").rsplit("/", 1)[-1] or "run"
    return " ".join([head, *(f"{k}={v}" for k, v in named.items())])


def _replicates(df: pd.DataFrame) -> list[str]:
    return [c for c in REPLICATES if c in df]


def _keyed(df: pd.DataFrame) -> pd.DataFrame:
    """The table with a ``workdir`` column (synthetic tables may lack it)."""
    return df if "workdir" in df else df.assign(workdir="")


def _flagged(df: pd.DataFrame) -> pd.Series:
    """Rows whose model is flagged in any DIVERGENCE_COLUMNS (non-finite, loss blow-up, collapsed
    samples: ``rhm_jax.health``) at any evaluation."""
    flag = pd.Series(False, index=df.index)
    for column in DIVERGENCE_COLUMNS:
        if column in df:
            flag |= df[column].fillna(False).astype(bool)
    return flag.groupby([df["workdir"], df["model"]]).transform("any")


def healthy(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of models never flagged: non-finite, loss blow-up or collapse (reported, never fitted)."""
    df = _keyed(df)
    return df[~_flagged(df)]


def baseline(df: pd.DataFrame, level: int) -> np.ndarray:
    """V_l^unif per row: validity at ``level`` of i.i.d. uniform tokens under the row's grammar."""
    missing = [k for k in ("v", "m", "s", "L") if k not in df]
    if missing:
        raise ValueError(f"the normalized reading needs the grammar columns {missing} (or reading='raw')")
    grammar = df[list(GRAMMAR_KEYS if "n" in df else ("v", "m", "s", "L"))].astype(int)
    cache: dict[tuple, float] = {}
    out = np.empty(len(df))
    for i, row in enumerate(grammar.itertuples(index=False)):
        key = tuple(row)
        if key not in cache:
            g = row._asdict()
            cache[key] = float(theory.uniform_validity(g["v"], g["m"], g["s"], g["L"], g.get("n"))[level - 1])
        out[i] = cache[key]
    return out


def readout(df: pd.DataFrame, reading: str = "normalized", samples: str = "all",
            min_noncopy: int = MIN_NONCOPY) -> pd.DataFrame:
    """The table with ``validity_l<l>`` replaced by the chosen reading (raw kept as ``validity_l<l>_raw``).

    With samples='noncopy', rows with fewer than ``min_noncopy`` non-copied samples read NaN: a
    handful of samples is no measurement (the fits leave NaN rows out and count them).
    """
    if reading not in READINGS:
        raise ValueError(f"reading must be one of {READINGS}, got {reading!r}")
    if samples not in SAMPLES:
        raise ValueError(f"samples must be one of {SAMPLES}, got {samples!r}")
    out = df.copy()
    for level in levels(df):
        column = f"validity_l{level}"
        if samples == "noncopy":
            if f"{column}_noncopy" not in df:
                raise ValueError(f"samples='noncopy' needs the column {column}_noncopy (written since "
                                 "evaluate logs validity over non-copied samples)")
            raw = df[f"{column}_noncopy"].astype(float)
            if "noncopy_samples" in df:
                raw = raw.where(df["noncopy_samples"].astype(float) >= min_noncopy)
        else:
            raw = df[column].astype(float)
        out[f"{column}_raw"] = raw
        if reading == "normalized":
            base = baseline(df, level)
            out[column] = (raw - base) / (1.0 - base)
        else:
            out[column] = raw
    return out


def final(df: pd.DataFrame, at: str = results.DEFAULT_READING) -> pd.DataFrame:
    """One evaluation per model: its ``best`` (``results.pick``'s rule: lowest test loss, early
    stopping) or its ``last``."""
    if at not in results.READINGS:
        raise ValueError(f"at must be one of {tuple(results.READINGS)}, got {at!r}")
    df = _keyed(df)
    if at == "last":
        pick = df.groupby(["workdir", "model"])["step"].idxmax()
    else:
        if not can_pick_best(df):
            raise ValueError("at='best' needs test_loss or test_loss_window_<k> columns")
        pick = [_best_index(g) for _, g in df.groupby(["workdir", "model"])]
    return df.loc[pick].reset_index(drop=True)


def _best_index(history: pd.DataFrame):
    """Index label of one model's best evaluation (``results.best_position``, the one rule)."""
    ordered = history.sort_values("step", kind="stable")
    return ordered.index[results.best_position(ordered.to_dict("records"))]


def can_pick_best(df: pd.DataFrame) -> bool:
    """Whether ``final(df, 'best')`` can pick each model's best evaluation (a test loss is logged)."""
    return "test_loss" in df or window_losses(df.iloc[:1], "test").shape[1] > 0


def best_band(df: pd.DataFrame, reading: str = "normalized", samples: str = "all") -> pd.DataFrame:
    """Per model: the range of each reading over the evaluations that noise cannot tell from the best.

    The band holds the evaluations whose ``test_loss`` is within ``BAND_SE`` times the best
    evaluation's ``test_loss_se`` of the minimum (losses scored with common random numbers); where
    no standard error is logged, only the best evaluation itself. Columns: ``step`` (best),
    ``band_evals`` and ``validity_l<l>_lo`` / ``_hi`` (min / max over the band).
    """
    read = readout(healthy(df), reading, samples)
    lv = levels(df)
    rows = []
    for (workdir, model), g in read.groupby(["workdir", "model"]):
        g = g.sort_values("step", kind="stable")
        history = g.to_dict("records")
        best = history[results.best_position(history)]
        se = best.get("test_loss_se", np.nan)
        if "test_loss_se" in g and pd.notna(se) and np.isfinite(best.get("test_loss", np.nan)):
            band = g[g["test_loss"] <= best["test_loss"] + BAND_SE * se]
        else:
            band = g[g["step"] == best["step"]]
        row = dict(workdir=workdir, model=model, step=best["step"], band_evals=len(band),
                   band_steps=f"{int(band['step'].min())}..{int(band['step'].max())}")
        for level in lv:
            values = band[f"validity_l{level}"].to_numpy(float)
            finite = values[np.isfinite(values)]
            row[f"validity_l{level}_lo"] = finite.min() if finite.size else np.nan
            row[f"validity_l{level}_hi"] = finite.max() if finite.size else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def final_validity(df: pd.DataFrame, at: str = results.DEFAULT_READING, reading: str = "normalized",
                   samples: str = "all") -> pd.DataFrame:
    """Long table of each model's validity at its ``at`` evaluation: one row per (workdir, model, level).

    ``validity`` is the chosen reading, ``raw`` the raw validity it comes from (NaN rows kept:
    the fits drop them and say so), ``base`` the chance floor it is read above (0 for 'raw'),
    ``num`` the samples it was measured on (NaN when not logged). At 'best', ``lo`` / ``hi`` give
    the best band (``best_band``); at 'last' they equal ``validity``.
    """
    df = _keyed(df)
    last = readout(final(healthy(df), at), reading, samples)
    ids = list(dict.fromkeys(c for c in ("workdir", "model", "P", *REPLICATES, "lr", "step", "epoch", *GRAMMAR_KEYS,
                                           *CURVE_COLUMNS) if c in last))
    count = "noncopy_samples" if samples == "noncopy" else "num_samples"
    num = last[count].astype(float) if count in last else pd.Series(np.nan, index=last.index)
    band = best_band(df, reading, samples).set_index(["workdir", "model"]) if at == "best" else None
    parts = []
    for level in levels(df):
        part = last[ids].assign(level=level, validity=last[f"validity_l{level}"],
                                raw=last[f"validity_l{level}_raw"], num=num,
                                base=baseline(last, level) if reading == "normalized" else 0.0)
        if band is not None:
            where = pd.MultiIndex.from_frame(last[["workdir", "model"]])
            part["lo"] = band[f"validity_l{level}_lo"].reindex(where).to_numpy()
            part["hi"] = band[f"validity_l{level}_hi"].reindex(where).to_numpy()
        else:
            part["lo"] = part["hi"] = part["validity"]
        parts.append(part)
    long = pd.concat(parts, ignore_index=True)
    return long.sort_values(["workdir", "level", "P", "seed"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- one curve

def crossing(x_K: np.ndarray, y_K: np.ndarray, level: float = 0.5) -> float:
    """First x where y rises through ``level``, linear in x; x_K[0] if y starts there, NaN if never."""
    x_K, y_K = np.asarray(x_K, float), np.asarray(y_K, float)
    ok = np.isfinite(x_K) & np.isfinite(y_K)
    x_K, y_K = x_K[ok], y_K[ok]
    above = np.flatnonzero(y_K >= level)
    if above.size == 0:
        return float("nan")
    i = above[0]
    if i == 0:
        return float(x_K[0])
    x0, x1, y0, y1 = x_K[i - 1], x_K[i], y_K[i - 1], y_K[i]
    return float(x0 + (level - y0) / (y1 - y0) * (x1 - x0))


def isotonic(y_K: np.ndarray) -> np.ndarray:
    """Non-decreasing least-squares fit of y (``scipy.optimize.isotonic_regression``)."""
    y_K = np.asarray(y_K, float)
    return scipy.optimize.isotonic_regression(y_K).x if y_K.size else y_K


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
    upper end never reaches 1/2 within the measured P, NaN when no resample crosses."""
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
    out = out[~np.isnan(out)]
    if out.size < num / 2:
        return np.nan, np.nan
    lo, hi = np.quantile(out, [0.025, 0.975], method="inverted_cdf")
    return float(lo), float(hi)


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


def rising_set(df: pd.DataFrame, reading: str = "normalized") -> set:
    """(workdir, model, level) of the models still rising at the end of their budget
    (``dynamics.still_rising``, on non-copied samples where logged: copies rise too when a model memorizes)."""
    from rhm_jax import dynamics  # dynamics reads analysis: imported where needed

    samples = "noncopy" if "validity_l1_noncopy" in df else "all"
    flags = dynamics.still_rising(df, reading=reading, samples=samples)
    if flags.empty:
        return set()
    flags = flags[flags["rising"]]
    return set(zip(flags["workdir"], flags["model"], flags["level"]))


def thresholds(df: pd.DataFrame, method: str = DEFAULT_METHOD, at: str = results.DEFAULT_READING,
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
    rising at the end of its budget, so the true P* is at or below P_star (never fitted).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {tuple(METHODS)}, got {method!r}")
    long = final_validity(df, at, reading, samples)
    rising = rising_set(_keyed(df), reading) if "step" in df else set()
    keys_ = curve_keys(long)
    reps = _replicates(long)
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


def threshold_text(P_star: float, bound: bool, lo: float = np.nan, hi: float = np.nan) -> str:
    """A threshold as text: '190 [150, 260]', '<= 190' for a bound, '-' when missing."""
    if not np.isfinite(P_star):
        return "-"
    if bound:
        return f"<= {P_star:.3g}"
    if np.isnan(lo) or np.isnan(hi):
        return f"{P_star:.3g}"
    return f"{P_star:.3g} [{lo:.3g}, {'inf' if np.isinf(hi) else f'{hi:.3g}'}]"


def threshold_summary(table: pd.DataFrame) -> pd.DataFrame:
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
    (``thresholds``' ``bound``) never enters: its ratio is NaN."""
    keys_ = curve_keys(table)
    reps = _replicates(table)
    rows = []
    for values, g in table.groupby(keys_, dropna=False):
        for level in sorted(g["level"].unique())[:-1]:
            lo, hi = (_measured(g[g["level"] == k]).set_index(reps)["P_star"] for k in (level, level + 1))
            pooled = (-1,) * len(reps) if len(reps) > 1 else -1
            per_seed = (hi / lo).drop(pooled, errors="ignore").dropna().to_numpy(float)
            rows.append({**dict(zip(keys_, values)), "level": level, "m": g["m"].iloc[0] if "m" in g else np.nan,
                         "ratio": hi.get(pooled, np.nan) / lo.get(pooled, np.nan),
                         "ratio_mean": per_seed.mean() if per_seed.size else np.nan,
                         "ratio_std": per_seed.std(ddof=1) if per_seed.size > 1 else np.nan})
    return pd.DataFrame(rows)


def _measured(table: pd.DataFrame) -> pd.DataFrame:
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
    ok = np.isfinite(_measured(summary)["P_star"].to_numpy(float))
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


def creativity(df: pd.DataFrame, at: str = results.DEFAULT_READING) -> pd.DataFrame:
    """Per model at its last (or best) evaluation: valid, copies, novel_valid and novel share of valid."""
    last = final(healthy(df), at)
    copies = copies_column(last)
    ids = list(dict.fromkeys(c for c in ("workdir", "model", "P", *REPLICATES, "lr", *GRAMMAR_KEYS, *CURVE_COLUMNS)
                             if c in last))
    out = last[[*ids, "valid", copies, "novel_valid"]].rename(columns={copies: "copies"})
    with np.errstate(invalid="ignore", divide="ignore"):
        out["novel_share"] = np.where(out["valid"] > 0, out["novel_valid"] / out["valid"], np.nan)
    return out.sort_values(["workdir", "P", "seed"]).reset_index(drop=True)


def diverged_models(df: pd.DataFrame) -> pd.DataFrame:
    """Flagged models (non-finite, loss blow-up, collapse) with grid index, P, seed and the first
    flag (``nan@``/``loss@``/``collapse@`` step)."""
    df = _keyed(df)
    bad = df[_flagged(df)] if len(df) else df
    out = bad.drop_duplicates(["workdir", "model"])[["workdir", "model", "P", "seed"]].reset_index(drop=True)
    out["flag"] = [health.first_flag(bad[(bad["workdir"] == w) & (bad["model"] == m)].to_dict("records"))
                   for w, m in zip(out["workdir"], out["model"])]
    return out


def window_losses(df: pd.DataFrame, split: str) -> np.ndarray:
    """Loss per diffusion-time window as a (rows, windows) array: ``<split>_loss_window_k`` or lists."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    cols = sorted((c for c in df.columns if re.fullmatch(rf"{split}_loss_window_\d+", str(c))),
                  key=lambda c: int(str(c).rsplit("_", 1)[1]))
    if cols:
        return df[cols].to_numpy(float)
    for name in (f"{split}_loss_windows", f"{split}_loss_window"):
        if name in df:
            return np.array([np.asarray(v, float) for v in df[name]])
    return np.empty((len(df), 0))
