"""``report.md`` and its figures for one or more work directories.

Every number is read on normalized validity, ``analysis.NORMALIZED``, unless its table says
'raw'; the markdown writes each definition next to the numbers it defines.
"""
from __future__ import annotations

import datetime
import os
from typing import Sequence

import numpy as np
import pandas as pd

from rhm_jax import analysis, clustering, dynamics, figures, online_report, tables, thresholds

def write_markdown(workdirs: Sequence[str], df: pd.DataFrame, out: str, paths: list[str],
                   method: str = thresholds.DEFAULT_METHOD, at: str = "best",
                   extra: pd.DataFrame | None = None, table: pd.DataFrame | None = None,
                   online: Sequence[str] = (), unread: Sequence[str] = ()) -> str:
    """``report.md``: provenance, normalized thresholds vs theory, readings compared, ratios, c,
    budgets, learning times, coherence length, C(t), copies, creativity, diverged models.
    ``unread``: curves with no healthy model, one line each."""
    if not len(analysis.healthy(df)):
        return _write_flagged_only(workdirs, df, out)
    table = thresholds.table(df, method, at) if table is None else table
    summary = thresholds.summary(table)
    # copies rise too when a small-P model memorizes: learning is read on the non-copied samples
    rising_samples = "noncopy" if "validity_l1_noncopy" in df else "all"
    rising = dynamics.still_rising(df, samples=rising_samples)
    fit = thresholds.fit_constant(summary) if {"v", "m"} <= set(summary) else {}
    ratios = thresholds.ratios(table)
    ratios["workdir"] = ratios["workdir"].map(figures.label)
    times = dynamics.learning_times(df)
    copies = analysis.copies_column(df)
    onset = dynamics.memorization_onset(df) if copies else pd.DataFrame()
    order = dynamics.time_order(df) if analysis.can_pick_best(df) else pd.DataFrame()
    creative = analysis.creativity(df, at) if copies and {"valid", "novel_valid"} <= set(df) else pd.DataFrame()
    flagged = rising[rising["rising"]].assign(workdir=lambda d: d["workdir"].map(figures.label))
    corr = dynamics.correlations(df, at)
    fit_text = f"{thresholds.METHODS[method]}, over all seeds pooled"
    best_text = ("`best band`: the same threshold read on the upper and the lower end of each model's best band "
                 "(the validity range over the evaluations whose test loss is within "
                 f"{analysis.BAND_SE:g} standard errors of the minimum; see 'Selection'). " if at == "best" else "")
    one_P = [figures.label(w) for w, g in df.groupby("workdir") if g["P"].nunique() < 2]
    lines = ["# rhm_jax report\n", f"Written {datetime.datetime.now().isoformat(timespec='seconds')} "
             f"from {len(workdirs)} work director{'y' if len(workdirs) == 1 else 'ies'}.\n", tables.DEFINITION + "\n",
             "## Runs\n"]
    for workdir in workdirs:
        lines += tables.provenance_lines(workdir, analysis.read_config(workdir), df[df["workdir"] == str(workdir)])
        lines.append("")
    if unread:
        lines += ["Curves with no healthy model (every model flagged; no figure, no fit, listed under "
                  "'Flagged models'):", *[f"- {name}" for name in unread], ""]
    if one_P:
        lines.append(f"Runs with a single P ({', '.join(one_P)}): no threshold in P can be read (censored 'one P'), "
                     "and no validity-vs-P figure is drawn.\n")
    lines += tables.section(
        f"Thresholds P*_l (normalized validity = 1/2 at each model's {at} evaluation, all samples)",
        f"`P*` (`P_star`): P where normalized validity {analysis.NORMALIZED} crosses 1/2, {fit_text}; in "
        f"brackets its {thresholds.INTERVAL}. `<= P`: a bound, not a value: a model at the P next to the "
        "crossing was still rising at the end of its budget (`still_rising`) and, read at 'best', its best band "
        "reaches its last evaluation (its test-loss minimum is not behind it), so more training would move the "
        "crossing down; bounds never enter c, ratios or the collapse. " + best_text +
        "`P_star_mean`/`P_star_std`: over per-seed thresholds (bounds left out); `censored`: why a threshold is missing ('above': "
        "no P reaches 1/2, 'below': all do, 'not rising': it falls with P, 'one P', 'no finite rows'). "
        "`theory`: v m^(l+1) (`rhm_jax.theory.sample_complexity`). `still_rising`: models whose normalized "
        "validity at that level (over non-copied samples when logged) rose by more than 0.05 (and twice its sampling error) over their last "
        "doubling of steps: their budget was too short, so a P* read there is an upper bound.",
        tables.markdown_table(tables.threshold_table(summary, rising, df)))
    lines += tables.section(
        "Thresholds per replicate", "The same thresholds, per replicate (grammar seed, data seed, model seed: "
        "-1 marks a seed pooled over), with the interval from the binomial sampling error of each validity "
        "alone (one replicate has nothing to resample) or the bound; a parenthesis gives the reason one is missing.",
        tables.markdown_table(tables.replicate_table(table)))
    lines += tables.section(
        "The same thresholds in every reading",
        "P*_l pooled over seeds; `reading`: normalized = crossing of 1/2 by the normalized validity, raw = "
        "crossing of 1/2 by the raw fraction of valid level-l nodes (biased low at level 1, where chance is "
        "high); `samples`: all, or only the samples that are not copies of the model's training set (copies "
        f"are valid at every level; models with fewer than {analysis.MIN_NONCOPY} such samples are left out); `at`: best = lowest test loss (early stopping), last = end of training. "
        "A parenthesis gives the reason a threshold is missing.",
        tables.markdown_table(tables.readings(df, method)))
    if extra is not None and len(extra):
        shown = extra.assign(workdir=extra["workdir"].map(figures.label)) if "workdir" in extra else extra
        learner = clustering.READING if shown["label"].str.startswith("clustering learner").any() else ""
        lines += tables.section("Other thresholds drawn on the P figure", "Thresholds handed to the report "
                          "(`make_report(extra_thresholds=...)`), with the definitions of their source. " + learner,
                          tables.markdown_table(shown))
    if accuracy := clustering.report_thresholds(workdirs, "accuracy"):  # a different quantity: its own table
        accuracy = pd.DataFrame(accuracy).assign(workdir=lambda d: d["workdir"].map(figures.label))
        lines += tables.section("The clustering learner's accuracy thresholds (not validity; not on the P figure)",
                          clustering.ACCURACY_READING, tables.markdown_table(accuracy))
    left = fit.get("left_out") or thresholds.left_out(summary)
    left_text = ("Left out as bounds: " + "; ".join(left) + "." if left else "No threshold is a bound.")
    lines += tables.section("Ratios P*_(l+1) / P*_l (normalized thresholds; theory: m)",
                      "`ratio`: of the pooled thresholds above; `ratio_mean`/`ratio_std`: over seeds; a ratio "
                      "with a bound at either level is '-' (a bound is no value). " + left_text,
                      tables.markdown_table(ratios))
    lines += tables.section(
        "Constant c in P*_l = c v m^(l+1)",
        "Least squares in log10 over all finite normalized thresholds P_star of all runs and levels that are "
        "not bounds; the spread (std of log10 of P*_l / (v m^(l+1))) measures the collapse: 0 is perfect. "
        + left_text,
        f"c = {tables.fmt(fit.get('c', np.nan))}; spread = {tables.fmt(fit.get('log10_spread', np.nan))} over "
        f"{fit.get('num', 0)} thresholds.\n")
    if at == "best":
        se_logged = "test_loss_se" in df and df["test_loss_se"].notna().any()
        lines += tables.section(
            "Selection: the best band", "Each model is read at its best evaluation: lowest `test_loss` "
            + ("scored with the same noise keys and rows at every evaluation (common random numbers). " if se_logged
               else "(these rows log no `test_loss_se`: the mean over diffusion-time windows picks it, and the band "
                    "is the best evaluation alone). ")
            + f"Its band: the evaluations whose test loss is within {analysis.BAND_SE:g} standard errors "
            "(`test_loss_se`, the per-row loss std / sqrt(rows)) of the minimum; `band_evals`: how many, mean over "
            "models; `l<l> width`: max - min of the normalized validity over the band (mean and largest over "
            "models): how far noise in the loss can move a best reading.",
            tables.markdown_table(tables.band_table(df)) if se_logged else "_(no test_loss_se logged: no band)_\n")
    lines += tables.section(
        "Budget: models still learning at the end", f"Models whose normalized validity at a level, over "
        f"{'non-copied samples (copies rise too when a model memorizes)' if rising_samples == 'noncopy' else 'all samples'}"
        ", rose by more than 0.05 and twice its sampling error between the evaluation at half their last "
        "step and their last (`rise`), i.e. still rising over their last doubling of steps; `value`: "
        "normalized validity at the last evaluation. Also counted as `still_rising` in the thresholds table.",
        tables.markdown_table(flagged[[c for c in ("workdir", "model", "P", "seed", "level", "step", "value", "rise")
                                if c in flagged]]))
    lines += tables.section(
        "Learning time per level", "First step at which normalized validity reaches 1/2, interpolated in "
        "log step, mean over seeds ('-': some seed never within the budget). In steps:",
        tables.markdown_table(tables.mean_by_P(times, "step", "level", censored=True)))
    lines += ["In epochs (passes over the P training rows, the paper's unit):\n",
              tables.markdown_table(tables.mean_by_P(times, "epoch", "level", censored=True))]
    lines += tables.section(
        f"Coherence length at the {at} evaluation", "xi = s^l*, l* = the highest level whose normalized "
        "validity reaches 1/2 (xi = 1 when none does); theory: xi ~ (P / (v m))^(log s / "
        "log m), which is s^l at P = v m^(l+1); means over model seeds. From correlations: "
        + dynamics.CORRELATION_LENGTH + (
            " These rows log no `corr_data_t<t>`: xi_C is read against the training rows' C(t), whose bias "
            "correction in older work directories used the cycled evaluation rows instead of the P distinct "
            "ones (issue 19: too high at P <= 128), and without a standard error no distance is known to be "
            "resolved." if dynamics.correlation_distances(df) and not any(str(c).startswith("corr_data_t") for c in df)
            else ""), tables.markdown_table(tables.coherence_table(df, at)))
    if len(corr):
        wide = tables.mean_by_P(corr, "samples", "t")
        reference = "data" if corr["data"].notna().any() else "train"
        ref = tables.mean_by_P(corr, reference, "t")
        index = [c for c in wide.columns if not c.startswith("t ")]
        parts = [pd.DataFrame({f"{c} samples": wide[c], f"{c} {reference}": ref[c]}) for c in wide.columns
                 if c.startswith("t ")]
        if corr["se"].notna().any():
            se = tables.mean_by_P(corr, "se", "t")
            parts = [p.assign(**{f"{c} se": se[c]}) for p, c in zip(parts, [c for c in wide.columns if c.startswith("t ")])]
        wide = pd.concat([wide[index], *parts], axis=1)
        lines += tables.section(
            f"Token-token correlations at the {at} evaluation", "C(t) = mean over positions i of the squared "
            "Frobenius norm of the connected correlation p(x_i, x_(i+t)) - p(x_i) p(x_(i+t)), minus its "
            "finite-sample bias (`rhm_jax.evaluate.correlation`; ~0 for independent tokens, so values near 0 are "
            "noise), mean over model seeds, for the generated samples (`se`: its standard error over them) and, "
            + ("for the grammar's own data (`data`: exact)" if reference == "data" else
               "for the model's training rows (`train`; the grammar's exact value is not logged in these rows)")
            + ". " + tables.noisy_correlations(corr),
            tables.markdown_table(wide))
    lines += tables.section(
        "Memorization onset and final copies", "`step`: first step at which the fraction of samples equal to "
        "a training row reaches 0.1 (log-interpolated; '-': some seed never within the budget); `final_copies`: "
        "that fraction at the last evaluation; means over seeds.",
        tables.markdown_table(pd.concat([tables.mean_by_P(onset, "step", censored=True), tables.mean_by_P(onset, "final_copies")[["final_copies"]]],
                                 axis=1)) if len(onset) else "_(no copies column)_\n")
    if len(order):
        lines += tables.section("Levels in time, then copies (the time experiment at every P)", dynamics.TIME_ORDER,
                                tables.markdown_table(dynamics.time_order_summary(order).assign(
                                    workdir=lambda d: d["workdir"].map(figures.label))))
    lines += tables.section(
        f"Creativity at the {at} evaluation", "Fractions of samples: `valid` (whole sequence parses), `copies` "
        "(equal to a training row), `novel_valid` (valid, not a copy); `novel_share` = novel_valid / valid; "
        "`copies_if_perfect`: copies of a generator uniform over all valid sequences, P / P_max "
        "(`rhm_jax.theory.expected_copy_fraction`).",
        tables.creativity_table(creative) if len(creative) else "_(no valid/copies columns)_\n")
    lines += _flagged_section(df)
    lines += list(online)  # the online models' section (``online_report``), when there are any
    lines += ["## Figures\n", *[f"- [{os.path.basename(p)}]({os.path.basename(p)})" for p in paths
                                if p.endswith(".png")]]
    return _write(out, lines)


def _flagged_section(df: pd.DataFrame) -> list[str]:
    """The table of flagged models, with its definitions."""
    return tables.section("Flagged models (excluded from every fit and table)",
                          "Models flagged at any evaluation (`rhm_jax.health`): non-finite (`nan@`), train loss above "
                          "twice its running minimum (`loss@`), or samples collapsed onto fewer distinct sequences "
                          "than half of what copying the training set gives (`collapse@`); `flag`: the first one, "
                          "with its step.", tables.markdown_table(analysis.diverged_models(df)))


def _write(out: str, lines: list[str]) -> str:
    """Write ``lines`` as ``out/report.md``; return its path."""
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _write_flagged_only(workdirs: Sequence[str], df: pd.DataFrame, out: str) -> str:
    """``report.md`` of a sweep whose every model is flagged: provenance, one line, the flagged models."""
    lines = ["# rhm_jax report\n", f"Written {datetime.datetime.now().isoformat(timespec='seconds')}.\n", "## Runs\n"]
    for workdir in workdirs:
        lines += tables.provenance_lines(workdir, analysis.read_config(workdir), df[df["workdir"] == str(workdir)])
        lines.append("")
    lines.append(f"No healthy model: all {df.groupby(['workdir', 'model']).ngroups} models are flagged, so there is "
                 "no threshold, table or figure to read.\n")
    return _write(out, lines + _flagged_section(df))


def make_report(workdirs: Sequence[str], out: str | None = None, method: str = thresholds.DEFAULT_METHOD,
                at: str = "best",
                time_axis: str = "epoch", extra_thresholds: pd.DataFrame | None = None) -> dict[str, list[str]]:
    """Load the work directories, write every figure and ``report.md`` into ``out``; return paths.

    ``at``: which evaluation of each model counts, 'last' or 'best' (lowest test loss);
    ``time_axis``: 'epoch' (the paper's unit) or 'step'; ``extra_thresholds``: a table with
    columns label, level, P_star (and workdir) of thresholds from elsewhere, drawn on the P figure
    and listed in the report; by default the clustering learner's, where ``launch.cluster`` stored
    them in the work directories (``clustering.report_thresholds``: its validity, like for like; its
    accuracy thresholds get a table of their own).
    """
    workdirs = [str(w) for w in ([workdirs] if isinstance(workdirs, (str, os.PathLike)) else workdirs)]
    if not workdirs:
        raise ValueError("workdirs must name at least one work directory")
    if extra_thresholds is not None and not {"label", "level", "P_star"} <= set(extra_thresholds):
        raise ValueError("extra_thresholds needs the columns label, level, P_star (and optionally workdir)")
    df = analysis.load(workdirs)
    if extra_thresholds is None and (learner := clustering.report_thresholds(workdirs)):
        extra_thresholds = pd.DataFrame(learner)
    out = out or os.path.join(workdirs[0], "report")
    os.makedirs(out, exist_ok=True)
    online, online_paths = online_report.section(df, out)  # online models (P = 0): readings in time
    df = df[df["P"] != 0]  # they have no P axis: every reading below is of the finite-P models
    if df.empty:
        return dict(figures=online_paths, report=[online_report.write_alone(workdirs, out, online, online_paths)])
    if not len(analysis.healthy(df)):
        return dict(figures=online_paths, report=[write_markdown(workdirs, df, out, online_paths, method, at,
                                                                 online=online)])
    table = thresholds.table(df, method, at)
    summary = thresholds.summary(table)
    paths = figures.plot_validity_vs_p(df, summary, out, at, extra=extra_thresholds, method=method)
    if {"v", "m"} <= set(df) and df.groupby("workdir")["P"].nunique().max() > 1:
        paths += figures.plot_collapse(df, out, at)
    keys_ = analysis.curve_keys(df)  # a set of figures per work directory, or per swept value within one
    curves = list(df.groupby(keys_, dropna=False, sort=False))
    many, unread = len(curves) > 1, []
    for i, (values, part) in enumerate(curves):
        workdir = values[0]
        name = analysis.curve_label(keys_, values).replace(" ", "_").replace("=", "")
        suffix = f"_{i}_{name}" if many else ""
        title = analysis.curve_label(keys_, values)  # the swept values this figure shows
        if not len(analysis.healthy(part)):
            unread.append(title)
            continue
        paths += figures.plot_time(part, workdir, out, f"time{suffix}", time_axis, title=title)
        paths += figures.plot_windows(part, workdir, out, f"windows{suffix}", at, title=title)
        if {"v", "m", "s"} <= set(part.dropna(axis=1, how="all")):  # the theory's xi needs the grammar
            paths += figures.plot_coherence(part, workdir, out, f"coherence{suffix}", time_axis, title=title)
        paths += figures.plot_correlation(part, workdir, out, f"correlation{suffix}", at, title=title)
    paths += online_paths
    report = write_markdown(workdirs, df, out, paths, method, at, extra_thresholds, table, online, unread)
    return dict(figures=paths, report=[report])
