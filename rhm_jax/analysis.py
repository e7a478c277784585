"""Thresholds, learning times and collapse from the metrics table of one or more work directories.

Shape letters: K evaluation points of one curve (P values or steps). Every function takes and
returns pandas DataFrames in long format so that grids, seeds and work directories mix freely.
Level l = 1 is the tuple just above the leaves, l = L the root (as in ``rhm_jax.grammar``).
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import pandas as pd

from rhm_jax import results, theory

GRAMMAR_KEYS = ("v", "n", "m", "s", "L")
_VALIDITY = re.compile(r"^validity_l(\d+)$")


# ----------------------------------------------------------------------------- loading

def read_config(workdir: str) -> dict:
    """The ``config.json`` of a work directory as a dict ({config, provenance, grid})."""
    return results.read_config_json(str(workdir))


def load(workdirs: str | Sequence[str]) -> pd.DataFrame:
    """Metrics of one or more work directories, each row tagged with ``workdir`` and the grammar."""
    return results.load(workdirs)


def levels(df: pd.DataFrame) -> list[int]:
    """Levels l with a ``validity_l<l>`` column, ascending."""
    found = sorted(int(m.group(1)) for c in df.columns if (m := _VALIDITY.match(str(c))))
    if not found:
        raise ValueError("metrics table has no validity_l<l> column")
    return found


def curve_keys(df: pd.DataFrame) -> list[str]:
    """Columns that separate validity-vs-P curves: the workdir, and lr where a run sweeps it."""
    if "lr" in df and "workdir" in df and df.groupby("workdir")["lr"].nunique().max() > 1:
        return ["workdir", "lr"]
    return ["workdir"]


def _keyed(df: pd.DataFrame) -> pd.DataFrame:
    """The table with a ``workdir`` column (synthetic tables may lack it)."""
    return df if "workdir" in df else df.assign(workdir="")


def healthy(df: pd.DataFrame) -> pd.DataFrame:
    """Rows of models that never diverged (non-finite models are reported, never fitted)."""
    if "diverged" not in df:
        return df
    bad = df.groupby(["workdir", "model"])["diverged"].transform(lambda d: d.fillna(False).astype(bool).any())
    return df[~bad]


def final(df: pd.DataFrame, at: str = "last") -> pd.DataFrame:
    """One evaluation per model: its ``last``, or its ``best`` (lowest test loss: early stopping)."""
    df = _keyed(df)
    if at == "last":
        pick = df.groupby(["workdir", "model"])["step"].idxmax()
    elif at == "best":
        df = df.assign(_selection_loss=selection_loss(df))
        # earliest step among equal minima (NaN losses sort last)
        ordered = df.sort_values(["workdir", "model", "_selection_loss", "step"], na_position="last")
        pick = ordered.groupby(["workdir", "model"]).head(1).index
    else:
        raise ValueError(f"at must be 'last' or 'best', got {at!r}")
    return df.loc[pick].drop(columns="_selection_loss", errors="ignore").reset_index(drop=True)


def selection_loss(df: pd.DataFrame) -> np.ndarray:
    """Test loss used for early stopping: the mean over diffusion-time windows when logged, else test_loss.

    The window mean is stratified in t, so it varies much less from one evaluation to the next
    than a loss with t drawn at random per row; the minimum over steps then picks learning, not noise.
    """
    windows_RxW = window_losses(df, "test")
    if windows_RxW.shape[1]:
        return windows_RxW.mean(axis=1)
    if "test_loss" not in df:
        raise ValueError("at='best' needs test_loss or test_loss_window_<k> columns")
    return df["test_loss"].to_numpy(float)


def final_validity(df: pd.DataFrame, at: str = "last") -> pd.DataFrame:
    """Long table of final validity: one row per (workdir, model, level) with P and seed."""
    last = final(healthy(_keyed(df)), at)
    ids = [c for c in ("workdir", "model", "P", "seed", "lr", "step", *GRAMMAR_KEYS) if c in last]
    long = last.melt(id_vars=ids, value_vars=[f"validity_l{l}" for l in levels(df)],
                     var_name="level", value_name="validity")
    long["level"] = long["level"].str.removeprefix("validity_l").astype(int)
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


def crossing_time(step_K: np.ndarray, y_K: np.ndarray, level: float = 0.5) -> float:
    """First step where y rises through ``level``, interpolated in log step (steps > 0 only)."""
    step_K, y_K = np.asarray(step_K, float), np.asarray(y_K, float)
    positive = step_K > 0
    if not positive.any():
        return float("nan")
    if (~positive).any() and np.nanmax(y_K[~positive]) >= level:
        return 0.0  # already above at initialization
    return float(np.exp(crossing(np.log(step_K[positive]), y_K[positive], level)))


def isotonic(y_K: np.ndarray) -> np.ndarray:
    """Non-decreasing least-squares fit of y (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight]
    for y in np.asarray(y_K, float):
        blocks.append([y, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, w1), (m2, w2) = blocks.pop(-2), blocks.pop(-1)
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    return np.concatenate([np.full(int(w), m) for m, w in blocks])


def sigmoid(x: np.ndarray, center: float, slope: float) -> np.ndarray:
    """Logistic 1 / (1 + exp(-slope (x - center))), which is 1/2 at ``center``."""
    return 1.0 / (1.0 + np.exp(-slope * (np.asarray(x, float) - center)))


def fit_sigmoid(x_K: np.ndarray, y_K: np.ndarray, iters: int = 200) -> tuple[float, float]:
    """Least-squares logistic fit (center, slope) of y against x by Levenberg-Marquardt.

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
    theta = np.array([center, (8.0 if rising else -8.0) / span])  # 1/8 of the span per unit of logit
    damping = 1e-3

    def sse(t: np.ndarray) -> float:
        return float(np.sum((sigmoid(x_K, *t) - y_K) ** 2))

    cost = sse(theta)
    for _ in range(iters):
        f = sigmoid(x_K, *theta)
        df = f * (1 - f)
        jac_Kx2 = np.stack([-theta[1] * df, (x_K - theta[0]) * df], axis=1)
        grad = jac_Kx2.T @ (f - y_K)
        hess = jac_Kx2.T @ jac_Kx2
        step = np.linalg.solve(hess + damping * np.diag(np.diag(hess) + 1e-12), -grad)
        trial = theta + step
        trial_cost = sse(trial)
        if trial_cost < cost:
            theta, cost, damping = trial, trial_cost, max(damping / 3, 1e-9)
            if np.abs(step).max() < 1e-10 * (1 + np.abs(theta).max()):
                break
        else:
            damping *= 4
            if damping > 1e10:
                break
    return float(theta[0]), float(theta[1])


def threshold(P_K: np.ndarray, validity_K: np.ndarray, method: str = "sigmoid") -> float:
    """P at which validity crosses 1/2: logistic fit in log P, or monotone log-linear interpolation."""
    logP_K = np.log10(np.asarray(P_K, float))
    if method == "sigmoid":
        center, slope = fit_sigmoid(logP_K, validity_K)
        # a learning threshold rises with P and lies among the measured P (no extrapolation)
        if not (slope > 0 and logP_K.min() <= center <= logP_K.max()):
            return float("nan")
        return float(10**center)
    if method == "interp":
        order = np.argsort(logP_K, kind="stable")
        return float(10 ** crossing(logP_K[order], isotonic(np.asarray(validity_K, float)[order])))
    raise ValueError(f"method must be 'sigmoid' or 'interp', got {method!r}")


# ----------------------------------------------------------------------------- thresholds in P

def _censor(P: pd.Series, validity: pd.Series, P_star: float) -> str:
    """Why a threshold is missing: 'one P' on the grid, 'above' the largest P, 'below' the smallest,
    or 'not rising' (validity crosses 1/2 but falls with P, e.g. small-P models copying their data)."""
    if P.nunique() < 2:
        return "one P"
    if validity.max() < 0.5:
        return "above"
    if validity.min() >= 0.5:
        return "below"
    return "" if np.isfinite(P_star) else "not rising"


def thresholds(df: pd.DataFrame, method: str = "sigmoid", at: str = "last") -> pd.DataFrame:
    """Per (workdir, level, seed) and pooled over seeds (seed = -1): the threshold P*_l.

    ``at`` picks each model's evaluation: 'last', or 'best' (lowest test loss, i.e. early stopping,
    which keeps small-P models from counting memorized copies as learned rules).
    """
    long = final_validity(df, at)
    keys = curve_keys(long)
    rows = []
    for values, group in long.groupby([*keys, "level"]):
        ids = dict(zip([*keys, "level"], values))
        grammar = {k: group[k].iloc[0] for k in GRAMMAR_KEYS if k in group}
        per_seed = [(seed, g) for seed, g in group.groupby("seed")] + [(-1, group)]
        for seed, g in per_seed:
            P_star = threshold(g["P"], g["validity"], method)
            rows.append(dict(**ids, seed=seed, **grammar, P_star=P_star,
                             censored=_censor(g["P"], g["validity"], P_star), num_P=g["P"].nunique()))
    return pd.DataFrame(rows)


def threshold_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (workdir, level): pooled P*, and mean +- std over per-seed fits (in P and in log10 P)."""
    keys = [*curve_keys(table), "level"]
    rows = []
    for values, g in table.groupby(keys):
        pooled = g[g["seed"] == -1].iloc[0]
        seeds = g[(g["seed"] != -1) & np.isfinite(g["P_star"])]["P_star"].to_numpy(float)
        rows.append(dict(
            **dict(zip(keys, values)), **{k: pooled[k] for k in GRAMMAR_KEYS if k in g},
            P_star=pooled["P_star"], censored=pooled["censored"],
            P_star_mean=seeds.mean() if seeds.size else np.nan,
            P_star_std=seeds.std(ddof=1) if seeds.size > 1 else np.nan,
            log10_P_star_std=np.log10(seeds).std(ddof=1) if seeds.size > 1 else np.nan,
            num_seeds=int(seeds.size)))
    return pd.DataFrame(rows)


def context_size(v: float, m: float, level: int | np.ndarray) -> np.ndarray:
    """The scale v * m**(l+1) that sets the threshold of level l."""
    return np.asarray(v, float) * np.asarray(m, float) ** (np.asarray(level) + 1)


def theory_threshold(v: int, m: int, level: int, c: float = 1.0) -> float:
    """Predicted P*_l = c * v * m**(l+1) (``rhm_jax.theory.sample_complexity``)."""
    return float(theory.sample_complexity(int(v), int(m), int(level), c))


def ratios(table: pd.DataFrame) -> pd.DataFrame:
    """P*_(l+1) / P*_l per workdir and level (pooled, and mean +- std over seeds) next to m."""
    keys = curve_keys(table)
    rows = []
    for values, g in table.groupby(keys):
        for level in sorted(g["level"].unique())[:-1]:
            lo = g[g["level"] == level].set_index("seed")["P_star"]
            hi = g[g["level"] == level + 1].set_index("seed")["P_star"]
            per_seed = (hi / lo).drop(-1, errors="ignore").dropna().to_numpy(float)
            rows.append(dict(**dict(zip(keys, values)), level=level, m=g["m"].iloc[0] if "m" in g else np.nan,
                             ratio=hi.get(-1, np.nan) / lo.get(-1, np.nan),
                             ratio_mean=per_seed.mean() if per_seed.size else np.nan,
                             ratio_std=per_seed.std(ddof=1) if per_seed.size > 1 else np.nan))
    return pd.DataFrame(rows)


def fit_constant(summary: pd.DataFrame) -> dict[str, float]:
    """Least squares in log space of P*_l = c * v * m**(l+1) over all finite thresholds.

    Returns c, the spread (std of log10 of the rescaled thresholds: 0 means perfect collapse),
    and the number of thresholds used.
    """
    for key in ("v", "m"):
        if key not in summary:
            raise ValueError(f"summary needs the grammar column {key!r} to fit c")
    ok = np.isfinite(summary["P_star"].to_numpy(float))
    s = summary[ok]
    if s.empty:
        return dict(c=np.nan, log10_spread=np.nan, num=0)
    log_rescaled = np.log10(s["P_star"].to_numpy(float) / context_size(s["v"], s["m"], s["level"]))
    return dict(c=float(10 ** log_rescaled.mean()),
                log10_spread=float(log_rescaled.std(ddof=1)) if len(s) > 1 else np.nan,
                num=int(len(s)))


def collapse(df: pd.DataFrame, at: str = "last") -> pd.DataFrame:
    """Final validity with the rescaled size x = P / (v m**(l+1)) for the collapse plot."""
    long = final_validity(df, at)
    for key in ("v", "m"):
        if key not in long:
            raise ValueError(f"metrics need the grammar column {key!r} for the collapse")
    return long.assign(x=long["P"] / context_size(long["v"], long["m"], long["level"]))


# ----------------------------------------------------------------------------- dynamics in time

def _epoch_of(g: pd.DataFrame, step: float) -> float:
    """Epoch at a (fractional) step, from the table's own step -> epoch proportion."""
    if "epoch" not in g or not np.isfinite(step):
        return float("nan")
    last = g[g["step"] > 0]
    if last.empty:
        return float("nan")
    last = last.iloc[-1]
    return float(step * last["epoch"] / last["step"])


def _model_ids(workdir: str, model: int, g: pd.DataFrame) -> dict:
    """Identity of one model's rows: workdir, grid index, P, seed (and lr when present)."""
    ids = dict(workdir=workdir, model=model, P=g["P"].iloc[0], seed=g["seed"].iloc[0])
    if "lr" in g:
        ids["lr"] = g["lr"].iloc[0]
    return ids


def learning_times(df: pd.DataFrame, level_value: float = 0.5) -> pd.DataFrame:
    """Per model and level: first step (and epoch) at which validity crosses ``level_value``."""
    df = healthy(_keyed(df)).sort_values("step")
    rows = []
    for (workdir, model), g in df.groupby(["workdir", "model"]):
        for level in levels(df):
            step = crossing_time(g["step"], g[f"validity_l{level}"], level_value)
            rows.append(dict(**_model_ids(workdir, model, g), level=level, step=step, epoch=_epoch_of(g, step)))
    return pd.DataFrame(rows)


def memorization_onset(df: pd.DataFrame, copy_level: float = 0.1) -> pd.DataFrame:
    """Per model: first step (and epoch) at which the copy fraction crosses ``copy_level``."""
    df = healthy(_keyed(df)).sort_values("step")
    rows = []
    for (workdir, model), g in df.groupby(["workdir", "model"]):
        step = crossing_time(g["step"], g["copy"], copy_level)
        rows.append(dict(**_model_ids(workdir, model, g), step=step, epoch=_epoch_of(g, step),
                         final_copy=g["copy"].iloc[-1]))
    return pd.DataFrame(rows)


def creativity(df: pd.DataFrame, at: str = "last") -> pd.DataFrame:
    """Per model at its last (or best) evaluation: valid, copy, novel_valid and novel share of valid."""
    last = final(healthy(_keyed(df)), at)
    ids = [c for c in ("workdir", "model", "P", "seed", "lr", *GRAMMAR_KEYS) if c in last]
    out = last[[*ids, "valid", "copy", "novel_valid"]].copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        out["novel_share"] = np.where(out["valid"] > 0, out["novel_valid"] / out["valid"], np.nan)
    return out.sort_values(["workdir", "P", "seed"]).reset_index(drop=True)


def diverged_models(df: pd.DataFrame) -> pd.DataFrame:
    """Models that went non-finite at any evaluation, with their grid index, P and seed."""
    df = _keyed(df)
    if "diverged" not in df:
        return df.iloc[:0][["workdir", "model", "P", "seed"]]
    bad = df[df["diverged"].fillna(False).astype(bool)]
    return bad.drop_duplicates(["workdir", "model"])[["workdir", "model", "P", "seed"]].reset_index(drop=True)


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
