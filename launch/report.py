"""Figures and report.md from work directories.

    python -m launch.report --workdir DIR [DIR ...] [--out OUTDIR] [--at best|last] [--method interp|sigmoid]
                            [--time_axis epoch|step]
    (installed: rhm-report ...)

A directory that is missing, or holds no metrics rows, exits with status 2 and one error line,
before anything is written. Writing into a work directory (the default ``<first workdir>/report``)
takes its lock: a running run's directory is refused (status 2, one line); pass ``--out``
elsewhere to report on it meanwhile.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys

from launch import argument_parser, error_line, setup_logging
from rhm_jax import lock, report, results, thresholds


def check_workdir(workdir: str) -> None:
    """ValueError (one line) unless ``workdir`` is a work directory with at least one metrics row."""
    if not os.path.isdir(workdir):
        raise ValueError(f"--workdir {workdir!r}: no such directory")
    results.read_config_json(workdir)  # raises when it is not a work directory
    if not results.workdir_rows(workdir):
        raise ValueError(f"--workdir {workdir!r}: no evaluations yet ({results.METRICS_FILE} is empty or missing)")


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, write the report; returns the exit status."""
    parser = argument_parser("report", __doc__)
    parser.add_argument("--workdir", nargs="+", required=True, help="one or more work directories")
    parser.add_argument("--out", default=None, help="output folder (default: <first workdir>/report)")
    parser.add_argument("--method", default=thresholds.DEFAULT_METHOD, choices=tuple(thresholds.METHODS),
                        help="threshold estimate: " + "; ".join(f"{k}: {v}" for k, v in thresholds.METHODS.items())
                             + f" (default {thresholds.DEFAULT_METHOD})")
    parser.add_argument("--at", default=results.DEFAULT_READING, choices=tuple(results.READINGS),
                        help="evaluation of each model that counts: its lowest test loss (best) or its last;"
                             f" default {results.DEFAULT_READING}, as the end-of-run summary")
    parser.add_argument("--time_axis", default="epoch", choices=("epoch", "step"),
                        help="time axis of the time-course figures: epochs (the paper's unit) or steps")
    args, _ = parser.parse(argv)
    setup_logging()
    out = os.path.abspath(args.out or os.path.join(args.workdir[0], "report"))
    inside = [w for w in args.workdir if os.path.commonpath([out, os.path.abspath(w)]) == os.path.abspath(w)]
    try:
        for workdir in args.workdir:
            check_workdir(workdir)  # before the lock: nothing is created for a missing directory
        with lock.hold(inside[0], "report") if inside else contextlib.nullcontext():
            logging.getLogger("launch.report").info("writing the report into %s: tables and figures", out)
            paths = report.make_report(args.workdir, out, args.method, args.at, args.time_axis)
    except (ValueError, OSError) as err:
        print(error_line(err), file=sys.stderr)
        return 2
    print(f"wrote {len(paths['figures'])} figures and {paths['report'][0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
