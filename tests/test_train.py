"""train: shuffled batching, grid = separate runs, one compilation, resume, divergence, budgets."""
from __future__ import annotations

import dataclasses
import re

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rhm_jax import config as config_lib
from rhm_jax import data, diffusion, grammar, networks, plan, settings, train
from rhm_jax.networks import bpunet

V, D, Q = 4, 4, 48  # vocabulary, length, pool rows


@dataclasses.dataclass(frozen=True)
class ToyProcess:
    """Stand-in process: replace tokens with noise at rate t, cross-entropy on x0."""

    v: int = V
    name: str = "uniform"

    @property
    def input_vocab(self) -> int:
        return self.v

    def loss(self, params, apply_fn, key, x0_BxD):
        key_t, key_keep, key_noise = jax.random.split(key, 3)
        t_B = jax.random.uniform(key_t, (x0_BxD.shape[0],))
        keep_BxD = jax.random.uniform(key_keep, x0_BxD.shape) > t_B[:, None]
        noise_BxD = jax.random.randint(key_noise, x0_BxD.shape, 0, self.v)
        x_t_BxD = jnp.where(keep_BxD, x0_BxD, noise_BxD)
        logp_BxDxV = jax.nn.log_softmax(apply_fn(params, x_t_BxD, t_B))
        nll_BxD = -jnp.take_along_axis(logp_BxDxV, x0_BxD[..., None], axis=-1)[..., 0]
        return nll_BxD.mean(), {}


class ToyNetwork:
    """Stand-in denoiser: embeddings, a global mixing layer, readout scaled by cosh(a).

    cosh(a) overflows once an absurd learning rate throws ``a`` far from 0: a clean divergence.
    """

    width = 8

    def init(self, key):
        k = jax.random.split(key, 4)
        return dict(
            embed=jax.random.normal(k[0], (V, self.width)),
            pos=jax.random.normal(k[1], (D, self.width)),
            mix=jax.random.normal(k[2], (self.width, self.width)) / np.sqrt(self.width),
            readout=jax.random.normal(k[3], (self.width, V)) / np.sqrt(self.width),
            a=jnp.float32(0.3),
        )

    def apply(self, params, x_t_BxD, t_B):
        h_BxDxW = jnp.tanh(params["embed"][x_t_BxD] + params["pos"] + t_B[:, None, None])
        h_BxDxW = h_BxDxW + jnp.tanh(h_BxDxW.mean(1, keepdims=True) @ params["mix"])
        return jnp.cosh(params["a"]) * (h_BxDxW @ params["readout"])


def toy_config(**train_overrides) -> ml_collections.ConfigDict:
    """The base config with the toy grid's training settings."""
    config = config_lib.base_config()
    config.data.num_train = (Q,)
    config.train.update(dict(batch_size=8, lr=(1e-2,), warmup_steps=2, ema_decay=0.9, num_steps=100, seeds=(0,),
                             steps_per_call=8))
    config.train.update(train_overrides)
    return config


def make_grid(P, seeds, lr, budget, warmup=2) -> train.Grid:
    """A Grid from per-model lists (data seed = model seed, as the tests below were written)."""
    rows = [dict(index=i, P=p, seed=s, lr=r, grammar_seed=0, data_seed=s, budget_steps=b, warmup_steps=warmup,
                 b1=0.9, b2=0.999, adam_eps=1e-8) for i, (p, s, r, b) in enumerate(zip(P, seeds, lr, budget))]
    return train.grid_arrays(rows)


def take(tree, i):
    """Model i of a stacked pytree, keeping a leading axis of 1."""
    return jax.tree_util.tree_map(lambda x: x[i:i + 1], tree)


@pytest.fixture(scope="module")
def setup():
    """Pool, config, the jitted chunk and init, shared by the tests to share compilations.

    The chunk may be traced once per grid size used in this module (M = 3 and M = 1), never for
    new P, seeds, learning rates, budgets or step counts.
    """
    config = toy_config()
    pool_QxD = jax.random.randint(jax.random.key(1), (1, Q, D), 0, V, dtype=jnp.int32)  # G = 1 dataset
    network = ToyNetwork()
    typed = settings.TrainSettings.of(config)
    chunk = chex.assert_max_traces(train.make_train_chunk(typed, ToyProcess(), network), n=2)
    init = lambda grid: train.init_state(typed, network, grid)
    return config, pool_QxD, train.jit_chunk(chunk), init


# ----------------------------------------------------------------------------- grid


def test_make_grid_expands_sizes_seeds_and_epoch_budgets():
    config = toy_config(num_steps=0, num_epochs=2.5, seeds=(0, 4))
    with config.unlocked():
        config.data.num_train = (3, 40)
    grid, rows = plan.make_grid(config)
    assert [(r["P"], r["seed"]) for r in rows] == [(3, 0), (3, 4), (40, 0), (40, 4)]
    assert [r["budget_steps"] for r in rows] == [1, 1, 13, 13]  # ceil(2.5 * P / 8)
    np.testing.assert_array_equal(grid.budget, [1, 1, 13, 13])
    np.testing.assert_array_equal(grid.model_seed, [0, 4, 0, 4])
    assert rows[2]["budget_epochs"] == pytest.approx(13 * 8 / 40)
    assert [r["index"] for r in rows] == [0, 1, 2, 3]


def test_make_grid_lr_list_and_traced_settings():
    config = toy_config(lr=(1e-3, 1e-2), b1=0.8, adam_eps=1e-6)
    config.data.seed = 5
    grid, rows = plan.make_grid(config)
    assert [r["lr"] for r in rows] == [1e-3, 1e-2]
    assert rows[0]["budget_steps"] == 100
    assert rows[0]["data_seed"] == 5 and rows[0]["seed"] == 0 and rows[0]["warmup_steps"] == 2
    np.testing.assert_array_equal(grid.data_seed, [5, 5])  # data.seed orders the stream, not train.seeds
    np.testing.assert_array_equal(grid.model_seed, [0, 0])
    np.testing.assert_allclose(grid.b1, [0.8, 0.8])
    np.testing.assert_array_equal(grid.one_minus_b1, np.float32(1 - 0.8))  # rounded once, from double


def test_grid_arrays_index_datasets_in_order_of_first_appearance():
    rows = [dict(index=i, P=4, seed=0, lr=1.0, grammar_seed=gs, data_seed=ds, budget_steps=1, warmup_steps=0,
                 b1=0.9, b2=0.999, adam_eps=1e-8) for i, (gs, ds) in enumerate([(1, 0), (0, 0), (1, 0), (1, 2)])]
    assert train.datasets_of(rows) == ((1, 0), (0, 0), (1, 2))
    np.testing.assert_array_equal(train.grid_arrays(rows).dataset, [0, 1, 0, 2])


# ----------------------------------------------------------------------------- chunk


@pytest.mark.heavy
def test_grid_equals_separate_runs(setup):
    config, pool_QxD, chunk, init = setup
    grid = make_grid([5, 12, 48], [0, 1, 2], [1e-2, 3e-3, 2e-2], [100] * 3)
    state, metrics = chunk(init(grid), grid, pool_QxD, 6)
    for i in range(3):
        state_i, metrics_i = chunk(init(take(grid, i)), take(grid, i), pool_QxD, 6)
        chex.assert_trees_all_close(take(state, i), state_i, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(take(metrics, i), metrics_i, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state.step, [6, 6, 6])
    np.testing.assert_allclose(metrics["epoch"], [6 * 8 / 5, 6 * 8 / 12, 1.0])
    assert not np.asarray(state.diverged).any()


@pytest.mark.heavy
def test_chunk_compiles_once_for_new_sizes_and_step_counts(setup):
    config, pool_QxD, chunk, init = setup
    for P, seeds, lr, num_steps in [([5, 12, 1], [0, 1, 3], [1e-2, 1e-3, 1.0], 3),
                                    ([48, 1, 2], [9, 9, 9], [1e-4, 1.0, 1e-2], 8),
                                    ([7, 7, 30], [2, 3, 4], [1e-2, 1e-2, 1e-2], 0)]:
        grid = make_grid(P, seeds, lr, [20, 2, 5])
        state, _ = chunk(init(grid), grid, pool_QxD, num_steps)  # assert_max_traces(n=2) guards
        np.testing.assert_array_equal(state.step, [num_steps, min(num_steps, 2), min(num_steps, 5)])
    with pytest.raises(ValueError, match=r"num_steps=9 must lie in \[0, steps_per_call=8\]"):
        chunk(state, grid, pool_QxD, 9)


@pytest.mark.heavy
def test_chunk_then_chunk_equals_one_longer_chunk(setup):
    config, pool_QxD, chunk, init = setup
    grid = make_grid([5, 12, 48], [0, 1, 2], [1e-2, 3e-3, 2e-2], [100] * 3)
    whole, whole_metrics = chunk(init(grid), grid, pool_QxD, 7)
    part, first = chunk(init(grid), grid, pool_QxD, 3)
    part, second = chunk(part, grid, pool_QxD, 4)
    chex.assert_trees_all_equal(part, whole)
    np.testing.assert_allclose((3 * first["loss"] + 4 * second["loss"]) / 7, whole_metrics["loss"], rtol=1e-6)


def test_absurd_lr_diverges_alone(setup):
    config, pool_QxD, chunk, init = setup
    sane = make_grid([12, 12, 48], [0, 1, 2], [1e-2, 1e-2, 2e-2], [100] * 3)
    absurd = sane.replace(lr=jnp.asarray([1e-2, 1e8, 2e-2], jnp.float32))
    ok, _ = chunk(init(sane), sane, pool_QxD, 8)
    bad, metrics = chunk(init(absurd), absurd, pool_QxD, 8)
    np.testing.assert_array_equal(bad.diverged, [False, True, False])
    np.testing.assert_array_equal(bad.diverged_step, [-1, 1, -1])  # step 0 throws a far; step 1 is NaN
    np.testing.assert_array_equal(bad.step, [8, 1, 8])
    assert metrics["steps_done"][1] == 1 and np.isnan(bad.last_loss[1])
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(take(bad, 1).params))
    for i in (0, 2):
        chex.assert_trees_all_equal(take(bad, i), take(ok, i))


def test_model_stops_exactly_at_its_budget(setup):
    config, pool_QxD, chunk, init = setup
    grid = make_grid([5, 12, 48], [0, 1, 2], [1e-2, 3e-3, 2e-2], [3, 8, 5])
    state, metrics = chunk(init(grid), grid, pool_QxD, 8)
    state, later = chunk(state, grid, pool_QxD, 8)  # all budgets spent: nothing moves
    np.testing.assert_array_equal(metrics["steps_done"], [3, 8, 5])
    np.testing.assert_array_equal(later["steps_done"], [0, 0, 0])
    assert np.isnan(np.asarray(later["loss"])).all()
    unlimited = grid.replace(budget=jnp.full(3, 100, jnp.int32))
    for i, budget in ((0, 3), (2, 5)):
        reference, _ = chunk(init(unlimited), unlimited, pool_QxD, budget)
        chex.assert_trees_all_equal(take(state, i), take(reference, i))


@pytest.mark.heavy
def test_ema_is_debiased_average_of_iterates(setup):
    config, pool_QxD, chunk, init = setup
    grid = make_grid([12], [4], [1e-2], [100])
    one, _ = chunk(init(grid), grid, pool_QxD, 1)
    p1 = jax.tree_util.tree_map(jnp.copy, one.params)  # ``one`` is donated below
    two, _ = chunk(one, grid, pool_QxD, 1)
    want = jax.tree_util.tree_map(lambda a, b: (0.9 * 0.1 * a + 0.1 * b) / (1 - 0.9**2), p1, two.params)
    got = train.eval_params(two, 0.9)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
    fresh = init(grid)
    chex.assert_trees_all_equal(train.eval_params(fresh, 0.9), fresh.params)


def test_first_steps_move_each_parameter_by_its_models_warmed_up_lr(setup):
    config, pool_QxD, chunk, init = setup
    grid = make_grid([5, 12, 48], [0, 1, 2], [1e-2, 3e-3, 2e-2], [100] * 3)
    start = init(grid)
    a0 = np.asarray(start.params["a"]).copy()
    one, _ = chunk(start, grid, pool_QxD, 1)
    # Adam's first update is g / (|g| + eps) = sign(g): the step is lr * warmup = lr * 1/2.
    np.testing.assert_allclose(np.abs(np.asarray(one.params["a"]) - a0), np.asarray(grid.lr) / 2, rtol=1e-4)


# ---------- the compute path with the real bpUNet (issue 12) ----------


def _bpunet_training(models: int, jax_rule: bool, steps: int = 3):
    """State after ``steps`` steps of the quick job's setting (v=8, L=3, W=64, batch 64, T=50).

    With ``jax_rule`` bpUNet's down and up kernels are differentiated by JAX's own rule (the
    program before issue 12; the thin kernels keep ``thin_matmul``, whose rounding
    tests/test_networks.py covers), a rule handed to ``networks.make``; else the default
    (``network.backward='auto'``: the row-major rule on the CPU).
    """
    config = config_lib.base_config()
    config.process.update(dict(T=50, beta2=0.2))
    config.network.update(dict(name="bpunet", width=64))
    config.train.update(dict(batch_size=64, lr=(2e-3,), num_steps=100, seeds=tuple(range(models)),
                             steps_per_call=steps))
    g = config.grammar
    rules = grammar.sample_rules(g.seed, g.v, g.n, g.m, g.s, g.L)
    pool_QxD, _ = data.sample_dataset(0, rules, 256, 16)
    process = diffusion.make(config.process, g.v, rules.d)
    kernels_by_jax = bpunet.Backward(rowmajor_kernels=False, rowmajor_thin=True, fenced=True)
    network = networks.make(config.network, g.v, g.s, g.L, process, backward=kernels_by_jax if jax_rule else None)
    grid, _ = plan.make_grid(config)
    grid = grid.replace(P=jnp.full(models, 256, jnp.int32))
    typed = settings.TrainSettings.of(config)
    state = train.init_state(typed, network, grid)
    chunk = train.jit_chunk(train.make_train_chunk(typed, process, network))
    pool_QxD = pool_QxD[None]  # G = 1 dataset
    compiled = chunk.lower(state, grid, jnp.asarray(pool_QxD), steps).compile()
    return compiled(state, grid, jnp.asarray(pool_QxD), jnp.int32(steps))[0]


@pytest.mark.heavy
def test_bpunet_grid_training_is_bit_identical_to_jax_rule():
    """A grid (M = 2) trains to the same bits with the down/up kernels' products or JAX's (fp32)."""
    ours, reference = _bpunet_training(2, False), _bpunet_training(2, True)
    np.testing.assert_array_equal(ours.step, [3, 3])
    chex.assert_trees_all_equal(ours, reference)


@pytest.mark.heavy
def test_one_bpunet_trains_like_jax_rule_to_rounding():
    """One model (M = 1): same gradients (tests/test_networks.py), Adam may differ in the last bit.

    The Adam pass is the same HLO op for op; XLA's CPU code generator contracts its multiply-adds
    differently once the gradient is read contiguously instead of transposed, so a few entries
    per million move by an ulp after the second step.
    """
    ours, reference = _bpunet_training(1, False), _bpunet_training(1, True)
    chex.assert_trees_all_close(ours, reference, rtol=1e-6, atol=1e-9)


# ---------- the step's passes over the state (issue 12) ----------


@pytest.mark.heavy
@pytest.mark.parametrize("models,ema_decay", [(1, 0.0), (2, 0.0), (2, 0.9)])
def test_compiled_step_copies_no_part_of_the_train_state(models, ema_decay):
    """No parameter, moment or EMA leaf is copied at the top of each step of the compiled loop.

    Before issue 12 the step read the old moments after their buffers were overwritten in place,
    and XLA copied both moments of every leaf (8 bytes per parameter per step); with an EMA the
    parameters too. Copies of loop-carried values show as copy(get-tuple-element) in the HLO.
    """
    config = toy_config(ema_decay=ema_decay)
    network = ToyNetwork()
    typed = settings.TrainSettings.of(config)
    grid = make_grid([12] * models, list(range(models)), [1e-2] * models, [100] * models)
    pool_QxD = jax.random.randint(jax.random.key(1), (1, Q, D), 0, V, dtype=jnp.int32)
    state = train.init_state(typed, network, grid)
    chunk = train.jit_chunk(train.make_train_chunk(typed, ToyProcess(), network))
    text = chunk.lower(state, grid, pool_QxD, 4).compile().as_text()
    leaves = [x for x in jax.tree_util.tree_leaves(state.params) if x.ndim > 1]  # not the scalar's (M,)
    leaf_shapes = {str(list(x.shape)).replace(" ", "") for x in leaves}
    copied = re.findall(r"= f32\[([0-9,]*)\]\{[0-9,]*\} copy\(%get-tuple-element", text)
    assert [shape for shape in copied if f"[{shape}]" in leaf_shapes] == []
    assert len(leaf_shapes) >= 3  # the toy network's matrices: shapes to look for


def test_all_finite_sees_one_bad_entry_in_any_leaf():
    """NaN, +inf or -inf anywhere makes a tree non-finite; the largest finite float does not."""
    tree = dict(a=jnp.zeros((3, 4)), b=jnp.full((5,), 3.0e38, jnp.float32), empty=jnp.zeros((0, 2)))
    assert bool(train._all_finite(tree))
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        for leaf, index in (("a", (2, 1)), ("b", (0,))):
            broken = dict(tree, **{leaf: tree[leaf].at[index].set(bad)})
            assert not bool(train._all_finite(broken)), (leaf, bad)


@pytest.mark.heavy
def test_bf16_first_moment_is_rounded_where_stored_not_where_used():
    """With ``train.mu_dtype='bfloat16'`` the step uses the float32 first moment, as optax does.

    After one step the parameters equal the float32-moment run's (the first moment starts at 0,
    so nothing rounded has been read yet), while the stored first moment is that run's, rounded.
    Updating from the stored bfloat16 moment instead would move each entry by about 4e-3 lr.
    """
    grid = make_grid([12, 48], [0, 1], [1e-2, 2e-2], [100, 100], warmup=0)
    pool_QxD = jax.random.randint(jax.random.key(1), (1, Q, D), 0, V, dtype=jnp.int32)
    states = {}
    for mu_dtype in ("float32", "bfloat16"):
        typed = settings.TrainSettings.of(toy_config(mu_dtype=mu_dtype, ema_decay=0.0, warmup_steps=0))
        chunk = train.jit_chunk(train.make_train_chunk(typed, ToyProcess(), ToyNetwork()))
        states[mu_dtype], _ = chunk(train.init_state(typed, ToyNetwork(), grid), grid, pool_QxD, 1)
    full, half = states["float32"], states["bfloat16"]
    chex.assert_trees_all_close(half.params, full.params, rtol=1e-6, atol=0)
    assert all(m.dtype == jnp.bfloat16 for m in jax.tree_util.tree_leaves(half.opt_state.mu))
    chex.assert_trees_all_equal(half.opt_state.mu, jax.tree_util.tree_map(lambda m: m.astype(jnp.bfloat16),
                                                                          full.opt_state.mu))
