"""One item of the GPU suite (benchmarks/gpu_suite.sh), or the final table of all items.

    python benchmarks/gpu_suite.py train --width 1024 --models 1,8,32,64 --dtype float32 --out R.jsonl
    python benchmarks/gpu_suite.py train --width 1024 --models 1 --backward jax,rowmajor --out R.jsonl
    python benchmarks/gpu_suite.py eval  --width 1024 --models 64 --dtype bfloat16 --out R.jsonl
    python benchmarks/gpu_suite.py bandwidth --out R.jsonl
    python benchmarks/gpu_suite.py table R.jsonl

Settings are grid_throughput.py's (SPEC section 6: v=n=8, m=3, s=2, L=3, P=1024, batch 64, T=200,
bpUNet of width W, Adam, M seeds). Each measurement is appended to the jsonl as soon as it exists,
so an item cut by its time cap keeps what it finished. Timed loops run under
``jax.transfer_guard('disallow')``: a hidden host transfer inside the loop (a metric read, a Python
scalar argument) raises instead of silently stalling the device. ``--dtype bfloat16`` sets the
network's compute dtype AND Adam's first moment (train.mu_dtype) to bfloat16; weights, gradients
and the second moment stay float32. The roofline counts 40 bytes per parameter per model-step
(float32 Adam, SPEC section 6) for both dtypes, so bf16 rows show what they gain against it.
``--backward`` lists bpUNet's backward rules to time (``network.backward``: 'jax', JAX's own;
'rowmajor', issue 12's CPU-tuned products with fenced cotangents; 'auto', what the backend gets
by default): per M, one program per rule, timed one after the other; each row names its rule
and what it stands for ('auto' on a GPU is 'jax').
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grid_throughput  # noqa: E402  (the settings and data of SPEC section 6)

from rhm_jax import networks, settings, train  # noqa: E402

BYTES_PER_PARAM_STEP = 40
REFERENCE_STEPS_PER_S = {256: 169.0, 1024: 152.0}  # authors' PyTorch, one model per H100 (SPEC 6)
REFERENCE_EVAL_S = {256: 0.59, 1024: 2.3}  # one evaluation of one model, same source
EVAL_TFLOP_PER_MODEL = {1024: 18.0}  # 1024 samples x 200 steps at W=1024 (SPEC 6)


def emit(out: str, row: dict) -> None:
    """Append one measurement to the results file and echo it."""
    with open(out, "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row), flush=True)


def guarded(timed):
    """``timed()`` under jax.transfer_guard('disallow'); on a violation, its message and a rerun unguarded."""
    try:
        with jax.transfer_guard("disallow"):
            return timed(), None
    except Exception as err:  # jax raises a plain RuntimeError/XlaRuntimeError for a guarded transfer
        message = f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"
        print(f"host transfer inside the timed loop: {message}", flush=True)
        return timed(), message


def suite_config(width: int, models: int, steps_per_call: int, num_samples: int, dtype: str,
                 backward: str = "auto"):
    """grid_throughput's config; bfloat16 also stores Adam's first moment in bfloat16."""
    config = grid_throughput.make_config(width, models, steps_per_call, num_samples, dtype, backward)
    with config.unlocked():
        config.train.mu_dtype = "bfloat16" if dtype == "bfloat16" else "float32"
    return config


def bandwidth(out: str, gib: float) -> None:
    """Device memory bandwidth, bytes read + written per second, from the best of a few copies."""
    x = jnp.ones(int(gib * 2**30) // 4, jnp.float32)
    copy = jax.jit(lambda a: a * 1.0001)
    jax.block_until_ready(copy(x))
    best = np.inf
    for _ in range(5):
        start = time.perf_counter()
        jax.block_until_ready(copy(x))
        best = min(best, time.perf_counter() - start)
    emit(out, dict(item="bandwidth", device=jax.devices()[0].device_kind, bytes_per_s=2 * x.nbytes / best))


def time_train(out: str, width: int, models: list[int], dtype: str, seconds: float, K: int,
               backwards: list[str]) -> None:
    """Model-steps/s of one compiled program per grid size M and backward rule, ``seconds`` each."""
    for M, backward in ((M, backward) for M in models for backward in backwards):
        config = suite_config(width, M, K, 1024, dtype, backward)
        _, pool_QxD, _, process, network, grid = grid_throughput.build(config)
        typed = settings.TrainSettings.of(config)
        state = train.init_state(typed, network, grid)
        params = network.num_params(jax.tree_util.tree_map(lambda x: x[0], state.params))
        step = jax.jit(train.make_train_chunk(typed, process, network), donate_argnums=0)
        num_steps = jax.device_put(jnp.int32(K))  # on device before the guard: no per-call transfer
        start = time.perf_counter()
        compiled = step.lower(state, grid, pool_QxD, num_steps).compile()
        compile_s = time.perf_counter() - start
        state, metrics = compiled(state, grid, pool_QxD, num_steps)  # warm up
        jax.block_until_ready(state)
        start = time.perf_counter()
        state, metrics = compiled(state, grid, pool_QxD, num_steps)
        jax.block_until_ready(state)
        calls = max(1, int(seconds / max(time.perf_counter() - start, 1e-6)))
        def timed():
            nonlocal state, metrics
            start = time.perf_counter()
            for _ in range(calls):
                state, metrics = compiled(state, grid, pool_QxD, num_steps)
            jax.block_until_ready(state)
            return time.perf_counter() - start

        elapsed, violation = guarded(timed)
        loss = float(np.nanmean(np.asarray(metrics["loss"])))
        emit(out, dict(item="train", width=width, M=M, dtype=dtype, backward=backward,
                       rule=networks.backward_name(backward), params=params, steps=calls * K,
                       model_steps_per_s=M * calls * K / elapsed, steps_per_s=calls * K / elapsed,
                       compile_s=compile_s, loss=loss, diverged=int(np.asarray(state.diverged).sum()),
                       transfer_in_loop=violation))


def time_eval(out: str, width: int, models: list[int], dtype: str, num_samples: int) -> None:
    """Seconds of one evaluation (num_samples x T sampler steps per model, plus scores and losses)."""
    for M in models:
        config = suite_config(width, M, 1, num_samples, dtype)
        rules, pool_QxD, test_NxD, process, network, grid = grid_throughput.build(config)
        state = train.init_state(settings.TrainSettings.of(config), network, grid)
        evaluator = grid_throughput.evaluator_of(config, rules, pool_QxD, test_NxD, process, network)
        keys = [jax.device_put(jax.random.key(i)) for i in range(2)]
        start = time.perf_counter()
        jax.block_until_ready(evaluator(state, grid, keys[0]))
        first_s = time.perf_counter() - start
        def timed():
            start = time.perf_counter()
            metrics = jax.block_until_ready(evaluator(state, grid, keys[1]))
            return time.perf_counter() - start, metrics

        (elapsed, metrics), violation = guarded(timed)
        emit(out, dict(item="eval", width=width, M=M, dtype=dtype, samples=num_samples, eval_s=elapsed,
                       compile_and_first_s=first_s, validity_l1=float(np.mean(np.asarray(metrics["validity_l1"]))),
                       transfer_in_loop=violation))


def table(path: str) -> str:
    """The final table: throughput against the memory roofline and the PyTorch reference."""
    rows = [json.loads(line) for line in open(path) if line.strip()]
    measured = [r["bytes_per_s"] for r in rows if r["item"] == "bandwidth"]
    kind = next((r["device"] for r in rows if r["item"] == "bandwidth"), jax.devices()[0].device_kind)
    nominal = 4.3e12 if "H200" in kind else 3.0e12  # SPEC section 6 (measured copies)
    bw = measured[-1] if measured else nominal
    lines = [f"device {kind}; bandwidth {bw:.3g} B/s ({'measured copy' if measured else 'nominal'});"
             f" roofline = bandwidth / ({BYTES_PER_PARAM_STEP} B x params) model-steps/s", "",
             "training (one compiled program, aggregate over the grid)",
             "backward: the rule timed (network.backward; 'auto' shows what it stands for on this backend)",
             f"{'dtype':>9} {'W':>5} {'M':>4} {'backward':>13} {'params':>9} {'model-steps/s':>14} {'roofline':>9}"
             f" {'fraction':>8} {'x ref':>7} {'compile s':>9}"]
    for r in sorted((r for r in rows if r["item"] == "train"),
                    key=lambda r: (r["dtype"], -r["width"], r["M"], r.get("rule", ""))):
        rule = r.get("backward", "-") if r.get("backward") != "auto" else f"auto={r['rule']}"
        roof = bw / (BYTES_PER_PARAM_STEP * r["params"])
        ref = REFERENCE_STEPS_PER_S.get(r["width"], float("nan"))
        lines.append(f"{r['dtype']:>9} {r['width']:>5} {r['M']:>4} {rule:>13} {r['params']:>9}"
                     f" {r['model_steps_per_s']:>14.4g}"
                     f" {roof:>9.4g} {r['model_steps_per_s'] / roof:>8.3f} {r['model_steps_per_s'] / ref:>7.1f}"
                     f" {r['compile_s']:>9.1f}")
    by_setting = {}
    for r in (r for r in rows if r["item"] == "train" and r.get("rule")):
        by_setting.setdefault((r["dtype"], r["width"], r["M"]), {})[r["rule"]] = r["model_steps_per_s"]
    both = sorted((key, speed) for key, speed in by_setting.items() if {"jax", "rowmajor"} <= set(speed))
    if both:
        lines += ["", "backward rules: model-steps/s of rowmajor over jax (> 1: the row-major rule is faster)",
                  f"{'dtype':>9} {'W':>5} {'M':>4} {'rowmajor/jax':>13}"]
        lines += [f"{dtype:>9} {width:>5} {M:>4} {speed['rowmajor'] / speed['jax']:>13.3f}"
                  for (dtype, width, M), speed in both]
    evals = [r for r in rows if r["item"] == "eval"]
    if evals:
        lines += ["", "evaluation (samples x 200 sampler steps per model, plus coherence and losses)",
                  f"{'dtype':>9} {'W':>5} {'M':>4} {'samples':>7} {'seconds':>8} {'s/model':>8} {'x ref':>6}"
                  f" {'TFLOP/s':>8}"]
        for r in evals:
            per_model = r["eval_s"] / r["M"]
            flops = EVAL_TFLOP_PER_MODEL.get(r["width"], float("nan")) * r["M"] * r["samples"] / 1024 / r["eval_s"]
            ref = REFERENCE_EVAL_S.get(r["width"], float("nan"))
            lines.append(f"{r['dtype']:>9} {r['width']:>5} {r['M']:>4} {r['samples']:>7} {r['eval_s']:>8.3g}"
                         f" {per_model:>8.3g} {ref / per_model:>6.1f} {flops:>8.3g}")
    flagged = [r for r in rows if r.get("transfer_in_loop")]
    if flagged:
        lines += ["", "host transfers inside timed loops (timed again without the guard):"]
        lines += [f"  {r['item']} {r['dtype']} W={r['width']} M={r['M']}: {r['transfer_in_loop']}" for r in flagged]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("item", choices=("train", "eval", "bandwidth", "table"))
    parser.add_argument("path", nargs="?", help="results jsonl (table only)")
    parser.add_argument("--out", default="gpu_suite.jsonl", help="results jsonl to append to")
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--models", default="1", help="comma-separated grid sizes M")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per training setting")
    parser.add_argument("--steps-per-call", type=int, default=50, help="K, steps fused in one device call")
    parser.add_argument("--samples", type=int, default=1024, help="samples per model per evaluation")
    parser.add_argument("--gib", type=float, default=4.0, help="array size of the bandwidth copy")
    parser.add_argument("--backward", default="auto",
                        help="comma-separated bpUNet backward rules to time (train): auto, jax, rowmajor")
    args = parser.parse_args()
    models = [int(m) for m in args.models.split(",") if m]
    backwards = grid_throughput.backwards(args.backward)  # checked before anything is compiled
    if args.item == "table":
        print(table(args.path or args.out))
    elif args.item == "bandwidth":
        bandwidth(args.out, args.gib)
    elif args.item == "train":
        time_train(args.out, args.width, models, args.dtype, args.seconds, args.steps_per_call, backwards)
    else:
        time_eval(args.out, args.width, models, args.dtype, args.samples)


if __name__ == "__main__":
    main()
