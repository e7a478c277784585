"""Does XLA's CPU backend compute bf16 matmuls faster than fp32 here? Products timed, and the dots XLA compiles.

    python benchmarks/bf16_probe.py                     # products, then the W=256 train chunk's dots
    python benchmarks/bf16_probe.py --width 1024 --hlo-dir /tmp/hlo   # also keep the optimized HLO text

Part 1 times ``a @ b`` through XLA for fp32 and bf16 operands (accumulated in fp32 and, separately,
bf16 out) at a 4096^3 product and at bpUNet's own shapes (batch 64 x length, width W), best of
several calls, and prints GFLOP/s (2 n m k / s). A CPU with AVX512-BF16 (``vdpbf16ps``: two bf16
products per fp32 lane) could do up to twice the fp32 rate if the dot kernel used it.
Part 2 compiles one training chunk of grid_throughput's setting with ``network.dtype='bfloat16'``
and lists every dot of the optimized HLO with its operand and result types, and whether a
``convert`` to f32 feeds it (XLA upcasting the bf16 operands before an fp32 dot).
"""
from __future__ import annotations

import argparse
import collections
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import grid_throughput as gt  # noqa: E402
from rhm_jax import settings, train  # noqa: E402


def product_rate(n: int, k: int, m: int, dtype, out_dtype, repeats: int = 7) -> float:
    """GFLOP/s of the best of ``repeats`` (n x k) @ (k x m) products, operands in dtype, result in out_dtype."""
    a = jax.random.normal(jax.random.key(0), (n, k), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (k, m), jnp.float32).astype(dtype)
    product = jax.jit(lambda x, y: jnp.dot(x, y, preferred_element_type=out_dtype))
    jax.block_until_ready(product(a, b))
    inner = max(1, int(2e8 // (2 * n * k * m)))  # enough products per timing to measure small shapes
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            out = product(a, b)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - start) / inner)
    return 2.0 * n * k * m / best / 1e9


def chunk_dots(width: int, hlo_dir: str | None) -> list[tuple[str, str]]:
    """(operand types, result type) of every dot in the optimized HLO of a bf16 train chunk (M=1).

    XLA's CPU backend wraps each dot in a fused computation whose header names its parameters'
    types (``%fused_computation.3 (param_0.5: f32[512,256], ...) -> f32[512,512]``): the last two
    are the dot's operands (a fusion may take scalars first).
    """
    config = gt.make_config(width, 1, 10, 1024, "bfloat16")
    rules, pool, test, process, network, grid = gt.build(config)
    typed = settings.TrainSettings.of(config)
    chunk = train.jit_chunk(train.make_train_chunk(typed, process, network))
    state = train.init_state(typed, network, grid)
    text = chunk.lower(state, grid, pool, 10).compile().as_text()
    if hlo_dir:
        os.makedirs(hlo_dir, exist_ok=True)
        with open(os.path.join(hlo_dir, f"train_chunk_bf16_W{width}.txt"), "w") as f:
            f.write(text)
    found = []
    for match in re.finditer(r"%\S+ \(([^)]*)\) -> (\w+)\[[^\n]*\{\n((?:.*\n)*?)\}", text):
        params, result, body = match.groups()
        if re.search(r"\bdot\(", body):
            types = [t for t in re.findall(r": (\w+)\[", params) if t in ("f32", "bf16")]
            found.append((" x ".join(types[-2:]) if types else "?", result))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--hlo-dir", default=None, help="write the optimized HLO text of the bf16 chunk here")
    args = parser.parse_args()
    W = args.width
    print(f"jax {jax.__version__}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}, load {gt.load()}", flush=True)
    shapes = [(4096, 4096, 4096), (64 * 4, 2 * W, W), (64 * 8, 2 * W, 2 * W), (2 * W, 64 * 4, W)]
    print(f"{'n x k x m':>18} {'fp32':>8} {'bf16->f32':>10} {'bf16->bf16':>11}   GFLOP/s, best of 7", flush=True)
    for n, k, m in shapes:
        rates = [product_rate(n, k, m, jnp.float32, jnp.float32), product_rate(n, k, m, jnp.bfloat16, jnp.float32),
                 product_rate(n, k, m, jnp.bfloat16, jnp.bfloat16)]
        print(f"{f'{n}x{k}x{m}':>18} {rates[0]:>8.1f} {rates[1]:>10.1f} {rates[2]:>11.1f}", flush=True)
    dots = chunk_dots(W, args.hlo_dir)
    print(f"\noptimized HLO of the bf16 train chunk (W={W}, M=1): {len(dots)} dots in fused computations")
    for (operands, result), count in sorted(collections.Counter(dots).items()):
        print(f"  {operands} -> {result}: {count}")
    print(f"load {gt.load()}")


if __name__ == "__main__":
    main()
