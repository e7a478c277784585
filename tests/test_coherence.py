"""Coherence: nested validity against a plain-Python parser, rule usage, exact copy lookup."""
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from rhm_jax import coherence, data, grammar
from strategies import rhm_params


def reference_parse(g, row):
    """Plain-Python nested parse: per level 1..L, (symbols, rule indices) with -1 where invalid."""
    tables = [{tuple(int(t) for t in r[a, c]): (a, a * g.m + c)
               for a in range(r.shape[0]) for c in range(g.m)} for r in map(np.asarray, g.rules)]
    symbols, out = [int(t) if 0 <= t < g.v else -1 for t in row], []
    for level in range(1, g.L + 1):
        parsed = [tables[g.L - level].get(tuple(symbols[k:k + g.s]), (-1, -1)) for k in range(0, len(symbols), g.s)]
        symbols = [a for a, _ in parsed]
        out.append((symbols, [r for _, r in parsed]))
    return out


def production_set(g, level):
    """The s-tuples that are productions at ``level`` (1 = above the leaves, L = root)."""
    return {tuple(int(t) for t in x) for x in np.asarray(g.rules[g.L - level]).reshape(-1, g.s)}


def grammars():
    """Small random grammars with s = 2 or 3, n <= v."""
    return rhm_params().map(lambda p: grammar.sample_rules(p[5], v=p[0], n=p[1], m=p[2], s=p[3], L=p[4]))


@pytest.mark.heavy
@settings(max_examples=5, deadline=None)
@given(grammars(), st.integers(0, 2**16))
def test_validity_matches_a_plain_python_parser(g, seed):
    rng = np.random.default_rng(seed)
    tokens = data.decode(g, rng.integers(0, g.p_max, 48))
    tokens[16:32, rng.integers(0, g.d, 16)] = rng.integers(0, g.v, 16)  # some corrupted
    tokens[32:] = rng.integers(0, g.v, (16, g.d))  # some uniform noise
    result = coherence.validity(g, tokens)
    assert result.valid[:16].all()  # samples parse at every level
    assert (np.asarray(result.per_level)[:16] == 1).all()
    for b, row in enumerate(tokens):
        for level, (symbols, rules) in enumerate(reference_parse(g, row), start=1):
            np.testing.assert_array_equal(result.symbols[level - 1][b], symbols)
            np.testing.assert_array_equal(result.rules_used[level - 1][b], rules)
            np.testing.assert_array_equal(result.nodes[level - 1][b], np.array(symbols) >= 0)
            assert result.per_level[b, level - 1] == pytest.approx(np.mean(np.array(symbols) >= 0))
        assert result.valid[b] == (reference_parse(g, row)[-1][0][0] >= 0)


@pytest.mark.parametrize("s, L", [(2, 4), (3, 2)])
def test_corrupting_one_token_breaks_exactly_its_ancestors(s, L):
    g = grammar.sample_rules(4, v=4, n=4, m=2, s=s, L=L)
    tokens = data.decode(g, np.random.default_rng(0).integers(0, g.p_max, 8))
    productions = production_set(g, 1)
    corrupted, positions = tokens.copy(), []
    for b, row in enumerate(corrupted):
        j = (5 * b + 3) % g.d
        tuple_start = j - j % s
        for t in range(g.v):  # a replacement whose tuple is not a production at level 1
            candidate = list(row[tuple_start:tuple_start + s])
            candidate[j - tuple_start] = t
            if tuple(candidate) not in productions:
                row[j] = t
                break
        positions.append(j)
    result = coherence.validity(g, corrupted)
    for level in range(1, L + 1):
        nodes = np.asarray(result.nodes[level - 1])
        expected = np.ones_like(nodes)
        expected[np.arange(len(positions)), np.array(positions) // s**level] = False
        np.testing.assert_array_equal(nodes, expected)


def test_swapping_tuples_across_parents_breaks_what_the_tables_predict():
    g = grammar.sample_rules(5, v=6, n=6, m=2, s=2, L=3)
    tokens = data.decode(g, np.random.default_rng(1).integers(0, g.p_max, 16))
    symbols1 = np.asarray(coherence.validity(g, tokens).symbols[0])
    level2 = production_set(g, 2)
    broken = same = 0
    for b in range(len(tokens)):
        for a, c in itertools.combinations(range(4), 2):
            if a // 2 == c // 2:
                continue  # same parent
            swapped = tokens[b].copy()
            swapped[2 * a:2 * a + 2], swapped[2 * c:2 * c + 2] = tokens[b, 2 * c:2 * c + 2], tokens[b, 2 * a:2 * a + 2]
            new_symbols = symbols1[b].copy()
            new_symbols[[a, c]] = new_symbols[[c, a]]
            predicted = [tuple(new_symbols[2 * p:2 * p + 2]) in level2 for p in range(2)]
            result = coherence.validity(g, swapped)
            assert result.nodes[0].all()  # the tuples themselves are still productions
            np.testing.assert_array_equal(result.nodes[1], predicted)
            if symbols1[b, a] == symbols1[b, c]:
                assert result.valid  # synonymous subtrees: the swap is harmless
                same += 1
            broken += not any(predicted)
    assert broken > 0 and same > 0  # both cases were exercised


def test_sampled_data_use_every_rule_uniformly():
    g = grammar.sample_rules(2, v=8, n=8, m=3, s=2, L=3)
    counts = coherence.rule_usage(coherence.validity(g, grammar.sample(jax.random.key(3), g, 20_000)))
    for level, count in enumerate(counts, start=1):
        count = np.asarray(count)
        assert count.sum() == 20_000 * 2 ** (g.L - level)
        expected = count.sum(-1, keepdims=True) / g.m  # rules uniform given the symbol
        chi2 = ((count - expected) ** 2 / expected).sum()
        df = count.shape[0] * (g.m - 1)
        assert chi2 < df + 6 * np.sqrt(2 * df)
    roots = np.asarray(counts[-1]).sum(-1)
    assert ((roots - 2500) ** 2 / 2500).sum() < 7 + 6 * np.sqrt(14)


def test_rule_usage_counts_match_brute_force_over_chosen_axes():
    g = grammar.sample_rules(0, v=3, n=2, m=2, s=2, L=2)
    rng = np.random.default_rng(0)
    tokens = np.where(rng.random((2, 5, 4)) < 0.1, rng.integers(0, 3, (2, 5, 4)),
                      data.decode(g, rng.integers(0, g.p_max, (2, 5))))
    result = coherence.validity(g, tokens)
    for axis, kept in [(None, ()), (1, (0,)), ((0,), (1,)), ((0, 1), ())]:
        counts = coherence.rule_usage(result, axis=axis)
        for level, count in enumerate(counts, start=1):
            rules = np.asarray(result.rules_used[level - 1])
            symbols = g.n if level == g.L else g.v
            assert count.shape == (*[rules.shape[a] for a in kept], symbols, g.m)
            for idx in itertools.product(*[range(rules.shape[a]) for a in kept]):
                picked = rules[idx] if kept == (0,) else rules[:, idx[0]] if kept == (1,) else rules
                expected = np.bincount(picked[picked >= 0].ravel(), minlength=symbols * g.m)
                np.testing.assert_array_equal(np.asarray(count)[idx].ravel(), expected)


def test_validity_compiles_once_for_grammars_of_one_shape_and_vmaps():
    gs = [grammar.sample_rules(seed, v=4, n=4, m=2, s=2, L=2) for seed in range(3)]
    tokens = np.stack([data.decode(g, np.arange(8)) for g in gs])
    counted = jax.jit(chex.assert_max_traces(coherence.validity, n=1))
    for g in gs:
        assert counted(g, tokens[0]).per_level.shape == (8, 2)
    batched = jax.vmap(coherence.validity)(grammar.stack(gs), tokens)
    for g, x, valid in zip(gs, tokens, batched.valid):
        np.testing.assert_array_equal(valid, coherence.validity(g, x).valid)
    assert batched.valid.all()


def test_bad_tokens_raise_before_compiling():
    g = grammar.sample_rules(0, v=4, n=4, m=2, s=2, L=2)
    with pytest.raises(ValueError, match=r"0\.\.v-1 = 0\.\.3, found values in 0\.\.4"):
        coherence.validity(g, np.array([[0, 1, 2, 4]]))
    with pytest.raises(ValueError, match=r"length d = s\*\*L = 4"):
        coherence.validity(g, np.zeros((3, 8), np.int32))
    traced = jax.jit(lambda x: coherence.validity(g, x).valid)(jnp.full((2, 4), 7))
    assert not traced.any()  # out-of-range leaves simply parse as invalid inside jit


@pytest.mark.parametrize("bits", [32, 3])  # 3 bits: long runs of equal hashes, same answers
def test_copy_lookup_is_exact(bits):
    g = grammar.sample_rules(0, v=4, n=4, m=3, s=2, L=3)
    train, test = data.sample_dataset(0, g, 300, 100)
    lookup = coherence.make_lookup(train, bits=bits)
    assert lookup.window >= (1 if bits == 32 else 300 // 8)
    np.testing.assert_array_equal(coherence.find(lookup, train), np.arange(300))
    np.testing.assert_array_equal(coherence.find(lookup, test), -1)
    both = np.stack([train[:50], test[:50]])
    np.testing.assert_array_equal(coherence.find(lookup, both), [np.arange(50), np.full(50, -1)])
    sizes = jnp.array([20, 300])  # one pool, a prefix per model
    copies = jax.vmap(lambda P: coherence.is_copy(lookup, train[:40], P))(sizes)
    np.testing.assert_array_equal(copies, [np.arange(40) < 20, np.ones(40, bool)])
    assert not coherence.is_copy(lookup, test, 300).any()


def test_copy_lookup_returns_the_first_duplicate_and_checks_input():
    rows = np.array([[1, 2, 3, 0], [0, 0, 0, 0], [1, 2, 3, 0], [3, 3, 3, 3]])
    lookup = coherence.make_lookup(rows)
    np.testing.assert_array_equal(coherence.find(lookup, rows), [0, 1, 0, 3])
    with pytest.raises(ValueError, match="length d = 4"):
        coherence.find(lookup, np.zeros((2, 5), np.int32))
    with pytest.raises(ValueError, match="P >= 1"):
        coherence.make_lookup(np.zeros((0, 4), np.int32))


def test_big_batches_go_through_blocks_with_the_same_answers():
    g = grammar.sample_rules(0, v=3, n=3, m=2, s=2, L=2)
    tokens = np.random.default_rng(0).integers(0, 3, (32771, 4), dtype=np.int32)  # prime: padded blocks
    whole = coherence.validity(g, tokens)
    halves = [coherence.validity(g, part) for part in (tokens[:16384], tokens[16384:])]
    for got, *parts in zip(jax.tree.leaves(whole), *map(jax.tree.leaves, halves)):
        np.testing.assert_array_equal(got, np.concatenate(parts))
    assert 0 < whole.valid.mean() < 1


@pytest.mark.heavy
def test_stacked_lookups_find_in_each_slot_what_its_own_lookup_finds():
    """find_in(stack, g, .) == find(lookup_g, .) for every slot, with hash collisions (bits=3: wide windows)."""
    g1 = grammar.sample_rules(0, v=4, n=3, m=2, s=2, L=3)
    pools = [np.asarray(grammar.sample(jax.random.key(k), g1, 40)) for k in range(3)]
    queries = np.concatenate([pools[0][:10], pools[1][5:15], pools[2][30:], np.zeros((3, g1.d), np.int32)])
    for bits in (32, 3):
        lookups = [coherence.make_lookup(p, bits=bits) for p in pools]
        stacked = coherence.stack_lookups(lookups)
        assert stacked.window == max(x.window for x in lookups)
        found = jax.jit(jax.vmap(coherence.find_in, in_axes=(None, 0, None)))(stacked, jnp.arange(3), queries)
        for g, lookup in enumerate(lookups):
            np.testing.assert_array_equal(found[g], coherence.find(lookup, queries))
        copies = jax.vmap(coherence.is_copy_in, in_axes=(None, 0, None, 0))(stacked, jnp.arange(3), queries,
                                                                          jnp.asarray([10, 40, 35]))
        for g, P in enumerate([10, 40, 35]):
            want = [any((q == pools[g][:P]).all(1)) for q in queries]
            np.testing.assert_array_equal(copies[g], want)


# ---- exact C(t) of the grammar

def enumerate_sequences(g):
    """Every sequence of a tiny grammar once (root class, then all rule choices): (P_max, D)."""
    digits = np.asarray(list(itertools.product(range(g.m), repeat=grammar.num_choices(g))))
    roots = np.repeat(np.arange(g.n), len(digits))
    choices = grammar.split_choices(g, jnp.asarray(np.tile(digits, (g.n, 1))), 0)
    return np.asarray(grammar.expand(g, jnp.asarray(roots), choices))


def correlation_of_uniform_rows(tokens, v):
    """C(t), t = 1..D-1, of the uniform law over ``tokens`` by loops (no finite-sample bias: a law)."""
    num, d = tokens.shape
    out = []
    for t in range(1, d):
        total = 0.0
        for i in range(d - t):
            joint = np.zeros((v, v))
            np.add.at(joint, (tokens[:, i], tokens[:, i + t]), 1 / num)
            total += ((joint - np.outer(joint.sum(1), joint.sum(0))) ** 2).sum()
        out.append(total / (d - t))
    return np.asarray(out)


@pytest.mark.parametrize("v, n, m, s, L, seed", [(3, 3, 2, 2, 2, 0), (3, 3, 2, 2, 3, 1), (4, 2, 2, 3, 2, 2),
                                                 (3, 2, 3, 2, 2, 3)])
def test_exact_correlation_equals_enumeration_of_every_sequence(v, n, m, s, L, seed):
    g = grammar.sample_rules(seed, v=v, n=n, m=m, s=s, L=L)
    tokens = enumerate_sequences(g)
    assert len(np.unique(tokens, axis=0)) == g.p_max  # every sequence, each once: the grammar's law
    want = correlation_of_uniform_rows(tokens, v)
    got = coherence.exact_correlation(g)
    assert got.shape == (g.d - 1,) and want.max() > 1e-3  # some distance is correlated: the check can fail
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)


def test_exact_correlation_of_the_cpu_reproduction_grammar():
    """v=n=8, m=3, s=2, L=3, grammar seed 0: the values quoted in issue 19 (recomputed there in numpy)."""
    g = grammar.sample_rules(0, v=8, n=8, m=3, s=2, L=3)
    np.testing.assert_allclose(coherence.exact_correlation(g)[:4], [0.0199, 0.00158, 0.00090, 0.00018],
                               rtol=0.03)
