"""The clustering learner itself: context features, count-weighted k-means, level by level; sampling.

Shape letters: Q pool rows, K blocks of one level in a sequence, C = (v+1)**s tuple codes, E context
features, N samples. Definitions and choices: the package docstring (``rhm_jax.clustering``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

CONTEXTS = ("tokens", "labels")


@struct.dataclass
class Learned:
    """The learned grammar; entry l-1 is level l.

    ``labels[l-1]`` (C,) int32, l = 1..L-1: the learned class (0..v-1) of each level-l code, v when
    unobserved. ``counts[l-1]`` (C,) float32, l = 1..L: occurrences of each code at level l in the
    training rows (every level-l block of every row counts once).
    """

    labels: tuple[jax.Array, ...]
    counts: tuple[jax.Array, ...]


def tuple_codes(symbols_QxK: jax.Array, v: int, s: int) -> jax.Array:
    """Base-(v+1) codes (Q, K/s) of consecutive s-tuples, first child most significant."""
    tuples = symbols_QxK.reshape(*symbols_QxK.shape[:-1], -1, s)
    code = tuples[..., 0]
    for j in range(1, s):
        code = code * (v + 1) + tuples[..., j]
    return code


def _digits(code: jax.Array, v: int, s: int) -> jax.Array:
    """Children (..., s) of base-(v+1) codes (the inverse of ``tuple_codes`` on one tuple)."""
    places = (v + 1) ** np.arange(s - 1, -1, -1)
    return (code[..., None] // places) % (v + 1)


def _context(leaves_QxX: jax.Array, codes_QxK: jax.Array, weight_Q: jax.Array, vocab: int, s: int,
             num_codes: int) -> jax.Array:
    """Context features (C, E) of codes: distributions of the sibling blocks' leaves per (j, j', r).

    ``leaves_QxX`` holds what the context counts, values in 0..vocab-1: the tokens (X = D), or the
    labels of level l-1 (X = s K); each of the K blocks owns X / K consecutive leaves.
    """
    Q, K = codes_QxK.shape
    R, C = leaves_QxX.shape[1] // K, num_codes
    codes = codes_QxK.reshape(Q, K // s, s)  # (q, parent, j)
    leaves = leaves_QxX.reshape(Q, K // s, s, R)  # (q, parent, j', r)
    j = np.arange(s)[:, None, None]
    jp = np.arange(s)[None, :, None]
    r = np.arange(R)[None, None, :]
    index = (((codes[..., :, None, None] * s + j) * s + jp) * R + r) * vocab + leaves[..., None, :, :]
    weight = jnp.broadcast_to(weight_Q[:, None, None, None, None] * (j != jp), index.shape)  # own leaves: no
    counts = jax.ops.segment_sum(weight.ravel(), index.ravel(), C * s * s * R * vocab).reshape(C, s, s, R, vocab)
    seen_CxS = jax.ops.segment_sum(jnp.broadcast_to(weight_Q[:, None, None], codes.shape).ravel(),
                                   (codes * s + np.arange(s)).ravel(), C * s).reshape(C, s)
    pooled = counts.sum(0) / jnp.maximum(seen_CxS.sum(0), 1.0)[:, None, None, None]
    own = seen_CxS[:, :, None, None, None]
    dist = jnp.where(own > 0, counts / jnp.maximum(own, 1.0), pooled)
    pairs = [(a, b) for a in range(s) for b in range(s) if a != b]
    return dist[:, [a for a, _ in pairs], [b for _, b in pairs]].reshape(C, -1)


def _sq_dist(x_CxE: jax.Array, centers_KxE: jax.Array) -> jax.Array:
    """Squared Euclidean distances (C, K)."""
    return ((x_CxE[:, None, :] - centers_KxE[None, :, :]) ** 2).sum(-1)


def _draw(u: jax.Array, p_C: jax.Array) -> jax.Array:
    """Index drawn with probability ~ p_C (p >= 0, not all 0) by inverting the CDF at u in [0, 1)."""
    cdf_C = jnp.cumsum(p_C)
    return jnp.minimum(jnp.searchsorted(cdf_C, u * cdf_C[-1], side="right"), p_C.shape[0] - 1)


def _kmeans_pp(u_K: jax.Array, x_CxE: jax.Array, w_C: jax.Array) -> jax.Array:
    """Weighted k-means++ starting centers (k, E): each new one drawn with probability ~ w d**2."""
    k = u_K.shape[0]
    first = x_CxE[_draw(u_K[0], w_C)]
    centers = jnp.zeros((k, x_CxE.shape[1]), x_CxE.dtype).at[0].set(first)

    def add(i, carry):
        centers, d2_C = carry
        p_C = w_C * d2_C
        p_C = jnp.where(p_C.sum() > 0, p_C, w_C)  # fewer distinct points than k: repeat one
        pick = x_CxE[_draw(u_K[i], p_C)]
        return centers.at[i].set(pick), jnp.minimum(d2_C, ((x_CxE - pick) ** 2).sum(-1))

    return jax.lax.fori_loop(1, k, add, (centers, ((x_CxE - first) ** 2).sum(-1)))[0]


def _kmeans(key: jax.Array, x_CxE: jax.Array, w_C: jax.Array, k: int, restarts: int,
            iterations: int) -> jax.Array:
    """Count-weighted k-means labels (C,) in 0..k-1, k where the weight is 0; best of ``restarts``."""

    def one(u_K):
        def lloyd(_, centers):
            onehot_CxK = jax.nn.one_hot(jnp.argmin(_sq_dist(x_CxE, centers), 1), k) * w_C[:, None]
            mass_K = onehot_CxK.sum(0)
            means = (onehot_CxK.T @ x_CxE) / jnp.maximum(mass_K, 1e-30)[:, None]
            return jnp.where(mass_K[:, None] > 0, means, centers)  # an empty cluster keeps its center

        centers = jax.lax.fori_loop(0, iterations, lloyd, _kmeans_pp(u_K, x_CxE, w_C))
        d2_CxK = _sq_dist(x_CxE, centers)
        return jnp.argmin(d2_CxK, 1), (w_C * d2_CxK.min(1)).sum()

    # One random draw for all starts: each random-number kernel costs seconds of compilation on CPU.
    labels_RxC, inertia_R = jax.vmap(one)(jax.random.uniform(key, (restarts, k)))
    return jnp.where(w_C > 0, labels_RxC[jnp.argmin(inertia_R)], k).astype(jnp.int32)


def learn(pool_QxD: jax.Array, P: jax.Array, key: jax.Array, v: int, s: int, L: int, restarts: int = 32,
          iterations: int = 30, context: str = "tokens") -> Learned:
    """Cluster the first P rows of the pool level by level (see the package docstring); traceable in P.

    ``context``: 'tokens' (the sibling blocks' tokens) or 'labels' (their level-(l-1) labels).
    """
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    Q = pool_QxD.shape[0]
    weight_Q = (jnp.arange(Q) < P).astype(jnp.float32)
    symbols_QxK = pool_QxD.astype(jnp.int32)
    C = (v + 1) ** s
    labels, counts = [], []
    for level in range(1, L + 1):
        codes_QxK = tuple_codes(symbols_QxK, v, s)
        counts.append(jax.ops.segment_sum(jnp.broadcast_to(weight_Q[:, None], codes_QxK.shape).ravel(),
                                          codes_QxK.ravel(), C))
        if level == L:
            break
        if context == "tokens":
            x_CxE = _context(pool_QxD, codes_QxK, weight_Q, v, s, C)
        else:  # unassigned (v) is a value of its own; at level 1 the labels are the tokens
            x_CxE = _context(symbols_QxK, codes_QxK, weight_Q, v + 1, s, C)
        label_C = _kmeans(jax.random.fold_in(key, level), x_CxE, counts[-1], v, restarts, iterations)
        labels.append(label_C)
        symbols_QxK = label_C[codes_QxK]
    return Learned(tuple(labels), tuple(counts))


def _pick(u: jax.Array, members_C: jax.Array, group_C: jax.Array, groups: int, wanted: jax.Array) -> jax.Array:
    """A code drawn uniformly (u in [0, 1), shaped like ``wanted``) among the members of group ``wanted``."""
    group_C = jnp.where(members_C, group_C, groups)
    order = jnp.argsort(group_C, stable=True)  # members grouped, then non-members
    size = jax.ops.segment_sum(members_C.astype(jnp.int32), group_C, groups + 1)
    start = jnp.cumsum(size) - size
    draw = jnp.clip(jnp.floor(u * size[wanted]).astype(jnp.int32), 0, jnp.maximum(size[wanted] - 1, 0))
    return order[start[wanted] + draw]


def generate(learned: Learned, key: jax.Array, num: int, v: int, s: int, L: int) -> jax.Array:
    """``num`` sequences (num, D) of the learned grammar: observed root tuples, then observed members."""
    u = jax.random.uniform(key, (num, (s**L - 1) // (s - 1)))  # one draw per node, root first
    root = _pick(u[:, 0], learned.counts[L - 1] > 0, jnp.zeros((v + 1) ** s, jnp.int32), 1,
                 jnp.zeros((num,), jnp.int32))
    symbols_NxK = _digits(root, v, s)
    used = 1
    for level in range(L - 1, 0, -1):
        nodes = s ** (L - level)
        code_NxK = _pick(u[:, used:used + nodes], learned.counts[level - 1] > 0, learned.labels[level - 1], v + 1,
                         symbols_NxK)
        symbols_NxK = _digits(code_NxK, v, s).reshape(num, -1)
        used += nodes
    return symbols_NxK.astype(jnp.int32)
