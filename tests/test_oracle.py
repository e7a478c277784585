"""Oracle: exact BP posterior against brute-force enumeration of every sequence of tiny grammars."""
import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rhm_jax import coherence, diffusion, grammar, oracle

B = 8  # one batch size everywhere, so each grammar shape compiles once


@jax.jit
def exact(g, lik):
    """(posterior, log evidence, cavity) in one compiled call, to keep the test budget small."""
    return (oracle.posterior(g, lik), oracle.log_likelihood(g, lik),
            jnp.exp(oracle.log_cavity(g, lik)))


TINY = [  # (v, n, m, s, L)
    (3, 2, 2, 2, 2),
    (4, 4, 2, 2, 3),
    (3, 3, 3, 3, 2),
]


def all_sequences(g: grammar.Grammar) -> np.ndarray:
    """Every sequence of the grammar (P_max, D), one per tree, by looping over all rule choices."""
    num_choices = [g.s**level for level in range(g.L)]
    digits = itertools.product(range(g.n), *[range(g.m)] * sum(num_choices))
    table = np.array(list(digits), np.int32)
    root, rest = table[:, 0], table[:, 1:]
    splits = np.cumsum(num_choices)[:-1]
    choices = [jnp.asarray(c) for c in np.split(rest, splits, axis=1)]
    seqs = np.asarray(grammar.expand(g, jnp.asarray(root), choices))
    assert len(np.unique(seqs, axis=0)) == g.p_max  # unambiguous grammar: trees are distinct
    return seqs


def brute_force(seqs_PxD: np.ndarray, lik_BxDxV: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(posterior BxDxV, log evidence B) by summing over all equally likely sequences (float64)."""
    lik = np.asarray(lik_BxDxV, np.float64)
    num_seqs, d = seqs_PxD.shape
    v = lik.shape[-1]
    weights_BxP = np.prod(lik[:, np.arange(d), seqs_PxD], axis=-1)  # lik[:, i, x_i] over i
    onehot_PxDxV = np.eye(v)[seqs_PxD]
    post = np.einsum("bp,pdv->bdv", weights_BxP, onehot_PxDxV)
    evidence_B = weights_BxP.sum(-1)
    return post / evidence_B[:, None, None], np.log(evidence_B / num_seqs)


def brute_force_cavity(seqs_PxD: np.ndarray, lik_BxDxV: np.ndarray) -> np.ndarray:
    """p(x0_i | evidence at every other position): the posterior with position i's evidence removed."""
    cavity = np.empty(lik_BxDxV.shape)
    for i in range(lik_BxDxV.shape[1]):
        lik_without_i = np.array(lik_BxDxV, np.float64)
        lik_without_i[:, i] = 1.0
        cavity[:, i] = brute_force(seqs_PxD, lik_without_i)[0][:, i]
    return cavity


def masked_evidence(rng: np.random.Generator, seqs_PxD: np.ndarray, batch: int, v: int) -> np.ndarray:
    """Leaf likelihoods of the masked process: one-hot of a valid sequence, ones where masked."""
    x0 = seqs_PxD[rng.integers(len(seqs_PxD), size=batch)]
    masked = rng.random(x0.shape) < rng.random((batch, 1))  # a different mask rate per row
    return np.where(masked[..., None], 1.0, np.eye(v)[x0]).astype(np.float32)


@pytest.fixture(scope="module", params=TINY, ids=lambda p: "v{}n{}m{}s{}L{}".format(*p))
def tiny(request):
    v, n, m, s, L = request.param
    g = grammar.sample_rules(sum(request.param), v=v, n=n, m=m, s=s, L=L)
    return g, all_sequences(g)


def random_evidence(g, seqs):
    """Positive likelihoods with a different scale per position (the oracle must not care)."""
    rng = np.random.default_rng(0)
    lik = rng.uniform(0.05, 1.0, (B, g.d, g.v)) * rng.uniform(0.1, 10.0, (B, g.d, 1))
    return lik.astype(np.float32)


@pytest.mark.parametrize("evidence", [
    random_evidence, lambda g, seqs: masked_evidence(np.random.default_rng(1), seqs, B, g.v),
], ids=["random", "masked"])
def test_evidence_matches_brute_force(tiny, evidence):
    g, seqs = tiny
    lik = evidence(g, seqs)
    post, log_ev = brute_force(seqs, lik)
    got_post, got_log_ev, got_cavity = exact(g, lik)
    np.testing.assert_allclose(got_post, post, atol=1e-5)
    np.testing.assert_allclose(got_log_ev, log_ev, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(got_cavity, brute_force_cavity(seqs, lik), atol=1e-5)


def test_no_evidence_gives_prior_marginal(tiny):
    g, seqs = tiny
    prior_DxV = np.eye(g.v)[seqs].mean(0)
    post, log_ev, _ = exact(g, jnp.ones((B, g.d, g.v)))
    np.testing.assert_allclose(post, np.broadcast_to(prior_DxV, post.shape), atol=1e-6)
    np.testing.assert_allclose(log_ev, 0.0, atol=1e-5)


def test_exact_evidence_recovers_the_sequence(tiny):
    g, seqs = tiny
    x0 = seqs[np.random.default_rng(3).integers(len(seqs), size=B)]
    post, log_ev, _ = exact(g, jax.nn.one_hot(x0, g.v))
    np.testing.assert_allclose(post, jax.nn.one_hot(x0, g.v), atol=1e-6)
    # The evidence of one valid sequence is its prior probability 1 / P_max.
    np.testing.assert_allclose(log_ev, -np.log(float(g.p_max)), rtol=1e-6)


@pytest.mark.heavy
def test_batch_axes_are_free():
    g = grammar.sample_rules(sum(TINY[1]), *TINY[1])
    seqs = all_sequences(g)
    lik = masked_evidence(np.random.default_rng(2), seqs, B, g.v)
    flat = exact(g, lik)[0]
    nested = exact(g, lik.reshape(2, 4, g.d, g.v))[0]
    np.testing.assert_allclose(nested.reshape(flat.shape), flat, atol=1e-7)
    single = exact(g, lik[5])[0]
    np.testing.assert_allclose(single, flat[5], atol=1e-7)


@pytest.mark.heavy
def test_deep_wide_grammar_is_stable_and_exact():
    g = grammar.sample_rules(4, v=32, n=32, m=8, s=2, L=5)
    rng = np.random.default_rng(5)
    # Random trees built on the host (eager jax.random calls cost seconds of dispatch here).
    choices = [jnp.asarray(rng.integers(g.m, size=(8, g.s**level))) for level in range(g.L)]
    x0 = grammar.expand(g, jnp.asarray(rng.integers(g.n, size=8)), choices)
    noise = rng.integers(g.v, size=x0.shape)
    flip = rng.random(x0.shape) < np.linspace(0.0, 1.0, 8)[:, None]
    x_t = jnp.where(flip, noise, x0)  # row 0 clean, row 7 fully random (invalid)
    alphabar = jnp.array([1.0 - 1e-6, 0.9, 1e-3, 0.0])[:, None, None, None]
    # Uniform-process evidence at several noise levels, on clean and heavily corrupted sequences.
    sharp = (alphabar * jax.nn.one_hot(x_t, g.v) + (1.0 - alphabar) / g.v).reshape(-1, g.d, g.v)
    # Chain rule: row r reveals x0[0, :r] exactly, so post[r, r, x_r] = p(x_r | x_<r).
    revealed_DxD = jnp.arange(g.d)[None, :] < jnp.arange(g.d)[:, None]
    chain = jnp.where(revealed_DxD[..., None], jax.nn.one_hot(x0[0], g.v), 1.0)
    invalid = jax.nn.one_hot(x_t[-1:], g.v)  # probability 0: must come back uniform, not nan
    post, log_ev, cavity = exact(g, jnp.concatenate([sharp, chain, invalid]))
    num_sharp = sharp.shape[0]
    assert bool(jnp.all(jnp.isfinite(post))) and bool(jnp.all(jnp.isfinite(log_ev[:-1])))
    np.testing.assert_allclose(post.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(cavity.sum(-1), 1.0, atol=1e-5)
    assert bool(jnp.all(jnp.argmax(post[0], -1) == x0[0]))  # near-noiseless evidence pins it down
    chain_post = post[num_sharp:num_sharp + g.d]
    log_p_x = jnp.log(chain_post[jnp.arange(g.d), jnp.arange(g.d), x0[0]]).sum()
    np.testing.assert_allclose(log_p_x, -np.log(float(g.p_max)), rtol=1e-5)
    np.testing.assert_allclose(log_ev[num_sharp], 0.0, atol=1e-5)  # nothing revealed
    np.testing.assert_allclose(post[-1], 1.0 / g.v, atol=1e-6)
    assert float(log_ev[-1]) == -np.inf


def stack(grammars):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *grammars)


@pytest.mark.heavy
def test_vmap_over_grammars_equals_separate_calls():
    gs = [grammar.sample_rules(seed, v=4, n=4, m=2, s=2, L=3) for seed in range(3)]
    lik = jax.random.uniform(jax.random.key(0), (3, B, 8, 4), minval=0.05)
    together = jax.jit(jax.vmap(exact))(stack(gs), lik)
    separate = [exact(g, x) for g, x in zip(gs, lik)]
    chex.assert_trees_all_close(together, jax.tree.map(lambda *x: jnp.stack(x), *separate), atol=1e-6)


@pytest.mark.heavy
def test_compiles_once_across_grammars_of_one_shape():
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(g, lik):
        return oracle.posterior(g, lik)

    lik = jax.random.uniform(jax.random.key(1), (2, 8, 4), minval=0.05)
    results = [run(grammar.sample_rules(seed, v=4, n=4, m=2, s=2, L=3), lik) for seed in range(3)]
    assert not np.allclose(results[0], results[1])  # different grammars, one compiled function


def test_wrong_evidence_shape_raises():
    g = grammar.sample_rules(0, v=4, n=4, m=2, s=2, L=3)
    with pytest.raises(ValueError, match=r"leaf_lik must have trailing shape \(d, v\) = \(8, 4\)"):
        oracle.posterior(g, jnp.ones((2, 8, 5)))
    with pytest.raises(ValueError, match=r"leaf_lik .* \(8, 4\)"):
        oracle.log_likelihood(g, jnp.ones((7, 4)))


@pytest.mark.heavy
def test_denoiser_predicts_the_cavity_or_the_posterior():
    g = grammar.sample_rules(7, v=4, n=4, m=2, s=2, L=3)
    seqs = all_sequences(g)
    uniform = diffusion.make(diffusion.default_config("uniform"), g.v)
    masked = diffusion.make(diffusion.default_config("masked"), g.v)
    x0 = jnp.asarray(seqs[::60][:B])
    t = jnp.linspace(0.05, 1.0, B)

    @functools.partial(jax.jit, static_argnums=0)
    def both(process, x_t, t):
        return [oracle.denoiser(g, process, output)(None, x_t, t) for output in oracle.OUTPUTS]

    x_t = uniform.corrupt(jax.random.key(0), x0, t)
    lik = np.asarray(uniform.leaf_likelihood(x_t, t))
    cavity_logits, posterior_logits = both(uniform, x_t, t)
    np.testing.assert_allclose(jnp.exp(cavity_logits), brute_force_cavity(seqs, lik), atol=1e-5)
    np.testing.assert_allclose(jnp.exp(posterior_logits), brute_force(seqs, lik)[0], atol=1e-5)
    # Masked: the two outputs agree wherever the token is masked, and logits stay finite.
    z_t = masked.corrupt(jax.random.key(1), x0, t)
    is_masked = np.asarray(z_t == masked.mask_id)
    assert 0 < is_masked.sum() < is_masked.size
    cavity_logits, posterior_logits = both(masked, z_t, t)
    np.testing.assert_allclose(jnp.exp(cavity_logits)[is_masked], jnp.exp(posterior_logits)[is_masked],
                               atol=1e-6)
    assert bool(jnp.all(jnp.isfinite(posterior_logits)))  # impossible symbols get LOG_ZERO, not -inf
    assert float(posterior_logits.min()) == np.float32(oracle.LOG_ZERO)


def test_denoiser_rejects_bad_arguments():
    g = grammar.sample_rules(0, v=8, n=8, m=2, s=2, L=2)
    process = diffusion.make(diffusion.default_config("uniform"), 4)
    with pytest.raises(ValueError, match="process.v=4 must equal the grammar's vocabulary v=8"):
        oracle.denoiser(g, process)
    with pytest.raises(ValueError, match="output='marginal' must be one of"):
        oracle.denoiser(g, process, output="marginal")


def uniform_predictor(params, x_t_BxD, t_B):
    del params, t_B
    return jnp.zeros((*x_t_BxD.shape, 4))


@pytest.mark.heavy
def test_oracle_loss_beats_a_uniform_predictor():
    g = grammar.sample_rules(7, v=4, n=4, m=2, s=2, L=3)
    x0 = jnp.asarray(all_sequences(g)[::2])  # every other sequence of the 512
    losses = {}
    for name in diffusion.NAMES:
        process = diffusion.make(diffusion.default_config(name), g.v)
        apply_fns = (oracle.denoiser(g, process), oracle.denoiser(g, process, output="posterior"),
                     uniform_predictor)
        # Same key for all three: same times and the same noise, so the comparison is paired.
        three = jax.jit(lambda key: [process.loss(None, f, key, x0)[0] for f in apply_fns])
        losses[name] = [float(x) for x in three(jax.random.key(2))]
    cavity, posterior, flat = losses["uniform"]
    # Same key, same noise: the cavity is the minimizer of the D3PM loss, the posterior is not.
    assert cavity < 0.7 * posterior < 0.7 * flat, losses
    cavity, posterior, flat = losses["masked"]
    assert cavity == pytest.approx(posterior, rel=1e-5) and cavity < 0.7 * flat, losses


def rule_distributions(g: grammar.Grammar, tokens_NxD) -> list[np.ndarray]:
    """Per level, the fraction of rule applications that used each rule (flattened)."""
    usage = coherence.rule_usage(coherence.validity(g, tokens_NxD))
    return [np.asarray(u, np.float64).ravel() / np.asarray(u).sum() for u in usage]


@pytest.mark.heavy
@pytest.mark.parametrize("name, steps", [("uniform", None), ("masked", None), ("masked", "32d")],
                         ids=["uniform", "masked-exact", "masked-32d-steps"])
@pytest.mark.parametrize("params", TINY[1:], ids=lambda p: "v{}n{}m{}s{}L{}".format(*p))
def test_oracle_driven_sampler_yields_valid_sequences_covering_the_grammar(params, name, steps):
    g = grammar.sample_rules(sum(params), *params)
    config = diffusion.default_config(name)
    # beta1 -> 0: the uniform chain's index 0 is itself noised with probability beta1 per token,
    # so even an exact reverse chain ends that far from the data. The masked process's step-count
    # sampler reveals tokens independently within a step, so it needs many more steps than tokens;
    # its exact sampler (steps None, the default) reveals one per step.
    config.beta1 = 1e-6
    process = diffusion.make(config, g.v, d=g.d)
    steps = 32 * g.d if steps == "32d" else None
    denoise = oracle.denoiser(g, process)
    tokens = jax.jit(lambda key: process.sample(None, denoise, key, 256, steps=steps))(jax.random.key(3))
    per_level = np.asarray(coherence.validity(g, tokens).per_level).mean(0)
    # A uniform-token baseline is below 0.25 at every level of these grammars.
    assert np.all(per_level >= (0.95 if steps else 0.98)), per_level
    # Coverage: rules are used as often as in the grammar itself (all sequences equally likely).
    sampled, exact_usage = rule_distributions(g, tokens), rule_distributions(g, all_sequences(g))
    for level, (p, q) in enumerate(zip(sampled, exact_usage), start=1):
        assert 0.5 * np.abs(p - q).sum() < 0.15, (level, p, q)


@pytest.mark.heavy
@pytest.mark.parametrize("params, steps, low, high", [
    ((16, 16, 4, 2, 4), None, 0.99, 1.0),   # masked_transformer.py's grammar (d = 16), exact sampler
    ((8, 8, 3, 2, 3), None, 0.99, 1.0),     # its quick grammar (d = 8)
    ((16, 16, 4, 2, 4), 100, 0.85, 0.95),   # its former 100 steps: about 0.90 (issue 19)
], ids=["d16-exact", "d8-exact", "d16-100-steps"])
def test_masked_process_default_sampler_lets_the_oracle_reach_full_validity(params, steps, low, high):
    """Driven by the exact denoiser, the masked process's default sampler (one position per step)
    yields fully valid sequences; the step-count sampler still runs and stays below (issue 19)."""
    g = grammar.sample_rules(0, *params)
    config = diffusion.default_config("masked")
    config.sampler_steps = steps
    process = diffusion.make(config, g.v, d=g.d)
    denoise = oracle.denoiser(g, process)
    tokens = jax.jit(lambda key: process.sample(None, denoise, key, 1024))(jax.random.key(5))
    assert low <= float(np.mean(coherence.validity(g, tokens).valid)) <= high
