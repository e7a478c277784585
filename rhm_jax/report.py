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

from rhm_jax import analysis, clustering, dynamics, figures, keys, theory, thresholds

DEFINITION = (f"**Normalized validity** of level l: {analysis.NORMALIZED}, the fraction of the way from "
              "chance to perfect; V_l is the fraction of level-l nodes of the generated samples that parse, "
              "V_l^unif the same for i.i.d. uniform tokens (`rhm_jax.theory.uniform_validity`).")


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
    """(seconds, where from): the provenance's ``wall_time_s`` (a finished run), else the largest
    ``wall_s`` of the metrics table (a run still going, or stopped), else unknown."""
    prov = config.get("provenance", {}) or {}
    if isinstance(prov.get("wall_time_s"), (int, float)):
        return float(prov["wall_time_s"]), "provenance"
    if "wall_s" in df and df["wall_s"].notna().any():
        return float(df["wall_s"].max()), "so far: the run has not finished"
    return float("nan"), "unknown"


def _budget(train: dict) -> str:
    """The step budget as configured: steps for every model, or epochs of each model's own P."""
    if train.get("num_epochs"):
        return f"{train['num_epochs']:g} epochs of each model's P"
    return f"{train.get('num_steps', '?')} steps"


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


def _sweep_lines(points: list[dict], df: pd.DataFrame) -> list[str]:
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


def _provenance_lines(workdir: str, config: dict, df: pd.DataFrame) -> list[str]:
    """Bullet lines: commit, packages, machine, date and wall time of one work directory."""
    prov = config.get("provenance", {}) or {}
    cfg = config.get("config", {}) or {}
    packages = prov.get("packages") or prov.get("versions") or {}
    pkg = ", ".join(f"{k} {v}" for k, v in sorted(packages.items())) if isinstance(packages, dict) else str(packages)
    g, tr = cfg.get("grammar", {}), cfg.get("train", {})
    seconds, how = wall_time(config, df, workdir)
    return [
        f"### {figures.label(workdir)} (`{workdir}`)",
        *_sweep_lines(config.get("points") or [{}], df),
        f"- grammar: {', '.join(f'{k}={v}' for k, v in g.items())}",
        f"- process: {cfg.get('process', {}).get('name', '?')}, network: "
        f"{cfg.get('network', {}).get('name', '?')} width {cfg.get('network', {}).get('width', '?')}",
        f"- P grid: {cfg.get('data', {}).get('num_train', sorted(df['P'].unique().tolist()))}, "
        f"seeds: {tr.get('seeds', '?')}, batch {tr.get('batch_size', '?')}, lr {tr.get('lr', '?')}, "
        f"budget {_budget(tr)}",
        f"- commit: {_commit(prov)}",
        f"- packages: {pkg or '?'}; python {prov.get('python', '?')}",
        f"- machine: {_machine(prov)}",
        f"- date: {prov.get('date_utc', prov.get('date', '?'))}; wall time: {_fmt(seconds)} s ({how}); "
        f"models: {df['model'].nunique()}, last step: {int(df['step'].max())}",
    ]


def _mean_by_P(table: pd.DataFrame, value: str, columns: str | None = None, censored: bool = False) -> pd.DataFrame:
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


def _threshold_table(summary: pd.DataFrame, rising: pd.DataFrame, df: pd.DataFrame | None = None) -> pd.DataFrame:
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
        out["best band"] = [f"[{_fmt(r.P_star_band_lo)}, {_fmt(r.P_star_band_hi)}]" if np.isfinite(r.P_star) else "-"
                            for r in out.itertuples()]
    drop = ("n", "s", "L", "reading", "samples", "at", "method", "P_star", "P_star_lo", "P_star_hi", "P_star_band_lo",
            "P_star_band_hi", "bound")
    return out.drop(columns=[c for c in drop if c in out])


def _replicate_table(table: pd.DataFrame) -> pd.DataFrame:
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


def _band_table(df: pd.DataFrame) -> pd.DataFrame:
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


def _creativity_table(creative: pd.DataFrame) -> str:
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


def _coherence_table(df: pd.DataFrame, at: str) -> pd.DataFrame:
    """Mean coherence lengths per P at each model's ``at`` evaluation: xi from validity beside the
    theory's, and xi_C from C(t) (with the fraction of models where it is a bound) where C(t) is logged."""
    chosen = analysis.final(analysis.healthy(df), at)
    xi = dynamics.coherence_length(chosen)
    table = _mean_by_P(xi, "xi")
    if {"v", "m", "s"} <= set(xi):  # per row: work directories may differ in their grammar
        xi["theory"] = dynamics.theory_coherence_length(xi["P"], *(xi[k].to_numpy(float) for k in ("v", "m", "s")))
        table["theory (P/(v m))^(log s/log m)"] = _mean_by_P(xi, "theory")["theory"]
    from_corr = dynamics.correlation_length(chosen)
    if len(from_corr):
        table["xi_C (from C(t))"] = _mean_by_P(from_corr, "xi_C")["xi_C"].to_numpy()
        table["xi_C bound (fraction)"] = _mean_by_P(from_corr.assign(b=from_corr["xi_C_bound"].astype(float)),
                                                    "b")["b"].to_numpy()
        table["largest resolved t"] = _mean_by_P(from_corr, "t_resolved")["t_resolved"].to_numpy()
    return table


def _noisy_correlations(corr: pd.DataFrame) -> str:
    """Where C(t)'s standard error is not smaller than the value shown (mean over seeds per P and t)."""
    if corr["se"].isna().all():
        return ("No standard error of C(t) is logged in these rows (older work directory): the report cannot "
                "say which values are above their noise; values near 0 are noise.")
    index = [*analysis.table_keys(corr), "P", "t"]
    cells = corr.groupby(index)[["samples", "se"]].mean().reset_index()
    noisy = cells[cells["se"] >= cells["samples"].abs()]
    if noisy.empty:
        return "Every value shown is larger than its standard error."
    where = "; ".join(f"{figures.label(r['workdir'])} P={_fmt(r['P'])} t={int(r['t'])}"
                      for _, r in noisy.iterrows())
    return (f"C(t) of the samples is not larger than its standard error in {len(noisy)} of {len(cells)} cells: "
            + where + ".")


def _section(title: str, definition: str, body: str) -> list[str]:
    """A markdown section: heading, the definition of its numbers, then the table or text."""
    return [f"## {title}\n", f"{definition}\n", body]


def write_markdown(workdirs: Sequence[str], df: pd.DataFrame, out: str, paths: list[str],
                   method: str = thresholds.DEFAULT_METHOD, at: str = "best",
                   extra: pd.DataFrame | None = None, table: pd.DataFrame | None = None) -> str:
    """``report.md``: provenance, normalized thresholds vs theory, readings compared, ratios, c,
    budgets, learning times, coherence length, C(t), copies, creativity, diverged models."""
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
    creative = analysis.creativity(df, at) if copies and {"valid", "novel_valid"} <= set(df) else pd.DataFrame()
    flagged = rising[rising["rising"]].assign(workdir=lambda d: d["workdir"].map(figures.label))
    corr = dynamics.correlations(df, at)
    fit_text = f"{thresholds.METHODS[method]}, over all seeds pooled"
    best_text = ("`best band`: the same threshold read on the upper and the lower end of each model's best band "
                 "(the validity range over the evaluations whose test loss is within "
                 f"{analysis.BAND_SE:g} standard errors of the minimum; see 'Selection'). " if at == "best" else "")
    one_P = [figures.label(w) for w, g in df.groupby("workdir") if g["P"].nunique() < 2]
    lines = ["# rhm_jax report\n", f"Written {datetime.datetime.now().isoformat(timespec='seconds')} "
             f"from {len(workdirs)} work director{'y' if len(workdirs) == 1 else 'ies'}.\n", DEFINITION + "\n",
             "## Runs\n"]
    for workdir in workdirs:
        lines += _provenance_lines(workdir, analysis.read_config(workdir), df[df["workdir"] == str(workdir)])
        lines.append("")
    if one_P:
        lines.append(f"Runs with a single P ({', '.join(one_P)}): no threshold in P can be read (censored 'one P'), "
                     "and no validity-vs-P figure is drawn.\n")
    lines += _section(
        f"Thresholds P*_l (normalized validity = 1/2 at each model's {at} evaluation, all samples)",
        f"`P*` (`P_star`): P where normalized validity {analysis.NORMALIZED} crosses 1/2, {fit_text}; in "
        f"brackets its {thresholds.INTERVAL}. `<= P`: a bound, not a value: a model at the P next to the "
        "crossing was still rising at the end of its budget (`still_rising`), so more training would move the "
        "crossing down; bounds never enter c, ratios or the collapse. " + best_text +
        "`P_star_mean`/`P_star_std`: over per-seed thresholds (bounds left out); `censored`: why a threshold is missing ('above': "
        "no P reaches 1/2, 'below': all do, 'not rising': it falls with P, 'one P', 'no finite rows'). "
        "`theory`: v m^(l+1) (`rhm_jax.theory.sample_complexity`). `still_rising`: models whose normalized "
        "validity at that level (over non-copied samples when logged) rose by more than 0.05 (and twice its sampling error) over their last "
        "doubling of steps: their budget was too short, so a P* read there is an upper bound.",
        markdown_table(_threshold_table(summary, rising, df)))
    lines += _section(
        "Thresholds per replicate", "The same thresholds, per replicate (grammar seed, data seed, model seed: "
        "-1 marks a seed pooled over), with the interval from the binomial sampling error of each validity "
        "alone (one replicate has nothing to resample) or the bound; a parenthesis gives the reason one is missing.",
        markdown_table(_replicate_table(table)))
    lines += _section(
        "The same thresholds in every reading",
        "P*_l pooled over seeds; `reading`: normalized = crossing of 1/2 by the normalized validity, raw = "
        "crossing of 1/2 by the raw fraction of valid level-l nodes (biased low at level 1, where chance is "
        "high); `samples`: all, or only the samples that are not copies of the model's training set (copies "
        f"are valid at every level; models with fewer than {analysis.MIN_NONCOPY} such samples are left out); `at`: best = lowest test loss (early stopping), last = end of training. "
        "A parenthesis gives the reason a threshold is missing.",
        markdown_table(readings(df, method)))
    if extra is not None and len(extra):
        shown = extra.assign(workdir=extra["workdir"].map(figures.label)) if "workdir" in extra else extra
        learner = clustering.READING if shown["label"].str.startswith("clustering learner").any() else ""
        lines += _section("Other thresholds drawn on the P figure", "Thresholds handed to the report "
                          "(`make_report(extra_thresholds=...)`), with the definitions of their source. " + learner,
                          markdown_table(shown))
    if accuracy := clustering.report_thresholds(workdirs, "accuracy"):  # a different quantity: its own table
        accuracy = pd.DataFrame(accuracy).assign(workdir=lambda d: d["workdir"].map(figures.label))
        lines += _section("The clustering learner's accuracy thresholds (not validity; not on the P figure)",
                          clustering.ACCURACY_READING, markdown_table(accuracy))
    left = fit.get("left_out") or thresholds.left_out(summary)
    left_text = ("Left out as bounds: " + "; ".join(left) + "." if left else "No threshold is a bound.")
    lines += _section("Ratios P*_(l+1) / P*_l (normalized thresholds; theory: m)",
                      "`ratio`: of the pooled thresholds above; `ratio_mean`/`ratio_std`: over seeds; a ratio "
                      "with a bound at either level is '-' (a bound is no value). " + left_text,
                      markdown_table(ratios))
    lines += _section(
        "Constant c in P*_l = c v m^(l+1)",
        "Least squares in log10 over all finite normalized thresholds P_star of all runs and levels that are "
        "not bounds; the spread (std of log10 of P*_l / (v m^(l+1))) measures the collapse: 0 is perfect. "
        + left_text,
        f"c = {_fmt(fit.get('c', np.nan))}; spread = {_fmt(fit.get('log10_spread', np.nan))} over "
        f"{fit.get('num', 0)} thresholds.\n")
    if at == "best":
        se_logged = "test_loss_se" in df and df["test_loss_se"].notna().any()
        lines += _section(
            "Selection: the best band", "Each model is read at its best evaluation: lowest `test_loss` "
            + ("scored with the same noise keys and rows at every evaluation (common random numbers). " if se_logged
               else "(these rows log no `test_loss_se`: the mean over diffusion-time windows picks it, and the band "
                    "is the best evaluation alone). ")
            + f"Its band: the evaluations whose test loss is within {analysis.BAND_SE:g} standard errors "
            "(`test_loss_se`, the per-row loss std / sqrt(rows)) of the minimum; `band_evals`: how many, mean over "
            "models; `l<l> width`: max - min of the normalized validity over the band (mean and largest over "
            "models): how far noise in the loss can move a best reading.",
            markdown_table(_band_table(df)) if se_logged else "_(no test_loss_se logged: no band)_\n")
    lines += _section(
        "Budget: models still learning at the end", f"Models whose normalized validity at a level, over "
        f"{'non-copied samples (copies rise too when a model memorizes)' if rising_samples == 'noncopy' else 'all samples'}"
        ", rose by more than 0.05 and twice its sampling error between the evaluation at half their last "
        "step and their last (`rise`), i.e. still rising over their last doubling of steps; `value`: "
        "normalized validity at the last evaluation. Also counted as `still_rising` in the thresholds table.",
        markdown_table(flagged[[c for c in ("workdir", "model", "P", "seed", "level", "step", "value", "rise")
                                if c in flagged]]))
    lines += _section(
        "Learning time per level", "First step at which normalized validity reaches 1/2, interpolated in "
        "log step, mean over seeds ('-': some seed never within the budget). In steps:",
        markdown_table(_mean_by_P(times, "step", "level", censored=True)))
    lines += ["In epochs (passes over the P training rows, the paper's unit):\n",
              markdown_table(_mean_by_P(times, "epoch", "level", censored=True))]
    lines += _section(
        f"Coherence length at the {at} evaluation", "xi = s^l*, l* = the highest level whose normalized "
        "validity reaches 1/2 (xi = 1 when none does); theory: xi ~ (P / (v m))^(log s / "
        "log m), which is s^l at P = v m^(l+1); means over model seeds. From correlations: "
        + dynamics.CORRELATION_LENGTH + (
            " These rows log no `corr_data_t<t>`: xi_C is read against the training rows' C(t), whose bias "
            "correction in older work directories used the cycled evaluation rows instead of the P distinct "
            "ones (issue 19: too high at P <= 128), and without a standard error no distance is known to be "
            "resolved." if dynamics.correlation_distances(df) and not any(str(c).startswith("corr_data_t") for c in df)
            else ""), markdown_table(_coherence_table(df, at)))
    if len(corr):
        wide = _mean_by_P(corr, "samples", "t")
        reference = "data" if corr["data"].notna().any() else "train"
        ref = _mean_by_P(corr, reference, "t")
        index = [c for c in wide.columns if not c.startswith("t ")]
        parts = [pd.DataFrame({f"{c} samples": wide[c], f"{c} {reference}": ref[c]}) for c in wide.columns
                 if c.startswith("t ")]
        if corr["se"].notna().any():
            se = _mean_by_P(corr, "se", "t")
            parts = [p.assign(**{f"{c} se": se[c]}) for p, c in zip(parts, [c for c in wide.columns if c.startswith("t ")])]
        wide = pd.concat([wide[index], *parts], axis=1)
        lines += _section(
            f"Token-token correlations at the {at} evaluation", "C(t) = mean over positions i of the squared "
            "Frobenius norm of the connected correlation p(x_i, x_(i+t)) - p(x_i) p(x_(i+t)), minus its "
            "finite-sample bias (`rhm_jax.evaluate.correlation`; ~0 for independent tokens, so values near 0 are "
            "noise), mean over model seeds, for the generated samples (`se`: its standard error over them) and, "
            + ("for the grammar's own data (`data`: exact)" if reference == "data" else
               "for the model's training rows (`train`; the grammar's exact value is not logged in these rows)")
            + ". " + _noisy_correlations(corr),
            markdown_table(wide))
    lines += _section(
        "Memorization onset and final copies", "`step`: first step at which the fraction of samples equal to "
        "a training row reaches 0.1 (log-interpolated; '-': some seed never within the budget); `final_copies`: "
        "that fraction at the last evaluation; means over seeds.",
        markdown_table(pd.concat([_mean_by_P(onset, "step", censored=True), _mean_by_P(onset, "final_copies")[["final_copies"]]],
                                 axis=1)) if len(onset) else "_(no copies column)_\n")
    lines += _section(
        f"Creativity at the {at} evaluation", "Fractions of samples: `valid` (whole sequence parses), `copies` "
        "(equal to a training row), `novel_valid` (valid, not a copy); `novel_share` = novel_valid / valid; "
        "`copies_if_perfect`: copies of a generator uniform over all valid sequences, P / P_max "
        "(`rhm_jax.theory.expected_copy_fraction`).",
        _creativity_table(creative) if len(creative) else "_(no valid/copies columns)_\n")
    lines += _section("Flagged models (excluded from every fit and table)",
                      "Models flagged at any evaluation (`rhm_jax.health`): non-finite (`nan@`), train loss above twice "
                      "its running minimum (`loss@`), or samples collapsed onto fewer distinct sequences than half "
                      "of what copying the training set gives (`collapse@`); `flag`: the first one, with its step.",
                      markdown_table(analysis.diverged_models(df)))
    lines += ["## Figures\n", *[f"- [{os.path.basename(p)}]({os.path.basename(p)})" for p in paths
                                if p.endswith(".png")]]
    path = os.path.join(out, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


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
    table = thresholds.table(df, method, at)
    summary = thresholds.summary(table)
    paths = figures.plot_validity_vs_p(df, summary, out, at, extra=extra_thresholds, method=method)
    if {"v", "m"} <= set(df) and df.groupby("workdir")["P"].nunique().max() > 1:
        paths += figures.plot_collapse(df, out, at)
    keys_ = analysis.curve_keys(df)  # a set of figures per work directory, or per swept value within one
    curves = list(df.groupby(keys_, dropna=False, sort=False))
    many = len(curves) > 1
    for i, (values, part) in enumerate(curves):
        workdir = values[0]
        name = analysis.curve_label(keys_, values).replace(" ", "_").replace("=", "")
        suffix = f"_{i}_{name}" if many else ""
        title = analysis.curve_label(keys_, values)  # the swept values this figure shows
        paths += figures.plot_time(part, workdir, out, f"time{suffix}", time_axis, title=title)
        paths += figures.plot_windows(part, workdir, out, f"windows{suffix}", at, title=title)
        if {"v", "m", "s"} <= set(part.dropna(axis=1, how="all")):  # the theory's xi needs the grammar
            paths += figures.plot_coherence(part, workdir, out, f"coherence{suffix}", time_axis, title=title)
        paths += figures.plot_correlation(part, workdir, out, f"correlation{suffix}", at, title=title)
    report = write_markdown(workdirs, df, out, paths, method, at, extra_thresholds, table)
    return dict(figures=paths, report=[report])
