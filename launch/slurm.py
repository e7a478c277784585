"""Train a sweep's grid on a cluster: a job array of K slices (submitit), requeued on preemption.

    python -m launch.slurm --config sweeps/<exp>.py[:arg] --workdir DIR --slices K
        [--executor auto|slurm|local] [--timeout_min 240] [--gpus_per_task 1] [--cpus_per_task 8]
        [--mem_gb 64] [--partition NAME] [--max_parallel N] [--wait] [--force]
        [--config.section.key=value ...]
    (installed: rhm-slurm ..., needs the 'cluster' extra: submitit)

Task k trains models [k*M/K, (k+1)*M/K) of the sweep's M models (``run.grid_slice='k/K'``; a sweep
over static settings runs its programs one after another within each task) in its own work
directory ``DIR/slice_<k>``, with all the devices it is given (``rhm_jax.sharding``). ``DIR`` holds
the full config (``config.json``), ``array.json`` (K and the job ids of each submission) and
submitit's logs (``DIR/submitit``). On preemption or time-out SLURM signals the task (submitit's
preemption signal, SIGUSR2 by default, or SIGTERM): ``runner.run`` finishes the current device
call and saves a checkpoint, then the signal goes on to submitit's own handler, which calls
``SliceTask.checkpoint`` and requeues the task (SIGUSR2) or lets it end (SIGTERM: SLURM requeues
preempted jobs itself); the requeued task resumes from that checkpoint. SIGINT or SIGTERM during set-up or
compilation (before a sub-grid's first device call has returned: nothing to save) end the task at once
with one line and status 130 / 143, as under ``launch.local``. A task killed outright is resubmitted by running the same command
again: only slices without a finished run are submitted. ``rhm_jax.results.load(DIR)`` merges the
slices into one table with global model indices, so the report reads ``DIR`` as one run. Run a new
submission only after the previous array has ended (two tasks must never share a slice directory).
Bad input exits with status 2 and one error line.
"""
from __future__ import annotations

from rhm_jax import hostflags

hostflags.apply()  # before anything imports jax: a host device per core on the CPU (issue 25)

import copy
import datetime
import json
import logging
import os
import signal
import sys
from typing import Any, Sequence

import ml_collections

from launch import argument_parser, error_line, require, setup_logging

submitit = require("submitit", "cluster", "launch.slurm")  # before the rest: one line, not a traceback
from rhm_jax import config as config_lib
from rhm_jax import plan, results, runner

log = logging.getLogger(__name__)

ARRAY_FILE = results.ARRAY_FILE
EXECUTORS = ("auto", "slurm", "local")


class SliceTask(submitit.helpers.Checkpointable):
    """One task of the array: ``runner.run`` of one grid slice in its work directory (idempotent)."""

    def __call__(self, config_values: dict, workdir: str, points: list[dict] | None = None) -> str:
        setup_logging()
        stops = (signal.SIGINT, signal.SIGTERM, preemption_signal())
        try:
            # exit_at_once: SIGINT / SIGTERM during set-up or compilation end the task at once (nothing to
            # save yet), as under launch.local; submitit's requeue signal always waits for the boundary.
            runner.run(config_lib.from_dict(config_values), workdir, points=points, progress=False, stop_signals=stops,
                       exit_at_once=True)
        except runner.Interrupted as stop:  # saved; submitit's handlers are back: let them requeue
            log.warning("%s", stop)
            signal.raise_signal(stop.signum)
            raise
        return workdir

    def checkpoint(self, config_values: dict, workdir: str,
                   points: list[dict] | None = None) -> submitit.helpers.DelayedSubmission:
        """Requeue this very call: the progress lives in the rhm_jax checkpoints of ``workdir``."""
        return submitit.helpers.DelayedSubmission(self, config_values, workdir, points)


def preemption_signal() -> int:
    """The signal submitit requeues on: SIG<$SUBMITIT_PREEMPT_SIGNAL>, USR2 by default."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)


def slice_dir(root: str, k: int) -> str:
    """Work directory of slice k."""
    return os.path.join(root, f"slice_{k}")


def slice_config(config: ml_collections.ConfigDict, k: int, K: int) -> ml_collections.ConfigDict:
    """The config of slice k of K: the same experiment, ``run.grid_slice='k/K'``."""
    sliced = copy.deepcopy(config)
    sliced.run.grid_slice = f"{k}/{K}"
    return sliced


def finished(workdir: str) -> bool:
    """True when the run in ``workdir`` reached its end (it writes its summary table last)."""
    return os.path.isfile(os.path.join(workdir, results.SUMMARY_FILE))


def prepare(config: ml_collections.ConfigDict, root: str, K: int, force: bool = False,
            points: Sequence[dict] | None = None) -> list[int]:
    """Check the config, the sweep ``points`` and K, write ``DIR/config.json`` and ``array.json``;
    the slices to submit.

    A resubmission needs the same config (execution keys aside) and the same K; it returns the
    slices whose run has not finished.
    """
    if config.run.get("grid_slice", ""):
        raise ValueError(f"run.grid_slice={config.run.grid_slice!r} must be '' here: --slices splits the grid")
    config_lib.validate(config)
    sweep = plan.make_plan(config, [{}] if points is None else points)
    rows = [r for program in sweep.programs for r in program.rows]
    if not isinstance(K, int) or not 1 <= K <= len(rows):
        raise ValueError(f"--slices={K} must lie in [1, M={len(rows)}] (the sweep's model count)")
    if not str(root).strip():
        raise ValueError(f"--workdir={str(root)!r} names no directory; give a path")
    root = os.path.abspath(root)
    results.check_layout(root, "array")  # a local run's directory is not resumed as an array
    status = results.prepare_workdir(root, config, rows, force=force, points=sweep.points)
    path = os.path.join(root, ARRAY_FILE)
    if status == "resume" and os.path.exists(path):
        with open(path) as f:
            stored = json.load(f)["slices"]
        if stored != K:
            raise ValueError(f"--slices={K} but {root} holds an array of {stored} slices; use --slices={stored}")
    elif not os.path.exists(path):
        results.write_json_atomic(path, {"slices": K, "submissions": []})
    return [k for k in range(K) if not finished(slice_dir(root, k))]


def make_executor(kind: str, folder: str, timeout_min: int = 240, gpus_per_task: int = 1,
                  cpus_per_task: int | None = None, mem_gb: int | None = None, partition: str | None = None,
                  max_parallel: int | None = None) -> submitit.AutoExecutor:
    """A submitit executor: SLURM (``auto`` picks it where sbatch exists) or local processes."""
    if kind not in EXECUTORS:
        raise ValueError(f"--executor={kind!r} must be one of {EXECUTORS}")
    if timeout_min < 1 or gpus_per_task < 0:
        raise ValueError(f"need --timeout_min={timeout_min} >= 1 and --gpus_per_task={gpus_per_task} >= 0")
    executor = submitit.AutoExecutor(folder=folder, cluster=None if kind == "auto" else kind)
    params: dict[str, Any] = dict(name="rhm_jax", timeout_min=timeout_min, nodes=1, tasks_per_node=1)
    if executor.cluster == "slurm":
        params["gpus_per_node"] = gpus_per_task
        params.update({k: v for k, v in dict(cpus_per_task=cpus_per_task, mem_gb=mem_gb, slurm_partition=partition,
                                              slurm_array_parallelism=max_parallel).items() if v is not None})
    executor.update_parameters(**params)
    return executor


def submit(config: ml_collections.ConfigDict, root: str, slices: Sequence[int], K: int,
           executor: submitit.AutoExecutor, points: Sequence[dict] | None = None) -> list[submitit.Job]:
    """Submit the given slices as one array; record their job ids in ``array.json``."""
    root = os.path.abspath(root)
    task = SliceTask()
    with executor.batch():  # one job array on SLURM
        pending = [executor.submit(task, config_lib.to_dict(slice_config(config, k, K)), slice_dir(root, k),
                                   None if points is None else results.to_json_value(list(points)))
                   for k in slices]
    path = os.path.join(root, ARRAY_FILE)
    with open(path) as f:
        manifest = json.load(f)
    manifest["submissions"].append({
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jobs": {str(k): job.job_id for k, job in zip(slices, pending)},
    })
    results.write_json_atomic(path, manifest)
    return pending


def wait(jobs: Sequence[submitit.Job], slices: Sequence[int]) -> list[int]:
    """Wait for every job; the slices whose job failed or was killed."""
    failed = []
    for k, job in zip(slices, jobs):
        try:
            job.result()
        except Exception as err:  # submitit raises its own types for failed and killed jobs
            log.warning("slice %d (job %s) did not finish: %s", k, job.job_id, str(err).splitlines()[0] if str(err) else err)
            failed.append(k)
    return failed


def main(argv: list[str] | None = None) -> int:
    """Parse the command line, submit (and optionally wait for) the array; returns the exit status."""
    parser = argument_parser("slurm", __doc__, overrides=True)
    parser.add_argument("--config", required=True, help="sweeps/<exp>.py or sweeps/<exp>.py:arg")
    parser.add_argument("--workdir", required=True, help="root work directory of the array")
    parser.add_argument("--slices", type=int, required=True, help="K, tasks of the array (1 <= K <= M)")
    parser.add_argument("--executor", default="auto", choices=EXECUTORS)
    parser.add_argument("--timeout_min", type=int, default=240, help="wall time per task before requeue")
    parser.add_argument("--gpus_per_task", type=int, default=1)
    parser.add_argument("--cpus_per_task", type=int, default=None)
    parser.add_argument("--mem_gb", type=int, default=None)
    parser.add_argument("--partition", default=None)
    parser.add_argument("--max_parallel", type=int, default=None, help="tasks running at once (SLURM %%N)")
    parser.add_argument("--wait", action="store_true", help="wait for the array; status 1 if a slice failed")
    parser.add_argument("--force", action="store_true", help="move an existing root work directory aside")
    args, overrides = parser.parse(argv)
    setup_logging()
    try:
        config = config_lib.load(args.config, overrides)
        points = config_lib.load_sweep(args.config, overrides)
        slices = prepare(config, args.workdir, args.slices, force=args.force, points=points)
        executor = make_executor(args.executor, os.path.join(os.path.abspath(args.workdir), "submitit"),
                                 args.timeout_min, args.gpus_per_task, args.cpus_per_task, args.mem_gb,
                                 args.partition, args.max_parallel)
    except (ValueError, OSError) as err:
        print(error_line(err), file=sys.stderr)
        return 2
    if not slices:
        print(f"all {args.slices} slices of {args.workdir} have finished; nothing to submit")
        return 0
    jobs = submit(config, args.workdir, slices, args.slices, executor, points)
    print(f"submitted slices {slices} of {args.slices}: jobs {[job.job_id for job in jobs]}")
    if args.wait:
        failed = wait(jobs, slices)
        if failed:
            print(f"slices {failed} did not finish; run the same command again to resubmit them", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
