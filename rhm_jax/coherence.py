"""What generated sequences are worth: nested validity per level, rule usage, exact copy lookup.

Levels follow SPEC: level 1 holds the s-tuples just above the leaves, level L the root. All
functions accept any leading batch axes (written ``...``); inputs are checked before any jit
compilation when they are concrete arrays.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from rhm_jax import grammar as grammar_lib
from rhm_jax.grammar import Grammar


@struct.dataclass
class Validity:
    """Bottom-up parse of sequences (..., D); tuples hold one entry per level l = 1..L.

    ``nodes[l-1]`` (..., s**(L-l)) bool: the node's whole subtree parses. ``symbols[l-1]``: its
    latent symbol, -1 where invalid. ``rules_used[l-1]``: ``symbol * m + choice`` of the rule it
    applied, -1 where invalid. ``per_level`` (..., L) float32: fraction of valid nodes per level.
    ``valid`` (...,) bool: the whole sequence parses (= level L).
    """

    per_level: jax.Array
    valid: jax.Array
    nodes: tuple[jax.Array, ...]
    symbols: tuple[jax.Array, ...]
    rules_used: tuple[jax.Array, ...]
    v: int = struct.field(pytree_node=False)
    n: int = struct.field(pytree_node=False)
    m: int = struct.field(pytree_node=False)


def _parse_result(grammar: Grammar, tokens: jax.Array) -> Validity:
    """Validity of one block of sequences."""
    rules_used = grammar_lib.parse(grammar, tokens)
    nodes = tuple(r >= 0 for r in rules_used)
    per_level = jnp.stack([x.mean(-1, dtype=jnp.float32) for x in nodes], axis=-1)
    return Validity(
        per_level=per_level, valid=nodes[-1][..., 0], nodes=nodes,
        symbols=tuple(grammar_lib.symbols_of(grammar, r) for r in rules_used),
        rules_used=rules_used, v=grammar.v, n=grammar.n, m=grammar.m,
    )


def _chunk_size(rows: int) -> int:
    """Rows per block for big CPU batches: a divisor of ``rows`` near 2**14 (no padding), else 2**14."""
    if rows <= 2**15 or jax.default_backend() != "cpu":  # accelerators want one big kernel
        return rows
    return next((c for c in range(2**15, 2**11, -1) if rows % c == 0), 2**14)


@jax.jit
def _validity(grammar: Grammar, tokens: jax.Array) -> Validity:
    """Traced body of ``validity``; on CPU big batches go through ``lax.map`` in cache-sized blocks
    (the parse's per-level intermediates then stay in cache: 2-4x faster at 1e6 rows)."""
    batch, d = tokens.shape[:-1], tokens.shape[-1]
    rows = int(np.prod(batch))
    chunk = _chunk_size(rows)
    if chunk == rows:
        return _parse_result(grammar, tokens)
    blocks = -(-rows // chunk)
    flat = jnp.pad(tokens.reshape(rows, d), ((0, blocks * chunk - rows), (0, 0)))
    result = jax.lax.map(lambda x: _parse_result(grammar, x), flat.reshape(blocks, chunk, d))
    unblock = lambda x: x.reshape(blocks * chunk, *x.shape[2:])[:rows].reshape(*batch, *x.shape[2:])
    return jax.tree.map(unblock, result)


def validity(grammar: Grammar, tokens) -> Validity:
    """Nested validity of sequences (..., D): a node is valid iff its children are and its tuple
    is a production at its level (the root's a root production). Jitted; one compilation per
    grammar shape and token shape."""
    grammar_lib.check_tokens(grammar, tokens)
    return _validity(grammar, tokens)


@functools.partial(jax.jit, static_argnames="axis")
def rule_usage(result: Validity, axis: int | tuple[int, ...] | None = None) -> tuple[jax.Array, ...]:
    """How often each rule was applied: per level l, int32 (..., symbols, m) counts.

    Counts are summed over the node positions and over the batch axes ``axis`` of the tokens
    the result was parsed from (None: all of them); the other batch axes stay. Level L has n
    symbols, the others v. Invalid nodes count nowhere.
    """
    counts = []
    for level, rules in enumerate(result.rules_used, start=1):
        batch = rules.ndim - 1
        summed = list(range(batch)) if axis is None else [int(a) % batch for a in np.atleast_1d(axis) if batch]
        kept = [a for a in range(batch) if a not in summed]
        rules = jnp.moveaxis(rules, kept, list(range(len(kept))))
        kept_shape = rules.shape[:len(kept)]
        flat = rules.reshape(int(np.prod(kept_shape)), -1)  # (groups, uses)
        num_symbols = result.n if level == len(result.rules_used) else result.v
        num_rules = num_symbols * result.m
        # One bincount over (group, rule + 1): slot 0 collects the invalid nodes, then dropped.
        slots = flat + 1 + (num_rules + 1) * jnp.arange(flat.shape[0])[:, None]
        count = jnp.bincount(slots.ravel(), length=flat.shape[0] * (num_rules + 1))
        count = count.reshape(flat.shape[0], num_rules + 1)[:, 1:]
        counts.append(count.reshape(*kept_shape, num_symbols, result.m).astype(jnp.int32))
    return tuple(counts)


# ---- Copy detection -------------------------------------------------------------------------

@struct.dataclass
class Lookup:
    """Reference rows sorted by a row hash (stable, so equal hashes keep the reference order).

    ``window`` is the longest run of equal hashes in the reference, rounded up to a power of two:
    every reference row sharing a query's hash lies in the ``window`` slots starting where the
    query's hash would be inserted, so comparing tokens over that window is an exact search.
    """

    hashes_P: jax.Array
    index_P: jax.Array
    tokens_PxD: jax.Array
    window: int = struct.field(pytree_node=False)
    bits: int = struct.field(pytree_node=False)


def _row_hash(tokens: jax.Array, bits: int) -> jax.Array:
    """32-bit FNV-1a of a row's tokens, finished with murmur3's avalanche; low ``bits`` kept."""
    tokens = tokens.astype(jnp.uint32)
    h = jnp.full(tokens.shape[:-1], 2166136261, jnp.uint32)
    for j in range(tokens.shape[-1]):
        h = (h ^ tokens[..., j]) * np.uint32(16777619)
    h = (h ^ (h >> 16)) * np.uint32(0x85EBCA6B)
    h = (h ^ (h >> 13)) * np.uint32(0xC2B2AE35)
    h = h ^ (h >> 16)
    return h & np.uint32(2**bits - 1) if bits < 32 else h


_row_hash_jit = jax.jit(_row_hash, static_argnums=1)


def _check_rows(tokens, d: int | None, name: str) -> None:
    """ValueError unless ``tokens`` is integer with last axis ``d`` (any length if d is None)."""
    if not hasattr(tokens, "dtype"):
        tokens = np.asarray(tokens)
    if tokens.ndim < 1 or (d is not None and tokens.shape[-1] != d):
        raise ValueError(f"{name} last axis must have length d = {d}, got shape {tuple(tokens.shape)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{name} must be integers, got dtype {tokens.dtype}")


def make_lookup(reference_tokens_PxD, bits: int = 32) -> Lookup:
    """Index P reference rows (e.g. the largest training set) for exact ``find`` queries.

    ``bits`` < 32 truncates the hash (more collisions, same answers): meant for tests.
    """
    _check_rows(reference_tokens_PxD, None, "reference_tokens_PxD")
    reference = np.asarray(reference_tokens_PxD, np.int32)
    if reference.ndim != 2 or len(reference) == 0:
        raise ValueError(f"reference_tokens_PxD must be (P, D) with P >= 1, got shape {reference.shape}")
    if not 1 <= bits <= 32:
        raise ValueError(f"bits={bits} must be in 1..32")
    hashes = np.asarray(_row_hash_jit(reference, bits))
    order = np.argsort(hashes, kind="stable")
    longest = int(np.unique(hashes, return_counts=True)[1].max())
    return Lookup(
        hashes_P=jnp.asarray(hashes[order]), index_P=jnp.asarray(order, jnp.int32),
        tokens_PxD=jnp.asarray(reference[order]), window=1 << (longest - 1).bit_length(), bits=bits,
    )


@jax.jit
def _find(lookup: Lookup, tokens: jax.Array) -> jax.Array:
    """Traced body of ``find``: binary search on the hash, then compare a window of rows."""
    num = lookup.hashes_P.shape[0]
    h = _row_hash(tokens, lookup.bits)
    start = jnp.searchsorted(lookup.hashes_P, h, side="left", method="scan")  # no P x B matrix
    slots = start[..., None] + jnp.arange(lookup.window)
    inside = slots < num
    slots = jnp.minimum(slots, num - 1)
    same = (jnp.take(lookup.tokens_PxD, slots, axis=0, mode="clip") == tokens[..., None, :]).all(-1)
    match = inside & (jnp.take(lookup.hashes_P, slots, mode="clip") == h[..., None]) & same
    first = jnp.argmax(match, axis=-1)
    found = jnp.take_along_axis(slots, first[..., None], axis=-1)[..., 0]
    return jnp.where(match.any(-1), lookup.index_P[found], -1)


def find(lookup: Lookup, tokens) -> jax.Array:
    """Index in the reference set of each row (..., D), or -1; exact (equal tokens verified).

    With duplicate reference rows the smallest index is returned. Jitted and vmappable.
    """
    _check_rows(tokens, lookup.tokens_PxD.shape[-1], "tokens")
    return _find(lookup, tokens)


def is_copy(lookup: Lookup, tokens, num_train) -> jax.Array:
    """Rows (...,) equal to one of the first ``num_train`` reference rows (bool).

    Training sets for smaller P are prefixes of the largest (``data.sample_dataset``), so one
    lookup of the largest serves every model; ``num_train`` may be a traced per-model value.
    """
    index = find(lookup, tokens)
    return (index >= 0) & (index < num_train)


# ---- Stacked lookups (one per dataset of a program) -----------------------------------------

def stack_lookups(lookups) -> Lookup:
    """G lookups of equally many rows stacked along a new leading axis (for ``is_copy_in``).

    The window becomes the largest of them: a wider window compares more slots and stays exact.
    """
    lookups = list(lookups)
    if not lookups:
        raise ValueError("stack_lookups needs at least one lookup")
    shapes = sorted({tuple(x.tokens_PxD.shape) for x in lookups})
    if len(shapes) > 1 or len({x.bits for x in lookups}) > 1:
        raise ValueError(f"stack_lookups needs lookups of equal (P, D) and bits, got shapes {shapes}")
    window = max(x.window for x in lookups)
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *[x.replace(window=window) for x in lookups])


def _search_left(hashes_GxP: jax.Array, g: jax.Array, h: jax.Array) -> jax.Array:
    """First position in row g whose hash is >= h: a binary search reading single entries, so
    that under a vmap over models no model copies its dataset's whole row."""
    num = hashes_GxP.shape[1]
    lo = jnp.zeros(h.shape, jnp.int32)
    hi = jnp.full(h.shape, num, jnp.int32)
    for _ in range(num.bit_length()):  # each round at least halves hi - lo
        mid = (lo + hi) // 2
        less = hashes_GxP[g, jnp.minimum(mid, num - 1)] < h
        open_ = lo < hi
        lo = jnp.where(open_ & less, mid + 1, lo)
        hi = jnp.where(open_ & ~less, mid, hi)
    return lo


def find_in(lookups: Lookup, g: jax.Array, tokens: jax.Array) -> jax.Array:
    """``find`` in slot g (traced scalar) of stacked lookups: index in that reference, or -1."""
    num = lookups.hashes_P.shape[1]
    h = _row_hash(tokens, lookups.bits)
    start = _search_left(lookups.hashes_P, g, h)
    slots = start[..., None] + jnp.arange(lookups.window)
    inside = slots < num
    slots = jnp.minimum(slots, num - 1)
    same = (lookups.tokens_PxD[g, slots] == tokens[..., None, :]).all(-1)
    match = inside & (lookups.hashes_P[g, slots] == h[..., None]) & same
    first = jnp.argmax(match, axis=-1)
    found = jnp.take_along_axis(slots, first[..., None], axis=-1)[..., 0]
    return jnp.where(match.any(-1), lookups.index_P[g, found], -1)


def is_copy_in(lookups: Lookup, g: jax.Array, tokens: jax.Array, num_train: jax.Array) -> jax.Array:
    """``is_copy`` against slot g of stacked lookups: rows equal to one of its first ``num_train`` rows."""
    index = find_in(lookups, g, tokens)
    return (index >= 0) & (index < num_train)


# ---- The grammar's own token-token correlation ---------------------------------------------

def exact_correlation(grammar: Grammar) -> np.ndarray:
    """(D-1,) float64 C(t), t = 1..D-1, of the grammar's own distribution: no sampling noise.

    C(t) = mean over i of ||p_i,i+t(a, b) - p_i(a) p_i+t(b)||_F^2, the quantity that
    ``evaluate.correlation`` estimates from samples. Exact by propagation: every node picks one of
    its m rules uniformly, so the child at position c of a symbol z is y with probability
    T^c(z, y) = #{rules of z with child c = y} / m. A leaf's marginal is the root's uniform law
    pushed down its path; two leaves are independent given their lowest common ancestor (depth k),
    whose rule draws their two ancestors at depth k + 1 jointly, each then pushed down its own path.
    Cost ~ D**2 v**2 n m in numpy (well under a second for D <= 256, v <= 32). One grammar (not stacked).
    """
    v, s, L, d = grammar.v, grammar.s, grammar.L, grammar.d
    rules = [np.asarray(r) for r in grammar.rules]  # rules[k]: (symbols at depth k, m, s)
    if rules[0].ndim != 3:
        raise ValueError(f"exact_correlation needs one grammar, got rules[0] of shape {rules[0].shape}")
    eye_V = np.eye(v)
    # child_k[c, z, y] = T^c(z, y) at depth k
    child = [np.stack([eye_V[r[:, :, c]].mean(1) for c in range(s)]) for r in rules]
    digit_DxL = (np.arange(d)[:, None] // s ** np.arange(L - 1, -1, -1)[None, :]) % s  # child position per depth
    # up[k] (D, symbols): law of leaf i's ancestor at depth k; down[k] (D, symbols, V): leaf given it
    up = [np.full((d, rules[0].shape[0]), 1.0 / rules[0].shape[0])]
    for k in range(L):
        up.append(np.einsum("iz,izy->iy", up[k], child[k][digit_DxL[:, k]]))
    down = [None] * L + [np.broadcast_to(eye_V, (d, v, v))]
    for k in reversed(range(L)):
        down[k] = np.einsum("izy,iya->iza", child[k][digit_DxL[:, k]], down[k + 1])
    p_DxV = up[L]
    out = np.zeros(d - 1)
    for t in range(1, d):
        i_K, j_K = np.arange(d - t), np.arange(t, d)
        lca_K = np.cumprod(digit_DxL[i_K] == digit_DxL[j_K], axis=1).sum(1)  # depth of the common ancestor
        total = 0.0
        for k in np.unique(lca_K):
            i, j = i_K[lca_K == k], j_K[lca_K == k]
            # the two depth-(k+1) ancestors drawn by the common ancestor's rule (z, r), per pair
            yi_PxZxM = np.moveaxis(rules[k][:, :, digit_DxL[i, k]], -1, 0)
            yj_PxZxM = np.moveaxis(rules[k][:, :, digit_DxL[j, k]], -1, 0)
            a_PxZxMxV = down[k + 1][i[:, None, None], yi_PxZxM]
            b_PxZxMxV = down[k + 1][j[:, None, None], yj_PxZxM]
            joint_PxVxV = np.einsum("pz,pzra,pzrb->pab", up[k][i] / grammar.m, a_PxZxMxV, b_PxZxMxV)
            connected_PxVxV = joint_PxVxV - p_DxV[i][:, :, None] * p_DxV[j][:, None, :]
            total += (connected_PxVxV**2).sum()
        out[t - 1] = total / (d - t)
    return out
