"""Overhead of the run loop (checkpoints, metrics rows, bookkeeping) over bare device calls.

    python benchmarks/sweep_loop.py [--steps 1024] [--steps_per_call 64] [--workdir /tmp/sweep_loop]

Runs the smoke grid (4 tiny models) through ``runner.run`` and, with the same compiled programs, the
same chunk calls and evaluations with no checkpoints or files; prints both wall times. The smoke
models are tiny, so this bounds the loop's fixed costs (a real grid's device time dwarfs them).
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rhm_jax import config as config_lib  # noqa: E402
from rhm_jax import plan, program, runner, subgrids, train  # noqa: E402


def bare(config, progs, stops_evals):
    """The same chunk calls and evaluations as the loop, nothing else."""
    part = subgrids.make_part(progs, list(range(len(progs.grid_rows))))
    state = jax.device_put(train.init_state(progs.settings.train, progs.setup.network, part.grid), jax.devices()[0])
    t, K = 0, config.train.steps_per_call
    jax.block_until_ready(progs.evaluator(state, part.grid, program.eval_key(progs.settings.run.seed, 0)))
    for stop, evaluate in stops_evals:
        while t < stop:
            n = min(K, stop - t)
            state, _ = progs.step_fn(state, part.grid, progs.pool, n)
            t += n
        if evaluate:
            jax.block_until_ready(progs.evaluator(state, part.grid, program.eval_key(progs.settings.run.seed, t)))
    jax.block_until_ready(state)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1024)
    parser.add_argument("--steps_per_call", type=int, default=64)
    parser.add_argument("--workdir", default="/tmp/sweep_loop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, force=True)
    config = config_lib.load("sweeps/smoke.py", [f"--config.train.num_steps={args.steps}",
                                                 f"--config.train.steps_per_call={args.steps_per_call}"])
    shutil.rmtree(args.workdir, ignore_errors=True)
    runner.run(config, args.workdir, progress=False)  # compiles
    shutil.rmtree(args.workdir)
    start = time.perf_counter()
    runner.run(config, args.workdir, progress=False)
    loop = time.perf_counter() - start
    progs = program.build(plan.single(config).settings, plan.single(config).rows)
    evals = set(subgrids.schedule(args.steps, config.eval.per_octave))
    stops = [(s, True) for s in sorted(evals) if s > 0]
    start = time.perf_counter()
    bare(config, progs, stops)
    device = time.perf_counter() - start
    print(f"{jax.devices()[0].platform}: {args.steps} steps x 4 models, K={args.steps_per_call}, "
          f"{len(evals)} evaluations + checkpoints: runner.run {loop:.2f} s, bare calls {device:.2f} s, "
          f"loop overhead {loop - device:.2f} s ({(loop - device) / len(evals) * 1e3:.0f} ms per evaluation point)")


if __name__ == "__main__":
    main()
