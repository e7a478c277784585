"""Issue 25 experiment: can one host device keep both cores busy with two independent halves of a grid?

    python docs/results/cpu_speed/two_halves_experiment.py [SECONDS]   # from the repository root

A W=64 grid of 8 models (``benchmarks/grid_throughput.py``'s setting) as one vmapped training chunk,
against two independent chunks of 4 models (two while loops that share nothing) compiled into one
program on one device; both timed call by call in turn for SECONDS (default 20). Measured
2026-12-08 (docs/results/cpu_speed/README.md): +2 %, +3 % with one thread per dot.
"""
from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import grid_throughput as gt  # noqa: E402
from rhm_jax import settings, train  # noqa: E402

M, K = 8, 10


def main(seconds: float) -> None:
    whole = gt.compile_training(gt.make_config(64, M, K, 1024, "float32"))
    config = gt.make_config(64, M // 2, K, 1024, "float32")
    _, pool, _, process, network, grid = gt.build(config)
    typed = settings.TrainSettings.of(config)
    chunk = train.make_train_chunk(typed, process, network)
    both = jax.jit(lambda a, b, grid, pool, n: (chunk(a, grid, pool, n), chunk(b, grid, pool, n)),
                   donate_argnums=(0, 1))
    states = [train.init_state(typed, network, grid) for _ in range(2)]
    compiled = both.lower(*states, grid, pool, jnp.int32(K)).compile()

    def call_halves() -> float:
        start = time.perf_counter()
        (a, _), (b, _) = compiled(*states, grid, pool, jnp.int32(K))
        jax.block_until_ready((a, b))
        states[:] = [a, b]
        return time.perf_counter() - start

    call_halves()  # warm-up
    whole_s, halves_s = [], []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        whole_s.append(gt.timed_call(whole))
        halves_s.append(call_halves())
    print(f"one vmapped grid of {M}: {M * K / np.median(whole_s):.1f} model-steps/s; two halves of {M // 2} in one"
          f" program: {M * K / np.median(halves_s):.1f}; {len(whole_s)} calls each; load {gt.load()}")


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 20.0)
