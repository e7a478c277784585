"""program: stacked datasets of a program (nested pools), compilations shared across traced values,
a model's results independent of the other models of its program."""
from __future__ import annotations

import chex
import jax
import ml_collections
import numpy as np
import pytest

from rhm_jax import config as config_lib
from rhm_jax import data, grammar, plan, program, train


def tiny_config() -> ml_collections.ConfigDict:
    """v=4, m=2, L=2 grammar, a small bpUNet: fast to compile on the CPU."""
    config = config_lib.base_config()
    config.grammar.update(dict(v=4, n=4, m=2, s=2, L=2))
    config.data.update(dict(num_train=(8, 24), num_test=8))
    config.process.T = 20
    config.network.width = 16
    config.train.update(dict(batch_size=8, lr=(1e-2,), num_steps=6, seeds=(0,), steps_per_call=3, warmup_steps=2))
    config.eval.update(dict(num_samples=16, num_windows=2, loss_rows=16))
    config_lib.validate(config)
    return config


def built(config):
    """The program of a config alone, built."""
    planned = plan.single(config)
    return program.build(planned.settings, planned.rows)


def rows_of(config, models) -> list[dict]:
    """Grid rows of (P, model seed, grammar seed, data seed[, b1]) tuples, with the config's other values."""
    base = plan.make_grid(config)[1][0]
    out = []
    for i, (P, seed, gs, ds, *b1) in enumerate(models):
        row = dict(base, index=i, P=P, seed=seed, grammar_seed=gs, data_seed=ds)
        row.update(budget_steps=plan.budget_steps(config, P), b1=b1[0] if b1 else base["b1"])
        out.append(row)
    return out


def test_build_stacks_each_distinct_dataset_with_nested_pools():
    config = tiny_config()
    rows = rows_of(config, [(8, 0, 1, 0), (24, 0, 0, 0), (24, 1, 1, 0), (8, 0, 0, 2)])
    setup = program.setup(plan.single(config).settings, rows)
    assert setup.datasets == ((1, 0), (0, 0), (0, 2))  # first appearance, each once
    assert setup.pool_GxQxD.shape == (3, 24, 4) and setup.test_GxNxD.shape == (3, 8, 4)
    np.testing.assert_array_equal(train.grid_arrays(rows).dataset, [0, 1, 0, 2])
    for g, (gs, ds) in enumerate(setup.datasets):
        rules = grammar.sample_rules(gs, 4, 4, 2, 2, 2)
        chex.assert_trees_all_equal(jax.tree.map(lambda x: x[g], setup.grammar), rules)
        pool, test = data.sample_dataset(ds, rules, 24, 8)
        np.testing.assert_array_equal(setup.pool_GxQxD[g], pool)
        np.testing.assert_array_equal(setup.test_GxNxD[g], test)
    # A model with P = 8 reads the same rows whether the program's pool holds Q = 24 or Q = 8 rows.
    small = program.setup(plan.single(config).settings, rows_of(config, [(8, 0, 1, 0), (8, 0, 0, 0), (8, 0, 0, 2)]))
    assert small.pool_GxQxD.shape == (3, 8, 4)
    np.testing.assert_array_equal(small.pool_GxQxD, setup.pool_GxQxD[:, :8])
    np.testing.assert_array_equal(small.test_GxNxD, setup.test_GxNxD)
    # Datasets differ: another grammar seed gives other rules, another data seed other rows.
    assert not np.array_equal(setup.pool_GxQxD[1], setup.pool_GxQxD[2])
    with pytest.raises(ValueError, match="lacks"):
        program.setup(plan.single(config).settings, [dict(P=8)])


def test_compilations_are_shared_by_configs_that_differ_in_traced_values_only():
    config = tiny_config()
    first = built(config)
    other = config_lib.from_dict(config_lib.to_dict(config))
    other.grammar.seed, other.data.seed, other.train.seeds, other.train.lr = 3, 4, (5, 6), (1e-3,)
    other.train.b1, other.train.warmup_steps, other.run.keep_last = 0.8, 0, 7
    second = built(other)
    assert second.step_fn is first.step_fn and second.setup.network is first.setup.network
    assert second.setup.datasets == ((3, 4),) and len(second.grid_rows) == 4
    wider = config_lib.from_dict(config_lib.to_dict(config))
    wider.network.width = 32
    assert built(wider).step_fn is not first.step_fn  # a static value: another program


@pytest.mark.heavy
def test_a_model_trains_and_scores_alike_alone_and_beside_other_datasets():
    """Models of two grammar seeds, two data seeds, two P and two b1 in one program: each model's
    state and metrics equal those of the model alone (same compiled functions, M = 1)."""
    config = tiny_config()
    rows = rows_of(config, [(24, 0, 0, 0), (8, 1, 1, 0), (24, 0, 1, 2, 0.8)])
    typed = plan.single(config).settings
    together = program.build(typed, rows)
    key = program.eval_key(typed.run.seed, 6)

    def run(progs):
        state = progs.place.init_state(progs.settings.train, progs.setup.network, progs.grid)
        for _ in range(2):
            state, _ = progs.step_fn(state, progs.grid, progs.pool, 3)
        return jax.device_get(state), jax.device_get(progs.evaluator(state, progs.grid, key))

    state, metrics = run(together)
    np.testing.assert_array_equal(state.step, [6, 6, 6])
    for i, row in enumerate(rows):
        alone_state, alone_metrics = run(program.build(typed, [row]))
        take = lambda tree: jax.tree.map(lambda x: x[i:i + 1], tree)
        chex.assert_trees_all_close(take(state), alone_state, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(take(metrics), alone_metrics, rtol=1e-5, atol=1e-6)
    # Different datasets and b1 change the results (the test above can fail).
    assert not np.allclose(metrics["train_loss"][0], metrics["train_loss"][2])


def test_each_section_is_validated_once_per_program(monkeypatch):
    """Planning and building a program validates its process and network sections once (in
    config.validate); the build reads the plan's typed settings and never validates again."""
    from rhm_jax import diffusion, networks

    counts = {"process": 0, "network": 0}
    real_process, real_network = diffusion.validate, networks.validate

    def count(name, real):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)
        return wrapped

    config = tiny_config()  # validated once here already
    config.network.width = 24  # a program no other test compiled: nothing memoized
    monkeypatch.setattr(diffusion, "validate", count("process", real_process))
    monkeypatch.setattr(networks, "validate", count("network", real_network))
    planned = plan.single(config)
    program.build(planned.settings, planned.rows)
    assert counts == {"process": 1, "network": 1}
