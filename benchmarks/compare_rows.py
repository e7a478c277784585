"""Compare the metric rows of two work directories of the same sweep (e.g. before and after a change).

    python benchmarks/compare_rows.py runs/quick_before runs/quick_after

Rows are matched on (program's grid columns, model, step). Prints, per column kind: losses (every
column with 'loss' in its name): the largest |difference| and relative difference; every other
numeric column: how many rows differ at all and the largest |difference|, and the columns that
are identical bit for bit. Exit status 0 whatever it finds (it reports; the reader judges).
"""
from __future__ import annotations

import argparse
import json
import math
import os

KEYS = ("m", "model", "step")


def read(workdir: str) -> dict[tuple, dict]:
    """The metric rows of a work directory keyed by KEYS (m missing reads as None)."""
    rows = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            row = json.loads(line)
            rows[tuple(row.get(k) for k in KEYS)] = row
    return rows


def number(value) -> float | None:
    """A row value as a float (bools as 0/1), None for text, lists or null."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def compare(a: dict[tuple, dict], b: dict[tuple, dict]) -> dict:
    """Per column: rows compared, rows that differ, max |diff|, max relative diff."""
    common = sorted(set(a) & set(b), key=str)
    out = {}
    for key in common:
        for column in sorted(set(a[key]) | set(b[key])):
            x, y = number(a[key].get(column)), number(b[key].get(column))
            if x is None or y is None:
                continue
            stat = out.setdefault(column, dict(rows=0, differ=0, max_abs=0.0, max_rel=0.0))
            stat["rows"] += 1
            same = x == y or (math.isnan(x) and math.isnan(y))
            if not same:
                stat["differ"] += 1
                diff = abs(x - y)
                stat["max_abs"] = max(stat["max_abs"], diff)
                stat["max_rel"] = max(stat["max_rel"], diff / max(abs(x), abs(y), 1e-30))
    return dict(only_a=len(set(a) - set(b)), only_b=len(set(b) - set(a)), common=len(common), columns=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before")
    parser.add_argument("after")
    args = parser.parse_args()
    found = compare(read(args.before), read(args.after))
    print(f"rows: {found['common']} matched, {found['only_a']} only before, {found['only_b']} only after")
    columns = found["columns"]
    losses = {c: s for c, s in columns.items() if "loss" in c}
    other = {c: s for c, s in columns.items() if "loss" not in c}
    worst = max(losses.items(), key=lambda kv: kv[1]["max_abs"], default=None)
    if worst:
        print(f"losses ({len(losses)} columns): {sum(s['differ'] for s in losses.values())} values differ; "
              f"max |diff| {worst[1]['max_abs']:.3g} ({worst[0]}), "
              f"max relative {max(s['max_rel'] for s in losses.values()):.3g}")
    same = sorted(c for c, s in other.items() if s["differ"] == 0)
    print(f"other columns identical in every row ({len(same)}): {', '.join(same)}")
    for column, s in sorted(other.items()):
        if s["differ"]:
            print(f"  {column}: {s['differ']} of {s['rows']} rows differ, max |diff| {s['max_abs']:.3g}")


if __name__ == "__main__":
    main()
