"""Train a grid of models as one compiled program: stacked state, shuffled batches, chunks of steps.

Shape letters: M models (grid axis), B batch, G datasets of the program, Q rows of each dataset's
training pool (the program's largest P), D sequence length, K steps per device call.

The models of one program may differ in every traced setting (``Grid``): P, learning rate, warmup,
Adam's b1, b2 and eps, step budget, model seed, and dataset. A dataset is a (grammar seed, data
seed) pair; the program stacks its G distinct datasets' pools in ``pool_GxQxD`` on device, and model
i uses the first ``P_i`` rows of pool ``dataset_i`` (datasets of different P are nested prefixes).
Its stream of examples is the concatenation of permutations pi_0, pi_1, ... of ``[0, P_i)``, pi_e a
keyed bijection of (data_seed, e) computed element-wise (``data.permute``); step k reads stream
elements [k*B, (k+1)*B) (``data.batch_indices``). The data seed (``data.seed``) thus decides which
sequences a model trains on AND their order; the model seed (``train.seeds``) decides its
initialization and per-step noise only. (Before issue 9 the model seed also set the order: a model
whose seed differs from data.seed now sees another batch order than it did then.)
Batches may straddle epochs; when ``B > P`` a batch spans
several epochs and may hold a row more than once (our decision: it keeps every step the same size
and every epoch a full permutation).
``train.p_below_batch='full_batch'`` gives the authors' loader instead: a model with P < B takes
its P rows once per step (one epoch per step), the other B - P rows of the fixed-shape batch get
zero weight and the loss is the mean over the P real rows (``rows_per_step``).
A model with P = 0 (``data.ONLINE``) trains online: each step's B rows are drawn afresh from its
own grammar inside the compiled step (``data.online_batch``, keyed by (data_seed, step) alone), so
its stream is exactly reproducible, resumes bit-exactly and mixes with finite-P models in one
program (every model computes both batches and keeps its own; drawing costs little next to a step).
Its epochs are NaN: it has no training set.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from rhm_jax import data
from rhm_jax.settings import TrainSettings

_INIT_STREAM = np.uint32(0xFFFFFFFF)  # fold_in tag for init keys; no int32 step reaches it
_TRAIN_TAG = 0  # fold_in tag of the training loss key within a step


@struct.dataclass
class Grid:
    """The traced per-model settings of a grid; every leaf has leading axis M."""

    P: jax.Array  # (M,) int32 training-set size
    dataset: jax.Array  # (M,) int32 index g of the model's (grammar seed, data seed) in the program's stack
    data_seed: jax.Array  # (M,) uint32 data.seed: which sequences are drawn and the training stream's order
    model_seed: jax.Array  # (M,) uint32 train.seeds: init and per-step randomness
    lr: jax.Array  # (M,) float32 peak learning rate
    budget: jax.Array  # (M,) int32 step at which the model stops
    warmup_steps: jax.Array  # (M,) int32 linear warmup of the learning rate (0: none)
    b1: jax.Array  # (M,) float32 Adam's first-moment decay
    b2: jax.Array  # (M,) float32 Adam's second-moment decay
    adam_eps: jax.Array  # (M,) float32 Adam's epsilon
    # 1 - b1 and 1 - b2 rounded once to float32 from the exact difference, as optax computes
    # them from Python floats: 1 - float32(b) would differ in the last bits (derived in grid_arrays).
    one_minus_b1: jax.Array  # (M,) float32
    one_minus_b2: jax.Array  # (M,) float32


@struct.dataclass
class Sources:
    """Where a program's models read their batches: the stacked training pools and grammars.

    ``grammar`` (a ``grammar.Grammar`` stacked over G) feeds the online models (P = 0); a chunk
    given a bare pool array instead trains finite-P models only.
    """

    pool_GxQxD: jax.Array
    grammar: Any = None


@struct.dataclass
class TrainState:
    """Stacked train state of M models; ``ema`` is None when ema_decay is 0."""

    params: Any
    opt_state: Any
    ema: Any
    step: jax.Array  # (M,) int32 steps applied
    diverged: jax.Array  # (M,) bool
    diverged_step: jax.Array  # (M,) int32, -1 if not diverged
    last_loss: jax.Array  # (M,) float32 loss of the last active step


# ----------------------------------------------------------------------------- grid


def rows_per_step(P: Any, batch_size: int, full: bool) -> Any:
    """Training rows one step consumes: min(P, B) with the authors' full batch, else B (P an int or
    traced); B for an online model (P = 0), which has no rows to run out of."""
    if not full:
        return batch_size
    if isinstance(P, int):
        return min(P, batch_size) if P > 0 else batch_size
    return jnp.where(P > 0, jnp.minimum(P, batch_size), batch_size)


def datasets_of(rows: Sequence[dict]) -> tuple[tuple[int, int], ...]:
    """The distinct (grammar_seed, data_seed) of grid rows, in order of first appearance."""
    return tuple(dict.fromkeys((int(r["grammar_seed"]), int(r["data_seed"])) for r in rows))


def grid_arrays(rows: Sequence[dict]) -> Grid:
    """The traced Grid of grid rows; ``dataset`` indexes ``datasets_of(rows)``."""
    if not rows:
        raise ValueError("grid rows must hold at least one model")
    index = {pair: g for g, pair in enumerate(datasets_of(rows))}
    column = lambda name, dtype: jnp.asarray([r[name] for r in rows], dtype)
    return Grid(
        P=column("P", jnp.int32),
        dataset=jnp.asarray([index[(int(r["grammar_seed"]), int(r["data_seed"]))] for r in rows], jnp.int32),
        data_seed=column("data_seed", jnp.uint32),
        model_seed=column("seed", jnp.uint32),
        lr=column("lr", jnp.float32),
        budget=column("budget_steps", jnp.int32),
        warmup_steps=column("warmup_steps", jnp.int32),
        b1=column("b1", jnp.float32),
        b2=column("b2", jnp.float32),
        adam_eps=column("adam_eps", jnp.float32),
        one_minus_b1=jnp.asarray([1.0 - float(r["b1"]) for r in rows], jnp.float32),
        one_minus_b2=jnp.asarray([1.0 - float(r["b2"]) for r in rows], jnp.float32),
    )


# ----------------------------------------------------------------------------- batching


def epochs(step: jax.Array, P: jax.Array, batch_size: int, full: bool = False) -> jax.Array:
    """Epochs completed after ``step`` steps: step * rows_per_step / P (float32); NaN online (P = 0)."""
    P = jnp.asarray(P)
    denominator = jnp.maximum(P, 1).astype(jnp.float32)
    if not full:
        done = step.astype(jnp.float32) * batch_size / denominator
    else:
        done = step.astype(jnp.float32) * rows_per_step(P, batch_size, True).astype(jnp.float32) / denominator
    return jnp.where(P > 0, done, jnp.nan)


# ----------------------------------------------------------------------------- state


def init_key(model_seed: jax.Array) -> jax.Array:
    """The key of a model's initialization, disjoint from all per-step keys."""
    return jax.random.fold_in(jax.random.key(model_seed), _INIT_STREAM)


def step_key(model_seed: jax.Array, step: jax.Array) -> jax.Array:
    """The training key of one model at one step: a pure function of (seed, step)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(model_seed), step), _TRAIN_TAG)


MU_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # None: the parameters' dtype


@functools.lru_cache(maxsize=32)
def _initializer(network: Any, mu_dtype: str) -> Callable:
    """Jitted, vmapped (params, opt_state) init; cached so repeated grids reuse the compilation.

    Adam's initial state (zero moments, count 0) does not depend on b1, b2 or eps, which are
    per-model values of the step.
    """
    adam = optax.scale_by_adam(mu_dtype=MU_DTYPES[mu_dtype])

    def init_one(seed: jax.Array) -> tuple[Any, Any]:
        params = network.init(init_key(seed))
        return params, adam.init(params)

    return jax.jit(jax.vmap(init_one))


def init_state(settings: TrainSettings, network: Any, grid: Grid) -> TrainState:
    """Stacked initial state: vmapped ``network.init`` over keys derived from model_seed."""
    params, opt_state = _initializer(network, settings.mu_dtype)(grid.model_seed)
    M = grid.P.shape[0]
    return TrainState(
        params=params,
        opt_state=opt_state,
        ema=jax.tree_util.tree_map(jnp.zeros_like, params) if settings.ema_decay > 0 else None,
        step=jnp.zeros(M, jnp.int32),
        diverged=jnp.zeros(M, bool),
        diverged_step=jnp.full(M, -1, jnp.int32),
        last_loss=jnp.full(M, jnp.nan, jnp.float32),
    )


def eval_params(state_1: TrainState, ema_decay: float) -> Any:
    """Parameters to evaluate for ONE model: the debiased EMA when kept, else the raw ones."""
    if state_1.ema is None or ema_decay <= 0:
        return state_1.params
    steps = state_1.step.astype(jnp.float32)
    correction = 1.0 - jnp.float32(ema_decay) ** steps
    safe = jnp.where(state_1.step > 0, correction, 1.0)
    return jax.tree_util.tree_map(
        lambda e, p: jnp.where(state_1.step > 0, e / safe, p).astype(p.dtype), state_1.ema, state_1.params)


def _warmup(step: jax.Array, warmup_steps: jax.Array) -> jax.Array:
    """Linear warmup factor of the step about to be taken (1 when warmup_steps is 0); traced per model."""
    ramp = jnp.minimum(1.0, (step.astype(jnp.float32) + 1.0) / jnp.maximum(warmup_steps, 1).astype(jnp.float32))
    return jnp.where(warmup_steps > 0, ramp, jnp.float32(1.0))


def _adam_moments(grads: Any, adam: optax.ScaleByAdamState, grid: Grid) -> optax.ScaleByAdamState:
    """``optax.scale_by_adam``'s new moments and count for ONE model with its own traced b1 and b2.

    The same operations in the same order as optax's, except that 1 - b comes from the grid
    (``one_minus_b1/b2``). With Python-float scalars these give optax's bits exactly; with traced
    ones XLA compiles the pass differently, so fp32 parameters match constant b1, b2, eps bitwise
    after the first step and to the last bits after more (measured: 5e-7 after 20 steps).
    """
    mu = jax.tree_util.tree_map(lambda g, t: grid.one_minus_b1 * g + grid.b1.astype(t.dtype) * t, grads, adam.mu)
    nu = jax.tree_util.tree_map(lambda g, t: grid.one_minus_b2 * g**2 + grid.b2.astype(t.dtype) * t, grads, adam.nu)
    return optax.ScaleByAdamState(count=optax.safe_increment(adam.count), mu=mu, nu=nu)


def _adam_direction(adam: optax.ScaleByAdamState, grid: Grid) -> Any:
    """Adam's update direction from (new) moments: bias-corrected mu / (sqrt(nu) + eps), as optax."""
    mu_hat = optax.tree.bias_correction(adam.mu, grid.b1, adam.count)
    nu_hat = optax.tree.bias_correction(adam.nu, grid.b2, adam.count)
    return jax.tree_util.tree_map(lambda m, v: m / (jnp.sqrt(v + 0.0) + grid.adam_eps), mu_hat, nu_hat)


def _store(adam: optax.ScaleByAdamState, like: optax.ScaleByAdamState, mu_dtype: Any) -> optax.ScaleByAdamState:
    """The moments in their stored dtypes (mu in ``mu_dtype``, nu as before), as optax stores them."""
    return adam._replace(mu=optax.tree.cast(adam.mu, mu_dtype), nu=optax.tree.cast_like(adam.nu, like.nu))


def _all_finite(tree: Any) -> jax.Array:
    """True when every entry of every leaf is finite.

    Read as ``isfinite(max |x|)`` per leaf: a max propagates NaN and inf and cannot overflow, and
    XLA's CPU backend reduces it in one vectorized pass, where ``isfinite(x).all()`` became a
    boolean array and a tree of window reductions (7% of a W=1024 step, issue 12).
    """
    leaves = [jnp.isfinite(jnp.max(jnp.abs(x))) for x in jax.tree_util.tree_leaves(tree) if x.size]
    return jnp.stack(leaves).all() if leaves else jnp.bool_(True)


# ----------------------------------------------------------------------------- chunk


def make_train_chunk(settings: TrainSettings, process: Any, network: Any) -> Callable:
    """``chunk(state_M, grid_M, pool, num_steps) -> (state_M, metrics)`` over K = steps_per_call.

    ``pool``: the program's ``Sources`` (or its bare (G, Q, D) pool array when no model is online).
    Model i reads its batches from ``pool_GxQxD[grid.dataset[i]]``, the pool of its own
    (grammar seed, data seed), or online (P = 0) from its grammar ``grammar[grid.dataset[i]]``
    (``chunk.batch_of``). ``num_steps`` (traced, unbatched int32, clipped to [0, K]) is the
    trip count of a while loop, so one compiled chunk stops at any evaluation step. Models past
    their budget or diverged are frozen (state unchanged). A step with a non-finite loss or
    gradient is not applied: the model is marked diverged at that step and frozen; the other
    models are untouched. (Finite gradients give finite new params: an Adam step is a few times lr
    at most.) Metrics per model: ``loss`` (mean over the chunk's applied steps, NaN if none),
    ``steps_done``, ``step`` (after the chunk) and ``epoch`` (step * rows per step / P).
    """
    batch, K, full, decay = settings.batch_size, settings.steps_per_call, settings.full_batch, settings.ema_decay
    mu_dtype = MU_DTYPES[settings.mu_dtype]

    def batch_of(grid: Grid, step: jax.Array, sources: Sources) -> tuple[jax.Array, Any]:
        """ONE model's batch (B, D) at ``step`` and its real rows (None: all B)."""
        P = jnp.maximum(grid.P, 1)  # an online model reads no pool row; P >= 1 keeps the stream defined
        rows = rows_per_step(grid.P, batch, True) if full else None
        x0_BxD = sources.pool_GxQxD[grid.dataset, data.batch_indices(grid.data_seed, P, step, batch, rows)]
        if sources.grammar is not None:
            online_BxD = data.online_batch(sources.grammar, grid.dataset, grid.data_seed, step, batch)
            x0_BxD = jnp.where(grid.P == data.ONLINE, online_BxD, x0_BxD)
        return x0_BxD, rows

    def model_step(state: TrainState, grid: Grid, sources: Sources) -> tuple[TrainState, jax.Array, jax.Array]:
        """One step of ONE model: new state, loss if applied (else 0), whether it was applied."""
        key = step_key(grid.model_seed, state.step)
        x0_BxD, rows = batch_of(grid, state.step, sources)
        if full:  # the authors' loader: min(P, B) real rows, the others weigh nothing
            loss_fn = lambda p: process.loss(p, network.apply, key, x0_BxD, num_rows=rows)[0]
        else:
            loss_fn = lambda p: process.loss(p, network.apply, key, x0_BxD)[0]
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        active = (state.step < grid.budget) & ~state.diverged
        # Checking the gradients, not the new params, decides before the update, so the freeze
        # below fuses into Adam's elementwise pass instead of costing another pass over the state.
        finite = jnp.isfinite(loss) & _all_finite(grads)
        applied = active & finite
        blowup = active & ~finite
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(applied, n, o), new, old)
        moments = _adam_moments(grads, state.opt_state, grid)
        opt_state = keep(_store(moments, state.opt_state, mu_dtype), state.opt_state)
        # Each pass reads what the pass before it stored (equal to the new values wherever the
        # step is applied), never the old state: a read of old moments or params after their
        # buffers were overwritten in place made XLA copy them at the top of every step (8 bytes
        # per parameter, 8-18% of a W=1024 step on the CPU, issue 12). A reduced-precision mu is
        # read before its cast, as optax does, and is copied still.
        direction = _adam_direction(opt_state if mu_dtype is None else opt_state._replace(mu=moments.mu), grid)
        scale = -grid.lr * _warmup(state.step, grid.warmup_steps)
        stepped = jax.tree_util.tree_map(lambda p, u: (p + scale * u).astype(p.dtype), state.params, direction)
        params = keep(stepped, state.params)
        ema = state.ema
        if ema is not None:
            ema = keep(jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params), ema)
        new_state = TrainState(
            params=params,
            opt_state=opt_state,
            ema=ema,
            step=state.step + applied.astype(jnp.int32),
            diverged=state.diverged | blowup,
            diverged_step=jnp.where(blowup, state.step, state.diverged_step),
            last_loss=jnp.where(active, loss.astype(jnp.float32), state.last_loss),
        )
        return new_state, jnp.where(applied, loss, 0.0).astype(jnp.float32), applied

    grid_step = jax.vmap(model_step, in_axes=(0, 0, None))

    def chunk(state: TrainState, grid: Grid, pool: Sources | jax.Array, num_steps: jax.Array):
        """Run min(num_steps, K) steps of every model of the grid (``pool``: Sources, or a bare pool array)."""
        M = grid.P.shape[0]
        sources = pool if isinstance(pool, Sources) else Sources(pool)

        def body(i: jax.Array, carry: tuple) -> tuple:
            st, loss_sum, count = carry
            st, loss_M, applied_M = grid_step(st, grid, sources)
            return st, loss_sum + loss_M, count + applied_M.astype(jnp.int32)

        # A while loop whose trip count is traced but unbatched: stopping at any step costs no
        # recompilation, skipped steps cost nothing, and unlike a scan over K with lax.cond the
        # loop carries the state in place (XLA copies a cond's pass-through operands).
        init = (state, jnp.zeros(M, jnp.float32), jnp.zeros(M, jnp.int32))
        trips = jnp.clip(jnp.asarray(num_steps, jnp.int32), 0, K)
        state, loss_sum, count = jax.lax.fori_loop(0, trips, body, init)
        metrics = dict(
            loss=jnp.where(count > 0, loss_sum / jnp.maximum(count, 1), jnp.nan),
            steps_done=count,
            step=state.step,
            epoch=epochs(state.step, grid.P, batch, full),
        )
        return state, metrics

    chunk.steps_per_call = K
    chunk.batch_of = batch_of  # (grid_1, step, sources) -> (B, D) rows: what a model reads at a step
    return chunk


def jit_chunk(chunk: Callable) -> Callable:
    """``jax.jit`` of a chunk, donating the state; checks a Python ``num_steps`` before tracing."""
    jitted = jax.jit(chunk, donate_argnums=0)
    K = getattr(chunk, "steps_per_call", None)

    def call(state: TrainState, grid: Grid, pool_GxQxD: jax.Array, num_steps: Any):
        if isinstance(num_steps, (int, np.integer)):
            if K is not None and not 0 <= num_steps <= K:
                raise ValueError(f"num_steps={num_steps} must lie in [0, steps_per_call={K}]")
        return jitted(state, grid, pool_GxQxD, jnp.asarray(num_steps, jnp.int32))

    call.lower = lambda *args: jitted.lower(*args[:3], jnp.asarray(args[3], jnp.int32))
    return call
