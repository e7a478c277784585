"""Closed forms for the RHM: sizes, uniform-token validity, sample complexity, copy fractions.

Levels follow SPEC: level 1 = the s-tuples above the leaves, level L = the root.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from rhm_jax.grammar import check_params, num_sequences


def p_max(v: int, n: int, m: int, s: int, L: int) -> int:
    """Number of distinct sequences, n * m**((s**L - 1)/(s - 1)), exact."""
    check_params(v, n, m, s, L)
    return num_sequences(n, m, s, L)


def num_valid_tuples(v: int, m: int, s: int, L: int, level: int, n: int | None = None) -> int:
    """Distinct blocks of s**level leaves that parse into a valid level-``level`` node, exact.

    A level-l node below the root is one of v symbols with m**((s**l - 1)/(s - 1)) subtrees each
    (parsing is unambiguous, so they are all distinct): v*m s-tuples at level 1. At the root
    (level L) v is replaced by n, giving P_max.
    """
    n = v if n is None else n
    check_params(v, n, m, s, L)
    if not 1 <= level <= L:
        raise ValueError(f"level={level} must be in 1..L = 1..{L}")
    return (n if level == L else v) * m ** ((s**level - 1) // (s - 1))


def uniform_validity(v: int, m: int, s: int, L: int, n: int | None = None) -> np.ndarray:
    """Probability that a node of level l = 1..L is valid for i.i.d. uniform tokens, (L,) float64.

    Below the root a valid node carries a uniform symbol and is valid with probability
    f = m / v**(s-1) given valid children, so p_l = f**((s**l - 1)/(s - 1)). The root tuple is
    one of n*m root productions out of v**s: p_L = (n*m / v**s) * f**((s**L - s)/(s - 1)), the
    same as below when n = v. Equals num_valid_tuples / v**(s**l), computed exactly.
    """
    return np.array([float(Fraction(num_valid_tuples(v, m, s, L, level, n), v ** (s**level)))
                     for level in range(1, L + 1)])


def sample_complexity(v: int, m: int, level: int, c: float = 1.0) -> float:
    """Training-set size at which level ``level`` is learned, P_l = c * v * m**(level + 1)."""
    return c * v * m ** (level + 1)


def expected_copy_fraction(num_train: int, p_max_value: int) -> float:
    """Copies among samples of a perfect generator (uniform over valid sequences): P / P_max."""
    if not 0 <= num_train <= p_max_value:
        raise ValueError(f"num_train={num_train} must lie in 0..P_max = 0..{p_max_value}")
    return float(Fraction(num_train, p_max_value))
