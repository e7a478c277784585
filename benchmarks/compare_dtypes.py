"""Validity curves of one sweep run in two arithmetics, against the noise of another seed.

    python benchmarks/compare_dtypes.py --ref runs/quick_fp32 --other runs/quick_bf16 \
        --noise runs/quick_fp32_seed1 --out docs/results/cpu_speed/bf16_validity

Three work directories of the same sweep: ``--ref`` (e.g. float32), ``--other`` (the same run with
one change, e.g. ``--config.network.dtype=bfloat16``) and ``--noise`` (the reference with another
model seed: how far two realizations of the same arithmetic lie apart). Per (m, P, level), each
model's validity at its ``--at`` evaluation (normalized: above chance, the report's reading) is
printed for the three, with |other - ref| beside |noise - ref|; then per (m, level) the mean and
largest of both differences, and the thresholds P*_l with their intervals as ``launch.report``
reads them (``thresholds.table``, one seed per curve here). Writes ``validity.csv``,
``thresholds.csv`` and ``validity_vs_P.png`` / ``.pdf`` (one panel per m: a colour per level,
a line style per run) into ``--out``; the tables also go to stdout.
Grids with one model per (m, P) are expected (the quick sweep); several seeds per P are averaged.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from rhm_jax import analysis, figures, thresholds  # noqa: E402

# filled circles under open triangles: where the two runs agree both markers stay visible
STYLES = {"ref": dict(ls="-", marker="o", ms=4), "noise": dict(ls="--", marker="s", ms=4, mfc="none"),
          "other": dict(ls=":", marker="^", ms=8, mfc="none", mew=1.1)}


def curves(workdir: str, at: str) -> pd.DataFrame:
    """Validity per (m, P, level) of a work directory at each model's ``at`` evaluation (mean over seeds)."""
    df = analysis.load(workdir)
    df = df[df["P"] != 0]
    long = analysis.final_validity(df, at, "normalized")
    keys = [k for k in ("m", "P", "level") if k in long]
    return long.groupby(keys)[["validity", "raw"]].mean().reset_index()


def stars(workdir: str, at: str, method: str) -> pd.DataFrame:
    """Pooled P*_l per (m, level) with its interval and bound flag, as the report reads them."""
    df = analysis.load(workdir)
    summary = thresholds.summary(thresholds.table(df[df["P"] != 0], method, at))
    keys = [k for k in ("m", "level") if k in summary]
    return summary[[*keys, "P_star", "P_star_lo", "P_star_hi", "bound"]]


def star_text(row: pd.Series, name: str) -> str:
    """'<= 64' for a bound, '55 [40, 70]' for a value with its interval, 'none' where not reached."""
    p, lo, hi = (float(row[f"{c}_{name}"]) for c in ("P_star", "P_star_lo", "P_star_hi"))
    if not np.isfinite(p):
        return "none"
    if bool(row[f"bound_{name}"]):
        return f"<= {p:.0f}"
    return f"{p:.0f} [{lo:.0f}, {hi:.0f}]" if np.isfinite(lo) else f"{p:.0f}"


def plot(table: pd.DataFrame, labels: dict, out: str) -> list[str]:
    """Normalized validity vs P, one panel per m, colour per level, line style per run."""
    ms = sorted(table["m"].unique()) if "m" in table else [None]
    fig = figures._figure(5.2 * len(ms), 4.2)
    axes = fig.subplots(1, len(ms), squeeze=False)[0]
    for ax, m in zip(axes, ms):
        part = table[table["m"] == m] if m is not None else table
        lv = sorted(part["level"].unique())
        colors = dict(zip(lv, figures._colors(len(lv))))
        for level, color in colors.items():
            rows = part[part["level"] == level]
            for name, style in STYLES.items():
                ax.plot(rows["P"], rows[name], color=color, lw=1, **style)
        ax.axhline(0.5, color="0.6", lw=0.6)
        figures._p_axis(ax, part["P"])
        ax.set_ylim(-0.1, 1.03)
        ax.set_xlabel("training-set size P")
        ax.set_ylabel(figures.NORM_LABEL, fontsize=8)
        ax.set_title(f"m={m}: validity at each model's best evaluation" if m is not None else "validity", fontsize=9)
        figures._key(ax, colors, [(labels[name], style) for name, style in STYLES.items()], loc="upper left",
                     framealpha=0.6)
    return figures._save(fig, out, "validity_vs_P")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ref", required=True, help="reference work directory (e.g. float32)")
    parser.add_argument("--other", required=True, help="the run with the change (e.g. bfloat16)")
    parser.add_argument("--noise", required=True, help="the reference with another seed")
    parser.add_argument("--labels", default="fp32,fp32 other seed,bf16", help="legend names: ref,noise,other")
    parser.add_argument("--at", default="best", choices=("best", "last"))
    parser.add_argument("--method", default=thresholds.DEFAULT_METHOD, choices=tuple(thresholds.METHODS))
    parser.add_argument("--out", default=None, help="folder for the CSV tables and the figure")
    args = parser.parse_args()
    labels = dict(zip(("ref", "noise", "other"), args.labels.split(",")))
    dirs = dict(ref=args.ref, noise=args.noise, other=args.other)
    tables = [curves(d, args.at).rename(columns=dict(validity=name, raw=f"raw_{name}")) for name, d in dirs.items()]
    keys = [k for k in ("m", "P", "level") if k in tables[0]]
    table = tables[0].merge(tables[1], on=keys, how="outer").merge(tables[2], on=keys, how="outer")
    table["d_other"] = (table["other"] - table["ref"]).abs()
    table["d_noise"] = (table["noise"] - table["ref"]).abs()
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 500)
    print(f"normalized validity at '{args.at}' per {', '.join(keys)}: ref = {labels['ref']} ({args.ref}), "
          f"noise = {labels['noise']} ({args.noise}), other = {labels['other']} ({args.other})")
    print(table[[*keys, "ref", "noise", "other", "d_other", "d_noise"]].to_string(index=False, float_format="%.3f"))
    group = [k for k in keys if k != "P"]
    per = table.groupby(group).agg(mean_d_other=("d_other", "mean"), max_d_other=("d_other", "max"),
                                   mean_d_noise=("d_noise", "mean"), max_d_noise=("d_noise", "max"),
                                   points=("d_other", "size"),
                                   other_further=("d_other", lambda s: int((s > table.loc[s.index, "d_noise"]).sum())))
    print(f"\nper {', '.join(group)}: |other - ref| against |noise - ref| (other_further: points where the "
          "change moved validity further than the other seed did)")
    print(per.reset_index().to_string(index=False, float_format="%.3f"))
    print(f"all points: mean |other - ref| = {table['d_other'].mean():.3f}, mean |noise - ref| = "
          f"{table['d_noise'].mean():.3f}; max {table['d_other'].max():.3f} against {table['d_noise'].max():.3f}")
    star = None
    for name, d in dirs.items():
        s = stars(d, args.at, args.method).rename(columns={c: f"{c}_{name}" for c in
                                                            ("P_star", "P_star_lo", "P_star_hi", "bound")})
        star = s if star is None else star.merge(s, on=[k for k in ("m", "level") if k in s], how="outer")
    star_keys = [k for k in ("m", "level") if k in star]
    shown = star[star_keys].copy()
    for name in dirs:
        shown[labels[name]] = [star_text(row, name) for _, row in star.iterrows()]
    print(f"\nthresholds P*_l (normalized validity = 1/2, {args.method}; interval as launch.report gives it)")
    print(shown.to_string(index=False))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        table.to_csv(os.path.join(args.out, "validity.csv"), index=False, float_format="%.4f")
        star.to_csv(os.path.join(args.out, "thresholds.csv"), index=False, float_format="%.4g")
        print("\nwrote", ", ".join(plot(table, labels, args.out)))


if __name__ == "__main__":
    main()
