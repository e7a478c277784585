"""Grammar throughput: sequences/s of ``grammar.sample`` and ``coherence.validity`` against NumPy.

Usage:
    python benchmarks/grammar_throughput.py                    # both grammars, batches 1e5 and 1e6
    python benchmarks/grammar_throughput.py --batches 100000 --repeats 3

Grammars v=32, m=8, s=2, L=5 (d=32) and v=16, m=4, s=2, L=4 (d=16), n = v. Each JAX timing is
jitted, warmed up once, ``block_until_ready``-ed, and the median of ``--repeats`` runs. The
yardsticks are vectorized NumPy versions written here: ``numpy_sample`` (one fancy-indexing gather
per level) and ``numpy_validity`` (bottom-up table lookups with the same invalid-child trick).
``validity`` is timed twice: inside a caller's jit keeping only ``per_level`` and ``valid`` (what
an evaluation uses; XLA drops the rest; compared with the NumPy parse, which computes just that),
and the public call returning the whole ``Validity`` pytree (every level's nodes, symbols and
rules: bound by writing those outputs). "its random digits only" times the sampler's random
number generation (root and packed rule choices) alone, to show the RNG share of ``sample``. ``sample_dataset`` is timed for 1e6
training sequences plus 1024 test sequences (second call, after compilation). The load average is
printed because the 2-core machine is shared: other processes slow every number down.
Target on the 2-core CPU: >= 1e6 sequences/s for sample and validity.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import numpy as np

from rhm_jax import coherence, data, grammar

GRAMMARS = [dict(v=32, n=32, m=8, s=2, L=5), dict(v=16, n=16, m=4, s=2, L=4)]


def numpy_sample(rng: np.random.Generator, rules: list[np.ndarray], n: int, m: int, num: int) -> np.ndarray:
    """Yardstick sampler: uniform root and rule choices, one gather per level."""
    symbols = rng.integers(0, n, (num, 1))
    for r in rules:
        choices = rng.integers(0, m, symbols.shape)
        symbols = r[symbols, choices].reshape(num, -1)
    return symbols


def numpy_tables(g: grammar.Grammar) -> list[np.ndarray]:
    """Per level l = 1..L: rule index by tuple code over symbols -1..v-1 (shifted by one)."""
    v, s, m = g.v, g.s, g.m
    codes = np.arange((v + 1) ** s)
    digits = (codes[:, None] // (v + 1) ** np.arange(s - 1, -1, -1)) % (v + 1) - 1
    plain = (np.maximum(digits, 0) * v ** np.arange(s - 1, -1, -1)).sum(-1)
    tables = []
    for level in range(1, g.L + 1):
        parent, choice = np.asarray(g.parent[g.L - level]), np.asarray(g.choice[g.L - level])
        ok = (digits >= 0).all(-1) & (parent[plain] >= 0)
        tables.append(np.where(ok, parent[plain] * m + choice[plain], -1).astype(np.int32))
    return tables


def numpy_validity(tables: list[np.ndarray], v: int, s: int, m: int, tokens: np.ndarray) -> np.ndarray:
    """Yardstick parse: fraction of valid nodes per level, (N, L)."""
    symbols, per_level = tokens.astype(np.int32), []
    for table in tables:
        children = (symbols + 1).reshape(len(symbols), -1, s)
        code = children[..., 0]
        for j in range(1, s):
            code = code * (v + 1) + children[..., j]
        rules = table[code]
        per_level.append((rules >= 0).mean(-1))
        symbols = rules // m
    return np.stack(per_level, axis=-1)


def median_seconds(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` after one warm-up call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_grammar(params: dict, batches: list[int], repeats: int) -> None:
    """Print sample / validity rates (JAX and NumPy) for one grammar at each batch size."""
    g = grammar.sample_rules(0, **params)
    rules = [np.asarray(r) for r in g.rules]
    tables = numpy_tables(g)
    rng = np.random.default_rng(0)
    slim = jax.jit(lambda g, x: (lambda r: (r.per_level, r.valid))(coherence.validity(g, x)))
    digits = jax.jit(lambda key, num: grammar._uniform_digits(key, g.m, (num,), grammar.num_choices(g), root=g.n),
                     static_argnums=1)
    print(f"\ngrammar {params}  d={g.d}  P_max={g.p_max:.3g}")
    for num in batches:
        key = jax.random.key(num)
        tokens = grammar.sample(key, g, num)
        rows = [
            ("sample", lambda: grammar.sample(key, g, num), lambda: numpy_sample(rng, rules, g.n, g.m, num)),
            ("  its random digits only", lambda: digits(key, num), None),
            ("validity (per_level, valid)", lambda: slim(g, tokens),
             lambda: numpy_validity(tables, g.v, g.s, g.m, host)),
            ("validity (full pytree)", lambda: coherence.validity(g, tokens), None),
        ]
        host = np.asarray(tokens)
        for name, jax_fn, numpy_fn in rows:
            rate = num / median_seconds(jax_fn, repeats)
            line = f"  N={num:>8}  {name:<28} jax {rate:10.3g} seq/s"
            if numpy_fn is not None:
                numpy_rate = num / median_seconds(numpy_fn, max(1, repeats // 2))
                line += f"   numpy {numpy_rate:10.3g} seq/s   jax/numpy {rate / numpy_rate:5.1f}x"
            print(line, flush=True)
    for seed in (0, 1):  # the first call compiles the decoder
        start = time.perf_counter()
        train, _ = data.sample_dataset(seed, g, 10**6, 1024)
        seconds = time.perf_counter() - start
    print(f"  sample_dataset(1e6 train + 1024 test): {seconds:.2f} s ({len(train) / seconds:.3g} seq/s)")


def main() -> None:
    """Run the benchmark for both grammars."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[10**5, 10**6])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} (shared machine)")
    for params in GRAMMARS:
        bench_grammar(params, args.batches, args.repeats)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
