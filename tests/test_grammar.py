"""Grammar: sampling, rule tables, validation."""
import jax
import numpy as np
import pytest

from rhm_jax import grammar


def test_sampled_rules_are_distinct_per_level():
    g = grammar.sample_rules(0, v=8, n=8, m=3, s=2, L=3)
    for r in g.rules:
        tuples = np.asarray(r).reshape(-1, 2)
        assert len(np.unique(tuples, axis=0)) == len(tuples)


def test_impossible_synonyms_raise():
    with pytest.raises(ValueError, match=r"m=5 must be <= v\*\*\(s-1\) = 4"):
        grammar.sample_rules(0, v=4, n=4, m=5, s=2, L=2)


def test_sample_shape():
    g = grammar.sample_rules(1, v=8, n=8, m=3, s=2, L=3)
    x = grammar.sample(jax.random.key(0), g, 16)
    assert x.shape == (16, 8) and x.dtype == np.int32
