"""Re-score a run's checkpoints with more samples or sampler steps, without touching the run.

    python -m launch.score --workdir DIR [--step N|best|last] [--num_samples K] [--sampler_steps S]
    (installed: rhm-score ...)

Writes DIR/score_<step>_<K>_<S>.jsonl for every kept checkpoint (or step N, or each model at its
best / last evaluation, as ``notebook.load(step=...)`` and the report read it) and prints a table per
step. A missing step, a broken ``--step`` checkpoint, a work directory without checkpoints, one that
cannot be written or that a run holds (its lock) exit with status 2 and one error line before any
computation. Scoring every step skips broken checkpoints with a warning.
"""
from __future__ import annotations

from rhm_jax import hostflags

hostflags.apply()  # before anything imports jax: a host device per core on the CPU (issue 25)

import argparse
import sys

from launch import argument_parser, error_line, setup_logging
from rhm_jax import rescore, results


def step_argument(text: str) -> int | str:
    """``--step``: a checkpoint step (an integer >= 0) or a reading, 'best' or 'last'."""
    if text in results.READINGS:
        return text
    try:
        step = int(text)
    except ValueError:
        step = -1
    if step < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a checkpoint step (an integer >= 0) nor one of "
                                         f"{', '.join(results.READINGS)}")
    return step


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, re-score; returns the exit status."""
    parser = argument_parser("score", __doc__)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--step", type=step_argument, default=None,
                        help="a checkpoint step, or best / last: each model at its best (lowest test loss) or last"
                             " evaluation (default: every kept checkpoint)")
    parser.add_argument("--num_samples", type=int, default=None, help="default: the run's eval.num_samples")
    parser.add_argument("--sampler_steps", default=None,
                        help="an integer or 'exact' (default: the run's process.sampler_steps)")
    args, _ = parser.parse(argv)
    setup_logging()
    try:
        by_step = rescore.score(args.workdir, step=args.step, num_samples=args.num_samples,
                               sampler_steps=args.sampler_steps)
    except (ValueError, OSError) as err:  # bad input, busy or unwritable directory, read failure
        print(error_line(err), file=sys.stderr)
        return 2
    for step, rows in by_step.items():
        print(f"step {step}:\n{results.summary_table(rows, title=False)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
