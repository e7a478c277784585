"""Train a sweep's grid on this machine's first device.

    python -m launch.local --config sweeps/<exp>.py[:arg] --workdir DIR [--force] [--no_progress]
                           [--tensorboard] [--config.section.key=value ...]
    (installed: rhm-run ...)

Re-running the same command resumes the run. ``--force`` moves an existing work directory aside to
``DIR.bak-<time>`` (nothing is deleted; only work directories, never the current one). Bad input,
a work directory in use by another process, and I/O errors (disk full, read-only, unreadable
checkpoint) exit with status 2 and one error line. SIGINT / SIGTERM save a checkpoint after the
current device call and exit with 128 + the signal number (130 / 143) and one line; during set-up
or compilation (nothing to save yet) they stop at once with one line, and so does a second Ctrl-C
(status 130), keeping the newest checkpoint. At the end it prints each
model at its best evaluation and where the wall time went (``summary.txt``, ``rhm_jax.timing``).
"""
from __future__ import annotations

from rhm_jax import hostflags

hostflags.apply()  # before anything imports jax: a host device per core on the CPU (issue 25)

import os
import sys

from launch import argument_parser, error_line, setup_logging
from rhm_jax import config as config_lib
from rhm_jax import results, runner


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, run the sweep; returns the exit status."""
    parser = argument_parser("local", __doc__, overrides=True)

    parser.add_argument("--config", required=True, help="sweeps/<exp>.py or sweeps/<exp>.py:arg")
    parser.add_argument("--workdir", required=True, help="work directory (created, or resumed)")
    parser.add_argument("--force", action="store_true", help="move an existing work directory aside")
    parser.add_argument("--no_progress", action="store_true", help="no progress lines")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write TensorBoard event files to DIR/tensorboard (needs tensorboardX)")
    args, overrides = parser.parse(argv)
    setup_logging()
    try:
        config = config_lib.load(args.config, overrides)
        points = config_lib.load_sweep(args.config, overrides)
        runner.run(config, args.workdir, points=points, force=args.force, progress=not args.no_progress,
                  tensorboard=args.tensorboard, exit_at_once=True)
    except runner.Interrupted as stop:
        print(f"stopped: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("stopped at once by a second Ctrl-C: the newest checkpoint is kept; run the same command"
              " again to resume from it", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:  # bad input, a busy or unwritable directory, disk full
        print(error_line(err), file=sys.stderr)
        return 2
    with open(os.path.join(args.workdir, results.SUMMARY_FILE)) as f:
        print(f.read(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
