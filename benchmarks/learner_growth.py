"""The clustering learner's threshold growth per level on L = 4 and 5 grammars (v = n = 8, s = 2, m = 2, 3, 4).

Usage:
    python benchmarks/learner_growth.py                      # writes docs/results/learner_growth/
    python benchmarks/learner_growth.py --quick --out /tmp/g # L = 4, m = 2, one seed: seconds
    python benchmarks/learner_growth.py --tables-only         # table.md again from thresholds.jsonl

Per (L, m, context 'tokens' / 'labels', grammar seed 0, 1, 2; data seed = grammar seed, one learner
seed equal to it) the learner (``rhm_jax.clustering.run_grid``) reads the first P rows of one pool
of P_MAX sequences (32768 for L = 4, 65536 for L = 5), P on a grid of 2 points per octave from 2 to
P_MAX (29 / 31 values). It
scores ``accuracy_l`` (l = 1..L-1) and the validity of 512 generated sequences (l = 1..L; all of
them, and ``validity_novel`` over those that are not copies of a training row). P*_l is
where the normalized curve ((A - A^rand) / (1 - A^rand), (V - V^unif) / (1 - V^unif)) last rises
through 1/2, log-linear between grid points (``clustering.crossing``), read per grammar seed;
'above' = not reached by P_MAX. The table gives per level the median and range over seeds of
P*(accuracy_l) and of P*(validity_(l+1)) (the same clustered level, see ``rhm_jax.clustering``'s
level map) beside v m^(l+1), and the per-seed ratios P*_(l+1) / P*_l against m. k-means: 16
restarts (the learner's default is 32; halved to keep the run near 10 minutes on the shared 2-core
CPU), 30 Lloyd iterations.

Writes ``table.md`` (the tables, and the level map: P* of validity_(l+1) and of validity_l over
P* of accuracy_l), ``rows.jsonl`` (one row per learner and P), ``thresholds.jsonl``
(one per seed, quantity, level) and ``provenance.json`` (versions, git revision, date, host, load
average, wall time). Measured: 12 minutes on the shared 2-core CPU at load average ~10 (other
sessions' jobs); expect less on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from rhm_jax import clustering, data, grammar, results, theory

V, S, NUM_SAMPLES, RESTARTS, ITERATIONS = 8, 2, 512, 16, 30
P_MAX = {4: 32768, 5: 65536}  # per L: the pool, and the largest P
LS, MS, SEEDS = (4, 5), (2, 3, 4), (0, 1, 2)


def p_grid(p_max: int) -> np.ndarray:
    """2 points per octave from 2 to ``p_max`` (a power of 2), rounded."""
    return np.unique(np.round(2.0 ** np.arange(1, np.log2(p_max) + 0.01, 0.5)).astype(np.int32))


def learner_rows(L: int, m: int, seed: int, context: str, P_K: np.ndarray, pool_QxD: np.ndarray,
                 rules: grammar.Grammar, chance_L: np.ndarray) -> list[dict]:
    """One row per P of one learner curve (the columns ``launch.cluster`` writes, less the copy fraction)."""
    out = jax.device_get(clustering.run_grid(rules, pool_QxD, P_K, np.full(len(P_K), seed, np.uint32), NUM_SAMPLES,
                                             RESTARTS, ITERATIONS, context))
    rows = []
    for i, P in enumerate(P_K):
        row = dict(learner="clustering", context=context, P=int(P), seed=seed, v=V, n=V, m=m, s=S, L=L,
                   grammar_seed=seed, data_seed=seed)
        for level in range(1, L):
            row[f"accuracy_l{level}"] = float(out["accuracy"][i, level - 1])
            row[f"accuracy_chance_l{level}"] = float(chance_L[level - 1])
        for level in range(1, L + 1):
            row[f"validity_l{level}"] = float(out["validity"][i, level - 1])
            row[f"validity_novel_l{level}"] = float(out["validity_novel"][i, level - 1])
        rows.append(row)
    return rows


def _value(P_star: float | None) -> float:
    """P* as a float, NaN for a missing one (thresholds.jsonl stores NaN as null)."""
    return float("nan") if P_star is None else float(P_star)


def _cell(values: list[float], censored: list[str]) -> str:
    """'median (min-max)' of the finite per-seed values, with how many seeds were censored."""
    finite = [x for x in values if np.isfinite(x)]
    text = "-" if not finite else (f"{np.median(finite):.0f}" if len(finite) == 1 else
                                   f"{np.median(finite):.0f} ({min(finite):.0f}-{max(finite):.0f})")
    missing = [c for c in censored if c]
    if missing:
        text += f"; {len(missing)}/{len(censored)} " + "/".join(sorted(set(missing)))
    return text


def _ratio_cell(low: list[float], high: list[float]) -> tuple[str, list[float]]:
    """Per-seed ratios high/low where both are finite: 'median (min-max)' and the ratios."""
    r = [h / lo for lo, h in zip(low, high) if np.isfinite(lo) and np.isfinite(h)]
    if not r:
        return "-", r
    return (f"{np.median(r):.1f}" if len(r) == 1 else f"{np.median(r):.1f} ({min(r):.1f}-{max(r):.1f})"), r


def tables(thresholds: list[dict]) -> list[str]:
    """Markdown lines: per (context, L, m) one table of levels; then the mean growth per level against m."""
    def get(context, L, m, quantity, level):
        found = sorted((t for t in thresholds if (t["context"], t["L"], t["m"], t["quantity"], t["level"]) ==
                        (context, L, m, quantity, level)), key=lambda t: t["grammar_seed"])
        return [_value(t["P_star"]) for t in found], [t["censored"] for t in found]

    lines, growth = [], []
    for context in clustering.CONTEXTS:
        for L in sorted({t["L"] for t in thresholds}):
            for m in sorted({t["m"] for t in thresholds}):
                if not any((t["context"], t["L"], t["m"]) == (context, L, m) for t in thresholds):
                    continue
                lines += [f"\n### context={context}, L={L}, m={m} (v={V}, s={S})\n",
                          "| level l | v m^(l+1) | P* accuracy_l | ratio accuracy P*_l / P*_(l-1) | "
                          "P* validity_(l+1) | ratio validity P*_(l+1) / P*_l | P* validity_novel_(l+1) |",
                          "| --- | --- | --- | --- | --- | --- | --- |"]
                all_ratios: list[float] = []
                for level in range(1, L):
                    acc, acc_c = get(context, L, m, "accuracy", level)
                    val, val_c = get(context, L, m, "validity", level + 1)
                    novel, novel_c = get(context, L, m, "validity_novel", level + 1)
                    acc_ratio, val_ratio = "", ""
                    if level > 1:
                        acc_ratio, r = _ratio_cell(get(context, L, m, "accuracy", level - 1)[0], acc)
                        all_ratios += r
                        val_ratio, _ = _ratio_cell(get(context, L, m, "validity", level)[0], val)
                    lines.append(f"| {level} | {theory.sample_complexity(V, m, level):.0f} | {_cell(acc, acc_c)} | "
                                 f"{acc_ratio} | {_cell(val, val_c)} | {val_ratio} | {_cell(novel, novel_c)} |")
                if all_ratios:
                    growth.append((context, L, m, float(np.exp(np.mean(np.log(all_ratios)))), min(all_ratios),
                                   max(all_ratios), len(all_ratios)))
    lines += level_map(thresholds)
    lines += ["\n### Growth per level of P*(accuracy_l), all levels and seeds pooled (theory: m)\n",
              "| context | L | m | geometric mean ratio | range | ratios |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {c} | {L} | {m} | {g:.2f} | {lo:.1f}-{hi:.1f} | {n} |" for c, L, m, g, lo, hi, n in growth]
    return lines


def level_map(thresholds: list[dict]) -> list[str]:
    """Markdown lines: per context, P*(validity_(l+1)) / P*(accuracy_l) and P*(validity_l) / P*(accuracy_l)."""
    table = {(t["context"], t["L"], t["m"], t["grammar_seed"], t["quantity"], t["level"]): _value(t["P_star"])
             for t in thresholds}
    lines = ["\n### Level map: the learner's validity against its accuracy (per seed, level, L, m)\n",
             "| context | P*(validity_(l+1)) / P*(accuracy_l) | P*(validity_l) / P*(accuracy_l) |",
             "| --- | --- | --- |"]
    for context in clustering.CONTEXTS:
        cells = []
        for shift in (1, 0):
            r = [table.get((c, L, m, seed, "validity", level + shift), np.nan) / P
                 for (c, L, m, seed, quantity, level), P in table.items() if c == context and quantity == "accuracy"]
            r = [x for x in r if np.isfinite(x)]
            cells.append(f"median {np.median(r):.2f}, range {min(r):.2f}-{max(r):.2f} ({len(r)} pairs)" if r else "-")
        lines.append(f"| {context} | {cells[0]} | {cells[1]} |")
    return lines


def write_table(out: str, found: list[dict], grids: dict, wall: float, load: float, cpus: int | None) -> None:
    """Print the tables and write them to ``out``/table.md."""
    seeds = sorted({t["grammar_seed"] for t in found})
    lines = ["# The clustering learner's threshold growth per level", "",
             "Made by `benchmarks/learner_growth.py` (its docstring holds the method). P = 2 ... "
             + ", ".join(f"{grid[-1]} (L={L})" for L, grid in grids.items()) + ", 2 points "
             f"per octave; {NUM_SAMPLES} generated samples per learner; k-means with {RESTARTS} restarts, {ITERATIONS} "
             f"iterations; grammar seeds {', '.join(map(str, seeds))} (data seed and learner seed equal to it). "
             "Cells: median (min-max) over grammar seeds of P*, where the normalized curve last rises through "
             "1/2; 'k/3 above' = not reached by the largest P for k seeds, 'below' = above 1/2 at every P. "
             "accuracy_l and validity_(l+1) need the same clustered level l, whose theory is v m^(l+1). "
             "Ratios: per seed, where both are finite.",
             *tables(found), "",
             f"Wall time {wall / 60:.1f} min; load average at the end {load:.2f} ({cpus} CPUs, shared)."]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(out, "table.md"), "w") as f:
        f.write(text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/results/learner_growth")
    parser.add_argument("--quick", action="store_true", help="L = 4, m = 2, one seed, P up to 4096")
    parser.add_argument("--tables-only", action="store_true",
                        help="rewrite OUT/table.md from OUT/thresholds.jsonl and provenance.json, learning nothing")
    args = parser.parse_args(argv)
    if args.tables_only:
        found = results.read_rows(os.path.join(args.out, "thresholds.jsonl"))
        with open(os.path.join(args.out, "provenance.json")) as f:
            run = json.load(f)
        write_table(args.out, found, run["p_grid"], run["wall_s"], run["load_average"][0], run["cpus"])
        return 0
    Ls, ms, seeds = ((4,), (2,), (0,)) if args.quick else (LS, MS, SEEDS)
    p_max = {L: 4096 if args.quick else P_MAX[L] for L in Ls}
    os.makedirs(args.out, exist_ok=True)
    start, rows, found = time.time(), [], []
    for L in Ls:
        for m in ms:
            for seed in seeds:
                rules = grammar.sample_rules(seed, V, V, m, S, L)
                P_K = p_grid(p_max[L])
                pool_QxD, _ = data.sample_dataset(seed, rules, p_max[L], 0)
                chance_L = np.asarray(clustering.chance_accuracy(rules, jax.random.key(0)))
                for context in clustering.CONTEXTS:
                    curve = learner_rows(L, m, seed, context, P_K, pool_QxD, rules, chance_L)
                    rows += curve
                    for t in clustering.thresholds(curve, ("accuracy", "validity", "validity_novel")):
                        found.append(dict(t, context=context, L=L, m=m, v=V, s=S, grammar_seed=seed))
                    acc = [t["P_star"] for t in found[-(3 * L - 1):] if t["quantity"] == "accuracy"]
                    print(f"L={L} m={m} seed={seed} {context:>6}: P*(accuracy_l) = "
                          + ", ".join("above" if not np.isfinite(x) else f"{x:.0f}" for x in acc)
                          + f"   [{time.time() - start:.0f} s]", flush=True)
    wall = time.time() - start
    write_table(args.out, found, {L: p_grid(p_max[L]).tolist() for L in Ls}, wall, os.getloadavg()[0], os.cpu_count())
    results.write_rows(os.path.join(args.out, "rows.jsonl"), rows)
    results.write_rows(os.path.join(args.out, "thresholds.jsonl"), found)
    results.write_json_atomic(os.path.join(args.out, "provenance.json"),
                              dict(results.provenance(), wall_s=round(wall, 1), load_average=os.getloadavg(),
                                   cpus=os.cpu_count(), p_grid={L: p_grid(p_max[L]).tolist() for L in Ls},
                                   num_samples=NUM_SAMPLES, restarts=RESTARTS, iterations=ITERATIONS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
