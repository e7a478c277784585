"""Diffusion processes: closed forms, Bayes posteriors, losses, samplers, vmap over models.

Reference values are computed independently with NumPy (explicit transition matrices, explicit
schedule formulas), never by calling the code under test.
"""
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rhm_jax import diffusion
from rhm_jax.diffusion import uniform as uniform_mod

SIGMAS = 5.0  # tolerance of the statistical checks, in standard deviations


def config(name, **overrides):
    """A plain-dict process config: SPEC defaults plus overrides."""
    return {**diffusion.default_config(name).to_dict(), "name": name, **overrides}


def small_uniform(v=4, **kw):
    return diffusion.make(config("uniform", **{"T": 8, "beta1": 0.05, "beta2": 0.5, **kw}), v)


# ---------------------------------------------------------------- NumPy references

def np_betas(T, beta1, beta2):
    return np.array([beta1 + (beta2 - beta1) * i / T for i in range(T + 1)])


def np_kernels(T, beta1, beta2, v):
    """One-step matrices Q_k[from, to] for k = 0..T."""
    return [(1 - b) * np.eye(v) + b / v * np.ones((v, v)) for b in np_betas(T, beta1, beta2)]


def np_product(mats):
    out = np.eye(mats[0].shape[0])
    for m in mats:
        out = out @ m
    return out


def np_posterior(Q, hi, lo, x_hi, p0):
    """q(x_lo | x_hi, x0 ~ p0) by Bayes on the explicit matrices (Qbar_lo = Q_0 ... Q_lo)."""
    joint = (p0 @ np_product(Q[: lo + 1])) * np_product(Q[lo + 1: hi + 1])[:, x_hi]
    return joint / joint.sum()


def np_alpha(schedule, t, eps, power=2.0):
    raw = {"linear": 1 - t, "cosine": 1 - np.cos(np.pi / 2 * (1 - t)), "poly": 1 - t**power}
    return (1 - 2 * eps) * raw[schedule] + eps


def np_weight(schedule, t, eps, power=2.0):
    draw = {"linear": -np.ones_like(t), "cosine": -np.pi / 2 * np.sin(np.pi / 2 * (1 - t)),
            "poly": -power * t ** (power - 1)}
    return -(1 - 2 * eps) * draw[schedule] / (1 - np_alpha(schedule, t, eps, power))


def assert_frequencies(counts, probs, n):
    """Empirical counts within SIGMAS binomial standard deviations (plus one count) of n*probs."""
    sigma = np.sqrt(n * probs * (1 - probs))
    np.testing.assert_array_less(np.abs(counts - n * probs), SIGMAS * sigma + 1.0)


# ---------------------------------------------------------------- denoisers (apply_fn)

def fixed_denoiser(tokens_BxD, v, scale=1e4):
    """Predicts x0 = tokens (broadcast over the batch) with certainty."""
    def apply_fn(params, x_t_BxD, t_B):
        del params, t_B
        onehot = jax.nn.one_hot(jnp.broadcast_to(tokens_BxD, x_t_BxD.shape), v)
        return scale * onehot
    return apply_fn


def zero_denoiser(v, record=None):
    """Uniform x0 prediction; optionally records (x_t, t) when run eagerly."""
    def apply_fn(params, x_t_BxD, t_B):
        if record is not None:
            record.append((np.asarray(x_t_BxD), np.asarray(t_B)))
        return jnp.zeros((*x_t_BxD.shape, v))
    return apply_fn


def embedding_net(params, x_t_BxD, t_B):
    """A tiny time-dependent denoiser: logits = emb[x_t] * (1 + a t)."""
    return params["emb"][x_t_BxD] * (1.0 + params["a"] * t_B)[:, None, None]


def init_embedding(key, input_vocab, v, M=None):
    shape = () if M is None else (M,)
    k1, k2 = jax.random.split(key)
    return {"emb": jax.random.normal(k1, (*shape, input_vocab, v)), "a": jax.random.normal(k2, shape)}


PROCESSES = [
    pytest.param(lambda: small_uniform(), id="uniform"),
    pytest.param(lambda: diffusion.make(config("masked", schedule="linear"), 4), id="masked-linear"),
    pytest.param(lambda: diffusion.make(config("masked", schedule="cosine"), 4), id="masked-cosine"),
    pytest.param(lambda: diffusion.make(config("masked", schedule="poly", power=2.0), 4), id="masked-poly"),
]


# ---------------------------------------------------------------- config and construction

@pytest.mark.parametrize("name, overrides, match", [
    ("gaussian", {}, r"process.name='gaussian' must be one of"),
    ("uniform", {"T": 0}, r"process.T=0 must be an integer >= 1"),
    ("uniform", {"beta1": 0.1, "beta2": 0.1}, r"process.beta2=0.1 must be > beta1=0.1"),
    ("uniform", {"beta2": 1.0}, r"process.beta2=1.0 must be < 1"),
    ("uniform", {"beta1": 0.0}, r"process.beta1=0.0 must be > 0"),
    ("uniform", {"sampler_steps": 0}, r"process.sampler_steps=0 must be an integer >= 1"),
    ("masked", {"schedule": "sqrt"}, r"process.schedule='sqrt' must be one of"),
    ("masked", {"sampler_steps": 0}, r"process.sampler_steps=0 must be an integer >= 1"),
    ("masked", {"eps": 0.5}, r"process.eps=0.5 must be in \(0, 0.5\)"),
    ("masked", {"schedule": "poly", "power": 0.0}, r"process.power=0.0 must be > 0"),
])
def test_bad_config_raises_naming_parameter(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        diffusion.validate(config(name, **overrides))
    with pytest.raises(ValueError, match=match):
        diffusion.make(config(name, **overrides), 4)


def test_bad_arguments_raise_before_tracing():
    uni, msk = small_uniform(), diffusion.make(config("masked"), 4, d=4)
    with pytest.raises(ValueError, match=r"vocabulary v=1 must be an integer >= 2"):
        diffusion.make(config("uniform"), 1)
    with pytest.raises(ValueError, match=r"steps=0 must be an integer >= 1"):
        msk.sample(None, zero_denoiser(4), jax.random.key(0), 2, steps=0)
    with pytest.raises(ValueError, match=r"steps=9 must be <= T=8"):
        uni.sample(None, zero_denoiser(4), jax.random.key(0), 2, steps=9, d=4)
    with pytest.raises(ValueError, match=r"needs the sequence length d"):
        uni.sample(None, zero_denoiser(4), jax.random.key(0), 2)
    x0 = jnp.zeros((2, 4), jnp.int32)
    with pytest.raises(ValueError, match=r"shape \(B, D, v\) = \(2, 4, 4\), got \(2, 4, 5\)"):
        msk.loss(None, zero_denoiser(5), jax.random.key(0), x0)


def test_make_reads_any_config_object_and_is_static_under_jit():
    cfg = config("masked", schedule="cosine", sampler_steps=7)
    procs = [diffusion.make(cfg, 4), diffusion.make(types.SimpleNamespace(**cfg), 4),
             diffusion.make(diffusion.default_config("masked").copy_and_resolve_references(), 4)]
    assert procs[0] == procs[1] and hash(procs[0]) == hash(procs[1])
    assert procs[0].sampler_steps == 7 and procs[0].input_vocab == 5
    assert procs[2].sampler_steps == 200 and procs[2].eps == 1e-4
    uni = diffusion.make(diffusion.default_config(), 8)
    assert (uni.T, uni.beta1, uni.beta2, uni.input_vocab) == (200, 1e-3, 0.1, 8)

    static = jax.jit(chex.assert_max_traces(lambda t, proc: proc.alphabar(t), n=1), static_argnums=1)
    t = jnp.array([0.5])
    static(t, procs[0])
    static(t, procs[1])  # equal process: no retrace


# ---------------------------------------------------------------- uniform: schedule and forward

def test_uniform_schedule_index_convention():
    T, b1, b2 = 200, 1e-3, 0.1
    table = np.exp(uniform_mod.log_alphabar_table(T, b1, b2))
    explicit = np.cumprod([1 - b for b in np_betas(T, b1, b2)])  # product over k = 0..i
    np.testing.assert_allclose(table, explicit, rtol=1e-12)
    assert table[0] == pytest.approx(1 - b1)
    proc = diffusion.make(config("uniform"), 8)
    np.testing.assert_allclose(proc.alphabar(jnp.arange(T + 1) / T), explicit, rtol=2e-5)


def test_uniform_forward_marginals_match_closed_form():
    v, T, b1, b2 = 5, 20, 0.02, 0.3
    proc = diffusion.make(config("uniform", T=T, beta1=b1, beta2=b2), v)
    n, steps = 3000, np.array([1, 6, 14])
    x0_BxD = jnp.tile(jnp.arange(v, dtype=jnp.int32), (n * len(steps), 1))
    t_B = jnp.repeat(jnp.asarray(steps / T, jnp.float32), n)
    x_t = np.asarray(proc.corrupt(jax.random.key(0), x0_BxD, t_B)).reshape(len(steps), n, v)
    ab = np.cumprod(1 - np_betas(T, b1, b2))[steps]
    for k in range(len(steps)):
        expected_CxA = ab[k] * np.eye(v) + (1 - ab[k]) / v  # row: x0, column: x_t
        counts_CxA = np.stack([np.bincount(x_t[k, :, c], minlength=v) for c in range(v)])
        assert_frequencies(counts_CxA, expected_CxA, n)
        leaf = np.asarray(proc.leaf_likelihood(jnp.arange(v)[None], jnp.full((1,), steps[k] / T)))[0]
        np.testing.assert_allclose(leaf, expected_CxA.T, rtol=1e-5)  # leaf[a, b] = p(x_t=a | x0=b)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "poly"])
def test_masked_forward_marginals_match_closed_form(schedule):
    eps, v = 1e-2, 3
    proc = diffusion.make(config("masked", schedule=schedule, power=2.0, eps=eps), v)
    ts, n, D = np.array([0.0, 0.2, 0.55, 0.9, 1.0]), 2000, 4
    x0_BxD = jnp.tile(jnp.arange(D, dtype=jnp.int32) % v, (n * len(ts), 1))
    z = np.asarray(proc.corrupt(jax.random.key(1), x0_BxD, jnp.repeat(jnp.asarray(ts, jnp.float32), n)))
    z = z.reshape(len(ts), n * D)
    x0 = np.asarray(x0_BxD).reshape(len(ts), n * D)
    alpha = np_alpha(schedule, ts, eps)
    assert np.all((z == x0) | (z == v))  # a token is either kept or masked, never changed
    assert_frequencies((z == v).sum(1), 1 - alpha, n * D)
    np.testing.assert_allclose(proc.alphabar(jnp.asarray(ts)), alpha, rtol=1e-5)
    leaf = np.asarray(proc.leaf_likelihood(jnp.array([[0, 2, v]]), jnp.zeros(1)))[0]
    np.testing.assert_array_equal(leaf, [[1, 0, 0], [0, 0, 1], [1, 1, 1]])


def test_uniform_posterior_matches_bayes_on_transition_matrices():
    v, T, b1, b2 = 3, 6, 0.05, 0.4
    Q = np_kernels(T, b1, b2, v)
    log_ab = uniform_mod.log_alphabar_table(T, b1, b2)
    p_rand = np.random.default_rng(0).dirichlet(np.ones(v))
    cases = [(hi, lo, b, p0) for hi in range(1, T + 1) for lo in range(hi) for b in range(v)
             for p0 in [*np.eye(v), p_rand]]
    hi, lo, b, p0 = (np.array(c) for c in zip(*cases))
    got = jax.nn.softmax(uniform_mod.posterior_logits(
        jnp.asarray(b)[:, None], jnp.asarray(p0, jnp.float32)[:, None],
        jnp.asarray(log_ab[hi], jnp.float32), jnp.asarray(log_ab[lo], jnp.float32)))[:, 0]
    want = np.stack([np_posterior(Q, *c) for c in cases])
    np.testing.assert_allclose(got, want, atol=2e-6)


# ---------------------------------------------------------------- losses

@pytest.mark.parametrize("make_proc", PROCESSES)
def test_loss_vanishes_for_true_x0_and_is_positive_otherwise(make_proc):
    proc = make_proc()
    x0 = jax.random.randint(jax.random.key(3), (32, 8), 0, proc.v, dtype=jnp.int32)
    key = jax.random.key(4)
    loss, _ = proc.loss(None, fixed_denoiser(x0, proc.v), key, x0)
    windows = proc.window_losses(None, fixed_denoiser(x0, proc.v), key, x0)
    assert abs(float(loss)) < 1e-6 and np.all(np.abs(windows) < 1e-6)
    wrong = fixed_denoiser((x0 + 1) % proc.v, proc.v, scale=3.0)
    loss_wrong, _ = proc.loss(None, wrong, key, x0)
    params = init_embedding(jax.random.key(5), proc.input_vocab, proc.v)
    loss_rand, _ = proc.loss(params, embedding_net, key, x0)
    assert float(loss_wrong) > 1e-3 and float(loss_rand) > 1e-3


def test_uniform_loss_at_init_equals_numpy_kl():
    v, T, b1, b2 = 4, 8, 0.05, 0.5
    proc, Q = small_uniform(v), np_kernels(T, b1, b2, v)
    x0 = np.asarray(jax.random.randint(jax.random.key(6), (16, 5), 0, v))
    record = []
    loss, _ = proc.loss(None, zero_denoiser(v, record), jax.random.key(7), jnp.asarray(x0))
    (x_t, t), = record
    i = np.rint(t * T).astype(int)
    assert set(i) <= set(range(1, T + 1))
    kl = [[np.sum(q * np.log(q / p)) for q, p in (
        (np_posterior(Q, i[b], i[b] - 1, x_t[b, j], np.eye(v)[x0[b, j]]),
         np_posterior(Q, i[b], i[b] - 1, x_t[b, j], np.full(v, 1 / v))),)]
          for b in range(x0.shape[0]) for j in range(x0.shape[1])]
    np.testing.assert_allclose(float(loss), np.mean(kl), rtol=1e-4)
    jitted, _ = jax.jit(lambda k: proc.loss(None, zero_denoiser(v), k, jnp.asarray(x0)))(jax.random.key(7))
    np.testing.assert_allclose(jitted, loss, rtol=1e-6)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "poly"])
def test_masked_loss_at_init_equals_numpy_elbo(schedule):
    v, eps, B, D = 5, 1e-4, 32, 6
    proc = diffusion.make(config("masked", schedule=schedule, power=2.0, eps=eps), v)
    x0 = jax.random.randint(jax.random.key(8), (B, D), 0, v, dtype=jnp.int32)
    record = []
    loss, aux = proc.loss(None, zero_denoiser(v, record), jax.random.key(9), x0)
    (z, t), = record
    gaps = np.diff(np.sort(t))
    np.testing.assert_allclose(gaps, 1 / B, atol=1e-6)  # stratified: one t per 1/B stratum
    n_masked = (z == v).sum(1)
    want = np.mean(np_weight(schedule, t.astype(np.float64), eps) * n_masked * np.log(v) / D)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(aux["mask_fraction"]) == pytest.approx(n_masked.sum() / (B * D))


def test_masked_gradient_is_zero_at_unmasked_positions():
    v, B, D = 4, 16, 8
    proc = diffusion.make(config("masked"), v)
    x0 = jax.random.randint(jax.random.key(10), (B, D), 0, v, dtype=jnp.int32)
    logits = jax.random.normal(jax.random.key(11), (B, D, v))
    record = []

    def apply_fn(params, z, t):
        record.append(np.asarray(z))
        return params

    grads = np.asarray(jax.grad(lambda p: proc.loss(p, apply_fn, jax.random.key(12), x0)[0])(logits))
    masked = record[0] == v
    assert 0 < masked.sum() < masked.size
    assert np.all(grads[~masked] == 0.0)
    assert np.all(np.abs(grads[masked]).sum(-1) > 0)


@pytest.mark.parametrize("make_proc", PROCESSES[:2])
def test_bf16_logits_give_float32_loss(make_proc):
    proc = make_proc()
    x0 = jax.random.randint(jax.random.key(13), (16, 8), 0, proc.v, dtype=jnp.int32)
    params = init_embedding(jax.random.key(14), proc.input_vocab, proc.v)
    params = jax.tree.map(lambda a: a.astype(jnp.bfloat16).astype(jnp.float32), params)

    def bf16_net(p, x, t):
        return embedding_net(p, x, jnp.zeros_like(t)).astype(jnp.bfloat16)  # exact in bf16

    loss16, _ = proc.loss(params, bf16_net, jax.random.key(15), x0)
    loss32, _ = proc.loss(params, lambda p, x, t: bf16_net(p, x, t).astype(jnp.float32),
                          jax.random.key(15), x0)
    assert loss16.dtype == jnp.float32 and float(loss16) == float(loss32)
    grads = jax.grad(lambda p: proc.loss(p, bf16_net, jax.random.key(15), x0)[0])(params)
    chex.assert_tree_all_finite(grads)


@pytest.mark.parametrize("make_proc", PROCESSES[:2])
def test_window_losses_are_located_in_time_and_deterministic(make_proc):
    proc = make_proc()
    x0 = jax.random.randint(jax.random.key(16), (16, 8), 0, proc.v, dtype=jnp.int32)
    perfect = fixed_denoiser(x0, proc.v)

    def early_expert(params, x_t, t):  # exact for t <= 0.5, clueless later
        return jnp.where((t <= 0.5)[:, None, None], perfect(params, x_t, t), 0.0)

    windows = proc.window_losses(None, early_expert, jax.random.key(17), x0)
    again = proc.window_losses(None, early_expert, jax.random.key(17), x0)
    np.testing.assert_array_equal(windows, again)
    assert np.all(np.abs(windows[:5]) < 1e-6) and np.all(windows[5:] > 1e-4)


# ---------------------------------------------------------------- samplers

@pytest.mark.parametrize("beta1, beta2, T, steps", [
    (0.05, 0.5, 8, None), (0.05, 0.5, 8, 3), (1e-3, 0.1, 200, None)])
def test_uniform_sampler_with_fixed_denoiser_has_exact_marginals(beta1, beta2, T, steps):
    v, n = 4, 2000
    target = jnp.arange(v, dtype=jnp.int32)[None]
    proc = diffusion.make(config("uniform", T=T, beta1=beta1, beta2=beta2), v, d=v)
    x = np.asarray(proc.sample(None, fixed_denoiser(target, v), jax.random.key(18), n, steps=steps))
    Q = np_kernels(T, beta1, beta2, v)
    grid = np.floor(np.linspace(T, 0, (steps or T) + 1) + 0.5).astype(int)
    for c in range(v):  # exact reverse chain from uniform x_T with the known x0 = c
        marginal = np.full(v, 1 / v)
        for hi, lo in zip(grid[:-1], grid[1:]):
            marginal = marginal @ np.stack([np_posterior(Q, hi, lo, b, np.eye(v)[c]) for b in range(v)])
        assert_frequencies(np.bincount(x[:, c], minlength=v), marginal, n)
    if T == 200:  # the default schedule: the sample is the target up to about beta1 noise
        assert np.mean(x == np.asarray(target)) > 0.99


def test_uniform_sampler_with_uniform_denoiser_gives_uniform_tokens():
    v, n, d = 4, 1000, 4
    proc = small_uniform(v)
    x = np.asarray(proc.sample(None, zero_denoiser(v), jax.random.key(19), n, d=d))
    assert_frequencies(np.bincount(x.ravel(), minlength=v), np.full(v, 1 / v), n * d)


@pytest.mark.parametrize("steps", [1, 3, 50])
def test_masked_sampler_reproduces_fixed_denoiser_for_any_steps(steps):
    v, d = 4, 8
    target = jax.random.randint(jax.random.key(20), (1, d), 0, v, dtype=jnp.int32)
    proc = diffusion.make(config("masked", schedule="cosine"), v, d=d)
    x = proc.sample(None, fixed_denoiser(target, v), jax.random.key(21), 64, steps=steps)
    assert x.dtype == jnp.int32
    np.testing.assert_array_equal(x, jnp.broadcast_to(target, x.shape))  # no mask left either


def test_masked_sampler_reveal_times_and_revealed_tokens_never_change():
    v, steps, eps, n, d = 8, 6, 0.05, 1000, 8
    proc = diffusion.make(config("masked", schedule="cosine", eps=eps), v, d=d)

    def step_stamp(params, z, t):  # predicts "the current step index" with certainty
        k = jnp.rint((1.0 - t) * steps).astype(jnp.int32)
        return 1e4 * jax.nn.one_hot(jnp.broadcast_to(k[:, None], z.shape), v)

    x = np.asarray(proc.sample(None, step_stamp, jax.random.key(22), n, steps=steps))
    t = (steps - np.arange(steps)) / steps
    a_t, a_s = np_alpha("cosine", t, eps), np_alpha("cosine", t - 1 / steps, eps)
    p_reveal = np.append((a_s - a_t)[:-1], 1 - a_t[-1]) / (1 - eps)  # the last step takes the rest
    # a token re-drawn after its reveal would carry a later stamp and skew these frequencies
    assert_frequencies(np.bincount(x.ravel(), minlength=v)[:steps], p_reveal, n * d)
    assert x.max() < steps


# ---------------------------------------------------------------- a grid of models

@pytest.mark.parametrize("make_proc", [
    pytest.param(lambda: small_uniform(d=6), id="uniform"),
    pytest.param(lambda: diffusion.make(config("masked", sampler_steps=4), 4, d=6), id="masked")])
def test_vmap_over_models_compiles_once_and_equals_separate_runs(make_proc):
    proc, M = make_proc(), 3
    x0 = jax.random.randint(jax.random.key(23), (8, 6), 0, proc.v, dtype=jnp.int32)

    def run(params, key):
        k1, k2, k3 = jax.random.split(key, 3)
        loss, aux = proc.loss(params, embedding_net, k1, x0)
        grads = jax.grad(lambda p: proc.loss(p, embedding_net, k1, x0)[0])(params)
        windows = proc.window_losses(params, embedding_net, k2, x0, num_windows=4)
        samples = proc.sample(params, embedding_net, k3, 5, steps=4)
        return loss, aux, grads, windows, samples

    grid = jax.jit(jax.vmap(chex.assert_max_traces(run, n=1)))
    single = jax.jit(run)
    for seed in (0, 1):
        params_M = init_embedding(jax.random.key(seed), proc.input_vocab, proc.v, M)
        keys_M = jax.random.split(jax.random.key(100 + seed), M)
        out = grid(params_M, keys_M)
        loss_M, _, grads_M, windows_MxW, samples_MxNxD = out
        chex.assert_shape([loss_M, windows_MxW, samples_MxNxD], [(M,), (M, 4), (M, 5, 6)])
        chex.assert_tree_all_finite(out[:4])
        assert np.all((np.asarray(samples_MxNxD) >= 0) & (np.asarray(samples_MxNxD) < proc.v))
        for m in range(M):
            alone = single(jax.tree.map(lambda a: a[m], params_M), keys_M[m])
            chex.assert_trees_all_close(jax.tree.map(lambda a: a[m], out), alone, rtol=1e-5, atol=1e-6)
