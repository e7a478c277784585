"""Grammar: rules, sampler, parser, synonym resampling."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from rhm_jax import data, grammar
from strategies import rhm_params


def reference_parse(g, row):
    """Plain-Python nested parse: per level 1..L, the rule index (symbol*m + choice) or -1."""
    tables = [{tuple(int(t) for t in r[a, c]): a * g.m + c
               for a in range(r.shape[0]) for c in range(g.m)} for r in map(np.asarray, g.rules)]
    symbols, out = [int(t) if 0 <= t < g.v else -1 for t in row], []
    for level in range(1, g.L + 1):
        used = [tables[g.L - level].get(tuple(symbols[k:k + g.s]), -1) if -1 not in symbols[k:k + g.s]
                else -1 for k in range(0, len(symbols), g.s)]
        out.append(used)
        symbols = [u // g.m if u >= 0 else -1 for u in used]
    return out


def test_sampled_rules_are_distinct_per_level():
    g = grammar.sample_rules(0, v=8, n=8, m=3, s=2, L=3)
    for r in g.rules:
        tuples = np.asarray(r).reshape(-1, 2)
        assert len(np.unique(tuples, axis=0)) == len(tuples)


@pytest.mark.parametrize("params, message", [
    (dict(v=4, n=4, m=5, s=2, L=2), r"m=5 must be <= v\*\*\(s-1\) = 4"),
    (dict(v=2, n=3, m=2, s=2, L=2), r"n\*m=6 must be <= v\*\*s = 4"),
    (dict(v=4, n=4, m=1, s=1, L=2), r"s=1 must be >= 2"),
    (dict(v=4, n=4, m=1, s=2, L=0), r"L=0 must be >= 1"),
    (dict(v=1, n=1, m=1, s=2, L=2), r"v=1 must be >= 2"),
])
def test_impossible_parameters_raise(params, message):
    with pytest.raises(ValueError, match=message):
        grammar.sample_rules(0, **params)


@pytest.mark.heavy
@settings(max_examples=6, deadline=None)
@given(rhm_params())
def test_every_sample_parses_at_every_level(params):
    v, n, m, s, L, seed = params
    g = grammar.sample_rules(seed, v=v, n=n, m=m, s=s, L=L)
    tokens = np.asarray(grammar.sample(jax.random.key(seed), g, 64))
    parsed = [np.asarray(r) for r in grammar.parse(g, tokens)]
    assert all((r >= 0).all() for r in parsed)
    for b in range(4):  # exact agreement with a plain parser on a few rows
        assert [list(r[b]) for r in parsed] == reference_parse(g, tokens[b])


def test_sample_is_uniform_over_sequences():
    g = grammar.sample_rules(1, v=3, n=3, m=3, s=2, L=2)  # m = 3: digits packed 19 per draw
    counts = np.bincount(data.encode(g, grammar.sample(jax.random.key(2), g, 40_000)),
                         minlength=g.p_max)
    expected = 40_000 / g.p_max
    chi2 = ((counts - expected) ** 2 / expected).sum()
    df = g.p_max - 1
    assert chi2 < df + 6 * np.sqrt(2 * df)


@pytest.mark.heavy
@pytest.mark.parametrize("s, L", [(2, 3), (3, 2)])
def test_resampling_keeps_the_tree_above_the_level(s, L):
    g = grammar.sample_rules(1, v=4, n=4, m=3, s=s, L=L)
    tokens = data.decode(g, np.random.default_rng(0).integers(0, g.p_max, 256))
    before = [np.asarray(r) for r in grammar.parse(g, tokens)]
    for level in range(1, L + 1):
        fresh = np.asarray(grammar.resample_synonyms(jax.random.key(level), g, tokens, level))
        after = [np.asarray(r) for r in grammar.parse(g, fresh)]
        assert all((r >= 0).all() for r in after)
        for l in range(level, L + 1):  # symbols at and above the level survive
            np.testing.assert_array_equal(after[l - 1] // g.m, before[l - 1] // g.m)
        for l in range(level + 1, L + 1):  # so do the rules applied above it
            np.testing.assert_array_equal(after[l - 1], before[l - 1])
        changed = (after[level - 1] != before[level - 1]).mean()  # the level's own choices are redrawn
        assert abs(changed - (1 - 1 / g.m)) < 0.1


def test_resampling_leaves_invalid_subtrees_alone():
    g = grammar.sample_rules(2, v=4, n=4, m=2, s=2, L=3)
    tokens = data.decode(g, np.random.default_rng(0).integers(0, g.p_max, 64))
    rules2 = {tuple(t) for t in np.asarray(g.rules[2]).reshape(-1, 2)}
    tokens[:, :2] = next(p for p in itertools.product(range(4), repeat=2) if p not in rules2)
    fresh = np.asarray(grammar.resample_synonyms(jax.random.key(1), g, tokens, 2))
    np.testing.assert_array_equal(fresh[:, :4], tokens[:, :4])  # under the broken level-2 node
    assert (np.asarray(grammar.parse(g, fresh)[1])[:, 1] >= 0).all()
    assert (fresh[:, 4:] != tokens[:, 4:]).any()
    with pytest.raises(ValueError, match=r"level=4 must be an integer in 1..L = 1..3"):
        grammar.resample_synonyms(jax.random.key(1), g, tokens, 4)


@pytest.mark.heavy
def test_stacked_grammars_vmap_like_separate_ones():
    gs = [grammar.sample_rules(seed, v=4, n=3, m=2, s=2, L=2) for seed in range(3)]
    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.vmap(lambda k, g: grammar.sample(k, g, 16))(keys, grammar.stack(gs))
    for k, g, tokens in zip(keys, gs, batched):
        np.testing.assert_array_equal(tokens, grammar.sample(k, g, 16))
    with pytest.raises(ValueError, match="equal"):
        grammar.stack([gs[0], grammar.sample_rules(0, v=4, n=4, m=2, s=2, L=2)])


def test_token_checks_name_the_bound_and_skip_tracers():
    g = grammar.sample_rules(0, v=4, n=4, m=2, s=2, L=2)
    with pytest.raises(ValueError, match=r"length d = s\*\*L = 4"):
        grammar.check_tokens(g, np.zeros((2, 5), np.int32))
    with pytest.raises(ValueError, match=r"0\.\.v-1 = 0\.\.3, found values in -1\.\.0"):
        grammar.check_tokens(g, -jnp.eye(4, dtype=jnp.int32))
    with pytest.raises(ValueError, match="integers"):
        grammar.check_tokens(g, np.zeros((2, 4)))
    jax.jit(lambda t: grammar.check_tokens(g, t))(jnp.full((2, 4), 9))  # traced: no value check
