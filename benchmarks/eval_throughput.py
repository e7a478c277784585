"""Evaluation throughput: samples x sampler-steps/s of the ancestral sampler, its share of the fp32 peak,
the scoring apart, both evaluation layouts, and training's model-steps/s beside it.

Usage (one script, unattended; prints a table at the end):
    python benchmarks/eval_throughput.py                       # CPU: W = 64, 256, 1024; M = 1, 2, 4, 8
    python benchmarks/eval_throughput.py --widths 64,256 --json out.json
    python benchmarks/eval_throughput.py --widths 256 --models 1,4 --seconds 3 --no-train   # a short look

Setting (SPEC section 6, as ``grid_throughput``): RHM v=n=8, m=3, s=2, L=3, uniform process T=200,
bpUNet of width W, M untrained models (seeds 0..M-1), ``--samples`` samples per model (default 1024,
a run's ``eval.num_samples``). The sampler's work per sample and step does not depend on how many
steps it takes, so it runs ``--sampler-steps`` of them (default 20, ``process.sampler_steps``)
instead of a run's 200: ten times shorter calls, the same rate. Reported per (W, M, layout):
- layout: ``eval.models_per_batch``; 'k=1' is the default 0 (one model at a time in a ``lax.map``,
  every value independent of the grid, bit for bit), 'k=M' all M models in one vmapped batch;
  'split' (``--split``, M >= 2, a process with several host devices, e.g. ``XLA_FLAGS=
  --xla_force_host_platform_device_count=2``): the evaluator placed as the runner places it under
  ``RHM_CPU_DEVICES=cores`` (``sharding.Placement``: the models over min(devices, M) devices, each
  device one model at a time), so that the default and the split layouts of one process share one
  stretch of load; the forward-alone and parse-alone columns are not measured for it (they time
  one device);
- sample-steps/s: M * N * S / (median seconds of one call of ``Evaluator.sample``), after a
  warm-up call; per model the same over M;
- GFLOP/s and fraction of peak: the FORWARD passes only, XLA's count for one compiled forward of
  a batch of k models x N samples (``cost_analysis()['flops']`` of ``vmap(network.apply)``), times
  S x batches per call, over the seconds of a sampler call; the peak is the fp32 matmul peak
  measured at the start of the same run (``grid_throughput.matmul_peak``). The compiled sampler's
  own count is printed too ('sampler GFLOP'): XLA counts a while loop's body once, so it holds one
  step of one batch (plus what lies outside the loops), a check on the forward count;
- forward share: the seconds of the same forward passes run alone (one compiled forward of a batch,
  times S x batches) over the sampler's: the rest of a step is the softmax, the posterior, the
  categorical draw (its random bits) and the loop;
- score s/model: the other half of an evaluation (``Evaluator.score``: parsing and validity per
  level, copies, correlations, the train/test losses on ``eval.loss_rows`` rows), per model; 'parse
  s/model' the samples' own scores alone (``evaluate.score_in``: validity per level, copies,
  correlations, rule usage), the rest of it is the losses (forward passes on 2 x R rows and the
  diffusion-time windows);
- eval s/model at S=200: what one evaluation of a run costs per model, the sampler at 200 steps
  (from the measured rate) plus the scoring;
- train model-steps/s and its fraction of peak: ``grid_throughput``'s training program for the
  same (W, M) (batch 64, K=10 steps per call), timed in the same process (``--no-train``: skipped).
All settings of one width are compiled first and then called in turn, one call each per round, so
the ratios between layouts and grid sizes come from one stretch of machine load; the 1-minute load
average is printed at the start and end of every width.
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
import grid_throughput  # noqa: E402  (the settings, data and peak of SPEC section 6)

from rhm_jax import evaluate, settings, sharding  # noqa: E402

RUN_SAMPLER_STEPS = 200  # a run's sampler (uniform process, T = 200)
SPLIT_NEEDS = ("--split needs M >= 2 and several host devices (this process has {}): "
               "set XLA_FLAGS=--xla_force_host_platform_device_count=2")


def eval_config(width: int, models: int, per_batch: int, samples: int, sampler_steps: int, dtype: str):
    """SPEC section 6 with M seeds, ``eval.models_per_batch`` and the sampler's step count."""
    config = grid_throughput.make_config(width, models, 10, samples, dtype)
    config.eval.models_per_batch = per_batch
    config.process.sampler_steps = sampler_steps
    return config


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax returns a list
    return float(cost.get("flops", float("nan")))


def compile_evaluation(width: int, M: int, per_batch: int, samples: int, sampler_steps: int, dtype: str,
                       split: bool = False) -> dict:
    """Build and compile both halves of the evaluator of one setting, warm them up; what ``timed`` needs.

    ``split``: placed as the runner places a grid on several host devices (``sharding.use_mesh``,
    padded to a multiple of the devices); the forward-alone and parse-alone programs are then not
    built (``forward``/``parse`` None: they would time one device).
    """
    config = eval_config(width, M, per_batch, samples, sampler_steps, dtype)
    rules, pool, test, process, network, grid = grid_throughput.build(config)
    typed = settings.of(config)
    place = sharding.Placement(sharding.use_mesh(settings.ShardSettings(True), num_models=M) if split else None)
    if split and place.mesh is None:
        raise ValueError(SPLIT_NEEDS.format(jax.local_device_count()))
    halves = place.evaluator(evaluate.make_evaluator(typed, process, network))
    refs = place.pool(evaluate.references(typed.eval, rules, pool, test))
    grid = place.grid(grid)
    state = place.init_state(typed.train, network, grid)
    key = jax.random.key(0)
    start = time.perf_counter()
    sample = halves.sample.lower(state, grid, key, refs).compile()
    tokens = jax.block_until_ready(sample(state, grid, key, refs))
    score = halves.score.lower(state, grid, tokens, refs).compile()
    jax.block_until_ready(score(state, grid, tokens, refs))
    compile_s = time.perf_counter() - start
    k = evaluate.models_per_batch(typed.eval)
    # the forward passes of one sampler step of one batch: k models x N samples (of the real models
    # only when split: padded dummies are not counted as work)
    params_k = jax.tree_util.tree_map(lambda x: jnp.asarray(jax.device_get(x[:1])).repeat(k, 0), state.params)
    x_kxNxD = jnp.zeros((k, samples, tokens.shape[-1]), jnp.int32)
    t_kxN = jnp.full((k, samples), 0.5, jnp.float32)
    forward = jax.jit(jax.vmap(network.apply)).lower(params_k, x_kxNxD, t_kxN).compile()
    batches = -(-M // k)
    forward_flops = _flops(forward)
    parse = None
    if split:
        forward = None
    else:
        jax.block_until_ready(forward(params_k, x_kxNxD, t_kxN))
        # the samples' own scores alone (validity per level, copies, correlations, rule usage): one
        # model at a time, as the default layout scores them; the rest of ``score`` is the losses
        P = jnp.int32(int(config.data.num_train[0]))
        parse = jax.jit(lambda tokens_MxNxD, refs: jax.lax.map(
            lambda tokens_NxD: evaluate.score_in(refs, jnp.int32(0), tokens_NxD, P), tokens_MxNxD))
        parse = parse.lower(tokens, refs).compile()
        jax.block_until_ready(parse(tokens, refs))
    return dict(sample=sample, score=score, state=state, grid=grid, refs=refs, tokens=tokens, M=M, k=k,
                samples=samples, steps=sampler_steps, compile_s=compile_s, sampler_flops=_flops(sample),
                forward_flops_per_call=forward_flops * sampler_steps * batches, batches=batches,
                forward=forward, forward_args=(params_k, x_kxNxD, t_kxN), parse=parse, validity_l1=None,
                devices=place.num_devices, layout="split" if split else f"k={k}")


def time_sampler(run: dict, key: jax.Array) -> float:
    """Seconds of one sampler call of all M models."""
    start = time.perf_counter()
    run["tokens"] = jax.block_until_ready(run["sample"](run["state"], run["grid"], key, run["refs"]))
    return time.perf_counter() - start


def time_score(run: dict) -> float:
    """Seconds of one scoring call of all M models."""
    start = time.perf_counter()
    metrics = jax.block_until_ready(run["score"](run["state"], run["grid"], run["tokens"], run["refs"]))
    run["validity_l1"] = float(np.mean(np.asarray(metrics["validity_l1"])[:run["M"]]))
    return time.perf_counter() - start


def time_forward(run: dict) -> float:
    """Seconds of the forward passes alone of one sampler call: one forward of a batch, times S x batches
    (NaN for a split layout)."""
    if run["forward"] is None:
        return float("nan")
    start = time.perf_counter()
    jax.block_until_ready(run["forward"](*run["forward_args"]))
    return (time.perf_counter() - start) * run["steps"] * run["batches"]


def time_parse(run: dict) -> float:
    """Seconds of scoring the samples alone (no losses) of all M models (NaN for a split layout)."""
    if run["parse"] is None:
        return float("nan")
    start = time.perf_counter()
    jax.block_until_ready(run["parse"](run["tokens"], run["refs"]))
    return time.perf_counter() - start


def measure(runs: dict, seconds: float, min_calls: int) -> dict:
    """Sampler calls of every setting in turn until ``seconds`` have passed (at least ``min_calls``
    each), then ``min_calls`` scoring calls each in turn, then 5 forward calls each (the
    forward passes alone: what the rest of a sampler step costs); medians per setting."""
    sampled = {name: [] for name in runs}
    start, i = time.perf_counter(), 0
    while min(len(t) for t in sampled.values()) < min_calls or time.perf_counter() - start < seconds:
        i += 1
        for name, run in runs.items():
            sampled[name].append(time_sampler(run, jax.random.key(i)))
    scored = {name: [] for name in runs}
    for _ in range(min_calls):
        for name, run in runs.items():
            scored[name].append(time_score(run))
    forwards, parsed = {name: [] for name in runs}, {name: [] for name in runs}
    for _ in range(5):
        for name, run in runs.items():
            forwards[name].append(time_forward(run))
            parsed[name].append(time_parse(run))
    return {name: (float(np.median(sampled[name])), float(np.median(scored[name])), len(sampled[name]),
                   float(np.median(forwards[name])), float(np.median(parsed[name]))) for name in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default=None, help="comma-separated bpUNet widths (CPU default 64,256,1024)")
    parser.add_argument("--models", default=None, help="comma-separated grid sizes M (CPU default 1,2,4,8; GPU up to 64)")
    parser.add_argument("--samples", type=int, default=1024, help="N, samples per model (a run's eval.num_samples)")
    parser.add_argument("--sampler-steps", type=int, default=20, help="S, sampler steps per call (a run: 200)")
    parser.add_argument("--seconds", type=float, default=None, help="sampler timing budget per setting (default 4; GPU 10)")
    parser.add_argument("--min-calls", type=int, default=2, help="timed calls per setting at least (default 2)")
    parser.add_argument("--train-seconds", type=float, default=None, help="training timing per setting (default 4)")
    parser.add_argument("--no-train", action="store_true", help="skip training's model-steps/s")
    parser.add_argument("--split", action="store_true",
                        help="also the runner's layout over several host devices, for every M >= 2 (needs them: "
                             "XLA_FLAGS=--xla_force_host_platform_device_count=2)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="network compute dtype")
    parser.add_argument("--json", default=None, help="write all measurements to this JSON file")
    args = parser.parse_args()

    platform = jax.devices()[0].platform
    cpu = platform == "cpu"
    widths = [int(w) for w in (args.widths or ("64,256,1024" if cpu else "256,1024")).split(",")]
    models = [int(m) for m in (args.models or ("1,2,4,8" if cpu else "1,4,16,64")).split(",")]
    seconds = args.seconds if args.seconds is not None else (4.0 if cpu else 10.0)
    train_seconds = args.train_seconds if args.train_seconds is not None else 4.0
    if min(widths) < 1 or min(models) < 1 or args.samples < 1 or args.min_calls < 1:
        raise ValueError("--widths, --models, --samples and --min-calls must be >= 1")
    if not 1 <= args.sampler_steps <= RUN_SAMPLER_STEPS:
        raise ValueError(f"--sampler-steps={args.sampler_steps} must be in 1..T={RUN_SAMPLER_STEPS}")
    if args.split and (jax.local_device_count() < 2 or max(models) < 2):
        raise ValueError(SPLIT_NEEDS.format(jax.local_device_count()))
    peak = grid_throughput.matmul_peak()
    print(f"device: {jax.devices()[0].device_kind} ({platform}, {os.cpu_count()} CPUs), jax {jax.__version__}; "
          f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (4096^3, measured now); N={args.samples} samples, "
          f"S={args.sampler_steps} sampler steps per call, >= {args.min_calls} calls and {seconds:g} s per setting, "
          f"dtype {args.dtype}; load {grid_throughput.load()}", flush=True)

    rows, failures = [], []
    for width in widths:
        load_before = grid_throughput.load()
        runs = {}
        for M in models:
            layouts = [(0, False)] + ([(M, False)] if M > 1 else []) + ([(0, True)] if args.split and M > 1 else [])
            for per_batch, split in layouts:
                name = "split" if split else f"k={per_batch or 1}"
                try:  # unattended: a setting that fails (e.g. out of memory) is reported, the rest still run
                    runs[(M, name)] = compile_evaluation(width, M, per_batch, args.samples,
                                                         args.sampler_steps, args.dtype, split)
                except Exception as err:  # noqa: BLE001
                    failures.append(f"eval W={width} M={M} {name}: {type(err).__name__}: {str(err)[:300]}")
                    print("  FAILED", failures[-1], flush=True)
        if not runs:
            continue
        measured = measure(runs, seconds * len(runs), args.min_calls)
        trained = {}
        if not args.no_train:
            train_runs = {}
            for M in models:
                try:
                    train_runs[M] = grid_throughput.compile_training(
                        grid_throughput.make_config(width, M, 10, args.samples, args.dtype))
                except Exception as err:  # noqa: BLE001
                    failures.append(f"train W={width} M={M}: {type(err).__name__}: {str(err)[:300]}")
                    print("  FAILED", failures[-1], flush=True)
            if train_runs:
                trained = grid_throughput.time_training(train_runs, train_seconds * len(train_runs), 3)
        load_after = grid_throughput.load()
        for (M, name), run in runs.items():
            sample_s, score_s, calls, forward_s, parse_s = measured[(M, name)]
            sample_steps = M * run["samples"] * run["steps"]
            row = dict(width=width, M=M, layout=name, devices=run["devices"], k=run["k"], samples=run["samples"],
                       sampler_steps=run["steps"], calls=calls, sample_s=sample_s, score_s=score_s,
                       sample_steps_per_s=sample_steps / sample_s,
                       sample_steps_per_s_per_model=sample_steps / sample_s / M,
                       forward_gflops=run["forward_flops_per_call"] / sample_s / 1e9,
                       sampler_gflop_counted=run["sampler_flops"] / 1e9,
                       forward_gflop_per_call=run["forward_flops_per_call"] / 1e9,
                       forward_s=forward_s, forward_share=forward_s / sample_s,
                       score_s_per_model=score_s / M, parse_s_per_model=parse_s / M, compile_s=run["compile_s"], validity_l1=run["validity_l1"],
                       load=f"{load_before}->{load_after}")
            row["peak_fraction"] = row["forward_gflops"] * 1e9 / peak
            # the grid's sampler at 200 steps, per model of the grid, plus its scoring per model
            row["eval_s_per_model_at_200"] = (run["samples"] * RUN_SAMPLER_STEPS / row["sample_steps_per_s"]
                                              + row["score_s_per_model"])
            if M in trained:
                row["train_model_steps_per_s"] = trained[M]["model_steps_per_s"]
                row["train_peak_fraction"] = trained[M]["gflops"] * 1e9 / peak
            rows.append(row)
        for row in rows:
            if row["width"] == width and row["layout"] == "k=1":
                same = {r["layout"]: r for r in rows if r["width"] == width and r["M"] == row["M"]}
                batched = same.get(f"k={row['M']}", row)
                row["default_vs_batched"] = row["sample_s"] / batched["sample_s"]
                if "split" in same:  # how much faster the split layout samples than one device
                    same["split"]["speedup_vs_default"] = row["sample_s"] / same["split"]["sample_s"]
        for row in (r for r in rows if r["width"] == width):
            print(f"  W={width} M={row['M']} {row['layout']}: {row['sample_steps_per_s']:.4g} sample-steps/s, "
                  f"{row['forward_gflops']:.1f} GFLOP/s ({row['peak_fraction']:.2f} of peak), score "
                  f"{row['score_s_per_model']:.3g} s/model, load {row['load']}", flush=True)

    print(f"\nevaluation (sampler: forward GFLOP/s over the fp32 matmul peak {peak / 1e9:.1f} GFLOP/s; "
          f"N={args.samples}, S={args.sampler_steps} per call; k=1 is the default eval.models_per_batch=0)")
    print(f"{'W':>5} {'M':>3} {'layout':>6} {'sample-steps/s':>15} {'per model':>10} {'GFLOP/s':>8} {'of peak':>8} "
          f"{'k=1 / k=M':>10} {'fwd share':>9} {'score s/model':>14} {'parse s/model':>14} {'eval s/model@200':>17} {'train m-steps/s':>16} "
          f"{'train of peak':>14} {'load':>12}")
    for r in rows:
        train_cells = (f"{r['train_model_steps_per_s']:>16.4g} {r['train_peak_fraction']:>14.2f}"
                       if "train_model_steps_per_s" in r else f"{'-':>16} {'-':>14}")
        ratio = next((f"{r[key]:>10.2f}" for key in ("default_vs_batched", "speedup_vs_default") if key in r), f"{'-':>10}")
        print(f"{r['width']:>5} {r['M']:>3} {r['layout']:>6} {r['sample_steps_per_s']:>15.4g} "
              f"{r['sample_steps_per_s_per_model']:>10.4g} {r['forward_gflops']:>8.1f} {r['peak_fraction']:>8.2f} "
              f"{ratio} {r['forward_share']:>9.2f} {r['score_s_per_model']:>14.3g} {r['parse_s_per_model']:>14.3g} {r['eval_s_per_model_at_200']:>17.3g} {train_cells} "
              f"{r['load']:>12}")
    print("'k=1 / k=M': seconds of the default layout's sampler call over the batched one's, same (W, M), same rounds;"
          " on a 'split' row: the default's seconds over the split layout's (its speed-up)")
    for failure in failures:
        print("FAILED:", failure)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=jax.devices()[0].device_kind, platform=platform, jax=jax.__version__,
                           matmul_peak_flops=peak, samples=args.samples, sampler_steps=args.sampler_steps,
                           seconds=seconds, min_calls=args.min_calls, dtype=args.dtype, rows=rows,
                           failures=failures), f, indent=1)


if __name__ == "__main__":
    main()
