"""Time of the sweep planner: a 1,000-point sweep expanded, validated and grouped (target: under 1 s).

    python benchmarks/plan_speed.py [--repeats 5]

The sweep: the paper's m=4 P grid (11 values of P, one model seed) x 2 widths x 5 learning-rate
warmups x 10 grammar seeds x 10 data seeds = 1,000 points, 11,000 models, 2 programs. Prints the
time of ``plan.make_plan`` (every point's config validated, every model's grid row built) and of
building the declaration, best and median of the repeats.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from rhm_jax import config as config_lib  # noqa: E402
from rhm_jax import plan  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def declare() -> list[dict]:
    """The 1,000 points."""
    return plan.product(plan.sweep("network.width", [256, 1024]),
                        plan.sweep("train.warmup_steps", [0, 10, 100, 1000, 10000]),
                        plan.sweep("grammar.seed", list(range(10))), plan.sweep("data.seed", list(range(10))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    config = config_lib.load(os.path.join(ROOT, "sweeps", "hierarchy_in_p.py"), ["--config.train.seeds=(0,)"])
    declared, planned = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        points = declare()
        middle = time.perf_counter()
        result = plan.make_plan(config, points)
        planned.append(time.perf_counter() - middle)
        declared.append(middle - start)
    print(f"{len(points)} points, {result.num_models} models, {len(result.programs)} programs")
    print(f"make_plan: best {min(planned):.3f} s, median {statistics.median(planned):.3f} s"
          f" (declaration: best {min(declared) * 1e3:.1f} ms) over {args.repeats} repeats")


if __name__ == "__main__":
    main()
