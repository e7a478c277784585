"""The tables of ``report.md``: markdown formatting, provenance lines and one function per table.

Each function takes the metrics table (or a reading of it, ``rhm_jax.analysis``,
``rhm_jax.thresholds``, ``rhm_jax.dynamics``) and returns a DataFrame or markdown text;
``rhm_jax.report`` puts them in order with their definitions.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from rhm_jax import analysis, dynamics, figures, keys, theory, thresholds

DEFINITION = (f"**Normalized validity** of level l: {analysis.NORMALIZED}, the fraction of the way from "
              "chance to perfect; V_l is the fraction of level-l nodes of the generated samples that parse, "
              "V_l^unif the same for i.i.d. uniform tokens (`rhm_jax.theory.uniform_validity`).")


# ----------------------------------------------------------------------------- tables

def fmt(value) -> str:
    """Compact cell text: 3 significant digits for floats, '-' for NaN."""
    if isinstance(value, (float, np.floating)):
        return "-" if not np.isfinite(value) else f"{value:.3g}"
    return str(value)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured markdown table of a DataFrame (no external dependency)."""
    if df.empty:
        return "_(none)_\n"
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def wall_time(config: dict, df: pd.DataFrame, workdir: str | None = None) -> tuple[float, str]:
    """(seconds, where from): the provenance's ``wall_time_s`` (a finished run), else the largest
    ``wall_s`` of the metrics table (a run still going, or stopped), else unknown."""
    prov = config.get("provenance", {}) or {}
    if isinstance(prov.get("wall_time_s"), (int, float)):
        return float(prov["wall_time_s"]), "provenance"
    if "wall_s" in df and df["wall_s"].notna().any():
        return float(df["wall_s"].max()), "so far: the run has not finished"
    return float("nan"), "unknown"


def budget(train: dict) -> str:
    """The step budget as configured: steps for every model, or epochs of each model's own P."""
    if train.get("num_epochs"):
        return f"{train['num_epochs']:g} epochs of each model's P"
    return f"{train.get('num_steps', '?')} steps"


def commit(prov: dict) -> str:
    """Git revision from provenance ({'git': {'revision', 'dirty'}} or a plain string)."""
    git = prov.get("git", prov.get("git_revision", prov.get("commit")))
    if isinstance(git, dict):
        built = " (recorded when the installed package was built)" if git.get("from") == "build" else ""
        return f"{git.get('revision') or '?'}{' (dirty tree)' if git.get('dirty') else ''}{built}"
    return str(git or "?")


def machine(prov: dict) -> str:
    """Devices and host from provenance."""
    devices = prov.get("devices", prov.get("machine", "?"))
    if isinstance(devices, dict):
        devices = f"{devices.get('count', '?')} x {devices.get('kind', '?')} ({devices.get('platform', '?')})"
    host = prov.get("hostname")
    return f"{devices}" + (f" on {host}" if host else "")


def sweep_lines(points: list[dict], df: pd.DataFrame) -> list[str]:
    """One line naming a sweep's points and the values each swept key takes (the lines below show its base)."""
    swept = [k for k in dict.fromkeys(k for p in points for k in p) if len({repr(p.get(k)) for p in points}) > 1]
    if len(points) < 2 or not swept:
        return []
    values = []
    for key in swept:
        column = keys.KEYS[key].column if key in keys.KEYS else key
        found = (sorted(df[column].dropna().unique().tolist()) if column in df
                 else sorted({repr(p.get(key)) for p in points}))
        values.append(f"{key} ({column}): {', '.join(str(v) for v in found)}")
    return [f"- sweep of {len(points)} points, the base config below; swept: " + "; ".join(values)]


def provenance_lines(workdir: str, config: dict, df: pd.DataFrame) -> list[str]:
    """Bullet lines: commit, packages, machine, date and wall time of one work directory."""
    prov = config.get("provenance", {}) or {}
    cfg = config.get("config", {}) or {}
    packages = prov.get("packages") or prov.get("versions") or {}
    pkg = ", ".join(f"{k} {v}" for k, v in sorted(packages.items())) if isinstance(packages, dict) else str(packages)
    g, tr = cfg.get("grammar", {}), cfg.get("train", {})
    seconds, how = wall_time(config, df, workdir)
    return [
        f"### {figures.label(workdir)} (`{workdir}`)",
        *sweep_lines(config.get("points") or [{}], df),
        f"- grammar: {', '.join(f'{k}={v}' for k, v in g.items())}",
        f"- process: {cfg.get('process', {}).get('name', '?')}, network: "
        f"{cfg.get('network', {}).get('name', '?')} width {cfg.get('network', {}).get('width', '?')}",
        f"- P grid: {cfg.get('data', {}).get('num_train', sorted(df['P'].unique().tolist()))}, "
        f"seeds: {tr.get('seeds', '?')}, batch {tr.get('batch_size', '?')}, lr {tr.get('lr', '?')}, "
        f"budget {budget(tr)}",
        f"- commit: {commit(prov)}",
        f"- packages: {pkg or '?'}; python {prov.get('python', '?')}",
        f"- machine: {machine(prov)}",
        f"- date: {prov.get('date_utc', prov.get('date', '?'))}; wall time: {fmt(seconds)} s ({how}); "
        f"models: {df['model'].nunique()}, last step: {int(df['step'].max())}",
    ]


def mean_by_P(table: pd.DataFrame, value: str, columns: str | None = None, censored: bool = False) -> pd.DataFrame:
    """Mean of ``value`` over model seeds per (every swept key, P[, columns]) as a wide table.

    ``censored``: NaN means 'not within the budget', so a cell is NaN when any seed's is (the mean
    of the seeds that got there would understate the time).
    """
    index = [*analysis.table_keys(table), "P"]
    groups = table.groupby(index + ([columns] if columns else []))[value]
    agg = (groups.agg(lambda x: x.mean(skipna=False)) if censored else groups.mean()).reset_index()
    if columns:
        seen = agg[index].drop_duplicates()  # pivot_table(dropna=False) fills the product of the index levels
        agg = agg.pivot_table(index=index, columns=columns, values=value, dropna=False).reset_index()
        agg.columns = [c if isinstance(c, str) else f"{columns} {c}" for c in agg.columns]
        agg = seen.merge(agg, on=index, how="left")
    agg["workdir"] = agg["workdir"].map(figures.label)
    return agg


def readings(df: pd.DataFrame, method: str = thresholds.DEFAULT_METHOD) -> pd.DataFrame:
    """Pooled P*_l of every available reading: normalized/raw x all/non-copied samples x best/last.

    One row per (workdir, reading, samples, at); a threshold that is missing shows its reason.
    """
    rows = []
    choices = [(r, s, a) for r in analysis.READINGS for s in analysis.SAMPLES for a in ("best", "last")
               if (s == "all" or "validity_l1_noncopy" in df) and (a == "last" or analysis.can_pick_best(df))
               and (r == "normalized" or s == "all")]
    for reading, samples, at in choices:
        summary = thresholds.summary(thresholds.table(df, method, at, reading, samples, interval=False))
        keys = analysis.curve_keys(summary)  # a row per work directory, or per swept value within one
        for values, g in summary.groupby(keys, dropna=False):
            row = dict(zip(keys, values), reading=reading, samples=samples, at=at)
            row["workdir"] = figures.label(row["workdir"])
            for r in g.itertuples():
                row[f"P*_{r.level}"] = (thresholds.text(r.P_star, r.bound) if np.isfinite(r.P_star)
                                        else f"({r.censored})")
            rows.append(row)
    return pd.DataFrame(rows)


def threshold_table(summary: pd.DataFrame, rising: pd.DataFrame, df: pd.DataFrame | None = None) -> pd.DataFrame:
    """Summary with theory v m^(l+1), P*/theory and how many models were still rising per curve and level;
    ``P*`` as text: value [interval], or '<= value' for a bound."""
    out = summary.copy()
    if {"v", "m"} <= set(out):
        out["theory"] = thresholds.context_size(out["v"], out["m"], out["level"])
        out["P_star / theory"] = thresholds.measured(out)["P_star"] / out["theory"]
    keys = [k for k in analysis.curve_keys(out) if not len(rising) or k in rising]
    counts = rising.groupby([*keys, "level"])["rising"].sum() if len(rising) else pd.Series(dtype=int)
    out["still_rising"] = [int(counts.get(tuple(ids), 0)) for ids in out[[*keys, "level"]].itertuples(index=False)]
    out["workdir"] = out["workdir"].map(figures.label)
    if "P_star_lo" in out:
        out.insert(out.columns.get_loc("P_star"), "P*", [
            thresholds.text(r.P_star, r.bound, r.P_star_lo, r.P_star_hi) for r in out.itertuples()])
        out["best band"] = [f"[{fmt(r.P_star_band_lo)}, {fmt(r.P_star_band_hi)}]" if np.isfinite(r.P_star) else "-"
                            for r in out.itertuples()]
    drop = ("n", "s", "L", "reading", "samples", "at", "method", "P_star", "P_star_lo", "P_star_hi", "P_star_band_lo",
            "P_star_band_hi", "bound")
    return out.drop(columns=[c for c in drop if c in out])


def replicate_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per replicate (grammar/data/model seed) and level: P* with its interval, or the bound, or why missing."""
    reps = [c for c in analysis.REPLICATES if c in table]
    keys = analysis.curve_keys(table)
    per = table[(table[reps] != -1).any(axis=1)] if reps else table.iloc[:0]
    if per.empty:
        return per
    per = per.assign(**{"P*": [thresholds.text(r.P_star, r.bound, r.P_star_lo, r.P_star_hi)
                                if np.isfinite(r.P_star) else f"({r.censored})" for r in per.itertuples()]})
    wide = per.pivot_table(index=[*keys, *reps], columns="level", values="P*", aggfunc="first").reset_index()
    wide.columns = [c if isinstance(c, str) else f"P*_{c}" for c in wide.columns]
    wide["workdir"] = wide["workdir"].map(figures.label)
    return wide


def band_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per (swept values, P): models, mean evaluations in the best band, and the mean and largest band
    width (hi - lo) of each level's normalized validity."""
    band = analysis.best_band(df)
    models = analysis.keyed(df).drop_duplicates(["workdir", "model"])
    columns = [c for c in dict.fromkeys(("P", *analysis.REPLICATES, *analysis.CURVE_COLUMNS)) if c in models]
    band = band.merge(models[["workdir", "model", *columns]], on=["workdir", "model"], how="left")
    index = [*analysis.table_keys(band), "P"]
    out = band.groupby(index).agg(models=("model", "size"), band_evals=("band_evals", "mean"))
    for level in analysis.levels(df):
        width = band[f"validity_l{level}_hi"] - band[f"validity_l{level}_lo"]
        grouped = width.groupby([band[k] for k in index])
        out[f"l{level} width mean"] = grouped.mean()
        out[f"l{level} width max"] = grouped.max()
    out = out.reset_index()
    out["workdir"] = out["workdir"].map(figures.label)
    return out


def creativity_table(creative: pd.DataFrame) -> str:
    """Mean over seeds per P of valid, copies, novel valid and novel share, beside P / P_max."""
    keys = [*analysis.table_keys(creative), "P"]
    table = creative.groupby(keys)[["valid", "copies", "novel_valid", "novel_share"]].mean().reset_index()
    if set(analysis.GRAMMAR_KEYS) <= set(creative):
        grammar = creative.groupby(keys)[list(analysis.GRAMMAR_KEYS)].first().reset_index(drop=True)
        table["copies_if_perfect"] = [
            theory.expected_copy_fraction(int(P), theory.p_max(*(int(g[k]) for k in ("v", "n", "m", "s", "L"))))
            for P, (_, g) in zip(table["P"], grammar.iterrows())]
    table["workdir"] = table["workdir"].map(figures.label)
    return markdown_table(table)


def coherence_table(df: pd.DataFrame, at: str) -> pd.DataFrame:
    """Mean coherence lengths per P at each model's ``at`` evaluation: xi from validity beside the
    theory's, and xi_C from C(t) (with the fraction of models where it is a bound) where C(t) is logged."""
    chosen = analysis.final(analysis.healthy(df), at)
    xi = dynamics.coherence_length(chosen)
    table = mean_by_P(xi, "xi")
    if {"v", "m", "s"} <= set(xi):  # per row: work directories may differ in their grammar
        xi["theory"] = dynamics.theory_coherence_length(xi["P"], *(xi[k].to_numpy(float) for k in ("v", "m", "s")))
        table["theory (P/(v m))^(log s/log m)"] = mean_by_P(xi, "theory")["theory"]
    from_corr = dynamics.correlation_length(chosen)
    if len(from_corr):
        table["xi_C (from C(t))"] = mean_by_P(from_corr, "xi_C")["xi_C"].to_numpy()
        table["xi_C bound (fraction)"] = mean_by_P(from_corr.assign(b=from_corr["xi_C_bound"].astype(float)),
                                                    "b")["b"].to_numpy()
        table["largest resolved t"] = mean_by_P(from_corr, "t_resolved")["t_resolved"].to_numpy()
    return table


def noisy_correlations(corr: pd.DataFrame) -> str:
    """Where C(t)'s standard error is not smaller than the value shown (mean over seeds per P and t)."""
    if corr["se"].isna().all():
        return ("No standard error of C(t) is logged in these rows (older work directory): the report cannot "
                "say which values are above their noise; values near 0 are noise.")
    index = [*analysis.table_keys(corr), "P", "t"]
    cells = corr.groupby(index)[["samples", "se"]].mean().reset_index()
    noisy = cells[cells["se"] >= cells["samples"].abs()]
    if noisy.empty:
        return "Every value shown is larger than its standard error."
    where = "; ".join(f"{figures.label(r['workdir'])} P={fmt(r['P'])} t={int(r['t'])}"
                      for _, r in noisy.iterrows())
    return (f"C(t) of the samples is not larger than its standard error in {len(noisy)} of {len(cells)} cells: "
            + where + ".")


def section(title: str, definition: str, body: str) -> list[str]:
    """A markdown section: heading, the definition of its numbers, then the table or text."""
    return [f"## {title}\n", f"{definition}\n", body]


