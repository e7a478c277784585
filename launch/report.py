"""Figures and report.md from work directories: python -m launch.report --workdir DIR [DIR ...] [--out OUTDIR]."""
import argparse

from rhm_jax import report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", nargs="+", required=True, help="one or more work directories")
    parser.add_argument("--out", default=None, help="output folder (default: <first workdir>/report)")
    parser.add_argument("--method", default="sigmoid", choices=("sigmoid", "interp"),
                        help="threshold estimate: logistic fit in log P, or monotone interpolation")
    parser.add_argument("--at", default="last", choices=("last", "best"),
                        help="evaluation of each model that counts: its last, or its lowest test loss")
    parser.add_argument("--time_axis", default="epoch", choices=("epoch", "step"),
                        help="time axis of the time-course figures: epochs (the paper's unit) or steps")
    args = parser.parse_args(argv)
    paths = report.make_report(args.workdir, args.out, args.method, args.at, args.time_axis)
    print(f"wrote {len(paths['figures'])} figures and {paths['report'][0]}")


if __name__ == "__main__":
    main()
