"""Train a grid of models as one compiled program: stacked state, shuffled batches, chunks of steps.

Shape letters: M models (grid axis), B batch, Q rows in the shared training pool (the largest P),
D sequence length, K steps per device call.

Every model of the grid reads its training set from ONE pool ``pool_QxD`` kept on device: model i
uses the first ``P_i`` rows (datasets of different P are nested prefixes). Its stream of examples is
the concatenation of permutations pi_0, pi_1, ... of ``[0, P_i)``, pi_e a keyed bijection of
(data_seed, e) computed element-wise (``data.permute``); step k reads stream elements
[k*B, (k+1)*B) (``data.batch_indices``). Batches may straddle epochs; when ``B > P`` a batch spans
several epochs and may hold a row more than once (our decision: it keeps every step the same size
and every epoch a full permutation).
``train.p_below_batch='full_batch'`` gives the authors' loader instead: a model with P < B takes
its P rows once per step (one epoch per step), the other B - P rows of the fixed-shape batch get
zero weight and the loss is the mean over the P real rows (``rows_per_step``).
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from rhm_jax import data

_INIT_STREAM = np.uint32(0xFFFFFFFF)  # fold_in tag for init keys; no int32 step reaches it
_TRAIN_TAG = 0  # fold_in tag of the training loss key within a step


@struct.dataclass
class Grid:
    """The traced per-model settings of a grid; every leaf has leading axis M."""

    P: jax.Array  # (M,) int32 training-set size
    data_seed: jax.Array  # (M,) uint32 seed of the shuffling order
    model_seed: jax.Array  # (M,) uint32 seed of init and per-step randomness
    lr: jax.Array  # (M,) float32 peak learning rate
    budget: jax.Array  # (M,) int32 step at which the model stops


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


def _as_list(value: Any) -> list:
    """A config entry that may be a scalar or a sequence, as a list."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _seed_list(seeds: Any) -> list[int]:
    """``train.seeds``: an int n means seeds 0..n-1, a sequence lists them."""
    if isinstance(seeds, (list, tuple)):
        values = [int(s) for s in seeds]
    else:
        if int(seeds) < 1:
            raise ValueError(f"train.seeds={seeds} must be >= 1 (a count) or a list of seeds")
        values = list(range(int(seeds)))
    if not values or any(s < 0 or s >= 2**32 for s in values):
        raise ValueError(f"train.seeds={seeds} must be non-empty with seeds in [0, 2**32)")
    return values


P_BELOW_BATCH = ("repeat", "full_batch")


def full_batch(train_config: Any) -> bool:
    """train.p_below_batch: 'repeat' (default) or 'full_batch' (the authors' loader when P < B)."""
    mode = train_config.get("p_below_batch", "repeat") or "repeat"
    if mode not in P_BELOW_BATCH:
        raise ValueError(f"train.p_below_batch={mode!r} must be one of {P_BELOW_BATCH}")
    return mode == "full_batch"


def rows_per_step(P: Any, batch_size: int, full: bool) -> Any:
    """Training rows one step consumes: min(P, B) with the authors' full batch, else B."""
    return jnp.minimum(P, batch_size) if full else batch_size


def budget_steps(train_config: Any, P: int) -> int:
    """Step budget of a model with P examples: num_steps, or ceil(num_epochs * P / rows per step)."""
    num_epochs = train_config.get("num_epochs", None)
    num_steps = train_config.get("num_steps", None)
    batch = min(P, int(train_config.batch_size)) if full_batch(train_config) else int(train_config.batch_size)
    if num_epochs:  # epochs win when both are set: the paper counts time in epochs
        if num_epochs < 0:
            raise ValueError(f"train.num_epochs={num_epochs} must be >= 0")
        if float(num_epochs).is_integer():
            steps = -(-int(num_epochs) * P // batch)  # exact integer ceil
        else:
            steps = math.ceil(num_epochs * P / batch)
    elif num_steps is not None:
        steps = int(num_steps)
    else:
        raise ValueError("train.num_steps or train.num_epochs must be set")
    if not 0 <= steps < 2**31:
        raise ValueError(f"budget of {steps} steps for P={P} must lie in [0, 2**31)")
    return steps


def make_grid(config: Any) -> tuple[Grid, list[dict]]:
    """Expand data.num_train x train.seeds (x train.lr if a list) into M models, P outermost."""
    sizes = [int(p) for p in _as_list(config.data.num_train)]
    seeds = _seed_list(config.train.seeds)
    lrs = [float(x) for x in _as_list(config.train.lr)]
    batch = int(config.train.batch_size)
    if batch < 1:
        raise ValueError(f"train.batch_size={batch} must be >= 1")
    if not sizes or any(p < 1 or p >= 2**31 for p in sizes):
        raise ValueError(f"data.num_train={sizes} must be non-empty with every P in [1, 2**31)")
    if not lrs or any(not math.isfinite(x) or x <= 0 for x in lrs):
        raise ValueError(f"train.lr={lrs} must be finite and > 0")
    rows = []
    for P in sizes:
        for seed in seeds:
            for lr in lrs:
                steps = budget_steps(config.train, P)
                per_step = min(P, batch) if full_batch(config.train) else batch
                rows.append(dict(index=len(rows), P=P, seed=seed, lr=lr, budget_steps=steps,
                                 budget_epochs=steps * per_step / P))
    start, stop = slice_bounds(_grid_slice_spec(config), len(rows))
    rows = rows[start:stop]  # a job-array task's share; "index" stays the model's index in the full grid
    grid = Grid(
        P=jnp.asarray([r["P"] for r in rows], jnp.int32),
        data_seed=jnp.asarray([r["seed"] for r in rows], jnp.uint32),
        model_seed=jnp.asarray([r["seed"] for r in rows], jnp.uint32),
        lr=jnp.asarray([r["lr"] for r in rows], jnp.float32),
        budget=jnp.asarray([r["budget_steps"] for r in rows], jnp.int32),
    )
    return grid, rows


# ----------------------------------------------------------------------------- grid slices (job arrays)


def _grid_slice_spec(config: Any) -> str:
    """run.grid_slice, '' (the whole grid) when the config has no such field."""
    run = config.get("run", None)
    spec = run.get("grid_slice", "") if run is not None else ""
    return "" if spec is None else spec


def slice_bounds(spec: str, num_models: int) -> tuple[int, int]:
    """[start, stop) of slice 'k/K' of M models: K consecutive, balanced slices ('' = all)."""
    if spec == "":
        return 0, num_models
    try:
        k, K = (int(part) for part in str(spec).split("/"))
    except ValueError:
        raise ValueError(f"run.grid_slice={spec!r} must look like 'k/K' (slice k of K, 0 <= k < K)") from None
    if not 0 <= k < K <= num_models:
        raise ValueError(f"run.grid_slice={spec!r} needs 0 <= k < K <= M={num_models} (the grid's model count)")
    return k * num_models // K, (k + 1) * num_models // K


# ----------------------------------------------------------------------------- batching


def epochs(step: jax.Array, P: jax.Array, batch_size: int, full: bool = False) -> jax.Array:
    """Epochs completed after ``step`` steps: step * rows_per_step / P (float32)."""
    if not full:
        return step.astype(jnp.float32) * batch_size / P.astype(jnp.float32)
    return step.astype(jnp.float32) * rows_per_step(P, batch_size, True).astype(jnp.float32) / P.astype(jnp.float32)


# ----------------------------------------------------------------------------- state


def init_key(model_seed: jax.Array) -> jax.Array:
    """The key of a model's initialization, disjoint from all per-step keys."""
    return jax.random.fold_in(jax.random.key(model_seed), _INIT_STREAM)


def step_key(model_seed: jax.Array, step: jax.Array) -> jax.Array:
    """The training key of one model at one step: a pure function of (seed, step)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(model_seed), step), _TRAIN_TAG)


def _adam(train_config: Any) -> optax.GradientTransformation:
    """Adam's moment scaling; the learning rate (per model, warmed up) is applied outside."""
    return optax.scale_by_adam(b1=float(train_config.b1), b2=float(train_config.b2),
                               eps=float(train_config.get("adam_eps", 1e-8)),  # PyTorch's default eps
                               mu_dtype=mu_dtype(train_config))


MU_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # None: the parameters' dtype


def mu_dtype(train_config: Any) -> Any:
    """train.mu_dtype: dtype of Adam's first moment (bfloat16 halves its memory traffic)."""
    name = train_config.get("mu_dtype", "float32") or "float32"
    if name not in MU_DTYPES:
        raise ValueError(f"train.mu_dtype={name!r} must be one of {tuple(MU_DTYPES)}")
    return MU_DTYPES[name]


def ema_decay(train_config: Any) -> float:
    """train.ema_decay, 0 when absent; must lie in [0, 1)."""
    decay = float(train_config.get("ema_decay", 0.0) or 0.0)
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"train.ema_decay={decay} must lie in [0, 1)")
    return decay


@functools.lru_cache(maxsize=32)
def _initializer(network: Any, b1: float, b2: float, eps: float, mu: Any = None) -> Callable:
    """Jitted, vmapped (params, opt_state) init; cached so repeated grids reuse the compilation."""
    adam = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, mu_dtype=mu)

    def init_one(seed: jax.Array) -> tuple[Any, Any]:
        params = network.init(init_key(seed))
        return params, adam.init(params)

    return jax.jit(jax.vmap(init_one))


def init_state(config: Any, network: Any, grid: Grid) -> TrainState:
    """Stacked initial state: vmapped ``network.init`` over keys derived from model_seed."""
    t = config.train
    decay = ema_decay(t)
    params, opt_state = _initializer(network, float(t.b1), float(t.b2),
                                     float(t.get("adam_eps", 1e-8)), mu_dtype(t))(grid.model_seed)
    M = grid.P.shape[0]
    return TrainState(
        params=params,
        opt_state=opt_state,
        ema=jax.tree_util.tree_map(jnp.zeros_like, params) if decay > 0 else None,
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


def _warmup(step: jax.Array, warmup_steps: int) -> jax.Array:
    """Linear warmup factor of the step about to be taken (1 when warmup_steps is 0)."""
    if warmup_steps <= 0:
        return jnp.float32(1.0)
    return jnp.minimum(1.0, (step.astype(jnp.float32) + 1.0) / warmup_steps)


def _all_finite(tree: Any) -> jax.Array:
    """True when every leaf of the tree is finite."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree_util.tree_leaves(tree)]
    return jnp.stack(leaves).all() if leaves else jnp.bool_(True)


# ----------------------------------------------------------------------------- chunk


def make_train_chunk(config: Any, process: Any, network: Any) -> Callable:
    """``chunk(state_M, grid_M, pool_QxD, num_steps) -> (state_M, metrics)`` over K = steps_per_call.

    ``num_steps`` (traced, unbatched int32, clipped to [0, K]) is the trip count of a while loop,
    so one compiled chunk stops at any evaluation step. Models past their budget or diverged are
    frozen (state unchanged). A step with a non-finite loss or gradient is not applied: the model
    is marked diverged at that step and frozen; the other models are untouched. (Finite gradients
    give finite new params: an Adam step is a few times lr at most.) Metrics per model: ``loss``
    (mean over the chunk's applied steps, NaN if none), ``steps_done``, ``step`` (after the chunk) and
    ``epoch`` (step * rows per step / P).
    """
    batch = int(config.train.batch_size)
    K = int(config.train.steps_per_call)
    warmup_steps = int(config.train.get("warmup_steps", 0) or 0)
    if batch < 1 or K < 1 or warmup_steps < 0:
        raise ValueError(f"need train.batch_size={batch} >= 1, train.steps_per_call={K} >= 1, "
                         f"train.warmup_steps={warmup_steps} >= 0")
    adam = _adam(config.train)
    decay = ema_decay(config.train)
    full = full_batch(config.train)

    def model_step(state: TrainState, grid: Grid, pool_QxD: jax.Array) -> tuple[TrainState, jax.Array, jax.Array]:
        """One step of ONE model: new state, loss if applied (else 0), whether it was applied."""
        key = step_key(grid.model_seed, state.step)
        if full:  # the authors' loader: min(P, B) real rows, the others weigh nothing
            rows = rows_per_step(grid.P, batch, True)
            x0_BxD = pool_QxD[data.batch_indices(grid.data_seed, grid.P, state.step, batch, rows)]
            loss_fn = lambda p: process.loss(p, network.apply, key, x0_BxD, num_rows=rows)[0]
        else:
            x0_BxD = pool_QxD[data.batch_indices(grid.data_seed, grid.P, state.step, batch)]
            loss_fn = lambda p: process.loss(p, network.apply, key, x0_BxD)[0]
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = adam.update(grads, state.opt_state, state.params)
        scale = -grid.lr * _warmup(state.step, warmup_steps)
        params = jax.tree_util.tree_map(lambda p, u: (p + scale * u).astype(p.dtype), state.params, updates)
        ema = state.ema
        if ema is not None:
            ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
        active = (state.step < grid.budget) & ~state.diverged
        # Checking the gradients, not the new params, decides before the update, so the freeze
        # below fuses into Adam's elementwise pass instead of costing another pass over the state.
        finite = jnp.isfinite(loss) & _all_finite(grads)
        applied = active & finite
        blowup = active & ~finite
        keep = lambda new, old: jax.tree_util.tree_map(lambda n, o: jnp.where(applied, n, o), new, old)
        new_state = TrainState(
            params=keep(params, state.params),
            opt_state=keep(opt_state, state.opt_state),
            ema=keep(ema, state.ema),
            step=state.step + applied.astype(jnp.int32),
            diverged=state.diverged | blowup,
            diverged_step=jnp.where(blowup, state.step, state.diverged_step),
            last_loss=jnp.where(active, loss.astype(jnp.float32), state.last_loss),
        )
        return new_state, jnp.where(applied, loss, 0.0).astype(jnp.float32), applied

    grid_step = jax.vmap(model_step, in_axes=(0, 0, None))

    def chunk(state: TrainState, grid: Grid, pool_QxD: jax.Array, num_steps: jax.Array):
        """Run min(num_steps, K) steps of every model of the grid."""
        M = grid.P.shape[0]

        def body(i: jax.Array, carry: tuple) -> tuple:
            st, loss_sum, count = carry
            st, loss_M, applied_M = grid_step(st, grid, pool_QxD)
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
    return chunk


def jit_chunk(chunk: Callable) -> Callable:
    """``jax.jit`` of a chunk, donating the state; checks a Python ``num_steps`` before tracing."""
    jitted = jax.jit(chunk, donate_argnums=0)
    K = getattr(chunk, "steps_per_call", None)

    def call(state: TrainState, grid: Grid, pool_QxD: jax.Array, num_steps: Any):
        if isinstance(num_steps, (int, np.integer)):
            if K is not None and not 0 <= num_steps <= K:
                raise ValueError(f"num_steps={num_steps} must lie in [0, steps_per_call={K}]")
        return jitted(state, grid, pool_QxD, jnp.asarray(num_steps, jnp.int32))

    call.lower = lambda *args: jitted.lower(*args[:3], jnp.asarray(args[3], jnp.int32))
    return call
