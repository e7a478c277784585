"""Grid throughput: model-steps/s of one compiled training program, its GFLOP/s and share of peak.

Usage (one script, unattended; prints a table at the end):
    python benchmarks/grid_throughput.py                    # CPU: W = 64, 256, 1024; M = 1, 2, 4, 8
    python benchmarks/grid_throughput.py --widths 1024 --models 1,4 --seconds 20   # a short look
    python benchmarks/grid_throughput.py --backward jax,rowmajor --widths 1024 --models 1   # A/B, see below
    python benchmarks/grid_throughput.py --eval-models 1,4  # also time one evaluation per grid
    python benchmarks/grid_throughput.py --json out.json --device-bandwidth 4.8e12   # H200
    python benchmarks/grid_throughput.py --layouts shipped,hosts --widths 64 --models 1,4,8,16   # issue 25
    python benchmarks/grid_throughput.py --dtype float32,bfloat16 --widths 256,1024 --models 1  # bf16 A/B

Expected run time of the default on the project's 2-core CPU, machine otherwise idle: about
6 minutes (12 settings, each compiled once, about 5 s to 30 s, then timed for ``--seconds``
seconds each, default 10, at least ``--min-calls`` calls of K = ``--steps-per-call`` steps, default
3 calls of 10). All settings of one width are compiled first and then called in turn, one call
each per round, so that the ratios between grid sizes (column 'vs M=1') come from one stretch of
machine load. On a GPU the default grid is W = 256, 1024 and M = 1, 4, 16, 64 with 100 steps per call.

Setting (SPEC section 6): RHM v=n=8, m=3, s=2, L=3, P=1024, batch 64, uniform process T=200,
bpUNet of width W, Adam; M models (seeds 0..M-1) trained together. Reported per (W, M):
- model-steps/s: M * K / (median seconds of one call of K steps), after a warm-up call;
- GFLOP/s: XLA's own count for the compiled chunk (``compiled.cost_analysis()['flops']``, which
  counts the while loop's body once, i.e. one step of all M models) times steps per second;
- fraction of peak: that over the fp32 matmul peak measured at the start of the same run (the
  best of several 4096 x 4096 products through XLA), so both see the same machine load;
- fraction of the memory roofline: Adam in float32 moves about 40 bytes per parameter per
  model-step, so at most ``bandwidth / (40 * params)`` model-steps/s; on a GPU the bandwidth is
  ``--device-bandwidth`` (default 3.0e12 B/s, H100); on the CPU it is measured (a large memcpy).
One evaluation is the full ``evaluate`` of the grid: 1024 samples x 200 sampler steps per model,
plus coherence, copies and the train/test losses.

``--backward`` names the bpUNet backward rules to time (``network.backward``, comma-separated;
default 'auto': rowmajor on the CPU, jax elsewhere). With several, each (M, rule) program is timed
interleaved call by call in the same process; rows are marked by rule ('rowmajor': issue 12's
products and fenced cotangents; 'jax': JAX's own rule, the program before issue 12).
``--compare-jax-rule`` is ``--backward rowmajor,jax``. ``--dtype float32,bfloat16`` times both
network dtypes the same way. ``--layouts`` compares process-level settings (``LAYOUTS``: host
device count, XLA threads) that cannot share one process: each layout's programs are compiled in
a worker process of their own, and this process times them call by call in turn, one at a time.
Timings on a shared machine swing with its load: the run prints ``os.getloadavg()`` at the start
and end of every width.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax import config as config_lib
from rhm_jax import evaluate, hostflags, networks, plan, program, settings, sharding, train

BYTES_PER_PARAM_STEP = 40
# --layouts: the process settings a program runs under, each in its own worker process (issue 25).
# 'shipped': one host device and XLA's own threads, the program before issue 25; 'hosts': what the
# entry points set now (``rhm_jax.hostflags``: a host device per core) with the models split as the
# runner splits them (``sharding.use_mesh``: over min(devices, M) devices); 'hosts1t': 'hosts' with
# each device's dots on one thread (``--xla_cpu_multi_thread_eigen=false``), measured beside it.
LAYOUTS = ("shipped", "hosts", "hosts1t")
# XLA CPU options a layout may add, as ``<layout>+<option>[+<option>...]`` (issue 25's W=64 search):
# 'vec512': 512-bit vectors in XLA's own loops (the default prefers 256 on this CPU); 'noynnreduce':
# reductions by XLA's own loops instead of YNNPACK fusions; 'eigendot': dots by Eigen, not YNNPACK.
OPTIONS = {"vec512": "--xla_cpu_prefer_vector_width=512",
           "noynnreduce": "--xla_cpu_experimental_ynn_fusion_type=-reduce",
           "eigendot": "--xla_cpu_experimental_ynn_fusion_type=-dot"}


def make_config(width: int, models: int, steps_per_call: int, num_samples: int, dtype: str,
                backward: str = "auto"):
    """The SPEC section 6 setting with M seeds at one P; ``backward``: bpUNet's rule (network.backward)."""
    config = config_lib.base_config()
    config.grammar.update(dict(v=8, n=8, m=3, s=2, L=3, seed=0))
    config.data.update(dict(num_train=(1024,), num_test=1024, seed=0))
    config.process.T = 200
    config.network.update(dict(name="bpunet", width=width, dtype=dtype, backward=backward))
    config.train.update(dict(batch_size=64, lr=(1e-4,), num_steps=2**30, num_epochs=0.0,
                             seeds=tuple(range(models)), steps_per_call=steps_per_call))
    config.eval.update(dict(num_samples=num_samples, num_windows=10))
    config_lib.validate(config)
    return config


def build(config):
    """Stacked grammar (G = 1), pool (G, Q, D) and test set on device, process, network, grid."""
    planned = plan.single(config)
    setup = program.setup(planned.settings, planned.rows)
    grid = train.grid_arrays(list(planned.rows))
    return setup.grammar, setup.pool_GxQxD, setup.test_GxNxD, setup.process, setup.network, grid


def evaluator_of(config, rules, pool, test, process, network):
    """``evaluate(state, grid, key)`` of the config against its (stacked) dataset."""
    typed = settings.of(config)
    refs = evaluate.references(typed.eval, rules, pool, test)
    return functools.partial(evaluate.make_evaluator(typed, process, network), refs=refs)


def backwards(text: str) -> list[str]:
    """The rules of a comma-separated ``--backward`` value, each checked against network.backward's."""
    names = [name for name in text.split(",") if name]
    for name in names:
        networks.backward_name(name)  # ValueError naming network backward and its choices
    if not names or len(set(names)) < len(names):
        raise ValueError(f"--backward={text!r} must name distinct rules of {networks.BACKWARDS}")
    return names


def compile_training(config, split: bool = False) -> dict:
    """Build, compile and warm up one training chunk; returns what ``timed_call`` needs.

    ``split``: place the grid as the runner does (``sharding.use_mesh``: the models over min(local
    devices, M) devices, padded); else on one device. On a mesh XLA's cost analysis counts one
    device's program, so the FLOPs per step are that times the devices.
    """
    rules, pool, test, process, network, grid = build(config)
    K = int(config.train.steps_per_call)
    typed = settings.TrainSettings.of(config)
    M = int(grid.P.shape[0])
    mesh = sharding.use_mesh(settings.ShardSettings(True), num_models=M) if split else None
    place = sharding.Placement(mesh)
    grid, pool = place.grid(grid), place.pool(pool)
    chunk = train.jit_chunk(place.chunk(train.make_train_chunk(typed, process, network)))
    state = place.init_state(typed, network, grid)
    params = network.num_params(jax.tree_util.tree_map(lambda x: x[0], state.params))
    start = time.perf_counter()
    compiled = chunk.lower(state, grid, pool, K).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax returns a list
    run = dict(compiled=compiled, state=state, grid=grid, pool=pool, K=K, M=M, devices=place.num_devices,
               params=params, compile_s=compile_s,
               flops_per_step=float(cost.get("flops", float("nan"))) * place.num_devices)
    timed_call(run)  # warm-up: first-call allocations
    return run


def timed_call(run: dict) -> float:
    """Seconds of one call of K steps of all M models (the state is carried on)."""
    start = time.perf_counter()
    run["state"], metrics = run["compiled"](run["state"], run["grid"], run["pool"], jnp.int32(run["K"]))
    jax.block_until_ready((run["state"], metrics))
    run["metrics"] = metrics
    return time.perf_counter() - start


def final_metrics(run: dict) -> dict:
    """Mean loss of the last call and the number of diverged models (dummies of a padded grid excluded)."""
    M = run["M"]
    return dict(loss=float(np.nanmean(np.asarray(run["metrics"]["loss"])[:M])),
                diverged=int(np.asarray(run["state"].diverged)[:M].sum()))


def time_training(runs: dict, seconds: float, min_calls: int) -> dict:
    """Call every run in turn until ``seconds`` have passed (at least ``min_calls`` each); median per run.

    A run is a dict of ``compile_training`` (timed here) or a ``Worker``'s program (timed in its
    own process, one call at a time: never two programs at once).
    """
    times = {name: [] for name in runs}
    call = lambda run: run.call() if isinstance(run, WorkerRun) else timed_call(run)
    start = time.perf_counter()
    while min(len(t) for t in times.values()) < min_calls or time.perf_counter() - start < seconds:
        for name, run in runs.items():
            times[name].append(call(run))
    rows = {}
    for name, run in runs.items():
        info = run.info if isinstance(run, WorkerRun) else run
        call_s = float(np.median(times[name]))
        steps_per_s = info["K"] / call_s
        rows[name] = dict(params=info["params"], model_steps_per_s=info["M"] * steps_per_s, steps_per_s=steps_per_s,
                          gflops=info["flops_per_step"] * steps_per_s / 1e9, calls=len(times[name]),
                          compile_s=info["compile_s"], flops_per_model_step=info["flops_per_step"] / info["M"],
                          devices=info.get("devices", 1),
                          **(run.final() if isinstance(run, WorkerRun) else final_metrics(run)))
    return rows


# ----------------------------------------------------------------------------- layouts (worker processes)


def layout_env(layout: str, environ: dict | None = None) -> dict:
    """The environment of a worker process for ``layout`` (one of LAYOUTS, then any ``+OPTIONS``)."""
    layout, *options = layout.split("+")
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise ValueError(f"--layouts names option(s) {unknown}: must be among {sorted(OPTIONS)}")
    env = dict(os.environ if environ is None else environ)
    # the parent's own flags are kept, but no host device count: the layout decides that
    flags = " ".join(f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(hostflags.DEVICE_FLAG))
    env.pop(hostflags.ENV, None)
    env["XLA_FLAGS"] = flags
    if layout == "shipped":
        env[hostflags.ENV] = "1"
    elif layout in ("hosts", "hosts1t"):  # a device per core, which the entry points set on request
        env[hostflags.ENV] = "cores"
        value, _ = hostflags.flags_for(env, hostflags.cpu_count())
        env["XLA_FLAGS"] = (value or flags) + (" --xla_cpu_multi_thread_eigen=false" if layout == "hosts1t" else "")
    else:
        raise ValueError(f"--layouts names {layout!r}: must be among {LAYOUTS}")
    env["XLA_FLAGS"] = " ".join([env["XLA_FLAGS"], *(OPTIONS[o] for o in options)]).strip()
    return env


class Worker:
    """This script in a child process under one layout's flags, holding its compiled programs.

    Protocol (one JSON line each way, prefixed ``@@`` on the child's stdout): the child compiles
    every M of a width and reports each program's size and cost; then each ``call M`` runs one
    timed call and answers its seconds; ``final M`` answers the loss; closing stdin ends it.
    """

    def __init__(self, layout: str, width: int, models: list[int], args: argparse.Namespace, backward: str):
        self.layout = layout
        command = [sys.executable, os.path.abspath(__file__), "--worker", layout, "--widths", str(width),
                   "--models", ",".join(map(str, models)), "--steps-per-call", str(args.steps_per_call_value),
                   "--dtype", args.dtype, "--backward", backward]
        self.proc = subprocess.Popen(command, env=layout_env(layout), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.ready = self.read()  # {"M": info}, compiled and warmed up

    def read(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith("@@ "):
                answer = json.loads(line[3:])
                if "error" in answer:
                    raise RuntimeError(f"layout {self.layout}: {answer['error']}")
                return answer
        raise RuntimeError(f"layout {self.layout}: the worker ended (exit {self.proc.wait()})")

    def ask(self, text: str) -> dict:
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()
        return self.read()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)


class WorkerRun:
    """One program (one M) of a ``Worker``."""

    def __init__(self, worker: Worker, M: int):
        self.worker, self.M, self.info = worker, M, worker.ready[str(M)]

    def call(self) -> float:
        return float(self.worker.ask(f"call {self.M}")["seconds"])

    def final(self) -> dict:
        return self.worker.ask(f"final {self.M}")


def serve(layout: str, width: int, models: list[int], K: int, dtype: str, backward: str) -> None:
    """The worker's side of ``Worker``: compile, report, then answer calls from stdin."""
    def say(obj: dict) -> None:
        print("@@ " + json.dumps(obj), flush=True)

    try:
        split = not layout.startswith("shipped")
        runs = {M: compile_training(make_config(width, M, K, 1024, dtype, backward), split=split) for M in models}
    except Exception as err:  # noqa: BLE001 (reported to the parent, which records the failure)
        say(dict(error=f"{type(err).__name__}: {str(err)[:300]}"))
        return
    keys = ("K", "M", "devices", "params", "compile_s", "flops_per_step")
    say({str(M): {k: run[k] for k in keys} | dict(host_devices=len(jax.local_devices()),
                                                   XLA_FLAGS=os.environ.get("XLA_FLAGS", ""))
         for M, run in runs.items()})
    for line in sys.stdin:
        verb, M = line.split()
        run = runs[int(M)]
        say(dict(seconds=timed_call(run)) if verb == "call" else final_metrics(run))


def time_evaluation(config) -> dict:
    """Compile, then time one evaluation of every model of the grid."""
    rules, pool, test, process, network, grid = build(config)
    state = train.init_state(settings.TrainSettings.of(config), network, grid)
    evaluator = evaluator_of(config, rules, pool, test, process, network)
    start = time.perf_counter()
    jax.block_until_ready(evaluator(state, grid, jax.random.key(0)))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    metrics = jax.block_until_ready(evaluator(state, grid, jax.random.key(1)))
    seconds = time.perf_counter() - start
    return dict(eval_s=seconds, eval_compile_s=max(0.0, compile_s - seconds),
                validity_l1=float(np.mean(np.asarray(metrics["validity_l1"]))))


def matmul_peak(n: int = 4096, repeats: int = 5) -> float:
    """fp32 FLOP/s of the best of several n x n matrix products through XLA on the default device."""
    a_NxN = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    product = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(product(a_NxN, a_NxN))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(product(a_NxN, a_NxN))
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


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


def load() -> str:
    """The 1-minute load average, for the record (the CPU timings swing with it)."""
    return f"{os.getloadavg()[0]:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default=None, help="comma-separated bpUNet widths (CPU default 64,256,1024)")
    parser.add_argument("--models", default=None, help="comma-separated grid sizes M (CPU default 1,2,4,8)")
    parser.add_argument("--eval-models", default=None, help="grid sizes M for the evaluation timing (CPU default none)")
    parser.add_argument("--seconds", type=float, default=None, help="timing budget per setting (default 10; GPU 20)")
    parser.add_argument("--min-calls", type=int, default=3, help="timed calls per setting at least (default 3)")
    parser.add_argument("--steps-per-call", type=int, default=None,
                        help="K, steps fused in one call (default 10; GPU 100)")
    parser.add_argument("--eval-samples", type=int, default=1024, help="samples per model per evaluation")
    parser.add_argument("--dtype", default="float32",
                        help="network compute dtype(s): float32, bfloat16, or both comma-separated (timed interleaved)")
    parser.add_argument("--device-bandwidth", type=float, default=None,
                        help="memory bandwidth in B/s for the roofline (default 3.0e12 on GPU, measured memcpy on CPU)")
    parser.add_argument("--backward", default="auto",
                        help="comma-separated bpUNet backward rules to time, interleaved: auto, jax, rowmajor")
    parser.add_argument("--compare-jax-rule", action="store_true", help="the same as --backward rowmajor,jax")
    parser.add_argument("--quick", action="store_true", help="W=256, M=1,2, 3 s per setting, K=5 (a smoke run)")
    parser.add_argument("--layouts", default=None,
                        help=f"comma-separated process layouts to time interleaved, each in a worker process:"
                             f" {LAYOUTS}, each optionally with +OPTION (any of {sorted(OPTIONS)})")
    parser.add_argument("--json", default=None, help="write all measurements to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # a layout's child process
    args = parser.parse_args()
    if args.worker:
        serve(args.worker, int(args.widths), [int(m) for m in args.models.split(",")], args.steps_per_call,
              args.dtype, args.backward)
        return

    platform = jax.devices()[0].platform
    cpu = platform == "cpu"
    default_widths = "256" if args.quick else "64,256,1024" if cpu else "256,1024"
    widths = [int(w) for w in (args.widths or default_widths).split(",")]
    models = [int(m) for m in (args.models or ("1,2" if args.quick else "1,2,4,8" if cpu else "1,4,16,64")).split(",")]
    eval_arg = args.eval_models if args.eval_models is not None else ("" if cpu or args.quick else "1,4")
    eval_models = [int(m) for m in eval_arg.split(",") if m]
    seconds = args.seconds if args.seconds is not None else (3.0 if args.quick else 10.0 if cpu else 20.0)
    K = args.steps_per_call or (5 if args.quick else 10 if cpu else 100)
    if min(widths) < 1 or min(models) < 1 or K < 1 or args.min_calls < 1 or seconds < 0:
        raise ValueError("--widths, --models, --steps-per-call and --min-calls must be >= 1, --seconds >= 0")
    variants = backwards("rowmajor,jax" if args.compare_jax_rule else args.backward)
    layouts = [name for name in (args.layouts or "").split(",") if name]
    for name in layouts:
        layout_env(name)  # ValueError naming a layout that is not one of LAYOUTS
    dtypes = [d for d in args.dtype.split(",") if d]
    if not dtypes or len(set(dtypes)) < len(dtypes) or not set(dtypes) <= set(networks.DTYPES):
        raise ValueError(f"--dtype={args.dtype!r} must name distinct dtypes of {tuple(networks.DTYPES)}")
    if layouts and (len(variants) > 1 or len(dtypes) > 1):
        raise ValueError("--layouts times one backward rule and one dtype: give one of each")
    args.steps_per_call_value = K
    # a row's program: the rule's name, with what 'auto' stands for on this backend
    label = {name: name if name != "auto" else f"auto={networks.backward_name(name)}" for name in variants}
    if args.device_bandwidth:
        bandwidth, source = args.device_bandwidth, "flag"
    elif cpu:
        bandwidth, source = memcpy_bandwidth(), "measured memcpy"
    else:
        bandwidth, source = 3.0e12, "default (H100)"
    peak = matmul_peak()
    print(f"device: {jax.devices()[0].device_kind} ({platform}, {os.cpu_count()} CPUs), jax {jax.__version__}; "
          f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s (4096^3, measured now); bandwidth {bandwidth:.3g} B/s "
          f"({source}); K={K}, >= {args.min_calls} calls and {seconds:g} s per setting, dtype {args.dtype}; "
          f"load {load()}", flush=True)
    for name in layouts:
        print(f"layout {name}: XLA_FLAGS={layout_env(name)['XLA_FLAGS']!r}", flush=True)

    train_rows, eval_rows, failures = [], [], []
    for width in widths:
        # Every (M, program) of one width is compiled first and then timed call by call in turn,
        # so the ratios between grid sizes are read on the same machine load (issue 12: timed one
        # after the other, the same program swung by 25% between settings on the shared CPU).
        runs, load_before, workers = {}, load(), []
        for layout in layouts:  # each layout's programs in a process of their own, timed from here
            try:
                workers.append(Worker(layout, width, models, args, variants[0]))
                runs.update({(M, layout): WorkerRun(workers[-1], M) for M in models})
            except Exception as err:  # noqa: BLE001
                failures.append(f"train W={width} layout {layout}: {type(err).__name__}: {str(err)[:300]}")
                print("  FAILED", failures[-1], flush=True)
        for M in models if not layouts else ():
            try:  # unattended: a setting that fails (e.g. out of memory) is reported, the rest still run
                for name in variants:
                    for dtype in dtypes:  # with several dtypes a row's program is 'rule/dtype'
                        config = make_config(width, M, K, args.eval_samples, dtype, name)
                        tag = label[name] if len(dtypes) == 1 else f"{label[name]}/{dtype}"
                        runs[(M, tag)] = compile_training(config)
            except Exception as err:  # noqa: BLE001
                failures.append(f"train W={width} M={M}: {type(err).__name__}: {str(err)[:300]}")
                print("  FAILED", failures[-1], flush=True)
        if not runs:
            continue
        try:  # a call that fails (e.g. out of memory with every M of the width held at once) ends the width only
            measured = time_training(runs, seconds * len(runs), args.min_calls)
        except Exception as err:  # noqa: BLE001
            failures.append(f"train W={width} M={sorted({M for M, _ in runs})}: {type(err).__name__}: {str(err)[:300]}")
            print("  FAILED", failures[-1], flush=True)
            continue
        finally:
            for worker in workers:
                worker.close()
        width_rows = []
        for (M, name), row in measured.items():
            row = dict(width=width, M=M, program=name, load=f"{load_before}->{load()}", **row)
            row["peak_fraction"] = row["gflops"] * 1e9 / peak
            row["roofline"] = bandwidth / (BYTES_PER_PARAM_STEP * row["params"])
            row["roofline_fraction"] = row["model_steps_per_s"] / row["roofline"]
            width_rows.append(row)
            print(f"  train W={width} M={M} {name} ({row['devices']} dev): {row['model_steps_per_s']:.4g} model-steps/s, "
                  f"{row['gflops']:.1f} GFLOP/s ({row['peak_fraction']:.2f} of peak), {row['calls']} calls, "
                  f"compile {row['compile_s']:.1f} s, load {row['load']}", flush=True)
        smallest = {r["program"]: r for r in sorted(width_rows, key=lambda r: -r["M"])}  # each program's least M
        for row in width_rows:
            row["vs_least_M"] = row["model_steps_per_s"] / smallest[row["program"]]["model_steps_per_s"]
        train_rows.extend(width_rows)
        for M in eval_models:
            try:
                row = dict(width=width, M=M, samples=args.eval_samples,
                           **time_evaluation(make_config(width, M, K, args.eval_samples, dtypes[0])))
            except Exception as err:  # noqa: BLE001
                failures.append(f"eval W={width} M={M}: {type(err).__name__}: {str(err)[:300]}")
                print("  FAILED", failures[-1], flush=True)
                continue
            eval_rows.append(row)
            print(f"  eval  W={width} M={M}: {row['eval_s']:.3g} s (compile {row['eval_compile_s']:.1f} s)", flush=True)

    print(f"\ntraining (aggregate over the grid; peak = fp32 matmul {peak / 1e9:.1f} GFLOP/s; "
          f"roofline = {bandwidth:.3g} B/s / (40 B x params))")
    print("'vs M=1': total model-steps/s over that of the width's smallest M (M=1 by default), timed in the same loop")
    print(f"{'W':>5} {'M':>3} {'program':>13} {'dev':>3} {'params':>9} {'model-steps/s':>14} {'vs M=1':>7} {'GFLOP/s':>8} "
          f"{'of peak':>8} {'GFLOP/step':>11} {'of roofline':>12} {'compile s':>10} {'load':>12}")
    for r in train_rows:
        print(f"{r['width']:>5} {r['M']:>3} {r['program']:>13} {r['devices']:>3} {r['params']:>9} {r['model_steps_per_s']:>14.4g} "
              f"{r['vs_least_M']:>7.3f} {r['gflops']:>8.1f} {r['peak_fraction']:>8.2f} "
              f"{r['flops_per_model_step'] / 1e9:>11.3g} {r['roofline_fraction']:>12.3f} {r['compile_s']:>10.1f} "
              f"{r['load']:>12}")
    if eval_rows:
        print(f"\nevaluation ({args.eval_samples} samples x 200 sampler steps per model, plus scores and losses)")
        print(f"{'W':>5} {'M':>4} {'seconds':>9} {'s/model':>9} {'compile s':>10}")
        for r in eval_rows:
            print(f"{r['width']:>5} {r['M']:>4} {r['eval_s']:>9.3g} {r['eval_s'] / r['M']:>9.3g} {r['eval_compile_s']:>10.1f}")
    for failure in failures:
        print("FAILED:", failure)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=jax.devices()[0].device_kind, platform=platform, jax=jax.__version__,
                           matmul_peak_flops=peak, bandwidth=bandwidth, bandwidth_source=source,
                           seconds=seconds, min_calls=args.min_calls, steps_per_call=K, dtype=args.dtype,
                           eval_samples=args.eval_samples, train=train_rows, eval=eval_rows,
                           failures=failures), f, indent=1)


if __name__ == "__main__":
    main()
