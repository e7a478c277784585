"""Grid throughput: aggregate model-steps/s of one compiled training program, and evaluation time.

Usage (one script, unattended; prints a table at the end):
    python benchmarks/grid_throughput.py                      # GPU: W = 256, 1024; M = 1, 4, 16, 64
    python benchmarks/grid_throughput.py --quick              # CPU: W = 256; M = 1, 4; fewer steps
    python benchmarks/grid_throughput.py --json out.json --device-bandwidth 4.8e12   # H200

Setting (SPEC section 6): RHM v=n=8, m=3, s=2, L=3, P=1024, batch 64, uniform process T=200,
bpUNet of width W, Adam; M models (seeds 0..M-1) trained together. One evaluation is the full
``evaluate`` of the grid: 1024 samples x 200 sampler steps per model, plus coherence, copies and
the train/test losses (22 extra forward passes of 1024 rows, about a tenth of the sampling).

Memory roofline (SPEC section 6): Adam in float32 moves about 40 bytes per parameter per
model-step, so at most ``bandwidth / (40 * params)`` model-steps/s. On a GPU the bandwidth is
``--device-bandwidth`` (default 3.0e12 B/s, H100); on the CPU it is measured (a large memcpy,
bytes read + written per second) unless the flag is given.
"""
from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax import config as config_lib
from rhm_jax import data, diffusion, evaluate, grammar, networks, train

BYTES_PER_PARAM_STEP = 40


def make_config(width: int, models: int, steps_per_call: int, num_samples: int, dtype: str):
    """The SPEC section 6 setting with M seeds at one P."""
    config = config_lib.base_config()
    config.grammar.update(dict(v=8, n=8, m=3, s=2, L=3, seed=0))
    config.data.update(dict(num_train=(1024,), num_test=1024, seed=0))
    config.process.T = 200
    config.network.update(dict(name="bpunet", width=width, dtype=dtype))
    config.train.update(dict(batch_size=64, lr=(1e-4,), num_steps=2**30, num_epochs=0.0,
                             seeds=tuple(range(models)), steps_per_call=steps_per_call))
    config.eval.update(dict(num_samples=num_samples, num_windows=10))
    config_lib.validate(config)
    return config


def build(config):
    """Grammar, data on device, process, network, grid."""
    g = config.grammar
    rules = grammar.sample_rules(g.seed, g.v, g.n, g.m, g.s, g.L)
    pool, test = data.sample_dataset(config.data.seed, rules, max(config.data.num_train), config.data.num_test)
    process = diffusion.make(config.process, g.v, rules.d)
    network = networks.make(config.network, g.v, g.s, g.L, process)
    grid, _ = train.make_grid(config)
    return rules, jnp.asarray(pool), jnp.asarray(test), process, network, grid


def time_training(config, steps: int) -> dict:
    """Compile, warm up, then time ``steps`` steps of all models (full calls of K steps)."""
    rules, pool, test, process, network, grid = build(config)
    K = int(config.train.steps_per_call)
    chunk = train.jit_chunk(train.make_train_chunk(config, process, network))
    state = train.init_state(config, network, grid)
    params = network.num_params(jax.tree_util.tree_map(lambda x: x[0], state.params))
    start = time.perf_counter()
    state, metrics = chunk(state, grid, pool, K)  # compile + first call
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    calls = max(1, -(-steps // K))
    start = time.perf_counter()
    for _ in range(calls):
        state, metrics = chunk(state, grid, pool, K)
    jax.block_until_ready((state, metrics))
    seconds = time.perf_counter() - start
    M = grid.P.shape[0]
    loss = float(np.nanmean(np.asarray(metrics["loss"])))
    return dict(params=params, model_steps_per_s=M * calls * K / seconds, steps_per_s=calls * K / seconds,
                compile_s=max(0.0, compile_s - seconds / calls), loss=loss,
                diverged=int(np.asarray(state.diverged).sum()))


def time_evaluation(config) -> dict:
    """Compile, then time one evaluation of every model of the grid."""
    rules, pool, test, process, network, grid = build(config)
    state = train.init_state(config, network, grid)
    evaluator = evaluate.make_evaluator(config, rules, process, network, pool, test)
    start = time.perf_counter()
    jax.block_until_ready(evaluator(state, grid, jax.random.key(0)))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = jax.block_until_ready(evaluator(state, grid, jax.random.key(1)))
    seconds = time.perf_counter() - start
    return dict(eval_s=seconds, eval_compile_s=max(0.0, compile_s - seconds),
                validity_l1=float(np.mean(np.asarray(metrics["validity_l1"]))))


def memcpy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Host memory bandwidth in bytes/s (read + write) from the best of several large copies."""
    src = np.ones(megabytes * 2**20 // 8, np.float64)
    dst = np.empty_like(src)
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.nbytes / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default=None, help="comma-separated bpUNet widths (default 256,1024)")
    parser.add_argument("--models", default=None, help="comma-separated grid sizes M (default 1,4,16,64)")
    parser.add_argument("--eval-models", default="1,4", help="grid sizes M for the evaluation timing ('' skips)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps per setting (default 500)")
    parser.add_argument("--steps-per-call", type=int, default=100, help="K, steps fused in one device call")
    parser.add_argument("--eval-samples", type=int, default=None,
                        help="samples per model per evaluation (default 1024; 256 with --quick)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="network compute dtype")
    parser.add_argument("--device-bandwidth", type=float, default=None,
                        help="memory bandwidth in B/s for the roofline (default 3.0e12 on GPU, measured memcpy on CPU)")
    parser.add_argument("--quick", action="store_true",
                        help="CPU-sized: W=256, M=1,4, 40 steps, K=20, 256 samples per evaluation")
    parser.add_argument("--json", default=None, help="write all measurements to this JSON file")
    args = parser.parse_args()

    widths = [int(w) for w in (args.widths or ("256" if args.quick else "256,1024")).split(",")]
    models = [int(m) for m in (args.models or ("1,4" if args.quick else "1,4,16,64")).split(",")]
    eval_models = [int(m) for m in args.eval_models.split(",") if m]
    steps = args.steps or (40 if args.quick else 500)
    samples = args.eval_samples or (256 if args.quick else 1024)
    K = min(args.steps_per_call, steps) if not args.quick else min(20, steps)
    platform = jax.devices()[0].platform
    if args.device_bandwidth:
        bandwidth, source = args.device_bandwidth, "flag"
    elif platform == "cpu":
        bandwidth, source = memcpy_bandwidth(), "measured memcpy"
    else:
        bandwidth, source = 3.0e12, "default (H100)"
    print(f"device: {jax.devices()[0].device_kind} ({platform}), jax {jax.__version__}; "
          f"bandwidth {bandwidth:.3g} B/s ({source}); {steps} timed steps, K={K}, dtype {args.dtype}", flush=True)

    train_rows, eval_rows, failures = [], [], []
    for width in widths:
        for M in models:
            try:  # unattended: a setting that fails (e.g. out of memory) is reported, the rest still run
                row = dict(width=width, M=M, **time_training(make_config(width, M, K, samples, args.dtype), steps))
            except Exception as err:  # noqa: BLE001
                failures.append(f"train W={width} M={M}: {type(err).__name__}: {str(err)[:300]}")
                print("  FAILED", failures[-1], flush=True)
                continue
            row["roofline"] = bandwidth / (BYTES_PER_PARAM_STEP * row["params"])
            row["fraction"] = row["model_steps_per_s"] / row["roofline"]
            train_rows.append(row)
            print(f"  train W={width} M={M}: {row['model_steps_per_s']:.4g} model-steps/s "
                  f"({row['fraction']:.3f} of roofline, compile {row['compile_s']:.1f} s)", flush=True)
        for M in eval_models:
            try:
                row = dict(width=width, M=M, samples=samples,
                           **time_evaluation(make_config(width, M, K, samples, args.dtype)))
            except Exception as err:  # noqa: BLE001
                failures.append(f"eval W={width} M={M}: {type(err).__name__}: {str(err)[:300]}")
                print("  FAILED", failures[-1], flush=True)
                continue
            eval_rows.append(row)
            print(f"  eval  W={width} M={M}: {row['eval_s']:.3g} s (compile {row['eval_compile_s']:.1f} s)", flush=True)

    print("\ntraining (aggregate over the grid)")
    print(f"{'W':>5} {'M':>4} {'params':>10} {'model-steps/s':>14} {'steps/s':>9} {'roofline':>10} {'fraction':>9} {'compile s':>10}")
    for r in train_rows:
        print(f"{r['width']:>5} {r['M']:>4} {r['params']:>10} {r['model_steps_per_s']:>14.4g} {r['steps_per_s']:>9.4g} "
              f"{r['roofline']:>10.4g} {r['fraction']:>9.3f} {r['compile_s']:>10.1f}")
    if eval_rows:
        print(f"\nevaluation ({samples} samples x 200 sampler steps per model, plus scores and losses)")
        print(f"{'W':>5} {'M':>4} {'seconds':>9} {'s/model':>9} {'compile s':>10}")
        for r in eval_rows:
            print(f"{r['width']:>5} {r['M']:>4} {r['eval_s']:>9.3g} {r['eval_s'] / r['M']:>9.3g} {r['eval_compile_s']:>10.1f}")
    for failure in failures:
        print("FAILED:", failure)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=jax.devices()[0].device_kind, platform=platform, jax=jax.__version__,
                           bandwidth=bandwidth, bandwidth_source=source, steps=steps, steps_per_call=K,
                           dtype=args.dtype, eval_samples=samples, train=train_rows, eval=eval_rows,
                           failures=failures), f, indent=1)


if __name__ == "__main__":
    main()
