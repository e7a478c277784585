"""Diffusion processes: closed forms, Bayes posteriors, losses, samplers, vmap over models.

Reference values are computed independently with NumPy (explicit transition matrices, explicit
schedule formulas), never by calling the code under test. To keep compile time low, the
denoisers are module-level functions whose behaviour lives in ``params``, and the jitted entry
points below are shared by the tests (one compilation per process and shape).
"""
import functools
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rhm_jax import diffusion
from rhm_jax.diffusion import uniform as uniform_mod

SIGMAS = 5.0  # tolerance of the statistical checks, in standard deviations
V, B, D = 4, 16, 8  # vocabulary and batch shape of most tests
RECORD = []  # (x_t, t) seen by logits_net, filled by a debug callback


def config(name, **overrides):
    """A plain-dict process config: SPEC defaults plus overrides."""
    return {**diffusion.default_config(name).to_dict(), "name": name, **overrides}


def small_uniform(d=None, **kw):
    cfg = config("uniform", **{"T": 8, "beta1": 0.05, "beta2": 0.5, **kw})
    return diffusion.make(cfg, V, d=d)


def masked(schedule="linear", d=None, **kw):
    return diffusion.make(config("masked", schedule=schedule, power=2.0, **kw), V, d=d)


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

def logits_net(params, x_t_BxD, t_B):
    """Returns ``params`` (logits, broadcast over the batch) and records what it was shown."""
    jax.debug.callback(lambda x, t: RECORD.append((np.asarray(x), np.asarray(t))), x_t_BxD, t_B)
    return jnp.broadcast_to(params, (*x_t_BxD.shape, params.shape[-1]))


def gated_net(params, x_t_BxD, t_B):
    """``params['early']`` for t <= 0.5, ``params['late']`` after."""
    early = (t_B <= 0.5)[:, None, None]
    return jnp.where(early, params["early"], params["late"]) * jnp.ones((*x_t_BxD.shape, 1))


def embedding_net(params, x_t_BxD, t_B):
    """A tiny time-dependent denoiser: logits = emb[x_t] * (1 + a t)."""
    return params["emb"][x_t_BxD] * (1.0 + params["a"] * t_B)[:, None, None]


def certain(tokens, v=V):
    """Logits that predict ``tokens`` with certainty."""
    return 1e4 * jax.nn.one_hot(tokens, v)


def init_embedding(key, input_vocab, M=None):
    shape = () if M is None else (M,)
    k1, k2 = jax.random.split(key)
    return {"emb": jax.random.normal(k1, (*shape, input_vocab, V)), "a": jax.random.normal(k2, shape)}


@functools.partial(jax.jit, static_argnums=(0, 1))
def jit_loss(proc, net, params, key, x0):
    return proc.loss(params, net, key, x0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def jit_grad(proc, net, params, key, x0):
    return jax.grad(lambda p: proc.loss(p, net, key, x0)[0])(params)


@functools.partial(jax.jit, static_argnums=(0, 1, 4, 5))
def jit_sample(proc, net, params, key, num, steps):
    return proc.sample(params, net, key, num, steps)


def recorded_loss(proc, params, key, x0):
    """Loss with logits_net, and the single (x_t, t) it was shown."""
    RECORD.clear()
    loss, aux = jit_loss(proc, logits_net, params, key, x0)
    jax.effects_barrier()
    (x_t, t), = RECORD
    return loss, aux, x_t, t


def data(seed, batch=B, length=D):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, V, dtype=jnp.int32)


PROCESSES = [pytest.param(small_uniform, id="uniform"),
             pytest.param(lambda: masked("cosine"), id="masked-cosine")]


# ---------------------------------------------------------------- config and construction

@pytest.mark.parametrize("name, overrides, match", [
    ("gaussian", {}, r"process.name='gaussian' must be one of"),
    ("uniform", {"T": 0}, r"process.T=0 must be an integer >= 1"),
    ("uniform", {"beta1": 0.1, "beta2": 0.1}, r"process.beta2=0.1 must be > beta1=0.1"),
    ("uniform", {"beta2": 1.0}, r"process.beta2=1.0 must be < 1"),
    ("uniform", {"beta1": 0.0}, r"process.beta1=0.0 must be >= 1.175e-38 \(> 0"),
    ("uniform", {"sampler_steps": 0}, r"process.sampler_steps=0 must be an integer >= 1"),
    ("uniform", {"T": 8, "sampler_steps": 9}, r"process.sampler_steps=9 must be <= T=8"),
    ("masked", {"schedule": "sqrt"}, r"process.schedule='sqrt' must be one of"),
    ("masked", {"sampler_steps": 0}, r"process.sampler_steps=0 must be an integer >= 1"),
    ("masked", {"eps": 0.5}, r"process.eps=0.5 must be in \[1.175e-38, 0.5\)"),
    ("masked", {"schedule": "poly", "power": 0.0}, r"process.power=0.0 must be a finite number >= 1.175e-38"),
])
def test_bad_config_raises_naming_parameter(name, overrides, match):
    with pytest.raises(ValueError, match=match):
        diffusion.validate(config(name, **overrides))
    with pytest.raises(ValueError, match=match):
        diffusion.make(config(name, **overrides), V)


def test_bad_arguments_raise_before_tracing():
    uni, msk = small_uniform(), masked(d=D)
    zeros = jnp.zeros((1, D, V))
    with pytest.raises(ValueError, match=r"vocabulary v=1 must be an integer >= 2"):
        diffusion.make(config("uniform"), 1)
    with pytest.raises(ValueError, match=r"steps=0 must be an integer >= 1"):
        msk.sample(zeros, logits_net, jax.random.key(0), 2, steps=0)
    with pytest.raises(ValueError, match=r"steps=9 must be <= T=8"):
        uni.sample(zeros, logits_net, jax.random.key(0), 2, steps=9, d=D)
    with pytest.raises(ValueError, match=r"needs the sequence length d"):
        uni.sample(zeros, logits_net, jax.random.key(0), 2)
    with pytest.raises(ValueError, match=r"shape \(B, D, v\) = \(16, 8, 4\), got \(16, 8, 5\)"):
        jit_loss(msk, logits_net, jnp.zeros(V + 1), jax.random.key(0), data(0))  # a mask logit


def test_make_reads_any_config_object_and_is_static_under_jit():
    cfg = config("masked", schedule="cosine", sampler_steps=7)
    procs = [diffusion.make(cfg, V), diffusion.make(types.SimpleNamespace(**cfg), V)]
    assert procs[0] == procs[1] and hash(procs[0]) == hash(procs[1])
    assert procs[0].sampler_steps == 7 and procs[0].input_vocab == V + 1
    assert procs[0].name == "masked" and small_uniform().name == "uniform"
    msk = diffusion.make(diffusion.default_config("masked"), V)
    assert (msk.sampler_steps, msk.eps, msk.schedule) == (None, 1e-4, "linear")  # None: the exact sampler
    uni = diffusion.make(diffusion.default_config(), 8)
    assert (uni.T, uni.beta1, uni.beta2, uni.input_vocab) == (200, 1e-3, 0.1, 8)
    strided = diffusion.make(config("uniform", T=8, sampler_steps=3), V)
    assert strided.sampler_steps == 3 and uni.sampler_steps is None
    static = jax.jit(chex.assert_max_traces(lambda t, proc: proc.alphabar(t), n=1), static_argnums=1)
    static(jnp.array([0.5]), procs[0])
    static(jnp.array([0.5]), procs[1])  # an equal process: no retrace


# ---------------------------------------------------------------- forward processes

def test_uniform_schedule_index_convention():
    T, b1, b2 = 200, 1e-3, 0.1
    table = np.exp(uniform_mod.log_alphabar_table(T, b1, b2))
    explicit = np.cumprod([1 - b for b in np_betas(T, b1, b2)])  # product over k = 0..i
    np.testing.assert_allclose(table, explicit, rtol=1e-12)
    assert table[0] == pytest.approx(1 - b1)
    proc = diffusion.make(config("uniform"), 8)
    np.testing.assert_allclose(proc.alphabar(jnp.arange(T + 1) / T), explicit, rtol=2e-5)
    np.testing.assert_allclose(proc.alphabar_schedule(), explicit, rtol=1e-12)


def torch_authors_index(T):
    """The authors' ``(t * 1000).long()`` with ``t = i / T``, two float32 operations in torch, replayed
    in float64: i / T rounded once to float32, the product by 1000 (exact in float64) rounded once."""
    t_T1 = (np.arange(T + 1, dtype=np.float64) / T).astype(np.float32).astype(np.float64)
    return np.floor((t_T1 * 1000.0).astype(np.float32).astype(np.float64)).astype(np.int64)


@pytest.mark.parametrize("T", [200, 64])
def test_authors_schedule_reads_torchs_index_at_every_step(T):
    proc = diffusion.make(config("uniform", T=T), V, d=2)
    index_T1 = torch_authors_index(T)
    if T == 200:
        np.testing.assert_array_equal(index_T1, 5 * np.arange(T + 1))  # torch gets 5 i at every step
    np.testing.assert_array_equal(uniform_mod.authors_index(T), index_T1)
    # The authors' table (float32 as theirs) against float64.
    beta_K = 1e-4 + (0.02 - 1e-4) * np.arange(1001) / 1000
    np.testing.assert_allclose(uniform_mod.authors_alphabar(), np.cumprod(1 - beta_K), rtol=1e-5)
    want_T1 = uniform_mod.authors_alphabar()[index_T1]
    # t as each code path computes it: the loss (i / T on device), torch's float32 t, the sampler.
    on_device = jax.jit(lambda i: i.astype(jnp.float32) / T)(jnp.arange(T + 1))
    RECORD.clear()
    jit_sample(proc, logits_net, jnp.zeros(V), jax.random.key(0), 1, T)
    jax.effects_barrier()
    sampler_T = np.concatenate([t for _, t in RECORD])[::-1]  # steps 1..T
    message = jax.jit(functools.partial(proc.message_alphabar, authors_schedule=True))
    for t_T1 in (on_device, np.float32(np.arange(T + 1) / T), np.concatenate([[0.0], sampler_T])):
        np.testing.assert_array_equal(np.asarray(message(jnp.asarray(t_T1, jnp.float32))), want_T1)


@pytest.mark.parametrize("kind, authors", [("uniform", False), ("uniform", True), ("masked", False)])
def test_input_features_are_the_standardized_message(kind, authors):
    proc = diffusion.make(config(kind, T=200), V)
    x_BxD = data(3, batch=6)
    if kind == "masked":
        x_BxD = jnp.where(data(4, batch=6) == 0, V, x_BxD)  # some masks
    t_B = jnp.asarray(np.arange(1, 7) * 33 / 200, jnp.float32)
    feats = np.asarray(jax.jit(functools.partial(proc.input_features, authors_schedule=authors))(x_BxD, t_B))
    channels = V + (kind == "masked")
    onehot = np.eye(channels)[np.asarray(x_BxD)]
    if kind == "masked":
        p = 1 / (V + 1)
        np.testing.assert_allclose(feats, (onehot - p) / np.sqrt(p * (1 - p)), rtol=1e-6, atol=1e-6)
        assert proc.tokens_reveal_time
        return
    if authors:
        beta_K = 1e-4 + (0.02 - 1e-4) * np.arange(1001) / 1000
        table = np.cumprod(1 - beta_K)
        a_B = table[5 * np.arange(1, 7) * 33]
    else:
        table = np.cumprod(1 - np_betas(200, 1e-3, 0.1))
        a_B = table[np.arange(1, 7) * 33]
    mean = np.mean(table + (1 - table) / V)  # SPEC section 3, over the schedule the message uses
    std = np.sqrt(np.mean(table + (1 - table) / V**2) - mean**2)
    message = a_B[:, None, None] * onehot + (1 - a_B[:, None, None]) / V
    np.testing.assert_allclose(feats, (message - mean) / std, rtol=1e-5, atol=1e-5)
    assert not proc.tokens_reveal_time


def test_authors_schedule_on_the_masked_process_is_refused():
    with pytest.raises(ValueError, match="authors_schedule=True needs the uniform process"):
        masked().feature_stats(authors_schedule=True)


def test_uniform_forward_marginals_match_closed_form():
    v, T, b1, b2 = 5, 20, 0.02, 0.3
    proc = diffusion.make(config("uniform", T=T, beta1=b1, beta2=b2), v)
    n, steps = 3000, np.array([0, 1, 6, 14])
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


def test_masked_forward_marginals_match_closed_form():
    eps, n, ts = 1e-2, 2000, np.array([0.0, 0.2, 0.55, 0.9, 1.0])
    for schedule in ("linear", "cosine", "poly"):
        proc = masked(schedule, eps=eps)
        x0_BxD = jnp.tile(jnp.arange(D, dtype=jnp.int32) % V, (n * len(ts), 1))
        t_B = jnp.repeat(jnp.asarray(ts, jnp.float32), n)
        z = np.asarray(proc.corrupt(jax.random.key(1), x0_BxD, t_B)).reshape(len(ts), n * D)
        x0 = np.asarray(x0_BxD).reshape(len(ts), n * D)
        alpha = np_alpha(schedule, ts, eps)
        assert np.all((z == x0) | (z == V))  # a token is either kept or masked, never changed
        assert_frequencies((z == V).sum(1), 1 - alpha, n * D)
        np.testing.assert_allclose(proc.alphabar(jnp.asarray(ts)), alpha, rtol=1e-5, atol=1e-7)
    leaf = np.asarray(proc.leaf_likelihood(jnp.array([[0, 2, V]]), jnp.zeros(1)))[0]
    np.testing.assert_array_equal(leaf, [[1, 0, 0, 0], [0, 0, 1, 0], [1, 1, 1, 1]])


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

@pytest.mark.heavy
@pytest.mark.parametrize("make_proc", PROCESSES)
def test_loss_vanishes_for_true_x0_and_is_positive_otherwise(make_proc):
    proc, x0, key = make_proc(), data(3), jax.random.key(4)
    loss, _ = jit_loss(proc, logits_net, certain(x0), key, x0)
    assert abs(float(loss)) < 1e-6
    loss_wrong, _ = jit_loss(proc, logits_net, 3.0 * jax.nn.one_hot((x0 + 1) % V, V), key, x0)
    loss_rand, _ = jit_loss(proc, logits_net, jax.random.normal(key, (B, D, V)), key, x0)
    assert float(loss_wrong) > 1e-3 and float(loss_rand) > 1e-3


def test_uniform_loss_at_init_equals_numpy_kl():
    (T, b1, b2), proc = (8, 0.05, 0.5), small_uniform()
    Q, x0 = np_kernels(T, b1, b2, V), data(6)
    loss, _, x_t, t = recorded_loss(proc, jnp.zeros((B, D, V)), jax.random.key(7), x0)
    i = np.rint(t * T).astype(int)
    assert set(i) <= set(range(1, T + 1)) and len(set(i)) > 3
    x0 = np.asarray(x0)

    def kl(b, j):
        q = np_posterior(Q, i[b], i[b] - 1, x_t[b, j], np.eye(V)[x0[b, j]])
        p = np_posterior(Q, i[b], i[b] - 1, x_t[b, j], np.full(V, 1 / V))
        return np.sum(q * np.log(q / p))

    want = np.mean([kl(b, j) for b in range(B) for j in range(D)])
    np.testing.assert_allclose(float(loss), want, rtol=1e-4)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "poly"])
def test_masked_loss_at_init_equals_numpy_elbo(schedule):
    proc, x0, eps = masked(schedule), data(8), 1e-4
    loss, aux, z, t = recorded_loss(proc, jnp.zeros((B, D, V)), jax.random.key(9), x0)
    np.testing.assert_allclose(np.diff(np.sort(t)), 1 / B, atol=1e-6)  # one t per 1/B stratum
    n_masked = (z == V).sum(1)
    want = np.mean(np_weight(schedule, t.astype(np.float64), eps) * n_masked * np.log(V) / D)
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    assert float(aux["mask_fraction"]) == pytest.approx(n_masked.sum() / (B * D))


def test_masked_gradient_is_zero_at_unmasked_positions():
    proc, x0, key = masked("linear"), data(10), jax.random.key(12)
    logits = jax.random.normal(jax.random.key(11), (B, D, V))
    _, _, z, _ = recorded_loss(proc, logits, key, x0)  # the same key: the same z as the grad sees
    grads = np.asarray(jit_grad(proc, logits_net, logits, key, x0))
    masked_BxD = z == V
    assert 0 < masked_BxD.sum() < masked_BxD.size
    assert np.all(grads[~masked_BxD] == 0.0)
    assert np.all(np.abs(grads[masked_BxD]).sum(-1) > 0)


@pytest.mark.heavy
@pytest.mark.parametrize("make_proc", PROCESSES)
def test_loss_over_the_first_rows_equals_the_loss_of_those_rows(make_proc):
    # The authors' full batch inside a fixed-shape one: rows past num_rows weigh nothing.
    chex.clear_trace_counter()  # the counter is shared by the parametrizations of this test
    proc, key, x0 = make_proc(), jax.random.key(7), data(5, batch=8)
    params = init_embedding(jax.random.key(1), proc.input_vocab)

    def value_and_grad(p, x, n):
        return jax.value_and_grad(lambda q: proc.loss(q, embedding_net, key, x, n), has_aux=True)(p)

    masked_fn = jax.jit(chex.assert_max_traces(value_and_grad, n=1))  # n traced: one program for every P
    exact_fn = jax.jit(functools.partial(value_and_grad, n=None))
    for n in (1, 3, 8):
        (loss, aux), grads = masked_fn(params, x0, jnp.int32(n))
        (loss_n, aux_n), grads_n = exact_fn(params, x0[:n])
        chex.assert_trees_all_close((loss, aux, grads), (loss_n, aux_n, grads_n), rtol=1e-6, atol=1e-7)


@pytest.mark.heavy
@pytest.mark.parametrize("make_proc", PROCESSES)
def test_row_losses_average_to_the_loss_with_the_same_key(make_proc):
    # The evaluator's standard error reads these rows; their mean is the scalar training loss.
    proc, key, x0 = make_proc(), jax.random.key(8), data(6, batch=8)
    params = init_embedding(jax.random.key(2), proc.input_vocab)
    rows_B = jax.jit(lambda p: proc.row_losses(p, embedding_net, key, x0))(params)
    loss, _ = jax.jit(lambda p: proc.loss(p, embedding_net, key, x0))(params)
    assert rows_B.shape == (8,) and float(jnp.std(rows_B)) > 0
    assert float(rows_B.mean()) == pytest.approx(float(loss), rel=1e-6)


@pytest.mark.heavy
@pytest.mark.parametrize("make_proc", PROCESSES)
def test_bf16_logits_give_float32_loss(make_proc):
    proc, x0, key = make_proc(), data(13), jax.random.key(15)
    logits16 = jax.random.normal(jax.random.key(14), (B, D, V)).astype(jnp.bfloat16)
    loss16, _ = jit_loss(proc, logits_net, logits16, key, x0)
    loss32, _ = jit_loss(proc, logits_net, logits16.astype(jnp.float32), key, x0)
    assert loss16.dtype == jnp.float32 and float(loss16) == pytest.approx(float(loss32), rel=1e-6)
    grads = jit_grad(proc, logits_net, logits16, key, x0)
    assert grads.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(grads)))
    assert float(jnp.abs(grads.astype(jnp.float32)).sum()) > 0


@pytest.mark.parametrize("make_proc", PROCESSES)
def test_window_losses_are_located_in_time_and_deterministic(make_proc):
    proc, x0 = make_proc(), data(16)
    params = {"early": certain(x0), "late": jnp.zeros((B, D, V))}  # exact early, clueless late
    windows = jax.jit(lambda p, k: proc.window_losses(p, gated_net, k, x0))
    first, again = windows(params, jax.random.key(17)), windows(params, jax.random.key(17))
    np.testing.assert_array_equal(first, again)
    assert first.shape == (10,)
    assert np.all(np.abs(first[:5]) < 1e-6) and np.all(first[5:] > 1e-4)


# ---------------------------------------------------------------- samplers

@pytest.mark.heavy
@pytest.mark.parametrize("beta1, beta2, T, steps", [
    (0.05, 0.5, 8, 8), (0.05, 0.5, 8, 3), (1e-3, 0.1, 200, 200)])
def test_uniform_sampler_with_fixed_denoiser_has_exact_marginals(beta1, beta2, T, steps):
    n, target = 2000, jnp.arange(V, dtype=jnp.int32)
    proc = diffusion.make(config("uniform", T=T, beta1=beta1, beta2=beta2), V, d=V)
    x = np.asarray(jit_sample(proc, logits_net, certain(target), jax.random.key(18), n, steps))
    Q = np_kernels(T, beta1, beta2, V)
    grid = np.floor(np.linspace(T, 0, steps + 1) + 0.5).astype(int)
    for c in range(V):  # exact reverse chain from uniform x_T with the known x0 = c
        marginal = np.full(V, 1 / V)
        for hi, lo in zip(grid[:-1], grid[1:]):
            marginal = marginal @ np.stack([np_posterior(Q, hi, lo, b, np.eye(V)[c]) for b in range(V)])
        assert_frequencies(np.bincount(x[:, c], minlength=V), marginal, n)
    if T == 200:  # the default schedule: the sample is the target up to about beta1 noise
        assert np.mean(x == np.asarray(target)) > 0.99


@pytest.mark.heavy
def test_uniform_sampler_with_uniform_denoiser_gives_uniform_tokens():
    n, proc = 1000, small_uniform(d=D)
    x = np.asarray(proc.sample(jnp.zeros(V), logits_net, jax.random.key(19), n))  # steps = T
    assert_frequencies(np.bincount(x.ravel(), minlength=V), np.full(V, 1 / V), n * D)


@pytest.mark.heavy
@pytest.mark.parametrize("steps", [1, 7])
def test_masked_sampler_reproduces_fixed_denoiser_for_any_steps(steps):
    target = data(20, batch=1)
    x = jit_sample(masked("cosine", d=D), logits_net, certain(target), jax.random.key(21), 64, steps)
    assert x.dtype == jnp.int32
    np.testing.assert_array_equal(x, jnp.broadcast_to(target, x.shape))  # no mask left either


def step_stamp_net(steps, z_BxD, t_B):
    """Predicts "the current step index" with certainty (v must exceed steps)."""
    k_B = jnp.rint((1.0 - t_B) * steps).astype(jnp.int32)
    return 1e4 * jax.nn.one_hot(jnp.broadcast_to(k_B[:, None], z_BxD.shape), 8)


@pytest.mark.heavy
def test_masked_sampler_reveal_times_and_revealed_tokens_never_change():
    steps, eps, n = 6, 0.05, 1000
    proc = diffusion.make(config("masked", schedule="cosine", eps=eps), 8, d=D)
    x = np.asarray(proc.sample(steps, step_stamp_net, jax.random.key(22), n, steps=steps))
    t = (steps - np.arange(steps)) / steps
    a_t, a_s = np_alpha("cosine", t, eps), np_alpha("cosine", t - 1 / steps, eps)
    p_reveal = np.append((a_s - a_t)[:-1], 1 - a_t[-1]) / (1 - eps)  # the last step takes the rest
    # a token re-drawn after its reveal would carry a later stamp and skew these frequencies
    assert_frequencies(np.bincount(x.ravel(), minlength=8)[:steps], p_reveal, n * D)
    assert x.max() < steps


def reveal_count_net(params, z_BxD, t_B):
    """Predicts "how many positions are already revealed" with certainty, everywhere (v must exceed D)."""
    del params, t_B
    revealed_B = jnp.sum(z_BxD != 8, axis=1)  # 8: the mask id at v = 8
    return 1e4 * jax.nn.one_hot(jnp.broadcast_to(revealed_B[:, None], z_BxD.shape), 8)


@pytest.mark.parametrize("schedule", ["linear", "poly"])
def test_exact_masked_sampler_reveals_one_position_per_step_in_a_uniform_order(schedule):
    """Every sample is a permutation of the stamps 0..D-1: step k reveals exactly one position (it
    saw k revealed ones) and never touches it again; the position revealed at each step is uniform."""
    n = 2000
    proc = diffusion.make(config("masked", schedule=schedule, power=2.0), 8, d=D)  # sampler_steps None
    x = np.asarray(jax.jit(lambda key: proc.sample(None, reveal_count_net, key, n))(jax.random.key(24)))
    np.testing.assert_array_equal(np.sort(x, axis=1), np.broadcast_to(np.arange(D), x.shape))
    counts_KxD = np.stack([np.sum(x == k, axis=0) for k in range(D)])  # step k revealed position i
    assert_frequencies(counts_KxD.ravel(), np.full(D * D, 1 / D), n)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "poly"])
def test_time_of_mask_fraction_inverts_the_schedule(schedule):
    proc = masked(schedule, eps=0.01)
    fraction_F = np.linspace(0.02, 0.98, 25)
    t_F = np.asarray(proc.time_of_mask_fraction(jnp.asarray(fraction_F, jnp.float32)))
    np.testing.assert_allclose(1 - np_alpha(schedule, t_F, 0.01, power=2.0), fraction_F, atol=1e-5)
    assert float(proc.time_of_mask_fraction(1.0)) == pytest.approx(1.0, abs=1e-6)  # all masked: t = 1
    assert float(proc.time_of_mask_fraction(0.0)) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("value, want", [("exact", None), (7, 7), ("12", 12)])
def test_sampler_steps_setting_reads_exact_and_integers(value, want):
    assert diffusion.sampler_steps_setting(value) == want


@pytest.mark.parametrize("value", [0, "fast", 2.5, True])
def test_sampler_steps_setting_refuses_anything_else(value):
    with pytest.raises(ValueError, match=r"sampler_steps=.* must be an integer >= 1 or 'exact'"):
        diffusion.sampler_steps_setting(value)


def test_sampler_label_names_the_sampler_of_evaluations():
    label = lambda *args, **kwargs: diffusion.sampler_label(diffusion.make(config(*args, **kwargs), 4))
    assert label("masked") == "exact"
    assert label("masked", sampler_steps=100) == "100"
    assert label("uniform", T=50) == "50"  # the uniform's None is its T steps
    assert label("uniform", T=50, sampler_steps=10) == "10"


# ---------------------------------------------------------------- a grid of models

@pytest.mark.heavy
@pytest.mark.parametrize("make_proc, steps", [
    pytest.param(lambda: small_uniform(d=6), 4, id="uniform"),
    pytest.param(lambda: diffusion.make(config("masked", sampler_steps=4), V, d=6), 4, id="masked"),
    pytest.param(lambda: diffusion.make(config("masked"), V, d=6), None, id="masked-exact")])
def test_vmap_over_models_compiles_once_and_equals_separate_runs(make_proc, steps):
    chex.clear_trace_counter()  # the counter is shared by the parametrizations of this test
    proc, M, x0 = make_proc(), 3, data(23, batch=8, length=6)

    def run(params, key):
        k1, k2 = jax.random.split(key)
        loss, aux = proc.loss(params, embedding_net, k1, x0)
        return loss, aux, proc.sample(params, embedding_net, k2, 5, steps=steps)

    grid = jax.jit(jax.vmap(chex.assert_max_traces(run, n=1)))
    single = jax.jit(run)
    for seed in (0, 1):
        params_M = init_embedding(jax.random.key(seed), proc.input_vocab, M)
        keys_M = jax.random.split(jax.random.key(100 + seed), M)
        out = grid(params_M, keys_M)
        loss_M, aux_M, samples_MxNxD = out
        chex.assert_shape([loss_M, samples_MxNxD], [(M,), (M, 5, 6)])
        chex.assert_tree_all_finite((loss_M, aux_M))
        assert np.all((np.asarray(samples_MxNxD) >= 0) & (np.asarray(samples_MxNxD) < V))
        assert len(np.unique(np.asarray(loss_M))) == M  # the models really differ
        for m in range(M):
            alone = single(jax.tree.map(lambda a: a[m], params_M), keys_M[m])
            chex.assert_trees_all_close(jax.tree.map(lambda a: a[m], out), alone, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("key", ["schedule", "eps", "power", "beta1", "beta2"])
@pytest.mark.parametrize("bad", [-1, "abc", 2.5, None])
def test_keys_of_the_other_process_are_validated_too(key, bad):
    """Issue 26: process.schedule/eps/power (unused by 'uniform') and beta1/beta2 (unused by 'masked')
    took any value and were recorded in config.json."""
    if (key, bad) in (("eps", 2.5), ("power", 2.5), ("beta1", 2.5)) or key in ("beta1", "beta2") and bad == -1:
        bad = {"eps": 0.7, "power": -2.5, "beta1": -1.0, "beta2": 2.5}[key]  # numbers in range elsewhere
    name = "masked" if key in ("beta1", "beta2") else "uniform"
    config = diffusion.default_config(name).to_dict()  # a plain dict: ConfigDict refuses some types itself
    config[key] = bad
    with pytest.raises(ValueError, match=rf"^process\.{key}=.*unused by process\.name='{name}'"):
        diffusion.validate(config)
