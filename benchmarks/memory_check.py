"""Memory check: ``rhm_jax.memory.estimate`` against the peak resident memory a real sub-grid uses (issue 26).

Usage (one script, unattended; prints a table at the end):
    python benchmarks/memory_check.py                       # the default settings below, about 6 minutes alone
    python benchmarks/memory_check.py --only W=64,M=1       # one setting (a quick look)
    python benchmarks/memory_check.py --json out.json

Each setting runs in a fresh child process (this script with ``--child``) what the runner does for
one sub-grid, with the project's own functions: ``plan.single`` -> ``program.build`` ->
``subgrids.make_part`` -> ``place.init_state`` -> the first call of the training chunk (its
compilation) and ``--calls`` further calls of ``train.steps_per_call`` steps -> one full evaluation
(``evaluator.sample`` then ``evaluator.score``, as ``subgrids.evaluation_rows``: its compilation
and run). The child reads its own ``VmHWM`` (peak resident set, /proc/self/status) once jax and the
library are imported and the CPU backend has started (the baseline: what every process of the
library holds before it plans anything), and again after each phase (build: ``program.build`` and
the part; init: the initial state; then each jitted function's compilation apart from its call);
measured = final VmHWM less
the baseline. The estimate (``memory.estimate(settings, rows)``, its parts and ``total(M)``) is
computed in the same child, before anything compiles, as the planner does. ratio = estimate /
measured: below 1, a grid planned by the estimate could exceed the memory.

Setting: the SPEC section 6 grammar (v=n=8, m=3, s=2, L=3: D=8), P=1024, 1024 test rows, batch 64,
uniform process T=200, Adam, one host device (the default; ``RHM_CPU_DEVICES`` unset), default
evaluation sizes (1024 samples, 1024 loss rows, 10 windows, one model per evaluation batch) unless a
setting names others. The sampler runs ``process.sampler_steps=10`` steps instead of the exact
T=200: it is a ``lax.scan`` whose live tensors do not depend on its length, and 200 steps at W=1024
would take minutes per model. Settings: bpUNet W = 64, 256, 1024 with M = 1, 4, 8 (W=1024: M = 1, 4),
a larger evaluation (eval.num_samples=8192) at W = 64 and 256, the transformer (W=64, depth 4), and
the build and initial state alone of W=1024 M=8 (its training and evaluation would take minutes).

Machine load changes timings, not memory; but concurrent processes do not change a child's VmHWM,
so ``cpu-shared`` runs give the same numbers (only slower). Peak RSS counts the host: on a GPU the
estimate is checked against ``bytes_limit``, which this script does not measure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

SETTINGS = (
    [dict(network="bpunet", W=64, M=M) for M in (1, 4, 8)]
    + [dict(network="bpunet", W=256, M=M) for M in (1, 4, 8)]
    + [dict(network="bpunet", W=1024, M=M) for M in (1, 4)]
    + [dict(network="bpunet", W=64, M=1, num_samples=8192), dict(network="bpunet", W=256, M=1, num_samples=8192)]
    + [dict(network="transformer", W=64, M=M) for M in (1, 4)]
    + [dict(network="bpunet", W=1024, M=8, init_only=1)]
)
_MIB = 2**20
PHASES = ("build", "init", "train_compile", "train", "sample_compile", "sample", "score_compile", "score")


def vm_status() -> dict:
    """VmHWM and VmRSS of this process in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM:", "VmRSS:")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def make_config(setting: dict, steps_per_call: int):
    """The SPEC section 6 setting with M seeds at one P, network and evaluation sizes of ``setting``."""
    from rhm_jax import config as config_lib

    config = config_lib.base_config()
    config.grammar.update(dict(v=8, n=8, m=3, s=2, L=3, seed=0))
    config.data.update(dict(num_train=(1024,), num_test=1024, seed=0))
    config.process.update(dict(T=200, sampler_steps=10))
    config.network.update(dict(name=setting["network"], width=int(setting["W"])))
    config.train.update(dict(batch_size=64, lr=(1e-4,), num_steps=100 * steps_per_call, num_epochs=0.0,
                             seeds=tuple(range(int(setting["M"]))), steps_per_call=steps_per_call))
    if "num_samples" in setting:
        config.eval.num_samples = int(setting["num_samples"])
    config_lib.validate(config)
    return config


def child(setting: dict, steps_per_call: int, calls: int) -> dict:
    """One sub-grid as the runner runs it; VmHWM after each phase (see the module docstring)."""
    import jax
    import numpy as np

    from rhm_jax import memory, plan, program, subgrids  # noqa: F401 (the library, as a run imports it)

    jax.devices()  # the CPU backend started: part of the baseline
    marks = {"baseline": vm_status()["VmHWM"]}
    seconds = {}
    start = time.perf_counter()
    planned = plan.single(make_config(setting, steps_per_call))
    need = memory.estimate(planned.settings, planned.rows)
    built = program.build(planned.settings, planned.rows)
    part = subgrids.make_part(built, list(range(len(built.grid_rows))))
    marks["build"], seconds["build"] = vm_status()["VmHWM"], time.perf_counter() - start
    start = time.perf_counter()
    state = built.place.init_state(built.settings.train, built.setup.network, part.grid)
    if built.place.mesh is None:
        state = jax.device_put(state, jax.devices()[0])
    jax.block_until_ready(state)
    marks["init"], seconds["init"] = vm_status()["VmHWM"], time.perf_counter() - start
    if setting.get("init_only"):  # a grid too slow to train and evaluate here: its build and init alone
        M = len(built.grid_rows)
        return dict(setting=setting, M=M, estimate=need._asdict(), estimate_total=need.total(M), marks=marks,
                    seconds=seconds, final_rss=vm_status()["VmRSS"], measured=marks["init"] - marks["baseline"])

    def phase(name, fn):
        start = time.perf_counter()
        out = fn()
        marks[name], seconds[name] = vm_status()["VmHWM"], time.perf_counter() - start
        return out

    # each jitted function compiled first (its own phase: XLA's compiler), then called as the runner calls it
    phase("train_compile", lambda: built.step_fn.lower(state, part.grid, built.pool, steps_per_call).compile())

    def train_calls(state):
        for _ in range(1 + calls):  # the state is donated: carried from call to call
            state, metrics = jax.block_until_ready(built.step_fn(state, part.grid, built.pool, steps_per_call))
        return state, metrics

    state, metrics = phase("train", lambda: train_calls(state))
    sample, score, refs = built.evaluator.evaluate_fn.sample, built.evaluator.evaluate_fn.score, built.evaluator.refs
    key = program.eval_key(0, 1)
    phase("sample_compile", lambda: sample.lower(state, part.grid, key, refs).compile())
    tokens = phase("sample", lambda: jax.block_until_ready(built.evaluator.sample(state, part.grid, key)))
    phase("score_compile", lambda: score.lower(state, part.grid, tokens, refs).compile())
    scores = phase("score", lambda: jax.block_until_ready(built.evaluator.score(state, part.grid, tokens)))
    M = len(built.grid_rows)
    return dict(setting=setting, M=M, estimate=need._asdict(), estimate_total=need.total(M), marks=marks,
                seconds=seconds, final_rss=vm_status()["VmRSS"], measured=marks["score"] - marks["baseline"],
                loss=float(np.nanmean(np.asarray(metrics["loss"])[:M])),
                validity_l1=float(np.nanmean(np.asarray(scores["validity_l1"])[:M])))


def run_child(setting: dict, args: argparse.Namespace) -> dict:
    """``child`` in a fresh process; its JSON answer, or an error row."""
    command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(setting),
               "--steps-per-call", str(args.steps_per_call), "--calls", str(args.calls)]
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return dict(setting=setting, error=f"timed out after {args.timeout} s")
    for line in done.stdout.splitlines():
        if line.startswith("@@ "):
            row = json.loads(line[3:])
            row["wall_s"] = time.perf_counter() - start
            return row
    errors = [line for line in done.stderr.splitlines() if "Error" in line.split(":")[0]]
    return dict(setting=setting, error=f"exit {done.returncode}: {(errors or done.stderr.splitlines() or [''])[-1]}")


def label(setting: dict) -> str:
    extra = f" N={setting['num_samples']}" if "num_samples" in setting else ""
    extra += " (build+init)" if setting.get("init_only") else ""
    return f"{setting['network']} W={setting['W']} M={setting['M']}{extra}"


def table(rows: list[dict]) -> str:
    """The result table (MiB; ratio = estimate total / measured peak over the baseline)."""
    head = (f"{'setting':<30} {'state':>7} {'step':>7} {'eval':>7} {'data':>6} {'init':>7} {'compile':>7}"
            f" {'est.total':>9}"
            f" {'baseline':>8} {'measured':>8} {'ratio':>6} {'ratio-c':>7}  peak phase   (MiB; wall s)")
    lines = [head]
    for r in rows:
        if "error" in r:
            lines.append(f"{label(r['setting']):<30} ERROR {r['error']}")
            continue
        e, marks = r["estimate"], r["marks"]
        phases = [p for p in PHASES if p in marks]
        growth = {p: marks[p] - marks[q] for p, q in zip(phases, ["baseline"] + phases[:-1])}
        peak_phase = max(growth, key=growth.get)
        without = r["estimate_total"] - e["compilation"]
        lines.append(
            f"{label(r['setting']):<30} {e['state'] / _MIB:>7.1f} {e['step'] / _MIB:>7.1f}"
            f" {e['per_batch'] * e['evaluation'] / _MIB:>7.1f} {e['datasets'] / _MIB:>6.2f}"
            f" {e.get('init', 0) / _MIB:>7.1f} {e['compilation'] / _MIB:>7.0f} {r['estimate_total'] / _MIB:>9.1f}"
            f" {marks['baseline'] / _MIB:>8.0f}"
            f" {r['measured'] / _MIB:>8.1f} {r['estimate_total'] / r['measured']:>6.2f}"
            f" {without / r['measured']:>7.2f}  {peak_phase:<13} ({r['wall_s']:.0f})")
    lines.append("ratio = est.total / measured; ratio-c = (est.total - compile) / measured; peak phase: the"
                 " phase that raised VmHWM most")
    lines.append("")
    lines.append("VmHWM raised by each phase (MiB), in order:")
    lines.append(f"{'setting':<30} " + " ".join(f"{p:>13}" for p in PHASES))
    for r in rows:
        if "error" not in r:
            marks = r["marks"]
            previous = ("baseline",) + PHASES[:-1]
            lines.append(f"{label(r['setting']):<30} " + " ".join(
                f"{(marks[p] - marks[q]) / _MIB:>13.1f}" for p, q in zip(PHASES, previous) if p in marks))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--steps-per-call", type=int, default=10, help="train.steps_per_call of each setting")
    parser.add_argument("--calls", type=int, default=2, help="training calls after the compiling one")
    parser.add_argument("--only", default=None, help="settings as W=..,M=..[,network=..][,num_samples=..]; ';' between")
    parser.add_argument("--timeout", type=float, default=240, help="seconds per child")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args()
    if args.child is not None:
        print("@@ " + json.dumps(child(json.loads(args.child), args.steps_per_call, args.calls)), flush=True)
        return
    settings = list(SETTINGS)
    if args.only:
        settings = []
        for text in args.only.split(";"):
            fields = dict(item.split("=", 1) for item in text.split(","))
            setting = dict(network=fields.pop("network", "bpunet"))
            setting.update({k: int(v) for k, v in fields.items()})
            settings.append(setting)
    import platform

    print(f"memory_check: {len(settings)} settings, steps_per_call={args.steps_per_call}, calls={args.calls};"
          f" {platform.node()} {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f};"
          f" {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}",
          flush=True)
    rows = []
    for setting in settings:
        row = run_child(setting, args)
        rows.append(row)
        if "error" in row:
            print(f"  {label(setting)}: ERROR {row['error']}", flush=True)
        else:
            print(f"  {label(setting)}: estimate {row['estimate_total'] / _MIB:.1f} MiB, measured"
                  f" {row['measured'] / _MIB:.1f} MiB over a baseline of {row['marks']['baseline'] / _MIB:.0f} MiB,"
                  f" ratio {row['estimate_total'] / row['measured']:.2f}; {row['wall_s']:.0f} s"
                  f" (load {os.getloadavg()[0]:.2f})", flush=True)
    print()
    print(table(rows))
    print(f"load at the end {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(settings=settings, steps_per_call=args.steps_per_call, calls=args.calls, rows=rows,
                           load_end=os.getloadavg()[0]), f, indent=1)


if __name__ == "__main__":
    main()
