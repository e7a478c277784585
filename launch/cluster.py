"""Run the theory's clustering learner (no network) on a sweep's datasets.

    python -m launch.cluster --workdir DIR [--config sweeps/<exp>.py[:arg]] [--context tokens|labels]
                             [--config.section.key=value ...]
    (installed: rhm-cluster ...)

Writes ``DIR/clustering.jsonl`` (``clustering_labels.jsonl`` with ``--context labels``): one row
per dataset, P and model seed of the sweep, the learner trained on the same P rows as that model (same
grammar seed, data seed and pool), and prints its thresholds beside v m**(l+1). Without
``--config`` it reads ``DIR/config.json``, the record of a sweep run there; with both, their
grammar and data sections must agree. Bad input exits with status 2.
"""
from __future__ import annotations

import os
import sys

from launch import argument_parser, error_line, setup_logging
from rhm_jax import clustering, lock, results
from rhm_jax import config as config_lib


def load_config(workdir: str, spec: str | None, overrides: list[str]):
    """(config, sweep points): ``spec``'s (with overrides), else the work directory's config.json."""
    stored = os.path.join(workdir, "config.json")
    if spec is None:
        if not os.path.exists(stored):
            raise ValueError(f"--workdir {workdir} holds no config.json; pass --config")
        recorded = results.read_config_json(workdir)
        config = config_lib.from_dict(recorded["config"])
        for item in overrides:
            config_lib.apply_override(config, item)
        return config, recorded.get("points") or [{}]
    config = config_lib.load(spec, overrides)
    points = config_lib.load_sweep(spec, overrides)
    if os.path.exists(stored):
        recorded = results.read_config_json(workdir)
        mine = config_lib.to_dict(config)
        for section in ("grammar", "data"):
            diff = config_lib.differences({section: recorded["config"][section]}, {section: mine[section]})
            if diff:
                raise ValueError(f"--config differs from {stored} in {section}: {', '.join(diff)}")
        if (recorded.get("points") or [{}]) != results.to_json_value(points):
            raise ValueError(f"--config's sweep differs from the one recorded in {stored}")
    return config, points


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the learner, write its rows; returns the exit status."""
    parser = argument_parser("cluster", __doc__, overrides=True)
    parser.add_argument("--workdir", required=True, help="work directory (a sweep's, or a new one)")
    parser.add_argument("--config", default=None, help="sweeps/<exp>.py or sweeps/<exp>.py:arg")
    parser.add_argument("--context", default="tokens", choices=clustering.CONTEXTS,
                        help="what describes a tuple: its sibling blocks' tokens (the theory's), or their labels")
    args, overrides = parser.parse(argv)
    setup_logging()  # a line per dataset learned
    try:
        config, points = load_config(args.workdir, args.config, overrides)
        rows = clustering.run_sweep(config, args.context, points=points)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    path = clustering.path(args.workdir, args.context)
    try:
        os.makedirs(args.workdir, exist_ok=True)
        with lock.hold(args.workdir, "clustering learner"):  # never beside a run writing the directory
            results.write_rows(path, rows)
    except (ValueError, OSError) as err:
        print(error_line(err), file=sys.stderr)
        return 2
    print(f"wrote {path} ({len(rows)} rows)")
    for where, part in clustering.curves(rows):
        print("  " + ", ".join(f"{k}={v}" for k, v in where.items()))
        for t in clustering.thresholds(part):
            value = f"{t['P_star']:.0f}" if t["censored"] == "" else f"- ({t['censored']})"
            print(f"  {t['quantity']:>14} level {t['level']}: P* = {value:>12}   "
                  f"v m^{t['clustered'] + 1} = {t['theory']:.0f} (needs level {t['clustered']} clustered)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
