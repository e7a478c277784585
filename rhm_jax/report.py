"""Figures (PNG and PDF) and ``report.md`` for one or more work directories.

Figures use ``matplotlib.figure.Figure`` directly (the Agg canvas; no pyplot, no global backend
state), so a report can be written from any process, with or without a display.
"""
from __future__ import annotations

import datetime
import os
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure

from rhm_jax import analysis, theory

FORMATS = ("png", "pdf")
MAX_TIME_PANELS = 6


# ----------------------------------------------------------------------------- helpers

def _label(workdir: str) -> str:
    """Short name of a work directory for legends and file names."""
    return os.path.basename(os.path.normpath(workdir)) or "run"


def _save(fig: Figure, out: str, name: str) -> list[str]:
    """Write ``fig`` as every format in FORMATS; return the paths."""
    paths = []
    for fmt in FORMATS:
        path = os.path.join(out, f"{name}.{fmt}")
        fig.savefig(path, bbox_inches="tight", dpi=120)
        paths.append(path)
    return paths


def _colors(num: int) -> list:
    """``num`` distinguishable colours from the viridis map."""
    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.85, max(num, 1))]


def _grammar(df: pd.DataFrame) -> dict:
    """Grammar parameters of a one-workdir table, as ints."""
    return {k: int(df[k].iloc[0]) for k in analysis.GRAMMAR_KEYS if k in df}


def _uniform_baseline(g: dict, level: int) -> float:
    """Validity at ``level`` of i.i.d. uniform tokens (what an untrained model scores)."""
    return float(theory.uniform_validity(g["v"], g["m"], g["s"], g["L"], g.get("n"))[level - 1])


# ----------------------------------------------------------------------------- figures

def plot_validity_vs_p(df: pd.DataFrame, summary: pd.DataFrame, out: str, at: str = "last") -> list[str]:
    """Final validity vs P per level (mean +- std over seeds), fitted logistic, fitted and theory P*."""
    long = analysis.final_validity(df, at)
    workdirs = sorted(long["workdir"].unique())
    fig = Figure(figsize=(5.0 * len(workdirs), 3.8))
    axes = fig.subplots(1, len(workdirs), squeeze=False)[0]
    for ax, workdir in zip(axes, workdirs):
        part = long[long["workdir"] == workdir]
        g = _grammar(part)
        lv = sorted(part["level"].unique())
        for color, level in zip(_colors(len(lv)), lv):
            stats = part[part["level"] == level].groupby("P")["validity"].agg(["mean", "std"]).reset_index()
            ax.errorbar(stats["P"], stats["mean"], yerr=stats["std"].fillna(0), fmt="o", ms=4,
                        color=color, label=f"level {level}")
            row = summary[(summary["workdir"] == workdir) & (summary["level"] == level)]
            p_star = float(row["P_star"].iloc[0]) if len(row) else np.nan
            if np.isfinite(p_star):
                grid = np.logspace(np.log10(stats["P"].min()), np.log10(stats["P"].max()), 200)
                center, slope = analysis.fit_sigmoid(np.log10(part[part["level"] == level]["P"]),
                                                     part[part["level"] == level]["validity"])
                ax.plot(grid, analysis.sigmoid(np.log10(grid), center, slope), "-", color=color, lw=1)
                ax.axvline(p_star, color=color, ls="--", lw=0.8)
            if "v" in g and "m" in g:
                ax.axvline(analysis.theory_threshold(g["v"], g["m"], level), color=color, ls=":", lw=1.2)
            if {"v", "m", "s"} <= set(g):
                ax.axhline(_uniform_baseline(g, level), color=color, ls="-.", lw=0.6, alpha=0.6)
        ax.set_xscale("log")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("training-set size P")
        ax.set_ylabel(f"validity ({at} evaluation)")
        ax.set_title(f"{_label(workdir)}: " + ", ".join(f"{k}={v}" for k, v in g.items()), fontsize=9)
        ax.legend(fontsize=7, title="-- fit P*, : v m^(l+1), -. uniform", title_fontsize=6)
    return _save(fig, out, "validity_vs_P")


def plot_collapse(df: pd.DataFrame, out: str, at: str = "last") -> list[str]:
    """Final validity against P / (v m**(l+1)) for every level and work directory."""
    points = analysis.collapse(df, at)
    fig = Figure(figsize=(5.5, 4.0))
    ax = fig.subplots()
    workdirs = sorted(points["workdir"].unique())
    markers = "osD^vP*X"
    lv = sorted(points["level"].unique())
    for i, workdir in enumerate(workdirs):
        for color, level in zip(_colors(len(lv)), lv):
            part = points[(points["workdir"] == workdir) & (points["level"] == level)]
            if part.empty:
                continue
            stats = part.groupby("x")["validity"].mean()
            ax.plot(stats.index, stats.values, marker=markers[i % len(markers)], ms=4, lw=0.8, color=color,
                    label=f"{_label(workdir)} (m={int(part['m'].iloc[0])}) l={level}")
    ax.axvline(1.0, color="gray", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("P / (v m^(l+1))")
    ax.set_ylabel(f"validity ({at} evaluation)")
    ax.set_title("collapse across levels and runs", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, out, "collapse")


def _panel_Ps(Ps: np.ndarray) -> np.ndarray:
    """At most MAX_TIME_PANELS values of P, spread evenly in log."""
    Ps = np.sort(np.unique(Ps))
    if len(Ps) <= MAX_TIME_PANELS:
        return Ps
    return Ps[np.unique(np.round(np.linspace(0, len(Ps) - 1, MAX_TIME_PANELS)).astype(int))]


def plot_time(df: pd.DataFrame, workdir: str, out: str, name: str) -> list[str]:
    """Validity per level and copy fraction vs training steps, one panel per P (mean over seeds)."""
    part = analysis.healthy(df[df["workdir"] == workdir])
    Ps = _panel_Ps(part["P"].to_numpy())
    lv = analysis.levels(part)
    fig = Figure(figsize=(3.2 * len(Ps), 3.2))
    axes = fig.subplots(1, len(Ps), squeeze=False, sharey=True)[0]
    for ax, P in zip(axes, Ps):
        curves = part[(part["P"] == P) & (part["step"] > 0)].groupby("step").mean(numeric_only=True)
        for color, level in zip(_colors(len(lv)), lv):
            ax.plot(curves.index, curves[f"validity_l{level}"], color=color, label=f"level {level}")
        if "copy" in curves:
            ax.plot(curves.index, curves["copy"], "k--", label="copies")
        ax.set_xscale("log")
        ax.set_title(f"P = {int(P)}", fontsize=9)
        ax.set_xlabel("training step")
    axes[0].set_ylabel("fraction of generated samples")
    axes[0].legend(fontsize=7)
    return _save(fig, out, name)


def plot_windows(df: pd.DataFrame, workdir: str, out: str, name: str) -> list[str]:
    """Final train (solid) and test (dashed) loss per diffusion-time window, one colour per P."""
    last = analysis.final(analysis.healthy(df[df["workdir"] == workdir]))
    train_RxW = analysis.window_losses(last, "train")
    test_RxW = analysis.window_losses(last, "test")
    fig = Figure(figsize=(5.0, 3.8))
    ax = fig.subplots()
    Ps = np.sort(last["P"].unique())
    for color, P in zip(_colors(len(Ps)), Ps):
        rows = (last["P"] == P).to_numpy()
        if train_RxW.shape[1]:
            ax.plot(train_RxW[rows].mean(0), "-", color=color, label=f"P={int(P)}")
        if test_RxW.shape[1]:
            ax.plot(test_RxW[rows].mean(0), "--", color=color)
    ax.set_xlabel("diffusion-time window (0 = least noise)")
    ax.set_ylabel("loss (solid train, dashed test)")
    ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, out, name)


# ----------------------------------------------------------------------------- tables

def _fmt(value) -> str:
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
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body]) + "\n"


def wall_time(config: dict, df: pd.DataFrame, workdir: str | None = None) -> tuple[float, str]:
    """(seconds, how it was found): provenance's record, else metric timestamps, else file times.

    The last fallback spans config.json's start date to the last write of metrics.jsonl, which
    overstates a run that was stopped and resumed later.
    """
    prov = config.get("provenance", {}) or {}
    for key in ("wall_time_s", "wall_time", "elapsed_s"):
        if isinstance(prov.get(key), (int, float)):
            return float(prov[key]), "provenance"
    for key in ("wall_time_s", "wall_time", "elapsed_s", "time_s"):
        if key in df and df[key].notna().any():
            return float(df[key].max()), f"metrics column {key}"
    for key in ("time", "timestamp", "unix_time"):
        if key in df and df[key].notna().any():
            numeric = pd.api.types.is_numeric_dtype(df[key])
            stamps = pd.to_datetime(df[key], unit="s") if numeric else pd.to_datetime(df[key])
            return float((stamps.max() - stamps.min()).total_seconds()), f"span of metrics column {key}"
    start = prov.get("date_utc")
    metrics = os.path.join(workdir, "metrics.jsonl") if workdir else None
    if start and metrics and os.path.exists(metrics):
        began = datetime.datetime.fromisoformat(start)
        if began.tzinfo is None:
            began = began.replace(tzinfo=datetime.timezone.utc)
        ended = datetime.datetime.fromtimestamp(os.path.getmtime(metrics), datetime.timezone.utc)
        return (ended - began).total_seconds(), "approx.: config.json date to the last metrics write"
    return float("nan"), "unknown"


def _commit(prov: dict) -> str:
    """Git revision from provenance ({'git': {'revision', 'dirty'}} or a plain string)."""
    git = prov.get("git", prov.get("git_revision", prov.get("commit")))
    if isinstance(git, dict):
        return f"{git.get('revision') or '?'}{' (dirty tree)' if git.get('dirty') else ''}"
    return str(git or "?")


def _machine(prov: dict) -> str:
    """Devices and host from provenance."""
    devices = prov.get("devices", prov.get("machine", "?"))
    if isinstance(devices, dict):
        devices = f"{devices.get('count', '?')} x {devices.get('kind', '?')} ({devices.get('platform', '?')})"
    host = prov.get("hostname")
    return f"{devices}" + (f" on {host}" if host else "")


def _provenance_lines(workdir: str, config: dict, df: pd.DataFrame) -> list[str]:
    """Bullet lines: commit, packages, machine, date and wall time of one work directory."""
    prov = config.get("provenance", {}) or {}
    cfg = config.get("config", {}) or {}
    packages = prov.get("packages") or prov.get("versions") or {}
    pkg = ", ".join(f"{k} {v}" for k, v in sorted(packages.items())) if isinstance(packages, dict) else str(packages)
    g, tr = cfg.get("grammar", {}), cfg.get("train", {})
    seconds, how = wall_time(config, df, workdir)
    return [
        f"### {_label(workdir)} (`{workdir}`)",
        f"- grammar: {', '.join(f'{k}={v}' for k, v in g.items())}",
        f"- process: {cfg.get('process', {}).get('name', '?')}, network: "
        f"{cfg.get('network', {}).get('name', '?')} width {cfg.get('network', {}).get('width', '?')}",
        f"- P grid: {cfg.get('data', {}).get('num_train', sorted(df['P'].unique().tolist()))}, "
        f"seeds: {tr.get('seeds', '?')}, batch {tr.get('batch_size', '?')}, lr {tr.get('lr', '?')}, "
        f"steps {tr.get('num_steps', '?')} / epochs {tr.get('num_epochs', '?')}",
        f"- commit: {_commit(prov)}",
        f"- packages: {pkg or '?'}; python {prov.get('python', '?')}",
        f"- machine: {_machine(prov)}",
        f"- date: {prov.get('date_utc', prov.get('date', '?'))}; wall time: {_fmt(seconds)} s ({how}); "
        f"models: {df['model'].nunique()}, last step: {int(df['step'].max())}",
    ]


def _mean_by_P(table: pd.DataFrame, value: str, columns: str | None = None) -> pd.DataFrame:
    """Mean of ``value`` over seeds per (workdir, P[, columns]) as a wide table."""
    index = [*analysis.curve_keys(table), "P"]
    agg = table.groupby(index + ([columns] if columns else []))[value].mean().reset_index()
    if columns:
        agg = agg.pivot_table(index=index, columns=columns, values=value, dropna=False).reset_index()
        agg.columns = [c if isinstance(c, str) else f"{columns} {c}" for c in agg.columns]
    agg["workdir"] = agg["workdir"].map(_label)
    return agg


def _other_evaluation(df: pd.DataFrame, method: str, at: str) -> list[str]:
    """The pooled thresholds at the other choice of evaluation, to show what memorization does."""
    other = "best" if at == "last" else "last"
    if other == "best" and "test_loss" not in df:
        return []
    summary = analysis.threshold_summary(analysis.thresholds(df, method, other))
    summary["workdir"] = summary["workdir"].map(_label)
    columns = [c for c in (*analysis.curve_keys(summary), "level", "P_star", "censored", "P_star_mean",
                           "P_star_std") if c in summary]
    return [f"The same fit at each model's {other} evaluation ('best' = lowest test loss, i.e. early "
            "stopping; small-P models that copy their training set look valid at 'last'):\n",
            markdown_table(summary[columns])]


def _creativity_table(creative: pd.DataFrame) -> str:
    """Mean over seeds per P of valid, copy, novel valid and novel share, beside P / P_max."""
    keys = [*analysis.curve_keys(creative), "P"]
    table = creative.groupby(keys)[["valid", "copy", "novel_valid", "novel_share"]].mean().reset_index()
    if set(analysis.GRAMMAR_KEYS) <= set(creative):
        grammar = creative.groupby(keys)[list(analysis.GRAMMAR_KEYS)].first().reset_index(drop=True)
        table["copy_if_perfect"] = [
            theory.expected_copy_fraction(int(P), theory.p_max(*(int(g[k]) for k in ("v", "n", "m", "s", "L"))))
            for P, (_, g) in zip(table["P"], grammar.iterrows())]
    table["workdir"] = table["workdir"].map(_label)
    return markdown_table(table)


def write_markdown(workdirs: Sequence[str], df: pd.DataFrame, out: str, figures: list[str],
                   method: str = "sigmoid", at: str = "last") -> str:
    """``report.md``: provenance, thresholds vs theory, ratios, c, learning times, copies, creativity."""
    table = analysis.thresholds(df, method, at)
    summary = analysis.threshold_summary(table)
    fit = analysis.fit_constant(summary) if {"v", "m"} <= set(summary) else {}
    summary = summary.assign(
        theory=[analysis.theory_threshold(int(r.v), int(r.m), int(r.level)) for r in summary.itertuples()]
        if {"v", "m"} <= set(summary) else np.nan,
    )
    if {"v", "m"} <= set(summary):
        summary["P_star / (v m^(l+1))"] = summary["P_star"] / analysis.context_size(
            summary["v"], summary["m"], summary["level"])
    shown = summary.drop(columns=[c for c in ("n", "s", "L") if c in summary])
    shown["workdir"] = shown["workdir"].map(_label)
    ratios = analysis.ratios(table)
    ratios["workdir"] = ratios["workdir"].map(_label)
    times = analysis.learning_times(df)
    onset = analysis.memorization_onset(df) if "copy" in df else pd.DataFrame()
    creative = analysis.creativity(df, at) if {"valid", "copy", "novel_valid"} <= set(df) else pd.DataFrame()
    diverged = analysis.diverged_models(df)
    lines = [f"# rhm_jax report\n", f"Written {datetime.datetime.now().isoformat(timespec='seconds')} "
             f"from {len(workdirs)} work director{'y' if len(workdirs) == 1 else 'ies'}.\n", "## Runs\n"]
    for workdir in workdirs:
        lines += _provenance_lines(workdir, analysis.read_config(workdir), df[df["workdir"] == str(workdir)])
        lines.append("")
    lines += [
        f"## Thresholds P*_l (validity = 1/2 at each model's {at} evaluation; {method} fit in log P)\n",
        "`P_star`: fit pooled over seeds; `P_star_mean`/`P_star_std`: over per-seed fits; `censored`: "
        "'above' when no P reaches 1/2 (P* > largest P), 'below' when all do. `theory`: v m^(l+1) "
        "(rhm_jax.theory.sample_complexity).\n",
        markdown_table(shown),
        *_other_evaluation(df, method, at),
        "## Ratios P*_(l+1) / P*_l (theory: m)\n", markdown_table(ratios),
        "## Constant c in P*_l = c v m^(l+1) (least squares in log10, all runs and levels)\n",
        f"c = {_fmt(fit.get('c', np.nan))}; spread of log10 rescaled thresholds = "
        f"{_fmt(fit.get('log10_spread', np.nan))} (collapse quality: 0 is perfect) over "
        f"{fit.get('num', 0)} thresholds.\n",
        "## Learning time per level (first step with validity >= 1/2, log-interpolated; mean over seeds)\n",
        markdown_table(_mean_by_P(times, "step", "level")),
        "The same in epochs (the paper's unit for the time experiment):\n",
        markdown_table(_mean_by_P(times, "epoch", "level")),
        "## Memorization onset (first step with copy fraction >= 0.1) and final copies\n",
        markdown_table(pd.concat([_mean_by_P(onset, "step"), _mean_by_P(onset, "final_copy")[["final_copy"]]],
                                 axis=1)) if len(onset) else "_(no copy column)_\n",
        f"## Creativity at the {at} evaluation (novel_share = novel valid / valid)\n",
        "`copy_if_perfect`: copies of a generator uniform over all valid sequences, P / P_max "
        "(rhm_jax.theory.expected_copy_fraction).\n",
        _creativity_table(creative) if len(creative) else "_(no valid/copy columns)_\n",
        "## Diverged models (excluded from every fit)\n", markdown_table(diverged),
        "## Figures\n", *[f"- [{os.path.basename(p)}]({os.path.basename(p)})" for p in figures if p.endswith(".png")],
    ]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def make_report(workdirs: Sequence[str], out: str | None = None, method: str = "sigmoid",
                at: str = "last") -> dict[str, list[str]]:
    """Load the work directories, write every figure and ``report.md`` into ``out``; return paths.

    ``at``: which evaluation of each model counts, 'last' or 'best' (lowest test loss).
    """
    workdirs = [str(w) for w in ([workdirs] if isinstance(workdirs, (str, os.PathLike)) else workdirs)]
    if not workdirs:
        raise ValueError("workdirs must name at least one work directory")
    out = out or os.path.join(workdirs[0], "report")
    os.makedirs(out, exist_ok=True)
    df = analysis.load(workdirs)
    summary = analysis.threshold_summary(analysis.thresholds(df, method, at))
    figures = plot_validity_vs_p(df, summary, out, at)
    if {"v", "m"} <= set(df):
        figures += plot_collapse(df, out, at)
    many = len(workdirs) > 1
    for i, workdir in enumerate(workdirs):
        suffix = f"_{i}_{_label(workdir)}" if many else ""
        figures += plot_time(df, workdir, out, f"time{suffix}")
        figures += plot_windows(df, workdir, out, f"windows{suffix}")
    report = write_markdown(workdirs, df, out, figures, method, at)
    return dict(figures=figures, report=[report])
