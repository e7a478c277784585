"""Hypothesis strategies shared by the tests."""
from hypothesis import strategies as st


@st.composite
def rhm_params(draw):
    """Small (v, n, m, s, L, seed) with s = 2 or 3 that satisfy the RHM constraints."""
    s = draw(st.sampled_from([2, 3]))
    L = draw(st.integers(1, 3 if s == 2 else 2))
    v = draw(st.integers(2, 5 if s == 2 else 3))
    m = draw(st.integers(1, min(v ** (s - 1), 4)))
    n = draw(st.integers(1, min(v, v**s // m)))
    return v, n, m, s, L, draw(st.integers(0, 2**16))
