"""What happens over training time: learning times, memorization, budgets, coherence length, C(t).

Every quantity is read on ``analysis.readout`` (normalized validity by default, SPEC section 7).
The coherence length of an evaluation is ``xi = s**l*`` with l* the highest level whose
normalized validity reaches 1/2 (xi = 1, a single token, when none does); the theory predicts
``xi ~ (P / (v m))**(log s / log m)``, which is s**l exactly at P = v m**(l+1).

From token-token correlations (``correlation_length``, ``CORRELATION_LENGTH``): xi_C = 1 + the
largest distance t up to which the samples' C(t) reaches half the data's own C(t) at every distance
whose half is distinguishable from 0 (more than twice the samples' standard error at t).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from rhm_jax import analysis, results

_CORR = re.compile(r"^corr_t(\d+)$")
CORRELATION_LENGTH = (
    "xi_C = 1 + the largest distance t such that, at every distance t' <= t that is resolved, the samples' "
    "C(t') reaches half the data's C(t') (`corr_data_t<t>`: the exact value of the model's grammar; the "
    "training rows' `corr_train_t<t>` where that is not logged); t' is resolved when half the data's value "
    "exceeds twice the samples' standard error `corr_t<t>_se` (any positive value where no error is "
    "logged). In tokens, like xi = s^l*: 1 when no distance is reproduced. `xi_C_bound`: it reached the "
    "largest resolved distance, so the samples may reproduce longer ones than the measurement can see.")


def crossing_time(step_K: np.ndarray, y_K: np.ndarray, level: float = 0.5) -> float:
    """First step where y rises through ``level``, interpolated in log step (steps > 0 only)."""
    step_K, y_K = np.asarray(step_K, float), np.asarray(y_K, float)
    positive = step_K > 0
    if not positive.any():
        return float("nan")
    if (~positive).any() and np.nanmax(y_K[~positive], initial=-np.inf) >= level:
        return 0.0  # already above at initialization
    return float(np.exp(analysis.crossing(np.log(step_K[positive]), y_K[positive], level)))


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
    """Identity of one model's rows: workdir, grid index, P, its seeds and every result-determining
    column a sweep may vary (lr, m, width, ...), so tables group by each swept key."""
    ids = dict(workdir=workdir, model=model)
    for column in dict.fromkeys(("P", "seed", *analysis.REPLICATES, *analysis.CURVE_COLUMNS, *analysis.GRAMMAR_KEYS)):
        if column in g:
            ids[column] = g[column].iloc[0]
    return ids


def _models(df: pd.DataFrame, reading: str, samples: str):
    """(workdir, model, rows sorted by step) of the healthy models, validity in the chosen reading."""
    df = analysis.readout(analysis.healthy(df), reading, samples).sort_values("step")
    return df.groupby(["workdir", "model"])


def learning_times(df: pd.DataFrame, level_value: float = 0.5, reading: str = "normalized",
                   samples: str = "all") -> pd.DataFrame:
    """Per model and level: first step (and epoch) at which the reading crosses ``level_value``."""
    rows = []
    for (workdir, model), g in _models(df, reading, samples):
        for level in analysis.levels(df):
            step = crossing_time(g["step"], g[f"validity_l{level}"], level_value)
            rows.append(dict(**_model_ids(workdir, model, g), level=level, step=step, epoch=_epoch_of(g, step)))
    return pd.DataFrame(rows)


def memorization_onset(df: pd.DataFrame, copy_level: float = 0.1) -> pd.DataFrame:
    """Per model: first step (and epoch) at which the copy fraction crosses ``copy_level``."""
    df = analysis.healthy(df).sort_values("step")
    copies = analysis.copies_column(df)
    if copies is None:
        raise ValueError("metrics table has no copies (or copy) column")
    rows = []
    for (workdir, model), g in df.groupby(["workdir", "model"]):
        step = crossing_time(g["step"], g[copies], copy_level)
        rows.append(dict(**_model_ids(workdir, model, g), step=step, epoch=_epoch_of(g, step),
                         final_copies=g[copies].iloc[-1]))
    return pd.DataFrame(rows)


def still_rising(df: pd.DataFrame, tolerance: float = 0.05, reading: str = "normalized",
                 samples: str = "all") -> pd.DataFrame:
    """Per model and level: the rise of the reading over the model's last doubling of steps.

    ``rise`` = value at the last evaluation - value at the last evaluation at or before half of
    its step. ``rising`` when rise exceeds both ``tolerance`` and twice its sampling error (from
    the sample counts when logged: per-sample validity varies by at most V(1 - V), over
    ``num_samples`` samples at each end, or ``noncopy_samples`` with samples='noncopy'): the step
    budget was too short for that level, so a threshold read there is an upper bound, not a
    measurement.
    """
    count = "noncopy_samples" if samples == "noncopy" else "num_samples"
    rows = []
    for (workdir, model), g in _models(df, reading, samples):
        last = g.iloc[-1]
        half = g[(g["step"] <= last["step"] / 2) & (g["step"] > 0)]
        for level in analysis.levels(df):
            column = f"validity_l{level}"
            rise = float(last[column] - half[column].iloc[-1]) if len(half) else np.nan
            noise = 0.0
            if len(half) and count in g and pd.notna(last[count]):
                ends = [last, half.iloc[-1]]
                raw, num = (np.array([e[name] for e in ends], float) for name in (f"{column}_raw", count))
                scale = 1.0 if reading == "raw" else 1.0 - float(analysis.baseline(g.iloc[:1], level)[0])
                noise = 2 * np.sqrt(np.sum(raw * (1 - raw) / num)) / scale
            rows.append(dict(**_model_ids(workdir, model, g), level=level, step=last["step"],
                             value=last[column], rise=rise, rising=bool(rise > max(tolerance, noise))))
    return pd.DataFrame(rows)


def coherence_length(df: pd.DataFrame, reading: str = "normalized", samples: str = "all") -> pd.DataFrame:
    """Per row: ``level_star`` (highest level whose reading is >= 1/2, 0 if none) and xi = s**level_star."""
    read = analysis.readout(analysis.healthy(df), reading, samples)
    if "s" not in read:
        raise ValueError("the coherence length needs the grammar column 's'")
    lv = analysis.levels(read)
    passed_RxL = np.stack([read[f"validity_l{l}"].to_numpy(float) >= 0.5 for l in lv], axis=1)
    level_star = np.where(passed_RxL.any(1), np.asarray(lv)[::-1][np.argmax(passed_RxL[:, ::-1], axis=1)], 0)
    ids = [c for c in dict.fromkeys(("workdir", "model", "P", "seed", *analysis.REPLICATES, *analysis.CURVE_COLUMNS,
                                     "step", "epoch", *analysis.GRAMMAR_KEYS)) if c in read]
    return read[ids].assign(level_star=level_star, xi=read["s"].to_numpy(float) ** level_star).reset_index(drop=True)


def theory_coherence_length(P: np.ndarray, v: int, m: int, s: int) -> np.ndarray:
    """The theory's xi(P) = (P / (v m))**(log s / log m): s**l at P = v m**(l+1)."""
    return (np.asarray(P, float) / (v * m)) ** (np.log(s) / np.log(m))


def correlation_distances(df: pd.DataFrame) -> list[int]:
    """Distances t with a ``corr_t<t>`` column (``evaluate.correlation``), ascending."""
    return sorted(int(m.group(1)) for c in df.columns if (m := _CORR.match(str(c))))


def _corr_columns(df: pd.DataFrame, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """(samples' C(t), its standard error, the reference C(t), the reference's name) per row."""
    samples = df[f"corr_t{t}"].to_numpy(float)
    se = df[f"corr_t{t}_se"].to_numpy(float) if f"corr_t{t}_se" in df else np.full(len(df), np.nan)
    for name in (f"corr_data_t{t}", f"corr_train_t{t}"):
        if name in df:
            return samples, se, df[name].to_numpy(float), name.rsplit("_t", 1)[0].replace("corr_", "")
    return samples, se, np.full(len(df), np.nan), "none"


def correlation_length(df: pd.DataFrame) -> pd.DataFrame:
    """Per row (every evaluation of every healthy model): the coherence length from C(t),
    ``CORRELATION_LENGTH``: ``xi_C``, ``t_resolved`` (largest resolved distance), ``xi_C_bound`` and
    ``reference`` ('data', 'train' or 'none'). Empty when no ``corr_t<t>`` column is logged."""
    ts = correlation_distances(df)
    read = analysis.keyed(analysis.healthy(df))
    ids = [c for c in dict.fromkeys(("workdir", "model", "P", "seed", *analysis.REPLICATES, *analysis.CURVE_COLUMNS,
                                     "step", "epoch", *analysis.GRAMMAR_KEYS)) if c in read]
    if not ts:
        return pd.DataFrame(columns=[*ids, "xi_C", "t_resolved", "xi_C_bound", "reference"])
    reach = np.zeros(len(read), int)  # largest t reproduced so far, contiguously over resolved t
    broken = np.zeros(len(read), bool)
    resolved_max = np.zeros(len(read), int)
    references = set()
    for t in ts:
        samples, se, ref, name = _corr_columns(read, t)
        references.add(name)
        half = ref / 2
        resolved = np.isfinite(half) & (half > np.where(np.isfinite(se), 2 * se, 0.0))
        resolved_max = np.where(resolved, t, resolved_max)
        reached = samples >= half
        broken |= resolved & ~reached
        reach = np.where(resolved & reached & ~broken, t, reach)
    out = read[ids].assign(xi_C=1 + reach, t_resolved=resolved_max,
                           xi_C_bound=(reach == resolved_max) & (resolved_max > 0),
                           reference="/".join(sorted(references)))
    return out.reset_index(drop=True)


def correlations(df: pd.DataFrame, at: str = results.DEFAULT_READING) -> pd.DataFrame:
    """Long table per model and distance t at its ``at`` evaluation: C(t) of the samples (``samples``,
    its standard error ``se`` when logged), of the training rows (``train``) and of the grammar
    itself (``data``, exact, when logged).

    ``ratio`` = samples / data (samples / train where the data's value is not logged): 1 when the
    model reproduces the correlations at t (NaN where the reference shows none, <= 0).
    """
    ts = correlation_distances(df)
    ids_all = ["workdir", "model", "P", "seed", *analysis.REPLICATES, *analysis.CURVE_COLUMNS, "step"]
    if not ts:
        return pd.DataFrame(columns=["workdir", "model", "P", "seed", "t", "samples", "se", "train", "data", "ratio"])
    last = analysis.final(analysis.healthy(df), at)
    ids = [c for c in dict.fromkeys(ids_all) if c in last]
    parts = []
    for t in ts:
        column = {name: last[f"corr_{name}_t{t}"].astype(float) if f"corr_{name}_t{t}" in last else np.nan
                  for name in ("train", "data")}
        se = last[f"corr_t{t}_se"].astype(float) if f"corr_t{t}_se" in last else np.nan
        parts.append(last[ids].assign(t=t, samples=last[f"corr_t{t}"].astype(float), se=se, **column))
    long = pd.concat(parts, ignore_index=True)
    reference = long["data"].where(long["data"].notna(), long["train"])
    with np.errstate(invalid="ignore", divide="ignore"):
        long["ratio"] = np.where(reference > 0, long["samples"] / reference, np.nan)
    return long.sort_values(["workdir", "P", "seed", "t"]).reset_index(drop=True)


TIME_ORDER = (
    "Per model: `t_l<l>`, the learning time of level l (first step at which normalized validity reaches 1/2, "
    "log-interpolated); `onset`, the memorization onset (first step at which the copy fraction reaches 0.1); "
    "`best`, the step of the lowest test loss. Per (swept values, P): each as the median over realizations "
    "[min, max] ('-': some realization never within the budget, so the median is not known); `in order`: "
    "realizations whose levels were all learned, each after the one below; `copies after`: realizations "
    "whose onset comes after their last level's learning time (or never comes); `models`: realizations.")


def time_order(df: pd.DataFrame) -> pd.DataFrame:
    """Per model: each level's learning time, the memorization onset and the best step, side by side."""
    times = learning_times(df).pivot_table(index=["workdir", "model"], columns="level", values="step", dropna=False)
    times.columns = [f"t_l{level}" for level in times.columns]
    ids = [c for c in dict.fromkeys(("workdir", "model", "P", *analysis.REPLICATES, *analysis.curve_keys(df)))
           if c in df]
    best = analysis.final(analysis.healthy(df), "best")[ids + ["step"]].rename(columns={"step": "best"})
    out = best.merge(times.reset_index(), on=["workdir", "model"], how="left")
    copies = analysis.copies_column(df)
    if copies is not None:
        out = out.merge(memorization_onset(df)[["workdir", "model", "step"]].rename(columns={"step": "onset"}),
                        on=["workdir", "model"], how="left")
    return out


def _spread(values: pd.Series) -> str:
    """'median [min, max]' of finite values, '-' when any is NaN (not reached within the budget)."""
    x = values.to_numpy(float)
    if not len(x) or np.isnan(x).any():
        return "-"
    return f"{np.median(x):.0f} [{x.min():.0f}, {x.max():.0f}]"


def time_order_summary(per_model: pd.DataFrame) -> pd.DataFrame:
    """``time_order`` over realizations per (swept values, P): medians with ranges and the two counts."""
    levels_ = sorted(c for c in per_model if c.startswith("t_l"))
    times = per_model[levels_].to_numpy(float)
    learned = np.isfinite(times).all(1)
    in_order = learned & (np.diff(times, axis=1) > 0).all(1)
    onset = per_model["onset"].to_numpy(float) if "onset" in per_model else np.full(len(per_model), np.nan)
    after = learned & (~np.isfinite(onset) | (onset > np.nanmax(np.where(np.isfinite(times), times, -np.inf), 1)))
    table = per_model.assign(_in_order=in_order, _after=after)
    keys = [k for k in dict.fromkeys(("workdir", *analysis.curve_keys(per_model), "P")) if k in per_model]
    rows = []
    for values, g in table.groupby(keys, sort=True):
        row = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
        for column in (*levels_, "onset", "best"):
            if column in g:
                row[column] = _spread(g[column]) if column != "onset" else _onset_spread(g[column])
        row.update({"in order": f"{int(g['_in_order'].sum())}/{len(g)}",
                    "copies after": f"{int(g['_after'].sum())}/{len(g)}" if "onset" in g else "-",
                    "models": len(g)})
        rows.append(row)
    return pd.DataFrame(rows)


def _onset_spread(values: pd.Series) -> str:
    """Like ``_spread``, but an onset never reached is 'none' for all or counted for some."""
    x = values.to_numpy(float)
    if np.isnan(x).all():
        return "none"
    if np.isnan(x).any():
        return f"{_spread(values.dropna())} ({int(np.isnan(x).sum())} none)"
    return _spread(values)
