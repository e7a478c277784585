"""Evaluate a grid of models in two compiled programs: samples, then coherence per level, copies, losses.

Shape letters: M models, N generated samples per model, R rows for the loss estimates, G datasets
of the program, Q pool rows (the largest P), T test rows, D sequence length, L depth, W
diffusion-time windows.

Per model i (batches of exactly ``eval.models_per_batch`` models, default one, in a ``lax.map``:
a model's values never depend on how many models the grid holds), against slot
``dataset_i`` of the program's ``References``: its own grammar, copy lookup, training and test rows.
- N samples from ``process.sample`` with the model's debiased EMA params when kept, else its params;
- ``validity_l1..lL`` (mean over samples and node positions), ``valid`` (fully valid sequences);
- ``validity_l1..lL_noncopy``: the same over the samples that are not copies (NaN when every
  sample is a copy), ``noncopy_samples``: how many samples that is (copies are valid at every
  level, so only these show what a model learned of the rules);
- ``corr_t<t>`` for every t = 1..D-1: token-token correlation C(t) of the samples
  (``correlations``: mean over positions of the squared connected correlation, minus its
  finite-sample bias), ``corr_t<t>_se`` its standard error (delete-one-group jackknife over
  ``CORRELATION_GROUPS`` = 16 groups of samples), ``corr_train_t<t>`` the same of the model's
  training rows (its min(P_i, R) distinct loss rows, bias for that many rows: all P_i rows when
  P_i <= R), ``corr_data_t<t>`` the grammar's own exact C(t) (``coherence.exact_correlation``,
  no sampling noise; the same in every row of a dataset);
- ``copies``: samples equal to a row of the model's OWN training set (pool rows < P_i),
  ``novel_valid``: valid and not a copy, ``duplicates``: samples equal to an earlier sample;
- ``rule_coverage_l*``: fraction of the level's rules used at least once by valid nodes,
  ``rule_entropy_l*``: entropy of that usage over log(number of rules) (0 when nothing is valid);
- ``train_loss`` / ``test_loss`` on R fixed rows (train rows cycle through the model's own P_i rows),
  ``train_loss_se`` / ``test_loss_se`` their standard errors (std of the R per-row losses / sqrt(R)),
  ``train_loss_window`` / ``test_loss_window`` (W,) per window of diffusion time; every loss of a
  model is drawn with the same noise keys at every evaluation (from run.seed and its model seed,
  not the step), so loss differences between its evaluations are not noise of the estimate;
- ``step`` and ``epoch`` = step * b / P_i, b = B (or min(P_i, B) with ``train.p_below_batch='full_batch'``).

An online model (P_i = 0, fresh batches from its grammar) has no training set: its copies, the
scores over non-copied samples, its train losses, ``corr_train`` and epoch are void (``online_void``:
NaN on device, null in its rows), never 0.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from flax import struct

from rhm_jax import coherence, data, train
from rhm_jax.settings import EvalSettings, Settings

_EVAL_ROWS_SEED = np.uint32(0xE7A1)  # the train rows of the loss estimate: not the training order
_LOSS_KEY_TAG = np.uint32(0xFFFFFFFF)  # fold_in(key(run.seed), tag): a step no run reaches
CORRELATION_GROUPS = 16  # jackknife groups of the samples' C(t) standard error


def eval_steps(num_steps: int, per_octave: int) -> list[int]:
    """Log-spaced steps 2**(k / per_octave), rounded and deduplicated, from 1, plus ``num_steps``."""
    if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps={num_steps!r} must be an integer >= 1")
    if not isinstance(per_octave, (int, np.integer)) or per_octave < 1:
        raise ValueError(f"per_octave={per_octave!r} must be an integer >= 1")
    steps = {int(num_steps)}
    k = 0
    while (step := round(2 ** (k / per_octave))) <= num_steps:
        steps.add(step)
        k += 1
    return sorted(steps)


def duplicate_fraction(tokens_NxD: jax.Array) -> jax.Array:
    """Fraction of rows equal to another row that precedes them: (N - distinct rows) / N."""
    order_N = jnp.lexsort(tuple(tokens_NxD[:, j] for j in reversed(range(tokens_NxD.shape[1]))))
    sorted_NxD = tokens_NxD[order_N]
    repeat_N = (sorted_NxD[1:] == sorted_NxD[:-1]).all(-1)
    return repeat_N.sum(dtype=jnp.float32) / tokens_NxD.shape[0]


def correlation_distances(d: int) -> list[int]:
    """Distances t at which C(t) is logged: every t = 1..D-1."""
    return list(range(1, max(int(d), 1)))


def _connected(joint_XxKxVxV: jax.Array, p_XxKxV: jax.Array, q_XxKxV: jax.Array, num_X: jax.Array,
               keep_K: jax.Array) -> jax.Array:
    """(X,) mean over the kept position pairs of ||joint - p q||^2 minus its finite-sample bias."""
    connected = joint_XxKxVxV - p_XxKxV[..., :, None] * q_XxKxV[..., None, :]
    bias_XxK = (1 - (p_XxKxV**2).sum(-1)) * (1 - (q_XxKxV**2).sum(-1)) / num_X[:, None]
    per_pair_XxK = (connected**2).sum((-2, -1)) - bias_XxK
    return jnp.where(keep_K, per_pair_XxK, 0.0).sum(-1) / keep_K.sum()


def correlations(tokens_NxD: jax.Array, v: int, num_rows: jax.Array | None = None,
                 groups: int = 1) -> tuple[jax.Array, jax.Array]:
    """(C(t), its jackknife standard error) for t = 1..D-1, each (D-1,) float32.

    C(t) as in ``correlation``, from the first ``num_rows`` rows (traced; None: all N), with the
    finite-sample bias of that many rows. Standard error: delete-one-group jackknife over
    ``groups`` groups of rows (row r in group r % groups), sqrt((K-1)/K sum_k (C_(k) - mean)^2)
    with C_(k) the estimate without group k; NaN when groups < 2. It is conservative where C(t) is
    near 0 (measured up to 1.6x the spread over independent sample sets at N = 512 samples of the
    CPU reproduction's grammar; 1.0-1.2x where C(t) stands above its noise). One pass per t (``lax.map``),
    each reading all N rows, so memory stays (groups + 1, D, V, V) per t.
    """
    num, d = tokens_NxD.shape
    groups = max(1, min(int(groups), num))
    pad = -num % groups
    weight_N = jnp.ones(num) if num_rows is None else (jnp.arange(num) < num_rows).astype(jnp.float32)
    onehot_NxDxV = jax.nn.one_hot(jnp.pad(tokens_NxD, ((0, pad), (0, 0))), v, dtype=jnp.float32)
    onehot_RxKxDxV = onehot_NxDxV.reshape(-1, groups, d, v)  # R rows per group, group = row % K
    weight_RxK = jnp.pad(weight_N, (0, pad)).reshape(-1, groups)
    weighted_RxKxDxV = onehot_RxKxDxV * weight_RxK[..., None, None]
    count_K = weight_RxK.sum(0)
    marginal_KxDxV = weighted_RxKxDxV.sum(0)
    # row X = 0: all rows; row X = k + 1: all rows but group k
    count_X = jnp.concatenate([count_K.sum()[None], count_K.sum() - count_K])
    marginal_XxDxV = jnp.concatenate([marginal_KxDxV.sum(0)[None], marginal_KxDxV.sum(0) - marginal_KxDxV])
    p_XxDxV = marginal_XxDxV / jnp.maximum(count_X, 1.0)[:, None, None]

    def at_distance(t: jax.Array) -> jax.Array:
        """(X,) C(t) of all rows and of each leave-one-group-out set; pair (i, i + t) sits at slot i."""
        right_RxKxDxV = jnp.roll(onehot_RxKxDxV, -t, axis=2)
        joint_KxDxVxV = jnp.einsum("rkia,rkib->kiab", weighted_RxKxDxV, right_RxKxDxV)
        joint_XxDxVxV = jnp.concatenate([joint_KxDxVxV.sum(0)[None], joint_KxDxVxV.sum(0) - joint_KxDxVxV])
        joint_XxDxVxV = joint_XxDxVxV / jnp.maximum(count_X, 1.0)[:, None, None, None]
        keep_D = jnp.arange(d) < d - t
        return _connected(joint_XxDxVxV, p_XxDxV, jnp.roll(p_XxDxV, -t, axis=1), count_X, keep_D)

    c_TxX = jax.lax.map(at_distance, jnp.arange(1, d))
    if groups < 2:
        return c_TxX[:, 0], jnp.full(d - 1, jnp.nan)
    loo_TxK = c_TxX[:, 1:]
    spread_T = ((loo_TxK - loo_TxK.mean(1, keepdims=True))**2).sum(1)
    return c_TxX[:, 0], jnp.sqrt((groups - 1) / groups * spread_T)


def correlation(tokens_NxD: jax.Array, v: int, t: int) -> jax.Array:
    """Token-token correlation at distance t, grammar-free: C(t) = mean_i ||C_i,i+t||^2 - bias.

    C_i,j(a, b) = p_ij(a, b) - p_i(a) p_j(b) is the connected correlation of the tokens at
    positions i and j estimated from the N rows (p_ij: empirical joint, p_i: marginal); its
    squared Frobenius norm is averaged over the D - t pairs (i, i + t). Finite N adds
    (1 - sum_a p_i(a)**2)(1 - sum_b p_j(b)**2) / N for independent positions, which is
    subtracted, so C(t) ~ 0 for independent tokens at any N (it can fall slightly below 0).
    ``correlations`` gives every t at once, with a standard error.
    """
    num, d = tokens_NxD.shape
    if not 1 <= t < d:
        raise ValueError(f"distance t={t} must be in 1..D-1 = 1..{d - 1}")
    return correlations(tokens_NxD, v)[0][t - 1]


def _usage_scores(counts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(coverage, normalized entropy) of a (symbols, m) rule-usage count table."""
    counts = counts.reshape(-1).astype(jnp.float32)
    coverage = (counts > 0).mean()
    total = counts.sum()
    p = counts / jnp.maximum(total, 1.0)
    entropy = -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0))
    return coverage, jnp.where(total > 0, entropy / math.log(counts.shape[0]), 0.0)


def score_samples(grammar: Any, lookup: coherence.Lookup, tokens_NxD: jax.Array, P: jax.Array) -> dict:
    """Coherence scores of one model's samples; copies are pool rows below ``P`` (traced; NaN online, P = 0)."""
    return _online_nan(_scores(grammar, tokens_NxD, coherence.is_copy(lookup, tokens_NxD, P)), P)


def score_in(refs: "References", g: jax.Array, tokens_NxD: jax.Array, P: jax.Array) -> dict:
    """``score_samples`` of ONE model against slot g of stacked references (its own grammar and pool)."""
    grammar = jax.tree_util.tree_map(lambda x: x[g], refs.grammar)
    return _online_nan(_scores(grammar, tokens_NxD, coherence.is_copy_in(refs.lookup, g, tokens_NxD, P)), P)


def _online_nan(scores: dict, P: jax.Array) -> dict:
    """The float copy scores NaN for an online model (P = 0): it has no training set to copy."""
    return {k: jnp.where(jnp.asarray(P) == data.ONLINE, jnp.nan, v) if online_void(k) and jnp.issubdtype(
        jnp.asarray(v).dtype, jnp.floating) else v for k, v in scores.items()}


def _scores(grammar: Any, tokens_NxD: jax.Array, copy_N: jax.Array) -> dict:
    """Coherence scores of one model's samples under its grammar, given which samples are copies."""
    result = coherence.validity(grammar, tokens_NxD)
    scores = {f"validity_l{l}": result.per_level[:, l - 1].mean() for l in range(1, grammar.L + 1)}
    noncopy_N = ~copy_N
    num_noncopy = noncopy_N.sum(dtype=jnp.float32)
    for l in range(1, grammar.L + 1):
        total = jnp.where(noncopy_N, result.per_level[:, l - 1], 0.0).sum()
        scores[f"validity_l{l}_noncopy"] = jnp.where(num_noncopy > 0, total / jnp.maximum(num_noncopy, 1.0),
                                                     jnp.nan)
    scores["noncopy_samples"] = noncopy_N.sum(dtype=jnp.int32)
    corr_T, corr_se_T = correlations(tokens_NxD, grammar.v, groups=CORRELATION_GROUPS)
    for t in correlation_distances(grammar.d):
        scores[f"corr_t{t}"], scores[f"corr_t{t}_se"] = corr_T[t - 1], corr_se_T[t - 1]
    scores["valid"] = result.valid.mean(dtype=jnp.float32)
    scores["copies"] = copy_N.mean(dtype=jnp.float32)
    scores["novel_valid"] = (result.valid & ~copy_N).mean(dtype=jnp.float32)
    scores["duplicates"] = duplicate_fraction(tokens_NxD)
    for l, counts in enumerate(coherence.rule_usage(result), start=1):
        scores[f"rule_coverage_l{l}"], scores[f"rule_entropy_l{l}"] = _usage_scores(counts)
    return scores


def models_per_batch(settings: EvalSettings) -> int:
    """k, the models evaluated at once: ``eval.models_per_batch``, 0 meaning one at a time."""
    return max(1, int(settings.models_per_batch))


def _map_models(fn: Callable, args: Any, M: int, per_batch: int) -> Any:
    """``vmap(fn)`` over leading-M args in batches of exactly ``per_batch`` models.

    The last batch is padded by repeating the last model, also when M < per_batch: every model is
    computed by the same program of width ``per_batch`` whatever M is. XLA's CPU backend picks
    its reduction loops by an operation's total size, so a vmap of width M rounded a model's
    losses differently in a grid, a sub-grid or a slice (issue 26). One model per batch (the
    default) makes every value independent of the grid, bit for bit; with more, a model's place in
    its batch may still move the last bits of a few values (its vectorized loops' remainder).
    """
    batches = -(-M // per_batch)

    def batch(b: jax.Array) -> Any:
        """Outputs of batch b; its models gathered here, so no second copy of the whole grid."""
        index = jnp.minimum(b * per_batch + jnp.arange(per_batch), M - 1)
        return jax.vmap(fn)(jax.tree_util.tree_map(lambda x: x[index], args))

    out = jax.lax.map(batch, jnp.arange(batches))
    return jax.tree_util.tree_map(lambda x: x.reshape(batches * per_batch, *x.shape[2:])[:M], out)


@struct.dataclass
class References:
    """What the models of a program are scored against, stacked over its G datasets.

    Model i reads slot ``grid.dataset[i]`` of each: its own grammar (validity, rule usage), its own
    copy lookup (of its own training pool), its own training rows (losses, ``corr_train``) and
    its own test rows.
    """

    grammar: Any  # grammar.Grammar, every leaf with leading axis G
    lookup: coherence.Lookup  # coherence.stack_lookups of the G pools
    pool_GxQxD: jax.Array
    test_GxRxD: jax.Array  # the first R = eval.loss_rows test rows of each dataset
    corr_data_GxT: jax.Array  # coherence.exact_correlation of each grammar, t = 1..D-1


def references(settings: EvalSettings, grammar_G: Any, pool_GxQxD: Any, test_GxNxD: Any) -> References:
    """The References of G stacked datasets (a stacked grammar, (G, Q, D) pools, (G, N, D) tests)."""
    pool, test = np.asarray(pool_GxQxD), np.asarray(test_GxNxD)
    G = np.shape(jax.tree_util.tree_leaves(grammar_G)[0])[0]
    if pool.ndim != 3 or test.ndim != 3 or pool.shape[0] != G or test.shape[0] != G:
        raise ValueError(f"pool_GxQxD {pool.shape} and test_GxNxD {test.shape} must be (G={G}, rows, d)")
    if pool.shape[2] != grammar_G.d or test.shape[2] != grammar_G.d or test.shape[1] < 1 or pool.shape[1] < 1:
        raise ValueError(f"pool_GxQxD {pool.shape} and test_GxNxD {test.shape} need rows >= 1 of d={grammar_G.d}")
    lookup = coherence.stack_lookups([coherence.make_lookup(p) for p in pool])
    exact_GxT = np.stack([coherence.exact_correlation(jax.tree_util.tree_map(lambda x: x[g], grammar_G))
                          for g in range(G)])
    return References(grammar_G, lookup, jnp.asarray(pool, jnp.int32),
                      jnp.asarray(test[:, :settings.loss_rows], jnp.int32), jnp.asarray(exact_GxT, jnp.float32))


class Evaluator:
    """A program's evaluator as its two compiled halves; calling it runs both.

    ``sample(state_M, grid_M, key, refs) -> tokens_MxNxD``: each model's N samples (the ancestral
    sampler, the forward passes). ``score(state_M, grid_M, tokens_MxNxD, refs) -> dict of (M, ...)
    arrays``: coherence, copies, correlations and losses. Two programs so that a run can time them
    apart (``rhm_jax.timing``); each model's values are those of one program doing both.
    """

    def __init__(self, sample: Callable, score: Callable):
        self.sample, self.score = sample, score

    def __call__(self, state: train.TrainState, grid: train.Grid, key: jax.Array, refs: "References") -> dict:
        """Metrics of every model of the grid, leading axis M (both halves, dispatched without waiting)."""
        return self.score(state, grid, self.sample(state, grid, key, refs), refs)


def make_evaluator(settings: Settings, process: Any, network: Any) -> Evaluator:
    """``evaluate(state_M, grid_M, key, refs) -> dict of (M, ...) arrays`` (an ``Evaluator``: its
    ``sample`` and ``score`` halves jitted once per shape).

    Model i is scored against slot ``grid.dataset[i]`` of ``refs`` (``References``).
    Deterministic given ``key``: model i samples with fold_in(key, model_seed_i), so a model's
    scores do not depend on the other models of the grid. Its losses use keys that do not
    depend on ``key`` (nor on the step): fold_in(fold_in(key(eval.loss_seed), tag), model_seed_i),
    so every evaluation of a model draws the same noise on the same rows (common random
    numbers): equal params give equal losses, and loss differences between steps are the model's.
    """
    num_samples, num_windows, rows = settings.eval.num_samples, settings.eval.num_windows, settings.eval.loss_rows
    loss_root = int(settings.eval.loss_seed)
    batch, full, decay = settings.train.batch_size, settings.train.full_batch, settings.train.ema_decay
    per_batch = models_per_batch(settings.eval)

    def sample_one(args: tuple, refs: References, key: jax.Array) -> jax.Array:
        """(N, D) samples of ONE model."""
        state, grid = args
        grammar = jax.tree_util.tree_map(lambda x: x[grid.dataset], refs.grammar)
        params = train.eval_params(state, decay)
        # samples: the key they had before the losses left it (first of its 5 splits), so unchanged
        k_sample = jax.random.split(jax.random.fold_in(key, grid.model_seed), 5)[0]
        sample_kwargs = {} if getattr(process, "d", None) is not None else {"d": grammar.d}
        return process.sample(params, network.apply, k_sample, num_samples, **sample_kwargs)

    def score_one(args: tuple, refs: References) -> dict:
        """All metrics of ONE model from its samples, against its own dataset's slot of ``refs``."""
        state, grid, tokens_NxD = args
        g = grid.dataset
        grammar = jax.tree_util.tree_map(lambda x: x[g], refs.grammar)
        params = train.eval_params(state, decay)
        loss_key = jax.random.fold_in(jax.random.fold_in(jax.random.key(loss_root), _LOSS_KEY_TAG), grid.model_seed)
        k_train, k_test, k_train_w, k_test_w = jax.random.split(loss_key, 4)
        metrics = score_in(refs, g, tokens_NxD, grid.P)
        P = jnp.maximum(grid.P, 1)  # an online model (P = 0) has no training rows: its train columns are void
        train_RxD = refs.pool_GxQxD[g, data.batch_indices(_EVAL_ROWS_SEED ^ grid.data_seed, P, 0, rows)]
        test_RxD = refs.test_GxRxD[g]
        # The R rows cycle through the model's P rows, the first min(P, R) of them distinct: C(t)
        # of exactly those (all P rows when P <= R), its bias for that many rows.
        corr_train_T, _ = correlations(train_RxD, grammar.v, num_rows=jnp.minimum(P, rows))
        for t in correlation_distances(grammar.d):
            metrics[f"corr_train_t{t}"] = corr_train_T[t - 1]
            metrics[f"corr_data_t{t}"] = refs.corr_data_GxT[g, t - 1]
        for split, k, x_RxD in (("train", k_train, train_RxD), ("test", k_test, test_RxD)):
            loss_R = process.row_losses(params, network.apply, k, x_RxD)
            num = x_RxD.shape[0]
            metrics[f"{split}_loss"] = loss_R.mean()
            metrics[f"{split}_loss_se"] = loss_R.std(ddof=1) / math.sqrt(num) if num > 1 else jnp.float32(jnp.nan)
        metrics["train_loss_window"] = process.window_losses(params, network.apply, k_train_w, train_RxD,
                                                             num_windows)
        metrics["test_loss_window"] = process.window_losses(params, network.apply, k_test_w, test_RxD,
                                                            num_windows)
        metrics["step"] = state.step
        metrics["epoch"] = train.epochs(state.step, grid.P, batch, full)
        return metrics

    @jax.jit
    def sample(state: train.TrainState, grid: train.Grid, key: jax.Array, refs: References) -> jax.Array:
        """(M, N, D) samples of every model of the grid."""
        # Only what sampling needs travels into the model batches (not the optimizer state).
        slim = state.replace(opt_state=None)
        return _map_models(lambda args: sample_one(args, refs, key), (slim, grid), grid.P.shape[0], per_batch)

    @jax.jit
    def score(state: train.TrainState, grid: train.Grid, tokens_MxNxD: jax.Array, refs: References) -> dict:
        """Metrics of every model of the grid from its samples, leading axis M."""
        slim = state.replace(opt_state=None)
        return _map_models(lambda args: score_one(args, refs), (slim, grid, tokens_MxNxD), grid.P.shape[0], per_batch)

    return Evaluator(sample, score)


def _plain(value: Any) -> Any:
    """A numpy scalar as a Python value; non-finite floats become None (strict JSON)."""
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


def online_void(name: str) -> bool:
    """Whether a metrics column means nothing for an online model (P = 0): copies and what is read
    against a training set (it has none). Its rows hold null there, never 0."""
    return name in ONLINE_VOID or name.startswith(("train_loss", "corr_train_t")) or (
        name.startswith("validity_l") and name.endswith("_noncopy"))


ONLINE_VOID = ("copies", "novel_valid", "noncopy_samples", "epoch")


def to_rows(metrics: dict, grid_rows: list[dict], state: train.TrainState) -> list[dict]:
    """One flat JSON-able dict per model: its index, step, divergence and metrics; (W,) windows become
    ``<name>_0 .. <name>_{W-1}``; an online model's ``online_void`` columns are None. The grid row's
    other fields are added by ``subgrids.metrics_rows``."""
    metrics, step, diverged, diverged_step = jax.device_get(
        (metrics, state.step, state.diverged, state.diverged_step))
    out = []
    for j, grid_row in enumerate(grid_rows):
        row = dict(model=int(grid_row["index"]), step=int(step[j]), diverged=bool(diverged[j]),
                   diverged_step=int(diverged_step[j]))
        for name, values in metrics.items():
            value = np.asarray(values[j])
            if value.ndim == 0:
                row[name] = _plain(value)
            else:
                row.update({f"{name}_{w}": _plain(x) for w, x in enumerate(value.ravel())})
        row["step"] = int(step[j])
        if int(grid_row.get("P", -1)) == data.ONLINE:
            row.update({name: None for name in row if online_void(name)})
        out.append(row)
    return out
