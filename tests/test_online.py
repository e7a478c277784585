"""The online regime (data.num_train = 0): a fresh batch from the model's own grammar at every step.

Keys of (data seed, step) alone, never reused; valid, uniform draws; batches and training identical
when rerun, when resumed and beside finite-P models; rows that say 'online' instead of zeros.
"""
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from rhm_jax import config as config_lib
from rhm_jax import data, evaluate, grammar, health, plan, program, results, runner, train
from test_runner import _launch as launch_in_subprocess, kill_after_checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = os.path.join(ROOT, "sweeps", "smoke.py")
ONLINE = "--config.data.num_train=(0,16)"


def smoke(*overrides):
    return config_lib.load(SMOKE, list(overrides))


def key_bits(key):
    return tuple(np.asarray(jax.random.key_data(key)).ravel().tolist())


# ----------------------------------------------------------------------------- keys and draws

def test_no_two_steps_of_a_model_share_a_key_nor_its_noise_or_init_keys():
    steps = jnp.arange(4096)
    online = jax.vmap(lambda s: jax.random.key_data(data.online_key(jnp.uint32(3), s)))(steps)
    noise = jax.vmap(lambda s: jax.random.key_data(train.step_key(jnp.uint32(3), s)))(steps)
    online, noise = (set(map(tuple, np.asarray(k).tolist())) for k in (online, noise))
    assert len(online) == 4096  # one key per step
    assert not online & noise  # data seed = model seed: data and per-step noise still apart
    assert key_bits(train.init_key(jnp.uint32(3))) not in online
    other_seed = jax.vmap(lambda s: jax.random.key_data(data.online_key(jnp.uint32(4), s)))(steps)
    assert not online & set(map(tuple, np.asarray(other_seed).tolist()))


def test_an_online_batch_is_a_pure_function_of_data_seed_and_step():
    rules = grammar.stack([grammar.sample_rules(s, 8, 8, 3, 2, 4) for s in (0, 1)])
    batch = lambda g, seed, step: np.asarray(data.online_batch(rules, g, seed, step, 64))
    first = batch(1, 5, 17)
    np.testing.assert_array_equal(first, batch(1, 5, 17))
    assert not np.array_equal(first, batch(1, 5, 18)) and not np.array_equal(first, batch(1, 6, 17))
    # P_max = 8 * 3**15 ~ 1.1e8: 100 steps of 64 rows repeat (almost) nothing
    many = np.asarray(jax.vmap(lambda s: data.online_batch(rules, 1, 5, s, 64))(jnp.arange(100))).reshape(-1, 16)
    assert len(np.unique(many, axis=0)) >= 6390


def test_online_draws_parse_and_are_uniform_over_the_grammars_sequences():
    rules = grammar.sample_rules(2, 3, 3, 2, 2, 2)  # P_max = 3 * 2**3 = 24 sequences
    rows = jax.vmap(lambda s: data.online_batch(grammar.stack([rules]), 0, 9, s, 48))(jnp.arange(500))
    index = data.encode(rules, np.asarray(rows).reshape(-1, rules.d))  # raises on an invalid row
    counts = np.bincount(index, minlength=rules.p_max)
    assert counts.size == 24 and counts.min() > 0
    assert scipy.stats.chisquare(counts).pvalue > 1e-3  # 24,000 draws, ~1,000 per sequence
    # the test can fail: a sampler that favours the first rule of each symbol is caught
    skewed = np.concatenate([index, index[index % 2 == 0][:2000]])
    assert scipy.stats.chisquare(np.bincount(skewed, minlength=24)).pvalue < 1e-6


# ----------------------------------------------------------------------------- config and plan

def test_online_needs_a_step_budget():
    config = smoke(ONLINE, "--config.train.num_steps=0", "--config.train.num_epochs=10")
    with pytest.raises(ValueError, match=r"data.num_train=\(0, 16\) holds 0 \(online.*train.num_steps > 0"):
        config_lib.validate(config)
    rows = plan.single(smoke(ONLINE)).rows
    assert [(r["P"], r["budget_epochs"]) for r in rows] == [(0, None), (0, None), (16, 32.0), (16, 32.0)]


def test_an_online_model_takes_a_full_batch_and_has_no_epochs():
    assert train.rows_per_step(0, 8, True) == 8 and train.rows_per_step(3, 8, True) == 3
    np.testing.assert_array_equal(train.rows_per_step(jnp.array([0, 3, 16]), 8, True), [8, 3, 8])
    for full in (False, True):
        epochs = np.asarray(train.epochs(jnp.array([4, 4]), jnp.array([0, 16]), 8, full))
        assert np.isnan(epochs[0]) and epochs[1] == 2.0


def test_health_reads_an_online_models_test_loss_and_expects_distinct_samples():
    tracker = health.Tracker(num_samples=64)
    row = lambda step, loss, dup: dict(model=0, P=0, step=step, train_loss=None, test_loss=loss, duplicates=dup)
    first = tracker.flag([row(1, 0.5, 0.0)])[0]
    assert not first["loss_blowup"] and not first["collapsed"]
    later = tracker.flag([row(2, 1.5, 0.6)])[0]  # 26 distinct of 64: below half of 64
    assert later["loss_blowup"] and later["collapsed"]


# ----------------------------------------------------------------------------- the compiled step

def _build(config, pairs):
    """A program of the smoke config's models with these (P, seed) pairs, in that order."""
    planned = plan.single(config)
    rows = [next(r for r in planned.rows if (r["P"], r["seed"]) == pair) for pair in pairs]
    return program.build(planned.settings, rows)


def _train(built, calls):
    """Train the built grid for the given step counts (one device call each); the final state."""
    state = train.init_state(built.settings.train, built.setup.network, built.grid)
    for n in calls:
        state, _ = built.step_fn(state, built.grid, built.pool, n)
    return jax.device_get(state)


@pytest.mark.heavy
def test_online_training_reruns_resumes_and_mixes_with_finite_P_exactly():
    config = smoke(ONLINE)
    both = _build(config, [(0, 0), (16, 0)])
    assert isinstance(both.pool, train.Sources) and both.pool.grammar is not None
    alone_online, alone_offline = _build(config, [(0, 0), (0, 1)]), _build(config, [(16, 0), (16, 1)])
    assert not isinstance(alone_offline.pool, train.Sources)  # finite-P programs unchanged
    whole = _train(both, [16, 16])
    chex.assert_trees_all_equal(whole, _train(both, [16, 16]))  # rerun
    chex.assert_trees_all_equal(whole, _train(both, [5, 16, 11]))  # stopped and resumed anywhere
    index = lambda tree, i: jax.tree.map(lambda x: x[i], tree)
    # one program against each kind alone, at the same program width (2 models): the same batches,
    # so the same training, bit for bit (across widths XLA may round reductions differently)
    chex.assert_trees_all_equal(index(whole, 0), index(_train(alone_online, [16, 16]), 0))
    chex.assert_trees_all_equal(index(whole, 1), index(_train(alone_offline, [16, 16]), 0))
    # what the step reads: the online model its grammar's draw of (data seed, step), the other its pool
    chunk = train.make_train_chunk(both.settings.train, both.setup.process, both.setup.network)
    model = lambda i: index(both.grid, i)
    for step in (0, 7, 31):
        got, _ = chunk.batch_of(model(0), jnp.int32(step), both.pool)
        want = data.online_batch(both.setup.grammar, 0, model(0).data_seed, step, 8)
        np.testing.assert_array_equal(got, want)
        got, _ = chunk.batch_of(model(1), jnp.int32(step), both.pool)
        rows_ = data.batch_indices(model(1).data_seed, 16, step, 8)
        np.testing.assert_array_equal(got, both.setup.pool_GxQxD[0, rows_])


# ----------------------------------------------------------------------------- runs

@pytest.fixture(scope="module")
def online_reference(tmp_path_factory, compile_cache):
    """An uninterrupted smoke run with two online and two P=16 models: (config, workdir, rows)."""
    config = smoke(ONLINE)
    workdir = str(tmp_path_factory.mktemp("online"))
    return config, workdir, runner.run(config, workdir, progress=False)


@pytest.mark.heavy
def test_online_rows_say_online_not_zero(online_reference):
    _, workdir, rows = online_reference
    online = [r for r in rows if r["P"] == 0]
    offline = [r for r in rows if r["P"] == 16]
    assert online and offline
    for name in ("copies", "novel_valid", "noncopy_samples", "validity_l1_noncopy", "train_loss", "train_loss_se",
                 "train_loss_window_0", "corr_train_t1", "epoch"):
        assert all(r[name] is None for r in online), name
        assert all(r[name] is not None for r in offline), name
    assert all(r["test_loss"] is not None and 0 <= r["validity_l1"] <= 1 for r in online)
    summary = open(os.path.join(workdir, "summary.txt")).read().split("\n\n")[0].splitlines()  # the table
    assert [line.split()[1] for line in summary[2:]] == ["online", "online", "16", "16"]
    assert all(line.split()[-2] == "-" for line in summary[2:4])  # no copies online
    trains = results.read_rows(os.path.join(workdir, results.TRAIN_FILE))
    assert all(r["epoch"] is None for r in trains if r["model"] < 2)


@pytest.mark.heavy
def test_online_and_finite_P_models_in_one_program_give_the_rows_they_give_alone(online_reference, tmp_path):
    """Each kind run alone (2 models) against both in one program (4 models). The rows agree to 1e-5
    relative, as tests/test_runner.py's grids of other sizes: XLA vectorizes a wider grid's reductions
    differently (bit for bit at equal width: test_online_training_reruns_resumes_and_mixes_with_finite_P_exactly)."""
    _, _, mixed = online_reference
    ignore = ("model",)
    for P in (0, 16):
        alone = runner.run(smoke(f"--config.data.num_train=({P},)"), str(tmp_path / f"P{P}"), progress=False)
        want = sorted((r for r in mixed if r["P"] == P), key=lambda r: (r["seed"], r["step"]))
        got = sorted(alone, key=lambda r: (r["seed"], r["step"]))
        assert [sorted(r) for r in got] == [sorted(r) for r in want]
        for row, ref in zip(got, want):
            for key, value in ref.items():
                if key in ignore:
                    continue
                if isinstance(value, float):
                    assert row[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (P, key, row["step"])
                else:
                    assert row[key] == value, (P, key, row["step"])


def _launch(workdir, cache):
    """``launch.local`` of the smoke config with an online model, a checkpoint at every chunk."""
    return launch_in_subprocess(workdir, cache, SMOKE, (ONLINE, "--config.run.checkpoint_every=1"))


@pytest.mark.slow
def test_online_sigkill_then_resume_equals_an_uninterrupted_run(online_reference, tmp_path, compile_cache):
    _, _, ref_rows = online_reference
    workdir = str(tmp_path / "run")
    part = runner.part_dir(workdir, 0)
    process = _launch(workdir, compile_cache)
    kill_after_checkpoints(process, part, 2)
    restart = _launch(workdir, compile_cache)
    _, err = restart.communicate(timeout=600)
    assert restart.returncode == 0, err[-3000:]
    assert "resuming models 0..3 from the checkpoint at step" in err, err[-3000:]
    got = sorted(results.read_rows(os.path.join(workdir, "metrics.jsonl")), key=lambda r: (r["model"], r["step"]))
    assert got == sorted(ref_rows, key=lambda r: (r["model"], r["step"]))


def test_evaluation_rows_void_an_online_models_copy_columns():
    state = train.TrainState(params=None, opt_state=None, ema=None, step=jnp.array([4, 4]),
                             diverged=jnp.array([False, False]), diverged_step=jnp.array([-1, -1]),
                             last_loss=jnp.zeros(2))
    metrics = dict(copies=jnp.array([0.0, 0.25]), validity_l1=jnp.array([0.5, 0.5]),
                   noncopy_samples=jnp.array([16, 12]), train_loss_window=jnp.zeros((2, 2)),
                   test_loss=jnp.array([0.1, 0.2]))
    rows = evaluate.to_rows(metrics, [dict(index=0, P=0), dict(index=1, P=16)], state)
    assert rows[0]["copies"] is None and rows[0]["noncopy_samples"] is None and rows[0]["train_loss_window_1"] is None
    assert rows[0]["validity_l1"] == 0.5 and rows[0]["test_loss"] == pytest.approx(0.1)
    assert rows[1]["copies"] == 0.25 and rows[1]["noncopy_samples"] == 12 and rows[1]["train_loss_window_1"] == 0.0


# ----------------------------------------------------------------------------- the sweep file

ONLINE_SWEEP = os.path.join(ROOT, "sweeps", "online.py")


@pytest.mark.parametrize("arg", [None, "cpu"])
def test_the_online_sweep_never_nears_p_max_and_runs_online_beside_finite_P(arg):
    spec = ONLINE_SWEEP + (f":{arg}" if arg else "")
    planned = plan.make_plan(config_lib.load(spec), config_lib.load_sweep(spec))
    assert len(planned.programs) == 2  # m=3 at L=4, m=2 at L=5
    for program_ in planned.programs:
        g, batch = program_.settings.grammar, program_.settings.train.batch_size
        online = [r for r in program_.rows if r["P"] == 0]
        assert len(online) == 3 and len(program_.rows) > 3  # three realizations, finite P beside them
        p_max = grammar.num_sequences(g.n, g.m, g.s, g.L)
        assert all(batch * r["budget_steps"] < 0.2 * p_max for r in online)
        assert {r["grammar_seed"] for r in program_.rows} == {0, 1, 2}


@pytest.mark.slow
def test_the_quick_online_sweep_runs_and_reports_its_online_section(tmp_path):
    from rhm_jax import report
    spec = ONLINE_SWEEP + ":quick"
    workdir = str(tmp_path / "quick")
    rows = runner.run(config_lib.load(spec), workdir, points=config_lib.load_sweep(spec), progress=False)
    assert {r["P"] for r in rows} == {0, 64}
    paths = report.make_report([workdir], out=str(tmp_path / "report"), time_axis="step")
    text = open(paths["report"][0]).read()
    for heading in ("Online regime: learning times t_l", "t_(l+1) / t_l against m", "power law of the coherence",
                    "leaves the online curve"):
        assert heading in text
    assert any(p.endswith("online_time.png") for p in paths["figures"])
    assert any(p.endswith("departure.png") for p in paths["figures"])
