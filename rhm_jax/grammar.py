"""The Random Hierarchy Model (RHM): rules, parse tables, sampler, parser and synonym resampling.

Shape letters used across rhm_jax: M models (grid axis), B batch, N samples, D = s**L sequence
length, V vocabulary, L depth, S branching, R = m rules per symbol.

Rule order follows the authors' code: ``rules[0]`` has shape ``(n, m, s)`` and expands the root;
``rules[i]`` for ``i >= 1`` has shape ``(v, m, s)``; ``rules[L-1]`` produces the leaves. Scores use
level 1 for the tuples just above the leaves and level L for the root, so level ``l`` is parsed
with ``rules[L - l]``. A tree is its root class plus one rule choice per internal node, listed as
``choices[i]`` of shape (..., s**i) for ``rules[i]``, node 0 first (``sample_trees``/``expand``);
``rhm_jax.data`` reads the same digits as one mixed-radix number (the index bijection) and builds
the datasets. Device functions (``sample``, ``parse``, ``resample_synonyms``) are jitted and vmap
over stacked grammars.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class Grammar:
    """An RHM grammar as a pytree: only integer arrays are leaves, the sizes are static.

    ``parent[i][code]`` is the symbol whose rule at ``rules[i]`` produces the s-tuple with base-v
    code ``code`` (first child most significant), or -1; ``choice[i][code]`` is that rule's index
    in ``0..m-1``, or -1. Grammars of the same sizes share one compiled function and can be
    stacked and vmapped.
    """

    rules: tuple[jax.Array, ...]
    parent: tuple[jax.Array, ...]
    choice: tuple[jax.Array, ...]
    v: int = struct.field(pytree_node=False)
    n: int = struct.field(pytree_node=False)
    m: int = struct.field(pytree_node=False)
    s: int = struct.field(pytree_node=False)
    L: int = struct.field(pytree_node=False)

    @property
    def d(self) -> int:
        """Sequence length s**L."""
        return self.s**self.L

    @property
    def p_max(self) -> int:
        """Number of distinct sequences (``num_sequences``), as an exact Python int."""
        return num_sequences(self.n, self.m, self.s, self.L)


def num_sequences(n: int, m: int, s: int, L: int) -> int:
    """P_max = n * m**((s**L - 1)/(s - 1)): distinct sequences of a grammar, as an exact Python int."""
    return n * m ** ((s**L - 1) // (s - 1))


def check_params(v: int, n: int, m: int, s: int, L: int) -> None:
    """Raise ValueError naming the parameter and its bound when (v, n, m, s, L) is impossible."""
    for name, value in dict(v=v, n=n, m=m, s=s, L=L).items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
            raise ValueError(f"RHM parameter {name} must be an integer, got {value!r}")
    if v < 2:
        raise ValueError(f"RHM vocabulary v={v} must be >= 2")
    if s < 2:
        raise ValueError(f"RHM branching s={s} must be >= 2")
    if L < 1:
        raise ValueError(f"RHM depth L={L} must be >= 1")
    if n < 1:
        raise ValueError(f"RHM root classes n={n} must be >= 1")
    if m < 1:
        raise ValueError(f"RHM synonyms m={m} must be >= 1")
    if m > v ** (s - 1):
        raise ValueError(f"RHM synonyms m={m} must be <= v**(s-1) = {v ** (s - 1)} (v={v}, s={s})")
    if n * m > v**s:
        raise ValueError(f"RHM root rules n*m={n * m} must be <= v**s = {v**s} (n={n}, m={m}, v={v}, s={s})")
    if v**s > 2**26:
        raise ValueError(f"RHM parse tables need v**s={v**s} entries; the limit is 2**26")


def _parse_tables(rules_i: np.ndarray, v: int, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of one level's rules: tuple code -> (producing symbol, rule index), -1 if none."""
    num_symbols, m, _ = rules_i.shape
    codes = (rules_i.astype(np.int64) * v ** np.arange(s - 1, -1, -1)).sum(-1)  # (symbols, m)
    parent = np.full(v**s, -1, np.int32)
    choice = np.full(v**s, -1, np.int32)
    parent[codes.ravel()] = np.repeat(np.arange(num_symbols), m)
    choice[codes.ravel()] = np.tile(np.arange(m), num_symbols)
    return parent, choice


def from_rules(rules: Sequence[np.ndarray], v: int | None = None) -> Grammar:
    """Build a Grammar from ``L`` integer arrays in the authors' order, validating them.

    ``v`` defaults to one more than the largest symbol used. Raises ValueError on wrong shapes,
    symbols out of range, or a tuple produced twice at one level (ambiguous parse).
    """
    rules = [np.asarray(r) for r in rules]
    if not rules:
        raise ValueError("rules must hold at least one level (L >= 1)")
    for i, r in enumerate(rules):
        if r.ndim != 3:
            raise ValueError(f"rules[{i}] must have 3 axes (symbols, m, s), got shape {r.shape}")
        if not np.issubdtype(r.dtype, np.integer):
            raise ValueError(f"rules[{i}] must be integers, got dtype {r.dtype}")
    n, m, s = rules[0].shape
    L = len(rules)
    if v is None:
        v = int(max(r.max() for r in rules)) + 1
    check_params(int(v), int(n), int(m), int(s), L)
    for i, r in enumerate(rules[1:], start=1):
        if r.shape != (v, m, s):
            raise ValueError(f"rules[{i}] must have shape (v, m, s) = {(v, m, s)}, got {r.shape}")
    parents, choices = [], []
    for i, r in enumerate(rules):
        if r.min() < 0 or r.max() >= v:
            raise ValueError(f"rules[{i}] holds symbols outside 0..v-1 = 0..{v - 1}")
        codes = (r.astype(np.int64) * v ** np.arange(s - 1, -1, -1)).sum(-1).ravel()
        if len(np.unique(codes)) != codes.size:
            raise ValueError(f"rules[{i}] produces the same tuple twice: the grammar would be ambiguous")
        parent, choice = _parse_tables(r, v, s)
        parents.append(jnp.asarray(parent))
        choices.append(jnp.asarray(choice))
    return Grammar(
        rules=tuple(jnp.asarray(r, jnp.int32) for r in rules),
        parent=tuple(parents),
        choice=tuple(choices),
        v=int(v), n=int(n), m=int(m), s=int(s), L=int(L),
    )


def host_seed(key_or_seed: jax.Array | int) -> int | list[int]:
    """A NumPy seed from an int or a JAX key (typed or raw), for host-side exact sampling."""
    if isinstance(key_or_seed, (int, np.integer)):
        return int(key_or_seed)
    key = key_or_seed
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(x) for x in np.asarray(key).ravel()]


def sample_rules(key_or_seed: jax.Array | int, v: int, n: int, m: int, s: int, L: int) -> Grammar:
    """Draw a random RHM: per level, distinct s-tuples without replacement, m per symbol.

    Runs on the host (NumPy) with a generator seeded from the key, so it is exact for any size.
    """
    check_params(v, n, m, s, L)
    rng = np.random.default_rng(host_seed(key_or_seed))
    rules = []
    for level in range(L):
        num_symbols = n if level == 0 else v
        codes = rng.choice(v**s, size=num_symbols * m, replace=False)
        digits = (codes[:, None] // v ** np.arange(s - 1, -1, -1)) % v
        rules.append(digits.reshape(num_symbols, m, s).astype(np.int32))
    return from_rules(rules, v=v)


def stack(grammars: Sequence[Grammar]) -> Grammar:
    """Stack grammars of equal sizes along a new leading axis, for ``jax.vmap`` over grammars."""
    if not grammars:
        raise ValueError("stack needs at least one grammar")
    sizes = sorted({(g.v, g.n, g.m, g.s, g.L) for g in grammars})
    if len(sizes) > 1:
        raise ValueError(f"stack needs grammars of equal (v, n, m, s, L), got {sizes}")
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *grammars)


def num_choices(grammar: Grammar) -> int:
    """Rule choices in one tree: (s**L - 1)/(s - 1) internal nodes, one m-ary digit each."""
    return (grammar.s**grammar.L - 1) // (grammar.s - 1)


def mixed_digits(x: jax.Array, radices: Sequence[int]) -> jax.Array:
    """Digits (..., len(radices)) int32 of x < prod(radices) < 2**32, most significant first."""
    places = np.cumprod([1] + list(radices[:0:-1]))[::-1]
    # Unsigned division: several times faster than signed on XLA:CPU.
    digits = (x.astype(jnp.uint32)[..., None] // places.astype(np.uint32)) % np.asarray(radices, np.uint32)
    return digits.astype(jnp.int32)


def _uniform_digits(key: jax.Array, m: int, prefix: tuple[int, ...], count: int, root: int = 0) -> jax.Array:
    """Uniform base-m digits (*prefix, count) int32; one randint in [0, m**k) yields k digits.

    With ``root`` > 0 a first column uniform in 0..root-1 is prepended, from the same draw (a
    single random-number kernel keeps compilation short).
    """
    k = 1
    while m > 1 and m ** (k + 1) < 2**31 and k < count:
        k += 1
    words = 0 if m == 1 else -(-count // k)
    maxval = np.array(([root] if root else []) + [m**k] * words, np.int32)
    draws = jax.random.randint(key, (*prefix, len(maxval)), 0, maxval, dtype=jnp.int32)
    if m == 1:
        digits = jnp.zeros((*prefix, count), jnp.int32)
    else:
        digits = mixed_digits(draws[..., -words:], [m] * k).reshape(*prefix, words * k)[..., :count]
    return jnp.concatenate([draws[..., :1], digits], axis=-1) if root else digits


def split_choices(grammar: Grammar, digits: jax.Array, first: int) -> list[jax.Array]:
    """Cut (..., K) digits into the choices of ``rules[first:]``: (..., s**i) each, node 0 first."""
    sizes = np.cumsum([grammar.s**i for i in range(first, grammar.L)])[:-1]
    return jnp.split(digits, sizes, axis=-1)


def _expand_from(grammar: Grammar, symbols: jax.Array, choices: Sequence[jax.Array], first: int) -> jax.Array:
    """Leaves under ``symbols`` (..., K) after applying ``rules[first:]`` with ``choices``."""
    v, s, m = grammar.v, grammar.s, grammar.m
    weights = v ** np.arange(s - 1, -1, -1)
    for i, choice in zip(range(first, grammar.L), choices):
        # One gather per node of the rule's base-v tuple code, then split the code into children.
        # mode='clip' skips the negative-index fix-up of default indexing (~1.7x faster on CPU).
        codes = (grammar.rules[i] * jnp.asarray(weights, jnp.int32)).sum(-1).reshape(-1)
        picked = jnp.take(codes, symbols * m + choice, mode="clip").astype(jnp.uint32)
        # Scalar divisors here: broadcasting one vector of divisors makes XLA redo the gather
        # for every child (measured 2x slower).
        children = [(picked // np.uint32(v ** (s - 1 - j))) % np.uint32(v) for j in range(s)]
        symbols = jnp.stack(children, -1).reshape(*symbols.shape[:-1], -1).astype(jnp.int32)
    return symbols


@jax.jit
def expand(grammar: Grammar, root_N: jax.Array, choices: Sequence[jax.Array]) -> jax.Array:
    """Tokens (N, D) of the trees given by root classes and per-level rule choices.

    ``choices[l]`` has shape (N, s**l): the rule picked by each node of level ``L - l``. Any
    leading axes work in place of N.
    """
    return _expand_from(grammar, jnp.asarray(root_N, jnp.int32)[..., None], choices, 0)


@functools.partial(jax.jit, static_argnames="num")
def sample_trees(key: jax.Array, grammar: Grammar, num: int) -> tuple[jax.Array, list[jax.Array]]:
    """Uniform random trees: root class (num,) and the rule choices (num, s**l) of every level."""
    digits = _uniform_digits(key, grammar.m, (num,), num_choices(grammar), root=grammar.n)
    return digits[:, 0], split_choices(grammar, digits[:, 1:], 0)


@functools.partial(jax.jit, static_argnames="num")
def sample(key: jax.Array, grammar: Grammar, num: int) -> jax.Array:
    """``num`` sequences (num, s**L) int32 drawn uniformly from the grammar; jit- and vmap-able."""
    root, choices = sample_trees(key, grammar, num)
    return expand(grammar, root, choices)


@jax.jit
def _min_max(tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Smallest and largest entry, computed where the array lives."""
    return jnp.min(tokens), jnp.max(tokens)


def check_tokens(grammar: Grammar, tokens, name: str = "tokens") -> None:
    """Raise ValueError unless ``tokens`` is integer (..., s**L) with values in 0..v-1.

    The value check runs only on concrete arrays; inside jit or vmap only shape and dtype are
    checked (and out-of-range tokens then simply parse as invalid leaves).
    """
    if not hasattr(tokens, "dtype"):
        tokens = np.asarray(tokens)
    shape = tuple(tokens.shape)
    if not shape or shape[-1] != grammar.d:
        raise ValueError(f"{name} last axis must have length d = s**L = {grammar.d}, got shape {shape}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{name} must be integers, got dtype {tokens.dtype}")
    if isinstance(tokens, jax.core.Tracer) or tokens.size == 0:
        return
    if isinstance(tokens, np.ndarray):
        low, high = int(tokens.min()), int(tokens.max())
    else:
        low, high = (int(x) for x in _min_max(tokens))
    if low < 0 or high >= grammar.v:
        raise ValueError(f"{name} must lie in 0..v-1 = 0..{grammar.v - 1}, found values in {low}..{high}")


def _extended_table(grammar: Grammar, i: int) -> jax.Array:
    """Rule index (symbol*m + choice, or -1) of ``rules[i]`` by the tuple's code in base v+1.

    Digit 0 of the code stands for an invalid child, digit c+1 for symbol c, so a tuple with an
    invalid child maps to -1 without a separate mask.
    """
    v, s, m = grammar.v, grammar.s, grammar.m
    codes = np.arange((v + 1) ** s)
    digits = (codes[:, None] // (v + 1) ** np.arange(s - 1, -1, -1)) % (v + 1) - 1
    plain = (np.maximum(digits, 0) * v ** np.arange(s - 1, -1, -1)).sum(-1)
    parent, choice = grammar.parent[i][plain], grammar.choice[i][plain]
    ok = jnp.asarray((digits >= 0).all(-1)) & (parent >= 0)
    return jnp.where(ok, parent * m + choice, -1).astype(jnp.int32)


def symbols_of(grammar: Grammar, rule_index: jax.Array) -> jax.Array:
    """Symbol of each rule index (rule // m), keeping -1 for invalid nodes."""
    m = grammar.m
    if m & (m - 1) == 0:
        return rule_index >> (m.bit_length() - 1)  # arithmetic shift keeps -1 at -1
    return rule_index // m


@functools.partial(jax.jit, static_argnames="levels")
def parse(grammar: Grammar, tokens: jax.Array, levels: int | None = None) -> tuple[jax.Array, ...]:
    """Nested bottom-up parse: rule index per node for levels 1..``levels`` (default L).

    Entry ``l - 1`` has shape (..., s**(L-l)) and holds ``symbol * m + choice`` of the rule that
    produced the node's children, or -1 when the node is invalid: a child invalid, or its tuple
    not a production of ``rules[L - l]`` (at the root, class < n is implied by ``rules[0]``).
    Leaves outside 0..v-1 are invalid. Traceable; no input checks (see ``check_tokens``).
    """
    v, s = grammar.v, grammar.s
    if (v + 1) ** s > 2**27:
        raise ValueError(f"parse needs (v+1)**s = {(v + 1) ** s} table entries; the limit is 2**27")
    tokens = jnp.asarray(tokens)
    symbols = jnp.where((tokens >= 0) & (tokens < v), tokens, -1).astype(jnp.int32)
    out = []
    for level in range(1, grammar.L + 1 if levels is None else levels + 1):
        children = (symbols + 1).reshape(*symbols.shape[:-1], -1, s)
        code = children[..., 0]
        for j in range(1, s):
            code = code * (v + 1) + children[..., j]
        rule_index = jnp.take(_extended_table(grammar, grammar.L - level), code, mode="clip")
        out.append(rule_index)
        symbols = symbols_of(grammar, rule_index)
    return tuple(out)


@functools.partial(jax.jit, static_argnames="level")
def _resample(key: jax.Array, grammar: Grammar, tokens: jax.Array, level: int) -> jax.Array:
    """Traced body of ``resample_synonyms``."""
    tokens = jnp.asarray(tokens, jnp.int32)
    symbols = symbols_of(grammar, parse(grammar, tokens, levels=level)[-1])  # (..., s**(L-level))
    first = grammar.L - level
    count = sum(grammar.s**i for i in range(first, grammar.L))
    digits = _uniform_digits(key, grammar.m, symbols.shape[:-1], count)
    fresh = _expand_from(grammar, jnp.maximum(symbols, 0), split_choices(grammar, digits, first), first)
    keep = jnp.repeat(symbols >= 0, grammar.s**level, axis=-1)
    return jnp.where(keep, fresh, tokens)


def resample_synonyms(key: jax.Array, grammar: Grammar, tokens, level: int) -> jax.Array:
    """Redraw the rule choices at and below ``level`` (1 = tuples above leaves, L = root).

    Each node at level ``level`` keeps its parsed symbol; the rules applied by the nodes of levels
    ``level, level-1, ..., 1`` (tables ``rules[L-level:]``) are drawn afresh, uniformly, so the
    result is a uniform sample among the sequences sharing the tree above ``level`` (level L keeps
    only the root class). The s**level leaves under an invalid level-``level`` node are returned
    unchanged. Works on (..., D) tokens; jit- and vmap-able (``level`` is static).
    """
    if not isinstance(level, (int, np.integer)) or not 1 <= level <= grammar.L:
        raise ValueError(f"level={level!r} must be an integer in 1..L = 1..{grammar.L}")
    check_tokens(grammar, tokens)
    return _resample(key, grammar, tokens, int(level))
