"""Exact Bayes denoiser of an RHM grammar: belief propagation on the tree, in log space.

Given independent leaf evidence ``lik[..., i, a] = p(x_t_i | x0_i = a)`` (any positive scale per
position), the posterior marginals of ``x0`` under the RHM prior (root uniform over ``n`` classes,
every symbol picks one of its ``m`` rules uniformly) follow from one upward and one downward pass.
The downward (outside) message at a leaf alone is the cavity p(x0_i | evidence elsewhere), which
is what the uniform process's x0-parameterization needs (see ``denoiser``).

Shape letters: D leaves, V vocabulary, N nodes of a level, A symbols of the parent level (n at
the root, v below), R = m rules per symbol, S = s children per rule. Leading batch axes ``...`` are
free, and everything is pure JAX: jit-able, vmap-able over batches and over stacked grammars.

Messages live in log space and are re-centred at every node, so neither deep trees (L = 5) nor
sharp evidence (one-hot, t -> 0) underflow; log 0 = -inf is allowed and handled explicitly.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from rhm_jax.grammar import Grammar

# Finite stand-in for log 0 in denoiser logits: exp() still gives exactly 0, while downstream
# code that multiplies logits by a one-hot mask gets 0 * finite instead of 0 * -inf = nan.
LOG_ZERO = -1e30


def _safe_max(x_NxK: jax.Array, axis: int = -1) -> jax.Array:
    """Max over ``axis`` (kept), with 0 where every entry is -inf so that x - max is never nan."""
    top = jnp.max(x_NxK, axis=axis, keepdims=True)
    return jnp.where(jnp.isfinite(top), top, 0.0)


def _centre(log_x_NxK: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Shift each row so that its max is 0; returns (centred rows, the shift per row)."""
    top = _safe_max(log_x_NxK)
    return log_x_NxK - top, top[..., 0]


def _logsumexp(log_x: jax.Array, axis: int = -1) -> jax.Array:
    """log sum exp over ``axis`` that returns -inf (not nan) for an all -inf slice."""
    top = _safe_max(log_x, axis)
    return jnp.log(jnp.sum(jnp.exp(log_x - top), axis=axis)) + jnp.squeeze(top, axis)


def _gather_children(rules_AxRxS: jax.Array, log_up_NxSxV: jax.Array) -> jax.Array:
    """G[..., n, a, r, k] = log U of child k of node n at symbol rules[a, r, k]."""
    child_S = jnp.arange(rules_AxRxS.shape[-1])
    return log_up_NxSxV[..., child_S, rules_AxRxS]  # advanced indices -> (..., N, A, R, S)


def _up_step(rules_AxRxS: jax.Array, log_up_children_CxV: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One upward level: children (..., N*S, V) -> centred parents (..., N, A) and their shifts."""
    num_rules, s = rules_AxRxS.shape[1:]
    log_up_NxSxV = log_up_children_CxV.reshape(*log_up_children_CxV.shape[:-2], -1, s,
                                                log_up_children_CxV.shape[-1])
    per_rule_NxAxR = _gather_children(rules_AxRxS, log_up_NxSxV).sum(-1)
    log_up_NxA = _logsumexp(per_rule_NxAxR) - math.log(num_rules)
    return _centre(log_up_NxA)


def _segment_logsumexp(log_x_FxE: jax.Array, ids_F: jax.Array, num_segments: int) -> jax.Array:
    """log sum exp of the rows of axis 0 grouped by ``ids_F``; exact per segment, -inf if empty."""
    top_GxE = jax.ops.segment_max(log_x_FxE, ids_F, num_segments=num_segments)
    top_GxE = jnp.where(jnp.isfinite(top_GxE), top_GxE, 0.0)
    # Subtracting each segment's own max keeps its largest term at exp(0) = 1: no underflow.
    total_GxE = jax.ops.segment_sum(jnp.exp(log_x_FxE - top_GxE[ids_F]), ids_F,
                                    num_segments=num_segments)
    return jnp.log(total_GxE) + top_GxE


def _down_step(rules_AxRxS: jax.Array, log_down_NxA: jax.Array,
               log_up_children_CxV: jax.Array) -> jax.Array:
    """One downward level: parents' outside messages -> children's, (..., N*S, V), centred.

    D_child_k(b) = sum over (a, r) with rules[a, r, k] = b of D(a) prod_{j != k} U_j(rules[a, r, j]);
    the common 1/m factor is dropped because every message is re-normalized anyway.
    """
    s = rules_AxRxS.shape[-1]
    v = log_up_children_CxV.shape[-1]
    batch = log_up_children_CxV.shape[:-2]
    log_up_NxSxV = log_up_children_CxV.reshape(*batch, -1, s, v)
    gathered_NxAxRxS = _gather_children(rules_AxRxS, log_up_NxSxV)
    # Sum over the siblings j != k with a mask (not total - G_k, which is nan when G_k = -inf).
    others_SxS = ~jnp.eye(s, dtype=bool)
    siblings_NxAxRxS = jnp.where(others_SxS, gathered_NxAxRxS[..., None, :], 0.0).sum(-1)
    msg_NxAxRxS = log_down_NxA[..., None, None] + siblings_NxAxRxS
    num_nodes = msg_NxAxRxS.shape[-4]
    # Segment k * V + b collects every (a, r) whose k-th child is symbol b.
    ids_F = (jnp.arange(s) * v + rules_AxRxS).reshape(-1)
    msg_FxE = jnp.moveaxis(msg_NxAxRxS.reshape(*batch, num_nodes, -1), -1, 0)
    child_GxE = _segment_logsumexp(msg_FxE, ids_F, s * v)
    child_NxSV = jnp.moveaxis(child_GxE, 0, -1)
    return _centre(child_NxSV.reshape(*batch, num_nodes * s, v))[0]


def _check(grammar: Grammar, leaf_lik_DxV: jax.Array) -> None:
    """Raise ValueError naming leaf_lik and the expected trailing shape (d, v)."""
    shape = jnp.shape(leaf_lik_DxV)
    if len(shape) < 2 or tuple(shape[-2:]) != (grammar.d, grammar.v):
        raise ValueError(f"leaf_lik must have trailing shape (d, v) = {(grammar.d, grammar.v)} "
                         f"for this grammar (s={grammar.s}, L={grammar.L}), got {shape}")


def _upward(grammar: Grammar, log_lik_DxV: jax.Array) -> tuple[list[jax.Array], jax.Array]:
    """Centred upward messages per level (leaves first, root last) and summed log shifts."""
    log_up_DxV, shift_D = _centre(log_lik_DxV)
    log_ups = [log_up_DxV]
    log_scale = shift_D.sum(-1)
    for level in range(grammar.L - 1, -1, -1):
        log_up_NxA, shift_N = _up_step(grammar.rules[level], log_ups[-1])
        log_ups.append(log_up_NxA)
        log_scale = log_scale + shift_N.sum(-1)
    return log_ups, log_scale


def _as_log(leaf_lik_DxV: jax.Array) -> jax.Array:
    """log of the evidence as a floating array (float32 unless already floating)."""
    lik = jnp.asarray(leaf_lik_DxV)
    if not jnp.issubdtype(lik.dtype, jnp.floating):
        lik = lik.astype(jnp.float32)
    return jnp.log(lik)


def _leaf_messages(grammar: Grammar, log_lik_DxV: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(outside message, own evidence) of every leaf, both centred log arrays (..., D, V)."""
    log_ups, _ = _upward(grammar, log_lik_DxV)
    batch = log_lik_DxV.shape[:-2]
    log_down_NxA = jnp.zeros((*batch, 1, grammar.n), log_lik_DxV.dtype)  # uniform root
    for level in range(grammar.L):
        log_down_NxA = _down_step(grammar.rules[level], log_down_NxA, log_ups[grammar.L - 1 - level])
    return log_down_NxA, log_ups[0]


def _normalize(log_x_DxV: jax.Array) -> jax.Array:
    """Rows normalized to log probabilities; a row of zero mass becomes uniform (not nan)."""
    norm_D = _logsumexp(log_x_DxV)[..., None]
    uniform = jnp.full_like(log_x_DxV, -math.log(log_x_DxV.shape[-1]))
    return jnp.where(jnp.isfinite(norm_D), log_x_DxV - norm_D, uniform)


def log_posterior(grammar: Grammar, leaf_lik_DxV: jax.Array) -> jax.Array:
    """log p(x0_i = a | x_t), shape (..., D, V); -inf where impossible.

    When the evidence itself has probability 0 under the grammar, the posterior is undefined; it
    is returned as uniform (-log V) so that callers never see nan.
    """
    _check(grammar, leaf_lik_DxV)
    log_down_DxV, log_up_DxV = _leaf_messages(grammar, _as_log(leaf_lik_DxV))
    return _normalize(log_down_DxV + log_up_DxV)


def log_cavity(grammar: Grammar, leaf_lik_DxV: jax.Array) -> jax.Array:
    """log p(x0_i = a | x_t at every position but i), shape (..., D, V): BP's outside message.

    posterior_i is proportional to cavity_i * lik_i. Uniform where the other positions' evidence
    has probability 0.
    """
    _check(grammar, leaf_lik_DxV)
    log_down_DxV, _ = _leaf_messages(grammar, _as_log(leaf_lik_DxV))
    return _normalize(log_down_DxV)


def posterior(grammar: Grammar, leaf_lik_DxV: jax.Array) -> jax.Array:
    """Exact marginals p(x0_i = a | x_t), shape (..., D, V), each row summing to 1."""
    return jnp.exp(log_posterior(grammar, leaf_lik_DxV))


def log_likelihood(grammar: Grammar, leaf_lik_DxV: jax.Array) -> jax.Array:
    """log p(x_t) = log sum_x0 p(x0) prod_i lik[i, x0_i], shape (...); -inf if impossible."""
    _check(grammar, leaf_lik_DxV)
    log_ups, log_scale = _upward(grammar, _as_log(leaf_lik_DxV))
    root_A = log_ups[-1][..., 0, :]
    return _logsumexp(root_A) - math.log(grammar.n) + log_scale


OUTPUTS = ("cavity", "posterior")


def denoiser(grammar: Grammar, process: Any,
             output: str = "cavity") -> Callable[[Any, jax.Array, jax.Array], jax.Array]:
    """apply_fn(params, x_t_BxD, t_B) -> logits_BxDxV, the Bayes-optimal x0 prediction (params: None).

    ``output='cavity'`` (default) returns log p(x0_i | x_t elsewhere), which minimizes the loss of
    both processes and makes their reverse steps exact per position: the uniform (D3PM) process
    plugs the prediction into q(x_s, x_t | x0), which multiplies it by p(x_t_i | x0_i) once more,
    so plugging in the full posterior would count the token's own evidence twice; the masked
    process reads only masked positions, where cavity and posterior coincide.
    ``output='posterior'`` returns log p(x0_i | x_t). Impossible symbols get the finite logit
    ``LOG_ZERO`` rather than -inf (see its comment).
    """
    if output not in OUTPUTS:
        raise ValueError(f"output={output!r} must be one of {OUTPUTS}")
    if getattr(process, "v", grammar.v) != grammar.v:
        raise ValueError(f"process.v={process.v} must equal the grammar's vocabulary v={grammar.v}")
    log_prediction = log_cavity if output == "cavity" else log_posterior

    def apply_fn(params: Any, x_t_BxD: jax.Array, t_B: jax.Array) -> jax.Array:
        del params  # the oracle has no parameters
        leaf_lik_BxDxV = process.leaf_likelihood(x_t_BxD, t_B)
        return jnp.maximum(log_prediction(grammar, leaf_lik_BxDxV), LOG_ZERO)

    return apply_fn
