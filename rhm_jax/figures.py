"""Figures (PNG and PDF) of a run: validity vs P, collapse, time courses, windows, coherence, C(t).

Figures use ``matplotlib.figure.Figure`` directly (the Agg canvas; no pyplot, no global backend
state), so they can be written from any process, with or without a display. Validity is drawn in
the normalized reading (``analysis.NORMALIZED``) unless a panel says 'raw'; points are the mean
over seeds and shaded bands their range (min to max).
"""
from __future__ import annotations

import os
import textwrap

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter, NullLocator, ScalarFormatter

from rhm_jax import analysis, dynamics, thresholds

FORMATS = ("png", "pdf")
MAX_TIME_PANELS = 6
MAX_TICKS = 8  # labelled values on a P axis
NORM_LABEL = "level-l nodes valid, above chance\n(V_l - V_l^unif) / (1 - V_l^unif)"
TIME_AXES = {"epoch": "epochs (passes over the P training rows)", "step": "training steps"}


def label(workdir: str) -> str:
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


def _figure(width: float, height: float) -> Figure:
    """A figure whose layout keeps titles, labels and legends apart (constrained layout)."""
    return Figure(figsize=(width, height), layout="constrained")


def _p_axis(ax, Ps) -> None:
    """Log x axis labelled at the grid's P values (at most MAX_TICKS, spread in log), no minor labels:
    matplotlib labels minor ticks when P spans about a decade, and they collide."""
    Ps = np.sort(np.unique(np.asarray(Ps, float)))
    ax.set_xscale("log")
    if len(Ps) > MAX_TICKS:
        Ps = Ps[np.unique(np.round(np.linspace(0, len(Ps) - 1, MAX_TICKS)).astype(int))]
    ax.xaxis.set_major_locator(FixedLocator(Ps))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="x", labelsize=7)


def _log_axis(axis) -> None:
    """A log axis with labels at 1, 2, 5 x 10^k only (no minor labels to collide)."""
    axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    axis.set_minor_formatter(NullFormatter())


def _pooled(part: pd.DataFrame) -> str:
    """What a curve's points average over: 'mean over grammar_seed 0..3 (band: range)', or one model."""
    if not analysis.replicates(part):
        return "mean over seeds, band = their range"
    seeds = [f"{c} {_values(part[c])}" for c in analysis.replicates(part) if part[c].nunique() > 1]
    return f"mean over {', '.join(seeds)}, band = their range" if seeds else "one model per P"


def _values(column: pd.Series) -> str:
    """'0..3' for consecutive integers, else the values listed."""
    values = sorted(column.dropna().unique())
    if len(values) > 2 and values == list(range(int(values[0]), int(values[-1]) + 1)):
        return f"{int(values[0])}..{int(values[-1])}"
    return ", ".join(str(v) for v in values)


def _colors(num: int) -> list:
    """``num`` distinguishable colours from the viridis map."""
    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.85, max(num, 1))]


def _grammar(df: pd.DataFrame) -> dict:
    """Grammar parameters of a one-workdir table, as ints."""
    return {k: int(df[k].iloc[0]) for k in analysis.GRAMMAR_KEYS if k in df and pd.notna(df[k].iloc[0])}


def _spread(ax, table: pd.DataFrame, x: str, y: str, color, label: str | None = None, **style) -> None:
    """Mean of ``y`` over seeds per ``x`` (line and markers) and its range (shaded band)."""
    stats = table.groupby(x)[y].agg(["mean", "min", "max"]).reset_index().dropna(subset=["mean"])
    if stats.empty:
        return
    ax.plot(stats[x], stats["mean"], color=color, label=label, **{"marker": "o", "ms": 3, "lw": 1, **style})
    if (stats["max"] > stats["min"]).any():
        ax.fill_between(stats[x], stats["min"], stats["max"], color=color, alpha=0.2, lw=0)


def _key(ax, level_colors: dict, styles: list[tuple[str, dict]], **kwargs) -> None:
    """Legend: one colour per level, then one grey proxy per line style (fit, P*, theory, ...)."""
    handles = [Line2D([], [], color=c, marker="o", ms=3, lw=1, label=f"level {l}") for l, c in level_colors.items()]
    handles += [Line2D([], [], label=text, **{"color": "0.35", **style}) for text, style in styles]
    ax.legend(handles=handles, fontsize=6.5, **kwargs)


def plot_validity_vs_p(df: pd.DataFrame, summary: pd.DataFrame, out: str, at: str = "best",
                       samples: str = "all", extra: pd.DataFrame | None = None,
                       method: str = thresholds.DEFAULT_METHOD) -> list[str]:
    """Per curve: normalized validity vs P with the estimator's curve (``method``), P* with its
    interval (shaded; a bound dash-dotted) and theory; raw validity with chance and the raw value
    where the normalized reading is 1/2. ``extra``: other thresholds (label, level, P_star[,
    workdir]) drawn as triangles at 1/2, e.g. the clustering learner's. No figure for one-P runs."""
    long = analysis.final_validity(df, at, "normalized", samples)
    keys = analysis.curve_keys(long)  # a panel per work directory, or per swept value within one
    curves = [(values, part) for values, part in long.groupby(keys, dropna=False) if part["P"].nunique() > 1]
    if not curves:
        return []
    fig = _figure(10.0, 4.4 * len(curves))
    axes = fig.subplots(len(curves), 2, squeeze=False)
    markers = "v^<>sD"
    for (ax, ax_raw), (values, part) in zip(axes, curves):
        workdir = values[0]
        mine = summary
        for key, value in zip(keys, values):
            mine = mine[mine[key] == value] if key in mine else mine
        g = _grammar(part)
        lv = sorted(part["level"].unique())
        colors = dict(zip(lv, _colors(len(lv))))
        for level, color in colors.items():
            points = part[part["level"] == level]
            _spread(ax, points, "P", "validity", color, ls="none")
            _spread(ax_raw, points, "P", "raw", color, ls="none")
            row = mine[mine["level"] == level]
            p_star = float(row["P_star"].iloc[0]) if len(row) else np.nan
            bound = bool(row["bound"].iloc[0]) if len(row) and "bound" in row else False
            if np.isfinite(p_star):
                _estimator_curve(ax, points, method, color)
                ls = "-." if bound else "--"
                ax.axvline(p_star, color=color, ls=ls, lw=0.9)
                ax_raw.axvline(p_star, color=color, ls=ls, lw=0.9)
                lo, hi = (float(row[c].iloc[0]) if c in row else np.nan for c in ("P_star_lo", "P_star_hi"))
                if not bound and np.isfinite(lo):
                    ax.axvspan(lo, min(hi, points["P"].max()), color=color, alpha=0.12, lw=0)
            if "v" in g and "m" in g:
                ax.axvline(thresholds.theory_threshold(g["v"], g["m"], level), color=color, ls=":", lw=1.3)
            base = float(analysis.baseline(points.iloc[:1], level)[0])
            ax_raw.axhline(base, color=color, ls="-.", lw=0.8)
            ax_raw.axhline(base + (1 - base) / 2, color=color, ls=(0, (1, 3)), lw=0.8)
            if extra is not None and len(extra):
                shown = extra[(extra["level"] == level) & (extra.get("workdir", workdir) == workdir)]
                for key, value in zip(keys[1:], values[1:]):  # the curve's swept values (m, ...) where given
                    shown = shown[shown[key] == value] if key in shown else shown
                for i, (name, rows) in enumerate(shown.groupby("label")):
                    ax.plot(rows["P_star"], np.full(len(rows), 0.5), markers[i % len(markers)], color=color,
                            mec="k", ms=7, ls="none")
        ax.axhline(0.5, color="0.6", lw=0.6)
        styles = [(thresholds.METHODS[method].split(" (")[0], dict(ls="-")),
                  ("P*: normalized = 1/2 (band: 95% interval)", dict(ls="--")),
                  ("P* a bound (still rising): <= P", dict(ls="-.")), ("theory v m^(l+1)", dict(ls=":"))]
        if extra is not None and len(extra):
            styles += [(f"{name}: P*", dict(marker=markers[i % len(markers)], ls="none", mec="k"))
                       for i, name in enumerate(sorted(extra["label"].unique()))]
        # below each panel: with few P values no corner of the panel is free of lines (issue 26's
        # online figure had the legends over level 1's points and the P* lines)
        below = dict(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
        _key(ax, colors, styles, **below)
        _key(ax_raw, colors, [("chance V_l^unif (uniform tokens)", dict(ls="-.")),
                              ("normalized = 1/2", dict(ls=(0, (1, 3)))), ("P* (normalized)", dict(ls="--"))], **below)
        ax.set_ylabel(NORM_LABEL, fontsize=8)
        ax_raw.set_ylabel("level-l nodes valid (raw fraction)", fontsize=8)
        which = "non-copied samples" if samples == "noncopy" else "all samples"
        title = "\n".join(textwrap.wrap(f"{analysis.curve_label(keys, values)}: " + ", ".join(f"{k}={v}" for k, v in g.items())
                                         + f"; {at} evaluation, {which}; {_pooled(part[part['level'] == lv[0]])}", 70))
        ax.set_title(title + "\nread above chance", fontsize=8)
        ax_raw.set_title(title + "\nraw, with chance and the normalized 1/2", fontsize=8)
        for a in (ax, ax_raw):
            _p_axis(a, part["P"])
            a.set_ylim(-0.1 if a is ax else -0.03, 1.03)
            a.set_xlabel("training-set size P")
    return _save(fig, out, "validity_vs_P")


def _estimator_curve(ax, points: pd.DataFrame, method: str, color) -> None:
    """The curve the threshold is read on: the isotonic fit of the seeds' mean per P, or the logistic."""
    if method == "sigmoid":
        grid = np.logspace(np.log10(points["P"].min()), np.log10(points["P"].max()), 200)
        center, slope = thresholds.fit_sigmoid(np.log10(points["P"]), points["validity"])
        ax.plot(grid, thresholds.sigmoid(np.log10(grid), center, slope), "-", color=color, lw=1)
        return
    finite = points[np.isfinite(points["validity"].to_numpy(float))].sort_values("P", kind="stable")
    fit = analysis.isotonic(finite["validity"].to_numpy(float))
    curve = pd.DataFrame(dict(P=finite["P"].to_numpy(float), fit=fit)).groupby("P")["fit"].mean()
    ax.plot(curve.index, curve.to_numpy(), "-", color=color, lw=1)


def plot_collapse(df: pd.DataFrame, out: str, at: str = "best") -> list[str]:
    """Normalized validity against P / (v m**(l+1)) for every level (colour) and curve (marker: a work
    directory, or a swept value within one)."""
    points = thresholds.collapse(df, at)
    fig = _figure(6.0, 4.4)
    ax = fig.subplots()
    markers = "osD^vP*X"
    lv = sorted(points["level"].unique())
    colors = dict(zip(lv, _colors(len(lv))))
    keys = analysis.curve_keys(points)  # a marker per work directory, or per swept value within one
    curves = []
    for i, (values, curve) in enumerate(points.groupby(keys, dropna=False)):
        name = analysis.curve_label(keys, (label(values[0]), *values[1:]))
        if "m" not in keys and "m" in curve:
            name += f" (m={int(curve['m'].iloc[0])})"
        curves.append((name, dict(marker=markers[i % len(markers)], ls="none", mfc="none")))
        for level, color in colors.items():
            part = curve[curve["level"] == level]
            if len(part):
                _spread(ax, part, "x", "validity", color, marker=markers[i % len(markers)])
    ax.axvline(1.0, color="gray", ls=":", lw=1)
    ax.axhline(0.5, color="0.6", lw=0.6)
    ax.set_xscale("log")
    _log_axis(ax.xaxis)
    ax.set_xlabel("P / (v m^(l+1))")
    ax.set_ylabel(NORM_LABEL, fontsize=8)
    ax.set_title(f"collapse across levels and curves ({at} evaluation)\n{_pooled(points[points['level'] == lv[0]])}",
                 fontsize=9)
    _key(ax, colors, curves, loc="upper left", framealpha=0.6)
    return _save(fig, out, "collapse")


def _panel_Ps(Ps: np.ndarray) -> np.ndarray:
    """At most MAX_TIME_PANELS values of P, spread evenly in log."""
    Ps = np.sort(np.unique(Ps))
    if len(Ps) <= MAX_TIME_PANELS:
        return Ps
    return Ps[np.unique(np.round(np.linspace(0, len(Ps) - 1, MAX_TIME_PANELS)).astype(int))]


def _time_column(part: pd.DataFrame, axis: str) -> str:
    """The time column for ``axis`` ('epoch' or 'step'), checked."""
    if axis not in TIME_AXES:
        raise ValueError(f"time axis must be one of {tuple(TIME_AXES)}, got {axis!r}")
    if axis not in part:
        raise ValueError(f"metrics have no {axis!r} column for the time axis")
    return axis


def plot_time(df: pd.DataFrame, workdir: str, out: str, name: str, axis: str = "epoch",
              title: str | None = None) -> list[str]:
    """Normalized validity per level and copies vs training time, one panel per P (mean, seed range)."""
    part = analysis.readout(analysis.healthy(df[df["workdir"] == workdir]))
    x = _time_column(part, axis)
    copies = analysis.copies_column(part)
    Ps = _panel_Ps(part["P"].to_numpy())
    lv = analysis.levels(part)
    fig = _figure(max(3.2 * len(Ps), 5.0), 3.6)
    axes = fig.subplots(1, len(Ps), squeeze=False, sharey=True)[0]
    colors = dict(zip(lv, _colors(len(lv))))
    for ax, P in zip(axes, Ps):
        rows = part[(part["P"] == P) & (part["step"] > 0)]
        for level, color in colors.items():
            _spread(ax, rows, x, f"validity_l{level}", color, marker=None)
        if copies:
            _spread(ax, rows, x, copies, "k", marker=None, ls="--")
        ax.axhline(0.5, color="0.6", lw=0.6)
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
        ax.set_title(f"P = {int(P)}", fontsize=9)
        ax.set_xlabel(TIME_AXES[axis], fontsize=8)
    axes[0].set_ylabel(NORM_LABEL, fontsize=8)
    _key(axes[0], colors, [("copies (fraction of samples)", dict(ls="--", color="k"))] if copies else [])
    fig.suptitle(f"{title or label(workdir)}: {_pooled(part)}", fontsize=9)
    return _save(fig, out, name)


def plot_windows(df: pd.DataFrame, workdir: str, out: str, name: str, at: str = "last",
                 title: str | None = None) -> list[str]:
    """Train (solid) and test (dashed) loss per diffusion-time window at each model's ``at``
    evaluation, one colour per P."""
    last = analysis.final(analysis.healthy(df[df["workdir"] == workdir]), at)
    train_RxW = analysis.window_losses(last, "train")
    test_RxW = analysis.window_losses(last, "test")
    fig = _figure(5.5, 4.2)
    ax = fig.subplots()
    Ps = np.sort(last["P"].unique())
    for color, P in zip(_colors(len(Ps)), Ps):
        rows = (last["P"] == P).to_numpy()
        if train_RxW.shape[1]:
            ax.plot(train_RxW[rows].mean(0), "-", color=color, label=f"P={int(P)}")
        if test_RxW.shape[1]:
            ax.plot(test_RxW[rows].mean(0), "--", color=color, label=None if train_RxW.shape[1] else f"P={int(P)}")
    ax.set_xlabel("diffusion-time window (0 = least noise)")
    ax.set_ylabel("loss per window (solid train, dashed test)")
    ax.set_yscale("log")
    ax.set_title(f"{title or label(workdir)}: loss per diffusion-time window, {at} evaluation\n{_pooled(last)}",
                 fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, out, name)


def plot_coherence(df: pd.DataFrame, workdir: str, out: str, name: str, axis: str = "epoch",
                   title: str | None = None) -> list[str]:
    """Coherence length xi = s**l* (solid) and, where C(t) is logged, xi_C from C(t) (dashed,
    ``dynamics.CORRELATION_LENGTH``): against P at the best and last evaluations with the theory's
    (P / (v m))**(log s / log m), and against training time per P."""
    part = analysis.healthy(df[df["workdir"] == workdir])
    xi = dynamics.coherence_length(part)
    xi_C = dynamics.correlation_length(part)
    g = _grammar(part)
    many_P = part["P"].nunique() > 1
    fig = _figure(10.0 if many_P else 5.5, 4.0)
    axes = fig.subplots(1, 2 if many_P else 1, squeeze=False)[0]
    if many_P:
        ax = axes[0]
        for at, color in (("last", "C0"), ("best", "C1")):
            if at == "best" and not analysis.can_pick_best(part):
                continue
            chosen = analysis.final(part, at)
            _spread(ax, dynamics.coherence_length(chosen), "P", "xi", color, label=f"xi = s^l*, {at} evaluation")
            if len(xi_C):
                _spread(ax, dynamics.correlation_length(chosen), "P", "xi_C", color, ls="--", marker="s",
                        label=f"xi_C from C(t), {at} evaluation")
        grid = np.logspace(np.log10(part["P"].min()), np.log10(part["P"].max()), 100)
        ax.plot(grid, dynamics.theory_coherence_length(grid, g["v"], g["m"], g["s"]), "k:",
                label="theory (P / (v m))^(log s / log m)")
        _p_axis(ax, part["P"])
        ax.set_yscale("log", base=g["s"])
        ax.set_xlabel("training-set size P")
        ax.set_ylabel("coherence length xi = s^l* (tokens)", fontsize=8)
        ax.legend(fontsize=7)
    ax = axes[-1]
    x = _time_column(xi, axis)
    Ps = np.sort(xi["P"].unique())
    for color, P in zip(_colors(len(Ps)), Ps):
        _spread(ax, xi[(xi["P"] == P) & (xi["step"] > 0)], x, "xi", color, marker=None, label=f"P={int(P)}")
        if len(xi_C):
            _spread(ax, xi_C[(xi_C["P"] == P) & (xi_C["step"] > 0)], x, "xi_C", color, marker=None, ls="--")
    ax.set_xscale("log")
    _log_axis(ax.xaxis)
    ax.set_yscale("log", base=g["s"])
    ax.set_xlabel(TIME_AXES[axis], fontsize=8)
    ax.set_ylabel("coherence length xi = s^l* (tokens)", fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    fig.suptitle(f"{title or label(workdir)}: {_pooled(part)}\nl* = highest level with normalized validity >= 1/2"
                 + ("; dashed: xi_C from C(t)" if len(xi_C) else ""), fontsize=9)
    return _save(fig, out, name)


def plot_correlation(df: pd.DataFrame, workdir: str, out: str, name: str, at: str = "best",
                     title: str | None = None) -> list[str]:
    """C(t) of generated samples (solid, with +-1 standard error where logged) and of the grammar's own
    data (dashed; the training rows where that is not logged) per P, at one evaluation."""
    corr = dynamics.correlations(analysis.healthy(df[df["workdir"] == workdir]), at)
    if corr.empty:
        return []
    fig = _figure(5.5, 4.2)
    ax = fig.subplots()
    Ps = np.sort(corr["P"].unique())
    reference = "data" if corr["data"].notna().any() else "train"
    for color, P in zip(_colors(len(Ps)), Ps):
        rows = corr[corr["P"] == P]
        _spread(ax, rows, "t", "samples", color, label=f"P={int(P)}")
        if rows["se"].notna().any():
            mean = rows.groupby("t")[["samples", "se"]].mean()
            ax.errorbar(mean.index, mean["samples"], yerr=mean["se"], color=color, ls="none", lw=0.8, capsize=2)
        if reference == "train" or P == Ps[0]:  # the grammar's own C(t) is the same for every P
            _spread(ax, rows, "t", reference, "k" if reference == "data" else color, marker=None, ls="--",
                    label="grammar's own C(t)" if reference == "data" else None)
    ax.set_xscale("log", base=2)
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xlabel("distance t between positions")
    ax.set_ylabel("C(t): mean squared connected correlation", fontsize=8)
    which = "the grammar's data" if reference == "data" else "training rows"
    ax.set_title(f"{title or label(workdir)}: samples (solid) vs {which} (dashed), {at} evaluation\n"
                 f"{_pooled(corr)}", fontsize=8)
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, out, name)
