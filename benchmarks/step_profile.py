"""Where a training step's time goes on XLA's CPU backend: a per-op profile of one compiled chunk.

Usage (one script, unattended; prints a table per setting):
    python benchmarks/step_profile.py                          # W=64, M=8, the shipped program
    python benchmarks/step_profile.py --widths 64,256 --models 1,8 --calls 5
    XLA_FLAGS=--xla_force_host_platform_device_count=2 python benchmarks/step_profile.py --split

The program is the one ``benchmarks/grid_throughput.py`` times (SPEC section 6: v=n=8, m=3, s=2,
L=3, batch 64, bpUNet of width W, Adam; M models). It is compiled, warmed up, then ``--calls``
calls of K steps run under ``jax.profiler.trace`` with XLA's per-thunk trace events
(``--xla_cpu_enable_xprof_traceme``). Every event on XLA's worker threads is matched to its
instruction in the optimized HLO and put in a class:

- ``dot``: a fusion that holds a dot (XLA hands these to its YNNPACK/Eigen kernels);
- ``adam``: the fused Adam/freeze passes over the state (the selects of ``train.make_train_chunk``);
- ``reduce``: fusions whose root is a reduction (LayerNorm statistics, the loss, the finite check);
- ``copy``: copies, transposes and concatenations;
- ``elementwise``: every other fusion (LayerNorm, GELU and their backward, the diffusion's noise);
- ``wait``: the thread pool's own waiting events (``SlinkyThreadPool::Await``).

A multi-threaded dot shows as one event on the thread that started it; the other thread's share of
it counts in ``gap``. ``no op running`` is the wall time during which no thread is inside any op:
the executor's own time between ops (dispatch, dependency bookkeeping, the while loop).

Printed per step: the wall time, the core time (wall x worker threads that ran ops), the time
inside each class of op with its number of ops, ``gap`` = core time - time inside ops (threads
idle between ops or waiting for a dependency: what a mostly sequential chain of small ops costs on
two cores), and the dots' own GFLOP/s (their FLOPs counted from the HLO shapes). Profiling adds
a little time per event: compare the wall time with ``grid_throughput.py``'s for the overhead.
"""
from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import shutil
import sys
import tempfile
import time

TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TRACE_FLAG).strip()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import grid_throughput  # noqa: E402

CLASSES = ("dot", "adam", "reduce", "elementwise", "copy", "wait")
SOURCES: dict[str, str] = {}  # instruction name -> the jax operation it came from (HLO metadata)


def computations(hlo: str) -> dict[str, list[str]]:
    """Instruction lines of every computation of an HLO module's text, by name."""
    blocks, name = {}, None
    for line in hlo.splitlines():
        head = re.match(r"^(?:ENTRY )?%([\w.\-]+) .*\{$", line)
        if head:
            name = head.group(1)
            blocks[name] = []
        elif name and line.startswith("  "):
            blocks[name].append(line)
    return blocks


def _opcodes(lines: list[str]) -> collections.Counter:
    return collections.Counter(m.group(1) for m in (re.search(r"= \S+ ([\w\-]+)\(", x) for x in lines) if m)


def _dot_flops(lines: list[str]) -> float:
    """2 x output elements x contracted size of every dot in a computation."""
    shapes = {}
    for line in lines:
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \w+\[([\d,]*)\]", line)
        if m:
            shapes[m.group(1)] = [int(d) for d in m.group(2).split(",") if d]
    flops = 0.0
    for line in lines:
        m = re.match(r"\s*(?:ROOT )?%[\w.\-]+ = \w+\[([\d,]*)\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)"
                     r".*lhs_contracting_dims=\{([\d,]*)\}", line)
        if m:
            out = [int(d) for d in m.group(1).split(",") if d]
            lhs = shapes.get(m.group(2), [])
            contracted = int(np.prod([lhs[int(i)] for i in m.group(4).split(",") if i])) if lhs else 0
            flops += 2.0 * float(np.prod(out)) * contracted
    return flops


def classify(hlo: str) -> dict[str, tuple[str, float]]:
    """Each instruction's name -> (class, dot FLOPs), from the optimized HLO."""
    blocks = computations(hlo)
    out = {}
    for lines in blocks.values():
        for line in lines:
            m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = \S+ ([\w\-]+)\(", line)
            if not m:
                continue
            name, op = m.group(1), m.group(2)
            called = re.search(r"calls=%([\w.\-]+)", line)
            inner = blocks.get(called.group(1), []) if called else []
            ops = _opcodes(inner) if inner else collections.Counter({op: 1})
            where = re.search(r'op_name="([^"]+)"', line)
            SOURCES[name] = where.group(1).replace("jit(chunk)/while/body/", "") if where else ""
            if "dot" in ops or op == "dot":
                out[name] = ("dot", _dot_flops(inner or [line]))
            elif "select" in ops and "is-finite" in ops:
                out[name] = ("adam", 0.0)
            elif op in ("copy", "transpose", "concatenate") or (set(ops) - {"parameter", "bitcast"}) <= {
                    "copy", "transpose", "concatenate", "slice"}:
                out[name] = ("copy", 0.0)
            elif any(r in ops for r in ("reduce", "reduce-window")):
                out[name] = ("reduce", 0.0)
            else:
                out[name] = ("elementwise", 0.0)
    return out


def _covered(intervals: list[tuple[int, int]]) -> float:
    """Seconds during which at least one of the (start_ns, end_ns) intervals runs."""
    total, end = 0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total += stop - start
            end = stop
        elif stop > end:
            total += stop - end
            end = stop
    return total * 1e-9


def profile(run: dict, calls: int, top: int = 0) -> dict:
    """Per-step seconds by class of op, over ``calls`` profiled calls of ``run`` (grid_throughput's)."""
    from jax._src.profiler import ProfileData

    names = classify(run["compiled"].as_text())
    directory = tempfile.mkdtemp(prefix="step_profile_")
    try:
        with jax.profiler.trace(directory):
            wall = sum(grid_throughput.timed_call(run) for _ in range(calls))
        data = ProfileData.from_file(glob.glob(os.path.join(directory, "**", "*.xplane.pb"), recursive=True)[0])
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    seconds = collections.Counter()
    counts = collections.Counter()
    dot_flops = 0.0
    threads = set()
    unknown = collections.Counter()
    intervals = []
    by_op = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if not line.name.startswith("tf_XLAEigen"):
                continue
            for event in line.events:
                name = event.name
                if name.startswith(("ThunkExecutor", "ThreadpoolListener", "end: ")):
                    continue
                threads.add(line.name)
                if "Await" in name:
                    kind, flops = "wait", 0.0
                elif name in names:
                    kind, flops = names[name]
                else:
                    unknown[name] += 1
                    kind, flops = "elementwise", 0.0
                seconds[kind] += event.duration_ns * 1e-9
                counts[kind] += 1
                by_op[(kind, name)] += event.duration_ns * 1e-9
                if kind != "wait":
                    intervals.append((event.start_ns, event.end_ns))
                dot_flops += flops
    steps = calls * run["K"]
    inside = sum(seconds.values())
    busy = _covered(intervals)
    core = wall * max(len(threads), 1)
    return dict(wall_per_step_ms=1e3 * wall / steps, threads=len(threads), core_per_step_ms=1e3 * core / steps,
                ms_per_step={k: 1e3 * seconds[k] / steps for k in CLASSES},
                ops_per_step={k: counts[k] / steps for k in CLASSES},
                gap_per_step_ms=1e3 * (core - inside) / steps,
                no_op_per_step_ms=1e3 * (wall - busy) / steps,
                dot_gflops_inside=dot_flops / max(seconds["dot"], 1e-12) / 1e9,
                dot_gflop_per_step=dot_flops / steps / 1e9,
                cost_gflop_per_step=run["flops_per_step"] / 1e9,
                unmatched_events=sum(unknown.values()),
                top=[dict(kind=k, op=n, ms_per_step=1e3 * t / steps, source=SOURCES.get(n, ""))
                     for (k, n), t in by_op.most_common(top)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="64")
    parser.add_argument("--models", default="8")
    parser.add_argument("--calls", type=int, default=5, help="profiled calls of K steps each")
    parser.add_argument("--steps-per-call", type=int, default=10)
    parser.add_argument("--split", action="store_true", help="models over the host devices, as the runner splits them")
    parser.add_argument("--top", type=int, default=0, help="also list the N ops that take the most time")
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    peak = grid_throughput.matmul_peak()
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load {grid_throughput.load()}, "
          f"jax {jax.__version__}, XLA_FLAGS={os.environ['XLA_FLAGS']!r}, fp32 peak {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for W in [int(w) for w in args.widths.split(",")]:
        for M in [int(m) for m in args.models.split(",")]:
            run = grid_throughput.compile_training(
                grid_throughput.make_config(W, M, args.steps_per_call, 1024, "float32"), split=args.split)
            grid_throughput.timed_call(run)
            row = dict(W=W, M=M, devices=run["devices"], **profile(run, args.calls, args.top))
            row["of_peak"] = row["cost_gflop_per_step"] / (row["wall_per_step_ms"] * 1e-3) / (peak / 1e9)
            rows.append(row)
            ms, ops = row["ms_per_step"], row["ops_per_step"]
            print(f"W={W} M={M} devices={row['devices']}: {row['wall_per_step_ms']:.2f} ms/step wall "
                  f"({M / row['wall_per_step_ms'] * 1e3:.0f} model-steps/s, {row['of_peak']:.2f} of peak), "
                  f"{row['threads']} threads, core {row['core_per_step_ms']:.2f} ms/step")
            for k in CLASSES:
                print(f"   {k:12s} {ms[k]:7.3f} ms  {100 * ms[k] / row['core_per_step_ms']:5.1f}% of core  "
                      f"{ops[k]:6.1f} ops/step  {1e3 * ms[k] / max(ops[k], 1e-9):7.1f} us/op")
            print(f"   {'gap':12s} {row['gap_per_step_ms']:7.3f} ms  "
                  f"{100 * row['gap_per_step_ms'] / row['core_per_step_ms']:5.1f}% of core (idle between ops); "
                  f"no op running on any thread {row['no_op_per_step_ms']:.3f} ms/step")
            print(f"   dots: {row['dot_gflop_per_step']:.3f} of {row['cost_gflop_per_step']:.3f} GFLOP/step, "
                  f"{row['dot_gflops_inside']:.1f} GFLOP/s inside them ({row['dot_gflops_inside'] / (peak / 2e9):.2f} "
                  f"of one core's peak); unmatched events {row['unmatched_events']}", flush=True)
            for op in row["top"]:
                print(f"     {op['ms_per_step']:7.3f} ms  {op['kind']:11s} {op['op'][:28]:28s} {op['source'][-90:]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(peak_gflops=peak / 1e9, xla_flags=os.environ["XLA_FLAGS"], rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
