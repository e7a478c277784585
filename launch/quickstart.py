"""The README's main job: the quick P sweep on this machine, then its report (tables and plots).

    python -m launch.quickstart [--workdir runs/quick] [--config sweeps/hierarchy_in_p.py:quick]
                                [--config.section.key=value ...]
    (installed: rhm-quickstart ...)

Re-running resumes (or, when finished, only redraws the report). The summary it prints ends with
where the wall time went (``rhm_jax.timing``), the learner and the report included as 'report'. The clustering learner
(``rhm_jax.clustering``, seconds) runs on the same training rows, so the report draws its
validity thresholds beside the bpUNets' (its accuracy thresholds get a table of their own).
"""
from __future__ import annotations

from rhm_jax import hostflags

hostflags.apply()  # before anything imports jax: a host device per core on the CPU (issue 25)

import logging
import os
import sys
import time

from launch import argument_parser, error_line, setup_logging
from rhm_jax import config as config_lib
from rhm_jax import clustering, lock, report, results, runner

log = logging.getLogger("launch.quickstart")


def main(argv: list[str] | None = None) -> int:
    """Train the quick grid, then write figures and report.md; returns the exit status."""
    parser = argument_parser("quickstart", __doc__, overrides=True)
    parser.add_argument("--workdir", default="runs/quick")
    parser.add_argument("--config", default="sweeps/hierarchy_in_p.py:quick")
    args, overrides = parser.parse(argv)
    setup_logging()
    try:
        config = config_lib.load(args.config, overrides)
        points = config_lib.load_sweep(args.config, overrides)
        runner.run(config, args.workdir, points=points)
        with lock.hold(args.workdir, "quickstart"):  # the learner's rows and the report, one writer at a time
            after_run = time.monotonic()
            log.info("the clustering learner on the same training rows (launch.cluster)")
            results.write_rows(clustering.path(args.workdir), clustering.run_sweep(config, points=points))
            began = time.monotonic()
            log.info("writing the report (launch.report): tables and figures")
            paths = report.make_report([args.workdir], None, at=results.DEFAULT_READING)
            log.info("report written in %.0f s", time.monotonic() - began)
            # the learner and the report: the 'report' part of the wall-time split, in summary.txt
            results.record_report_time(args.workdir, time.monotonic() - after_run)
            rows = results.read_rows(os.path.join(args.workdir, results.METRICS_FILE))
            results.write_summary(args.workdir, results.summary_table(rows), results.split_line(args.workdir))
    except runner.Interrupted as stop:  # a checkpoint is saved: re-running resumes
        print(f"stopped: {stop}", file=sys.stderr)
        return 128 + stop.signum
    except KeyboardInterrupt:
        print("stopped at once by a second Ctrl-C: re-run to resume from the newest checkpoint", file=sys.stderr)
        return 130
    except (ValueError, OSError) as err:
        print(error_line(err), file=sys.stderr)
        return 2
    with open(os.path.join(args.workdir, results.SUMMARY_FILE)) as f:
        print(f.read(), end="")
    print(f"results: {args.workdir}/metrics.jsonl; report: {paths['report'][0]} "
          f"with {len(paths['figures'])} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
