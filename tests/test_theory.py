"""Theory: closed forms against SPEC numbers, brute-force enumeration and Monte Carlo."""
import itertools

import numpy as np
import pytest

from rhm_jax import coherence, data, grammar, theory


def test_uniform_validity_reproduces_the_spec_numbers():
    rounded = [float(f"{p:.3g}") for p in theory.uniform_validity(8, 3, 2, 3)]  # SPEC gives 3 digits
    assert rounded == [0.375, 0.0527, 0.00104]


@pytest.mark.parametrize("v, n, m, s, L", [(8, 8, 3, 2, 3), (8, 4, 3, 2, 3), (5, 3, 4, 3, 2), (6, 9, 2, 2, 1)])
def test_uniform_validity_matches_the_formula(v, n, m, s, L):
    f = m / v ** (s - 1)
    expected = [f ** ((s**l - 1) / (s - 1)) for l in range(1, L)]
    expected.append(n * m / v**s * f ** ((s**L - s) / (s - 1)))
    np.testing.assert_allclose(theory.uniform_validity(v, m, s, L, n=n), expected, rtol=1e-12)


@pytest.mark.parametrize("v, n, m, s, L", [(4, 2, 2, 2, 3), (3, 3, 2, 3, 2)])
def test_uniform_tokens_match_theory_within_sampling_error(v, n, m, s, L):
    g = grammar.sample_rules(1, v=v, n=n, m=m, s=s, L=L)
    num = 200_000
    tokens = np.random.default_rng(0).integers(0, v, (num, g.d), dtype=np.int32)
    measured = np.asarray(coherence.validity(g, tokens).per_level).mean(0)
    p = theory.uniform_validity(v, m, s, L, n=n)
    nodes = num * s ** (L - np.arange(1, L + 1))  # nodes of one level are independent
    assert (np.abs(measured - p) < 5 * np.sqrt(p * (1 - p) / nodes)).all(), (measured, p)


def test_counts_match_brute_force_enumeration():
    v, n, m, s, L = 3, 2, 2, 2, 3
    g = grammar.sample_rules(2, v=v, n=n, m=m, s=s, L=L)
    every = np.array(list(itertools.product(range(v), repeat=g.d)), np.int32)  # all 3**8 sequences
    result = coherence.validity(g, every)
    assert int(result.valid.sum()) == theory.p_max(v, n, m, s, L) == g.p_max
    for level in range(1, L + 1):
        # Nodes of one level see every block of s**level leaves equally often over all sequences.
        valid_blocks = np.asarray(result.nodes[level - 1])[:, 0].sum() / v ** (g.d - s**level)
        assert valid_blocks == theory.num_valid_tuples(v, m, s, L, level, n=n)
    assert theory.num_valid_tuples(8, 3, 2, 3, 1) == 24  # v*m productions at level 1


def test_p_max_is_exact_beyond_int64():
    assert theory.p_max(32, 32, 8, 2, 5) == 32 * 8**31
    assert theory.p_max(16, 16, 4, 2, 4) == 17_179_869_184  # SPEC's "P_max ~ 1.7e10"
    with pytest.raises(ValueError, match=r"m=5 must be <= v\*\*\(s-1\) = 4"):
        theory.p_max(4, 4, 5, 2, 2)


def test_sample_complexity_and_copy_fraction():
    assert theory.sample_complexity(16, 4, 4) == 16 * 4**5 == 16384  # SPEC's P_4 for v=16, m=4
    assert theory.sample_complexity(8, 3, 1, c=0.5) == 36.0
    assert theory.expected_copy_fraction(1024, theory.p_max(8, 8, 3, 2, 3)) == pytest.approx(0.0585, abs=1e-4)
    with pytest.raises(ValueError, match="num_train=20 must lie in 0..P_max = 0..16"):
        theory.expected_copy_fraction(20, 16)


def test_perfect_generator_copies_at_the_predicted_rate():
    g = grammar.sample_rules(0, v=3, n=3, m=2, s=2, L=2)  # P_max = 24
    train, _ = data.sample_dataset(0, g, 10, 2)
    samples = data.decode(g, np.random.default_rng(1).integers(0, g.p_max, 20_000))  # uniform over valid
    copies = coherence.is_copy(coherence.make_lookup(train), samples, 10)
    expected = theory.expected_copy_fraction(10, g.p_max)
    assert abs(float(copies.mean()) - expected) < 5 * np.sqrt(expected * (1 - expected) / 20_000)
