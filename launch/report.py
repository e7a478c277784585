"""Figures and report.md from work directories: python -m launch.report --workdir DIR [DIR ...] [--out OUTDIR].

Writing into a work directory (the default ``<first workdir>/report``) takes its lock: a running
run's directory is refused (status 2, one line); pass ``--out`` elsewhere to report on it meanwhile.
"""
import argparse
import contextlib
import os
import sys

from rhm_jax import lock, report


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, write the report; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--workdir", nargs="+", required=True, help="one or more work directories")
    parser.add_argument("--out", default=None, help="output folder (default: <first workdir>/report)")
    parser.add_argument("--method", default="sigmoid", choices=("sigmoid", "interp"),
                        help="threshold estimate: logistic fit in log P, or monotone interpolation")
    parser.add_argument("--at", default="last", choices=("last", "best"),
                        help="evaluation of each model that counts: its last, or its lowest test loss")
    parser.add_argument("--time_axis", default="epoch", choices=("epoch", "step"),
                        help="time axis of the time-course figures: epochs (the paper's unit) or steps")
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out or os.path.join(args.workdir[0], "report"))
    inside = [w for w in args.workdir if os.path.commonpath([out, os.path.abspath(w)]) == os.path.abspath(w)]
    try:
        with lock.hold(inside[0], "report") if inside else contextlib.nullcontext():
            paths = report.make_report(args.workdir, out, args.method, args.at, args.time_axis)
    except (ValueError, OSError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths['figures'])} figures and {paths['report'][0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
