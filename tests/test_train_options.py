"""train options: grid slices of a job array (run.grid_slice), bf16 Adam moments, the authors' full batch."""
from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from rhm_jax import config as config_lib
from rhm_jax import data, diffusion, networks, plan, settings, train


def tiny_config() -> ml_collections.ConfigDict:
    """A grid of 3 P x 2 seeds x 1 lr = 6 models (no network needed for make_grid)."""
    config = config_lib.base_config()
    config.data.num_train = (8, 16, 32)
    config.train.update(dict(batch_size=4, lr=(1e-3,), num_steps=5, seeds=(0, 1), steps_per_call=2))
    return config


@pytest.mark.parametrize("K", [1, 2, 4, 5, 6])
def test_slices_partition_the_grid_with_global_indices(K):
    config = tiny_config()
    full_grid, full_rows = plan.make_grid(config)
    rows, grids = [], []
    for k in range(K):
        config.run.grid_slice = f"{k}/{K}"
        grid, part = plan.make_grid(config)
        assert len(part) in (6 // K, -(-6 // K))  # balanced
        rows += part
        grids.append(grid)
    assert rows == full_rows  # same rows, same global "index", in order, nothing twice
    joined = jax.tree.map(lambda *xs: np.concatenate(xs), *grids)
    jax.tree.map(np.testing.assert_array_equal, joined, jax.device_get(full_grid))


@pytest.mark.parametrize("spec", ["1", "2/2", "-1/2", "0/7", "a/b", "1/2/3"])
def test_bad_slice_is_a_value_error_naming_the_field(spec):
    config = tiny_config()
    config.run.grid_slice = spec
    with pytest.raises(ValueError, match="run.grid_slice"):
        plan.make_grid(config)


class Linear:
    """A one-matrix network: enough to exercise Adam's state dtypes."""

    def init(self, key):
        return {"w": jax.random.normal(key, (3, 2))}


def test_bf16_first_moment_only_and_bad_name():
    config = tiny_config()
    config.train.mu_dtype = "bfloat16"
    grid, _ = plan.make_grid(config)
    state = train.init_state(settings.TrainSettings.of(config), Linear(), grid)
    adam_state = state.opt_state
    assert adam_state.mu["w"].dtype == jnp.bfloat16
    assert adam_state.nu["w"].dtype == jnp.float32 and state.params["w"].dtype == jnp.float32
    config.train.mu_dtype = "float16"
    with pytest.raises(ValueError, match="train.mu_dtype"):
        config_lib.validate(config)


@pytest.mark.heavy
def test_bf16_moments_train():
    """A chunk of the smoke grid with bf16 first moments: finite losses, moments stay bf16, params move."""
    config = config_lib.load("sweeps/smoke.py", ["--config.train.num_steps=4", "--config.train.steps_per_call=4"])
    with config.unlocked():  # works before and after config.py gains the field
        config.train.mu_dtype = "bfloat16"
    g = config.grammar
    process = diffusion.make(config.process, g.v, g.s**g.L)
    network = networks.make(config.network, g.v, g.s, g.L, process)
    grid, _ = plan.make_grid(config)
    pool_QxD = jax.random.randint(jax.random.key(0), (1, max(config.data.num_train), g.s**g.L), 0, g.v)
    typed = settings.TrainSettings.of(config)
    state = train.init_state(typed, network, grid)
    before = jax.device_get(state.params)
    step = train.jit_chunk(train.make_train_chunk(typed, process, network))
    state, metrics = step(state, grid, pool_QxD, 4)
    assert np.isfinite(np.asarray(metrics["loss"])).all() and (np.asarray(state.step) == 4).all()
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(state.opt_state.mu))
    moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), state.params, before)
    assert min(jax.tree.leaves(moved)) > 0


# ----------------------------------------------------------------------------- P < batch size


class RowNet:
    """A per-row denoiser (rows never mix): logits = emb[x_t] + pos, scaled by (1 + a t)."""

    def init(self, key):
        k1, k2 = jax.random.split(key)
        return {"emb": jax.random.normal(k1, (4, 4)), "pos": jax.random.normal(k2, (4, 4)), "a": jnp.float32(0.2)}

    def apply(self, params, x_t_BxD, t_B):
        return (params["emb"][x_t_BxD] + params["pos"]) * (1.0 + params["a"] * t_B)[:, None, None]


def full_batch_config(mode: str) -> ml_collections.ConfigDict:
    """P = 5 < B = 8 and P = 16 >= B, budgets of 3 epochs."""
    config = config_lib.base_config()
    config.data.update(dict(num_train=(5, 16), seed=3))
    config.train.update(dict(batch_size=8, lr=(1e-2,), num_steps=0, num_epochs=3.0, seeds=(3,), steps_per_call=4,
                             p_below_batch=mode))
    return config


@pytest.mark.heavy
def test_full_batch_step_is_an_adam_step_on_exactly_the_P_rows():
    config = full_batch_config("full_batch")
    process = diffusion.make(dict(name="uniform", T=20, beta1=0.01, beta2=0.2), 4)
    net = RowNet()
    grid, rows = plan.make_grid(config)
    assert [r["budget_steps"] for r in rows] == [3, 6]  # one epoch per step below B; ceil(3 * 16 / 8)
    assert [r["budget_epochs"] for r in rows] == [3.0, 3.0]
    pool_QxD = jax.random.randint(jax.random.key(0), (16, 4), 0, 4, dtype=jnp.int32)
    typed = settings.TrainSettings.of(config)
    state0 = train.init_state(typed, net, grid)
    params0 = jax.device_get(jax.tree.map(lambda a: a[0], state0.params))  # the chunk donates state0
    chunk = train.jit_chunk(train.make_train_chunk(typed, process, net))
    state1, metrics = chunk(state0, grid, pool_QxD[None], 1)
    np.testing.assert_allclose(metrics["epoch"], [1.0, 0.5])
    # By hand: the P rows of epoch 0, once, in a batch of exactly P rows.
    P, seed = 5, np.uint32(3)
    x0_PxD = pool_QxD[data.permute(jnp.arange(P), P, seed, 0)]
    loss_fn = lambda p: process.loss(p, net.apply, train.step_key(seed, 0), x0_PxD)[0]
    loss, grads = jax.value_and_grad(loss_fn)(params0)
    adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8)
    updates, _ = adam.update(grads, adam.init(params0), params0)
    want = jax.tree.map(lambda p, u: p - 1e-2 * u, params0, updates)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], state1.params), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["loss"][0], loss, rtol=1e-6)
    # The default repeats rows to fill the batch: another step, and budgets in epochs of B rows.
    _, default_rows = plan.make_grid(full_batch_config("repeat"))
    assert [r["budget_steps"] for r in default_rows] == [2, 6]
    with pytest.raises(ValueError, match="train.p_below_batch='all'"):
        config_lib.validate(full_batch_config("all"))
