"""Time estimate of sweeps/reproduction_cpu.py: a few chunks of its grid and one evaluation.

    nice -n 10 python benchmarks/reproduction_time.py [--spec sweeps/reproduction_cpu.py:seed=0] [--calls 3]

Prints compilation and steady-state times, the process's CPU time and cores used, the load
average, and the whole run's projection (all grammar seeds, at the measured rates; divide by the
idle machine's speed-up yourself, which a shared machine cannot measure).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rhm_jax import config as config_lib  # noqa: E402
from rhm_jax import plan, program, subgrids  # noqa: E402


def timed(fn):
    """(seconds, result) of fn(), waiting for the device."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="sweeps/reproduction_cpu.py:seed=0")
    parser.add_argument("--calls", type=int, default=3, help="timed chunk calls (train.steps_per_call steps each)")
    parser.add_argument("--seeds", type=int, default=3, help="grammar seeds of the whole run")
    args = parser.parse_args()
    wall0 = time.perf_counter()
    config = config_lib.load(args.spec)
    progs = program.build(plan.single(config).settings, plan.single(config).rows)
    part = subgrids.make_part(progs, list(range(len(progs.grid_rows))))
    state = progs.place.init_state(progs.settings.train, progs.setup.network, part.grid)
    n, models = int(config.train.steps_per_call), len(progs.grid_rows)

    def chunk():
        return progs.step_fn(state, part.grid, progs.pool, n)[0]

    compile_train, state = timed(chunk)
    train_s = 0.0
    for _ in range(args.calls):
        dt, state = timed(chunk)
        train_s += dt
    compile_eval, _ = timed(lambda: progs.evaluator(state, part.grid, program.eval_key(progs.settings.run.seed, 1)))
    eval_s, _ = timed(lambda: progs.evaluator(state, part.grid, program.eval_key(progs.settings.run.seed, 2)))
    wall, cpu = time.perf_counter() - wall0, resource.getrusage(resource.RUSAGE_SELF).ru_utime
    rate = models * n * args.calls / train_s
    evals = len(subgrids.schedule(int(config.train.num_steps), int(config.eval.per_octave)))
    per_seed = models * config.train.num_steps / rate + evals * eval_s + compile_train + compile_eval
    print(f"{models} models: first chunk (compiles) {compile_train:.0f} s, then {rate:.1f} model-steps/s;"
          f" first evaluation {compile_eval:.0f} s, then {eval_s:.1f} s ({config.eval.num_samples} samples x"
          f" T={config.process.T} per model)")
    print(f"process: {cpu:.0f} s CPU in {wall:.0f} s wall ({cpu / wall:.2f} cores); load {os.getloadavg()}")
    print(f"projection at these rates: {per_seed / 60:.0f} min per grammar seed ({evals} evaluations,"
          f" {evals * eval_s / per_seed:.0%} of it sampling), {args.seeds * per_seed / 60:.0f} min for {args.seeds}")


if __name__ == "__main__":
    main()
