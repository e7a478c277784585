"""Data: index bijection, nested train/test datasets, the epoch permutation and batch stream."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rhm_jax import data, grammar


def reference_expand(g, digits):
    """Plain-Python tree expansion of index digits (root class, then choices in index order)."""
    rules, symbols, pos = [np.asarray(r) for r in g.rules], [digits[0]], 1
    for level in range(g.L):
        symbols = [int(t) for k, a in enumerate(symbols) for t in rules[level][a, digits[pos + k]]]
        pos += g.s**level
    return symbols



# ---------------------------------------------------------------------------- index bijection

def test_index_bijection_follows_the_digit_convention():
    g = grammar.sample_rules(3, v=3, n=2, m=2, s=2, L=3)  # P_max = 2 * 2**7 = 256
    radices = [g.n] + [g.m] * grammar.num_choices(g)
    every = list(itertools.product(*[range(r) for r in radices]))  # most significant first
    expected = np.array([reference_expand(g, digits) for digits in every])
    decoded = data.decode(g, np.arange(g.p_max))
    np.testing.assert_array_equal(decoded, expected)
    np.testing.assert_array_equal(data.encode(g, decoded), np.arange(g.p_max))


def test_index_round_trip_beyond_int64():
    g = grammar.sample_rules(0, v=32, n=32, m=8, s=2, L=5)
    assert g.p_max > 2**63
    rng = np.random.default_rng(0)
    index = np.array([0, 1, 2**63, 2**64 + 5, g.p_max - 1]
                     + [int(rng.integers(0, 2**62)) * 2**36 + int(rng.integers(0, 2**36)) for _ in range(27)],
                     dtype=object)
    tokens = data.decode(g, index)
    assert (data.encode(g, tokens) == index).all()
    assert len(np.unique(tokens, axis=0)) == len(index)
    sampled = np.asarray(grammar.sample(jax.random.key(0), g, 32))
    np.testing.assert_array_equal(data.decode(g, data.encode(g, sampled)), sampled)
    root = data.decode(g, np.array([c * (g.p_max // g.n) for c in range(g.n)], dtype=object))
    np.testing.assert_array_equal(np.asarray(grammar.parse(g, root)[-1])[:, 0] // g.m, np.arange(g.n))


def test_index_errors():
    g = grammar.sample_rules(0, v=4, n=4, m=2, s=2, L=2)
    with pytest.raises(ValueError, match=r"0\.\.P_max-1 = 0\.\.31"):
        data.decode(g, [g.p_max])
    with pytest.raises(ValueError, match="0..P_max-1"):
        data.decode(g, [-1])
    with pytest.raises(ValueError, match="integers"):
        data.decode(g, [0.5])
    valid = data.decode(g, [0, 5, 9, 31])
    rules1 = {tuple(t) for t in np.asarray(g.rules[1]).reshape(-1, 2)}
    bad_pair = next(p for p in itertools.product(range(4), repeat=2) if p not in rules1)
    valid[2, :2] = bad_pair
    with pytest.raises(ValueError, match="row 2 .* not a valid sequence"):
        data.encode(g, valid)
    with pytest.raises(ValueError, match=r"0\.\.v-1 = 0\.\.3"):
        data.encode(g, valid + 4)


@pytest.mark.parametrize("v, m, L, sizes", [
    (4, 2, 3, (20, 60, 2**8 - 8)),  # P_max = 512: exhaustive end goes past P_max / 2
    (32, 8, 5, (10, 300, 3000)),  # P_max > 2**63: random trees with duplicate rejection
])
def test_datasets_are_disjoint_nested_and_independent_of_num_train(v, m, L, sizes):
    g = grammar.sample_rules(0, v=v, n=v, m=m, s=2, L=L)
    num_test = 8 if g.p_max < 2**20 else 100
    sets = [data.sample_dataset(7, g, p, num_test) for p in sizes]
    train, test = sets[-1]
    assert train.shape == (sizes[-1], g.d) and test.shape == (num_test, g.d)
    both = np.concatenate([train, test])
    assert len(np.unique(both, axis=0)) == len(both)  # disjoint and without replacement
    assert all((r >= 0).all() for r in grammar.parse(g, both))
    for (small_train, small_test), p in zip(sets, sizes):
        np.testing.assert_array_equal(small_train, train[:p])
        np.testing.assert_array_equal(small_test, test)
    other_train, other_test = data.sample_dataset(8, g, sizes[0], num_test)
    assert not np.array_equal(other_test, test)


def test_dataset_can_exhaust_p_max_and_is_uniform():
    g = grammar.sample_rules(0, v=3, n=2, m=2, s=2, L=2)  # P_max = 16
    train, test = data.sample_dataset(0, g, 12, 4)
    np.testing.assert_array_equal(np.sort(data.encode(g, np.concatenate([train, test]))), np.arange(16))
    first = [data.encode(g, data.sample_dataset(seed, g, 3, 1)[1])[0] for seed in range(400)]
    counts = np.bincount(first, minlength=16)
    chi2 = ((counts - 25) ** 2 / 25).sum()
    assert chi2 < 15 + 6 * np.sqrt(30)
    with pytest.raises(ValueError, match=r"num_train \+ num_test = 13 \+ 4 = 17 exceeds P_max = 16"):
        data.sample_dataset(0, g, 13, 4)
    with pytest.raises(ValueError, match="num_test must be an integer >= 0"):
        data.sample_dataset(0, g, 1, -1)


# ---------------------------------------------------------------------------- epoch permutation

def test_permute_is_a_bijection_of_range_P():
    # One fixed-shape program for every P: entries past P repeat index P-1 and are ignored.
    perm = jax.jit(jax.vmap(data.permute, in_axes=(0, None, None, None)))
    for P in [1, 2, 3, 5, 7, 8, 9, 63, 100, 1000, 1024, 1025, 5000]:
        for seed, epoch in [(0, 0), (7, 3), (2**32 - 1, 2**31)]:
            indices = np.minimum(np.arange(5000), P - 1)
            image = np.asarray(perm(jnp.asarray(indices), jnp.int32(P), np.uint32(seed), np.uint32(epoch)))[:P]
            np.testing.assert_array_equal(np.sort(image), np.arange(P))


@pytest.mark.heavy
def test_permutation_changes_with_epoch_and_seed():
    perm = jax.jit(jax.vmap(jax.vmap(data.permute, in_axes=(0, None, None, None)), in_axes=(None, None, None, 0)))
    epochs = jnp.arange(400, dtype=jnp.uint32)
    orders = np.asarray(perm(jnp.arange(100), 100, np.uint32(0), epochs))  # (epochs, P)
    assert len({tuple(o) for o in orders}) == 400
    assert not np.array_equal(orders[0], np.arange(100))
    assert not np.array_equal(orders[0], np.asarray(perm(jnp.arange(100), 100, np.uint32(1), epochs))[0])
    # Uniform-looking: where index 0 lands over 400 epochs (chi-square, 99 d.o.f., loose bound).
    counts = np.bincount(orders[:, 0], minlength=100)
    assert ((counts - 4.0) ** 2 / 4.0).sum() < 160
    # Even 3 elements get all 6 orders across epochs.
    small = np.asarray(perm(jnp.arange(3), 3, np.uint32(0), epochs[:60]))
    assert len({tuple(o) for o in small}) == 6


def test_stream_is_a_concatenation_of_epoch_permutations():
    B, steps, epochs = 8, 40, 6
    indices = jax.jit(jax.vmap(data.batch_indices, in_axes=(None, None, 0, None)), static_argnums=3)
    for P in [1, 5, 12, 16]:  # P < B, batches straddling epochs, P a multiple of B
        stream = np.asarray(indices(np.uint32(3), jnp.int32(P), jnp.arange(steps), B)).ravel()
        by_epoch = stream[: epochs * P].reshape(epochs, P)
        for e in range(epochs):
            np.testing.assert_array_equal(np.sort(by_epoch[e]), np.arange(P))
        if P >= 5:
            assert len({tuple(row) for row in by_epoch}) > epochs // 2  # orders change across epochs


def test_batch_indices_far_into_training_match_the_stream_definition():
    P, B, step = 1000, 64, 2**30 + 12345  # step * B overflows int32
    got = np.asarray(jax.jit(data.batch_indices, static_argnums=3)(np.uint32(5), P, step, B))
    positions = [step * B + b for b in range(B)]
    perm = jax.jit(data.permute)
    want = [int(perm(j % P, P, np.uint32(5), np.uint32(j // P))) for j in positions]
    np.testing.assert_array_equal(got, want)


@pytest.mark.heavy
def test_full_batch_steps_read_one_whole_epoch_each():
    B, P = 8, 5  # rows_per_step = P < B: the authors' full batch inside a batch of B
    indices = jax.jit(jax.vmap(data.batch_indices, in_axes=(None, None, 0, None, None)), static_argnums=3)
    steps_SxB = np.asarray(indices(np.uint32(3), jnp.int32(P), jnp.arange(6), B, jnp.int32(P)))
    perm = jax.jit(jax.vmap(data.permute, in_axes=(0, None, None, None)))
    for step, row in enumerate(steps_SxB):
        np.testing.assert_array_equal(row[:P], np.asarray(perm(jnp.arange(P), P, np.uint32(3), np.uint32(step))))
    # rows_per_step = B is the default stream
    default = np.asarray(indices(np.uint32(3), jnp.int32(P), jnp.arange(6), B, jnp.int32(B)))
    np.testing.assert_array_equal(default, np.asarray(jax.vmap(data.batch_indices, in_axes=(None, None, 0, None))(
        np.uint32(3), jnp.int32(P), jnp.arange(6), B)))
