"""The Random Hierarchy Model (RHM) as data: rules, parse tables and a pure sampler.

Shape letters used across rhm_jax: M models (grid axis), B batch, N samples, D = s**L sequence
length, V vocabulary, L depth, S branching, R = m rules per symbol.

Rule order follows the authors' code: ``rules[0]`` has shape ``(n, m, s)`` and expands the root;
``rules[i]`` for ``i >= 1`` has shape ``(v, m, s)``; ``rules[L-1]`` produces the leaves. Scores use
level 1 for the tuples just above the leaves and level L for the root, so level ``l`` is parsed
with ``rules[L - l]``.
"""
from __future__ import annotations

import math
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
        """Number of distinct sequences, n * m**((s**L - 1)/(s - 1)), as an exact Python int."""
        return self.n * self.m ** ((self.s**self.L - 1) // (self.s - 1))


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


def sample_rules(key_or_seed: jax.Array | int, v: int, n: int, m: int, s: int, L: int) -> Grammar:
    """Draw a random RHM: per level, distinct s-tuples without replacement, m per symbol.

    Runs on the host (NumPy) with a generator seeded from the key, so it is exact for any size.
    """
    check_params(v, n, m, s, L)
    if isinstance(key_or_seed, (int, np.integer)):
        seed = int(key_or_seed)
    else:
        key = key_or_seed
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        seed = [int(x) for x in np.asarray(key).ravel()]
    rng = np.random.default_rng(seed)
    rules = []
    for level in range(L):
        num_symbols = n if level == 0 else v
        codes = rng.choice(v**s, size=num_symbols * m, replace=False)
        digits = (codes[:, None] // v ** np.arange(s - 1, -1, -1)) % v
        rules.append(digits.reshape(num_symbols, m, s).astype(np.int32))
    return from_rules(rules, v=v)


def expand(grammar: Grammar, root_N: jax.Array, choices: Sequence[jax.Array]) -> jax.Array:
    """Tokens (N, D) of the trees given by root classes and per-level rule choices.

    ``choices[l]`` has shape (N, s**l): the rule picked by each node of level ``L - l``.
    """
    symbols = root_N[:, None]
    for level in range(grammar.L):
        symbols = grammar.rules[level][symbols, choices[level]]  # (N, s**level, s)
        symbols = symbols.reshape(symbols.shape[0], -1)
    return symbols.astype(jnp.int32)


def sample_trees(key: jax.Array, grammar: Grammar, num: int) -> tuple[jax.Array, list[jax.Array]]:
    """Uniform random trees: root class and the rule choices of every node, level by level."""
    key_root, key_choice = jax.random.split(key)
    root = jax.random.randint(key_root, (num,), 0, grammar.n, dtype=jnp.int32)
    choices = [
        jax.random.randint(jax.random.fold_in(key_choice, level), (num, grammar.s**level), 0,
                           grammar.m, dtype=jnp.int32)
        for level in range(grammar.L)
    ]
    return root, choices


def sample(key: jax.Array, grammar: Grammar, num: int) -> jax.Array:
    """``num`` sequences (num, s**L) int32 drawn uniformly from the grammar; jit- and vmap-able."""
    root, choices = sample_trees(key, grammar, num)
    return expand(grammar, root, choices)
