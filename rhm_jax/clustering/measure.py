"""How good a learned grammar is: exact confusion with the true symbols, samples' validity; the grid.

Shape letters: M learners (grid axis), Q pool rows, C = (v+1)**s codes, N samples, D length.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax import coherence
from rhm_jax import grammar as grammar_lib
from rhm_jax.clustering.learner import CONTEXTS, Learned, tuple_codes, generate, learn
from rhm_jax.grammar import Grammar

_LEARN_TAG, _SAMPLE_TAG = 0, 1  # fold_in tags of a seed's key


def confusion(grammar: Grammar, labels: Sequence[jax.Array]) -> tuple[jax.Array, ...]:
    """A_l (v, v+1) for l = 1..len(labels): P(learned label c | true symbol z), exact over expansions."""
    v, m, s, L = grammar.v, grammar.m, grammar.s, grammar.L
    out = []
    for level, label_C in enumerate(labels, start=1):
        rules_VxMxS = grammar.rules[L - level]
        if level == 1:
            joint = jax.nn.one_hot(tuple_codes(rules_VxMxS.reshape(v * m, s), v, s)[:, 0], (v + 1) ** s)
        else:
            joint = out[-1][rules_VxMxS[..., 0].reshape(-1)]
            for j in range(1, s):  # outer product over children: first child most significant
                joint = (joint[:, :, None] * out[-1][rules_VxMxS[..., j].reshape(-1)][:, None, :]).reshape(v * m, -1)
        out.append((joint @ jax.nn.one_hot(label_C, v + 1)).reshape(v, m, v + 1).mean(1))
    return tuple(out)


def accuracy(confusion_VxV1: jax.Array) -> jax.Array:
    """Mutual-majority accuracy (scalar) of one level's confusion A (v, v+1); see the package docstring."""
    v = confusion_VxV1.shape[0]
    assigned = confusion_VxV1[:, :v]
    label_of = jnp.argmax(assigned, 1)
    matched = jnp.argmax(assigned, 0)[label_of] == jnp.arange(v)
    return jnp.where(matched, assigned[jnp.arange(v), label_of], 0.0).mean()


def score(grammar: Grammar, learned: Learned, tokens_NxD: jax.Array, lookup: coherence.Lookup,
          P: jax.Array) -> dict[str, jax.Array]:
    """A learned grammar's ``accuracy`` (L-1,) and, on its samples, ``validity`` and ``validity_novel``
    (L,), ``valid`` and ``copy`` (fraction equal to one of the P training rows of ``lookup``); traceable.

    ``validity_novel`` averages over the samples that are not copies (NaN when all are).
    """
    acc = jnp.stack([accuracy(a) for a in confusion(grammar, learned.labels)]) if grammar.L > 1 else jnp.zeros(0)
    result = coherence.validity(grammar, tokens_NxD)
    novel_N = ~coherence.is_copy(lookup, tokens_NxD, P)
    novel = (result.per_level * novel_N[:, None]).sum(0) / novel_N.sum()  # 0/0 = NaN: all copies
    return dict(accuracy=acc, validity=result.per_level.mean(0), validity_novel=novel,
                valid=result.valid.mean(dtype=jnp.float32), copy=1.0 - novel_N.mean(dtype=jnp.float32))


def run_grid(grammar: Grammar, pool_QxD, P_M, seed_M, num_samples: int, restarts: int = 32,
             iterations: int = 30, context: str = "tokens") -> dict[str, jax.Array]:
    """Learn and score M learners at once (vmapped over P and seed): dict of (M, ...) arrays.

    Holds the ``score`` entries, ``learned`` (a ``Learned`` with leading axis M) and ``samples``
    (M, num_samples, D), the sequences that were scored. Learner i reads the first ``P_M[i]`` rows
    of the pool; its seed draws its k-means starts and its samples. One compilation per (grammar
    sizes, pool shape, M, num_samples, restarts, iterations, context).
    """
    pool_QxD = jnp.asarray(pool_QxD, jnp.int32)
    P_M, seed_M = jnp.asarray(P_M, jnp.int32), jnp.asarray(seed_M, jnp.uint32)
    if P_M.ndim != 1 or P_M.shape != seed_M.shape:
        raise ValueError(f"P_M and seed_M must be 1-D of equal length, got shapes {P_M.shape} and {seed_M.shape}")
    low, high = int(P_M.min()), int(P_M.max())
    if low < 1 or high > pool_QxD.shape[0]:
        raise ValueError(f"every P must lie in 1..{pool_QxD.shape[0]} (the pool's rows), got {low}..{high}")
    grammar_lib.check_tokens(grammar, pool_QxD, "pool_QxD")
    if context not in CONTEXTS:
        raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
    for name, value, least in (("num_samples", num_samples, 1), ("restarts", restarts, 1),
                               ("iterations", iterations, 0)):
        if not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return _run_grid(grammar, pool_QxD, coherence.make_lookup(pool_QxD), P_M, seed_M, num_samples, restarts,
                     iterations, context)


@functools.partial(jax.jit, static_argnames=("num_samples", "restarts", "iterations", "context"))
def _run_grid(grammar: Grammar, pool_QxD: jax.Array, lookup: coherence.Lookup, P_M: jax.Array, seed_M: jax.Array,
              num_samples: int, restarts: int, iterations: int, context: str) -> dict[str, jax.Array]:
    """Traced body of ``run_grid``."""

    def one(P, seed):
        key = jax.random.key(seed)
        learned = learn(pool_QxD, P, jax.random.fold_in(key, _LEARN_TAG), grammar.v, grammar.s, grammar.L,
                        restarts, iterations, context)
        tokens_NxD = generate(learned, jax.random.fold_in(key, _SAMPLE_TAG), num_samples, grammar.v, grammar.s,
                              grammar.L)
        return dict(score(grammar, learned, tokens_NxD, lookup, P), learned=learned, samples=tokens_NxD)

    return jax.vmap(one)(P_M, seed_M)


@functools.partial(jax.jit, static_argnames="draws")
def chance_accuracy(grammar: Grammar, key: jax.Array, draws: int = 256) -> jax.Array:
    """Mean ``accuracy`` (L-1,) of uniformly random labels of every code at every level (``draws`` draws)."""
    C = (grammar.v + 1) ** grammar.s
    if grammar.L == 1:  # the root level is never clustered
        return jnp.zeros(0)

    def one(key):
        labels = [jax.random.randint(k, (C,), 0, grammar.v) for k in jax.random.split(key, grammar.L - 1)]
        return jnp.stack([accuracy(a) for a in confusion(grammar, labels)])

    return jax.vmap(one)(jax.random.split(key, draws)).mean(0)
