"""The report's section on the online regime (P = 0): its tables and figures (``timescales``).

Figures use ``matplotlib.figure.Figure`` directly, like ``rhm_jax.figures``: validity per level
against steps (log axis), xi(t) against steps (log-log, with the theory's slope log s / log m), and
the test loss of the finite-P models beside the online curve with their departures and
memorization onsets. Lines are the mean over models, bands their range.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from rhm_jax import analysis, dynamics, figures, tables, timescales

DEFINITION = (
    "Online models (`P = online`, `data.num_train = 0`) draw a fresh batch from their grammar at every "
    "step, keyed by (data seed, step): they never see a sequence twice (up to chance repeats when batch x "
    "steps nears P_max), so they have no training set, no copies and no train-set metrics (null in their "
    "rows). `t_l`: the first step where normalized validity at level l crosses 1/2 (interpolated in log "
    "step), the geometric mean over the models that reached it (`reached`), with a 95 % bootstrap interval "
    "over models; `samples` = batch_size x t_l, the fresh sequences seen; `c` = samples / (v m^(l+1)). The "
    "theory: level l is learned once the samples seen reach P*_l ~ c v m^(l+1) (the same c at every level), "
    "so t_(l+1) / t_l ~ m, and since xi = s^l at t_l, xi ~ t^(log s / log m).")


def _curves(df: pd.DataFrame):
    keys_ = timescales.curve_keys(df)
    for values, part in df.groupby(keys_, dropna=False, sort=False):
        yield analysis.curve_label(keys_, values if isinstance(values, tuple) else (values,)), part


def _levels_panel(ax, part: pd.DataFrame, times: pd.DataFrame) -> None:
    read = analysis.readout(analysis.healthy(part)).sort_values("step")
    read = read[read["step"] > 0]
    levels = analysis.levels(part)
    for level, color in zip(levels, figures._colors(len(levels))):
        figures._spread(ax, read, "step", f"validity_l{level}", color, label=f"level {level}", marker=None)
        t = times[times["level"] == level]["t"]
        if len(t) and np.isfinite(t.iloc[0]):
            ax.axvline(t.iloc[0], color=color, ls=":", lw=1)
    ax.axhline(0.5, color="0.6", lw=0.6)
    ax.set(xscale="log", xlabel="training steps (online: x batch = fresh samples seen)", ylabel=figures.NORM_LABEL)
    ax.legend(fontsize=6.5)


def _xi_panel(ax, xi: pd.DataFrame, times: pd.DataFrame) -> None:
    xi = xi[xi["step"] > 0]
    figures._spread(ax, xi, "step", "xi", "C0", label="xi = s^l* (validity)", marker=None)
    if "xi_C" in xi:
        figures._spread(ax, xi, "step", "xi_C", "C1", label="xi_C (C(t))", marker=None, ls="--")
    grammar = {k: float(xi[k].iloc[0]) for k in ("s", "m") if k in xi}
    first = times[times["level"] == times["level"].min()]["t"] if len(times) else pd.Series(dtype=float)
    if {"s", "m"} <= set(grammar) and len(first) and np.isfinite(first.iloc[0]):
        slope = np.log(grammar["s"]) / np.log(grammar["m"])
        grid = np.logspace(np.log10(first.iloc[0]), np.log10(xi["step"].max()), 50)
        ax.plot(grid, grammar["s"] * (grid / first.iloc[0]) ** slope, color="0.3", lw=1, ls="-.",
                label=f"theory: slope log s / log m = {slope:.2f}")
    ax.set(xscale="log", yscale="log", xlabel="training steps", ylabel="coherence length (tokens)")
    ax.legend(fontsize=6.5)


def plot_online(df: pd.DataFrame, out: str) -> list[str]:
    """Per curve: validity per level vs steps, and xi vs steps (log-log, theory slope), online models only."""
    paths = []
    on = timescales.online(df)
    curves = list(_curves(on))
    for i, (name, part) in enumerate(curves):
        times = timescales.time_table(timescales.learning_times(part))
        fig = Figure(figsize=(9.5, 3.6))
        axes = fig.subplots(1, 2)
        _levels_panel(axes[0], part, times)
        _xi_panel(axes[1], timescales.coherence(part), times)
        fig.suptitle(f"online: {name}", fontsize=9)
        paths += figures._save(fig, out, f"online_time_{i}" if len(curves) > 1 else "online_time")
    return paths


def plot_departures(df: pd.DataFrame, out: str, departures: pd.DataFrame) -> list[str]:
    """Per curve with finite-P models: test loss vs steps, online band and each P, departures marked."""
    paths = []
    curves = [(name, part) for name, part in _curves(analysis.healthy(df)) if (part["P"] != 0).any()
              and (part["P"] == 0).any()]
    for i, (name, part) in enumerate(curves):
        fig = Figure(figsize=(5.5, 3.8))
        ax = fig.subplots()
        part = part[part["step"] > 0]
        figures._spread(ax, timescales.online(part), "step", "test_loss", "k", label="online", marker=None)
        Ps = sorted(part.loc[part["P"] != 0, "P"].unique())
        for P, color in zip(Ps, figures._colors(len(Ps))):
            figures._spread(ax, part[part["P"] == P], "step", "test_loss", color, label=f"P={int(P)}", marker=None)
            mine = departures[(departures["P"] == P) & departures["model"].isin(part["model"])] if len(departures) \
                else departures  # this curve's models only: another grammar's sweep has the same P
            for _, row in mine.iterrows():
                own = part[part["model"] == row["model"]].sort_values("step")
                for column, marker in (("departure", "v"), ("onset", "x")):
                    if np.isfinite(row[column]) and row[column] > 0:  # on the model's own curve
                        y = np.interp(np.log(row[column]), np.log(own["step"]), own["test_loss"])
                        ax.plot([row[column]], [y], marker=marker, color=color, ms=6)
        ax.set(xscale="log", xlabel="training steps", ylabel="test loss")
        ax.set_title(f"{name}: v departure from the online curve, x copies >= 0.1", fontsize=8)
        ax.legend(fontsize=6.5)
        paths += figures._save(fig, out, f"departure_{i}" if len(curves) > 1 else "departure")
    return paths


def _label(table: pd.DataFrame) -> pd.DataFrame:
    return table.assign(workdir=table["workdir"].map(figures.label)) if "workdir" in table else table


def section(df: pd.DataFrame, out: str) -> tuple[list[str], list[str]]:
    """(markdown lines, figure paths) of the online models of ``df`` and the finite-P models beside them."""
    on = timescales.online(df)
    if on.empty:
        return [], []
    times = timescales.learning_times(on)
    xi = timescales.coherence(on)
    departures = timescales.departures(df)
    paths = plot_online(df, out) + plot_departures(df, out, departures)
    lines = tables.section("Online regime: learning times t_l", DEFINITION,
                           tables.markdown_table(_label(timescales.time_table(times))))
    lines += tables.section(
        "Online regime: t_(l+1) / t_l against m",
        "Ratio of the geometric means of consecutive learning times, 95 % bootstrap interval over models "
        "(a level not reached by every model is read on those that did: see `reached` above).",
        tables.markdown_table(_label(timescales.ratios(times))))
    lines += tables.section(
        "Online regime: coherence length in time",
        "Means over models at steps that are powers of two: `xi` = s^l* (l* the highest level whose "
        "normalized validity reaches 1/2), `xi_C` from C(t) (" + dynamics.CORRELATION_LENGTH + ")",
        tables.markdown_table(_label(timescales.xi_table(xi))))
    lines += tables.section(
        "Online regime: power law of the coherence length",
        "From the learning times: `slope` of log t_l against l over the levels every model reached "
        "(`levels`), `exponent` = log s / slope (xi ~ t^exponent), 95 % bootstrap intervals over models, "
        "`theory` = log s / log m. Directly: the log-log least-squares slope of xi_C (from C(t), "
        "`dynamics.CORRELATION_LENGTH`) against steps over evaluations where 1 < xi_C and xi_C is not at "
        "the largest resolved distance.",
        tables.markdown_table(_label(timescales.exponent(times))) + "\n\n"
        + tables.markdown_table(_label(timescales.xi_fit(xi, "xi_C"))))
    if len(departures):
        lines += tables.section(
            "Offline against online: where a finite-P model leaves the online curve",
            f"`departure`: {timescales.DEPARTURE}; in samples seen (`departure_samples`) and epochs of its P. "
            "`onset`: its memorization onset, the first step with copies >= 0.1 (`dynamics.memorization_onset`). "
            "NaN: not within its budget (`last_step`).",
            tables.markdown_table(_label(departures)))
    return lines, paths


def write_alone(workdirs: list[str], out: str, lines: list[str], paths: list[str]) -> str:
    """``report.md`` of runs whose models all trained online: provenance, this section, figures."""
    df = analysis.load(workdirs)
    head = ["# rhm_jax report\n", "Every model trained online (P = 0): no threshold in P can be read.\n", "## Runs\n"]
    for workdir in workdirs:
        head += tables.provenance_lines(workdir, analysis.read_config(workdir), df[df["workdir"] == str(workdir)])
        head.append("")
    body = ["## Figures\n", *[f"- [{os.path.basename(p)}]({os.path.basename(p)})" for p in paths if p.endswith(".png")]]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(head + lines + body) + "\n")
    return path
