"""Readings of the metrics table of one or more runs: loading, curves, chance, selection, the best band.

Shape letters: K evaluation points of one curve (P values or steps). Every function takes and
returns pandas DataFrames in long format so that grids, seeds and work directories mix freely.
Level l = 1 is the tuple just above the leaves, l = L the root (as in ``rhm_jax.grammar``).

Readings (SPEC section 7). ``reading='normalized'`` (the default) measures level l on
``(V_l - V_l^unif) / (1 - V_l^unif)``, the fraction of the way from chance (i.i.d. uniform tokens,
``theory.uniform_validity``) to perfect; ``'raw'`` on V_l itself. ``samples='noncopy'`` reads the
validity over the samples that are not copies of the model's training set
(``validity_l<l>_noncopy``) instead of over all of them. Each model is read at its ``best``
evaluation (``results.best_position``: lowest test loss) by default, with the band of evaluations
that noise cannot tell from it (``best_band``), or at its ``last``. The thresholds P*_l read from
these (estimators, intervals, bounds, ratios, c, collapse) are in ``rhm_jax.thresholds``.
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
                      if key.kind not in keys.RESUMABLE and key.column not in REPLICATES
                      and name not in ("data.num_train", "run.seed"))
READINGS = ("normalized", "raw")
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
    """Levels l with a ``validity_l<l>`` column, ascending, up to the deepest grammar's L in ``df``.

    A table joining grammars of different depths (L = 4 beside L = 5) has the deeper grammar's
    columns on every row, empty for the shallower one's: its parts list only their own levels. A
    level of the grammar whose values are all missing stays listed (its reading says why).
    """
    found = sorted(int(m.group(1)) for c in df.columns if (m := _VALIDITY.match(str(c))))
    if not found:
        raise ValueError("metrics table has no validity_l<l> column")
    if "L" in df and df["L"].notna().any():
        found = [level for level in found if level <= df["L"].max()] or found
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


def replicates(df: pd.DataFrame) -> list[str]:
    return [c for c in REPLICATES if c in df]


def keyed(df: pd.DataFrame) -> pd.DataFrame:
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
    df = keyed(df)
    return df[~_flagged(df)]


def baseline(df: pd.DataFrame, level: int) -> np.ndarray:
    """V_l^unif per row: validity at ``level`` of i.i.d. uniform tokens under the row's grammar (NaN for a
    grammar shallower than ``level``: a sweep over L has rows with fewer levels)."""
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
            cache[key] = (float(theory.uniform_validity(g["v"], g["m"], g["s"], g["L"], g.get("n"))[level - 1])
                          if level <= g["L"] else np.nan)
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
    df = keyed(df).reset_index(drop=True)  # index labels pick rows: a concatenation may repeat them
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
    df = keyed(df)
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
        if "L" in part:  # no row for a level the model's grammar does not have
            part = part[part["L"].isna() | (part["L"] >= level)].copy()
        if band is not None:
            where = pd.MultiIndex.from_frame(part[["workdir", "model"]])
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
    df = keyed(df)
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
