"""Data of an experiment: the index bijection, nested train/test datasets, the epoch permutation.

Shape letters: N rows, W index words, D = s**L sequence length, B batch, P training-set size.

- Index bijection (``encode`` / ``decode``): every integer in [0, P_max) is one sequence, read
  as the mixed-radix number of its tree (root class, then the rule choices of ``rules[0]``,
  ``rules[1]``, ... node 0 first); exact for any P_max (int64 below 2**63, Python ints above).
- Datasets (``sample_dataset``): disjoint train and test sets drawn without replacement, nested
  in P (a smaller training set is a prefix of a larger one with the same seed), on the host.
- Epoch permutation (``permute``, ``batch_indices``): model i of a grid reads its P_i rows as
  the concatenation of keyed permutations pi_0, pi_1, ... of [0, P_i), computed element-wise on
  device from (data_seed, epoch), so a whole grid shuffles in one fixed-shape program.
- Online batches (``online_key``, ``online_batch``): a model with P = 0 (``ONLINE``) draws each
  step's B rows afresh from its grammar (``grammar.sample``) with a key of (data_seed, step) alone.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from rhm_jax.grammar import (Grammar, check_tokens, expand, host_seed, mixed_digits, num_choices,
                             parse, sample, split_choices)

_SHUFFLE_ROUNDS = 32
ONLINE = 0  # data.num_train = 0: the online regime, a fresh batch from the grammar at every step
# fold_in tag of the online batch key within a step: train.step_key uses tag 0 under the model
# seed, so a model whose data seed equals its model seed still draws its data and noise apart.
_ONLINE_TAG = np.uint32(0xDA7A0)


# ---- Index bijection (exact for any P_max) ---------------------------------------------------
# An index's mixed-radix digits (root class in radix n, then the choices of rules[0], rules[1],
# ..., node 0 first, in radix m) are cut, most significant first, into W "words" whose radix
# product is < 2**31, so words travel as int32 and split into digits on the device. Public
# indices are int64 when P_max < 2**63 and NumPy object arrays of exact Python ints otherwise.

def _word_radices(grammar: Grammar) -> list[list[int]]:
    """Digit radices grouped into words, most significant first, each product < 2**31."""
    groups, product = [[grammar.n]], grammar.n
    for _ in range(num_choices(grammar)):
        if product * grammar.m >= 2**31:
            groups.append([])
            product = 1
        groups[-1].append(grammar.m)
        product *= grammar.m
    return groups


def _words_to_ints(grammar: Grammar, words_NxW: np.ndarray) -> np.ndarray:
    """(N, W) words to indices: int64 when P_max < 2**63, else exact Python ints (object)."""
    dtype = np.int64 if grammar.p_max < 2**63 else object
    index = words_NxW[:, 0].astype(dtype)
    for w, radices in enumerate(_word_radices(grammar)[1:], start=1):
        index = index * math.prod(radices) + words_NxW[:, w].astype(dtype)
    return index


def _ints_to_words(grammar: Grammar, index_N: np.ndarray) -> np.ndarray:
    """Range-checked indices (integer or object dtype) to (N, W) int64 words."""
    rest = index_N.astype(np.int64 if grammar.p_max < 2**63 else object)
    words = []
    for radices in reversed(_word_radices(grammar)[1:]):
        words.append((rest % math.prod(radices)).astype(np.int64))
        rest = rest // math.prod(radices)
    return np.stack([rest.astype(np.int64)] + words[::-1], axis=1)


@jax.jit
def _expand_words(grammar: Grammar, words_NxW: jax.Array) -> jax.Array:
    """Tokens (N, D) of index words: split into digits (unsigned, constant divisors), expand."""
    digits = [mixed_digits(words_NxW[:, w], radices) for w, radices in enumerate(_word_radices(grammar))]
    digits_NxK = jnp.concatenate(digits, axis=1).astype(jnp.int32)
    return expand(grammar, digits_NxK[:, 0], split_choices(grammar, digits_NxK[:, 1:], 0))


def _tokens_of_words(grammar: Grammar, words_NxW: np.ndarray) -> np.ndarray:
    """Host tokens (N, D) int32 of index words; batches padded to a power of two (few compiles)."""
    num = len(words_NxW)
    padded = np.zeros((max(1, 1 << (num - 1).bit_length()), words_NxW.shape[1]), np.int32)
    padded[:num] = words_NxW
    return np.array(_expand_words(grammar, padded)[:num])  # writable host copy


def encode(grammar: Grammar, tokens) -> np.ndarray:
    """Index in [0, P_max) of each sequence (..., D); ValueError if a sequence is not valid."""
    check_tokens(grammar, tokens)
    tokens = np.asarray(tokens, np.int32)
    num = int(np.prod(tokens.shape[:-1]))
    flat = np.zeros((max(1, 1 << (num - 1).bit_length()), grammar.d), np.int32)  # few compiles
    flat[:num] = tokens.reshape(-1, grammar.d)
    rules = [np.asarray(r)[:num] for r in parse(grammar, flat)]
    bad = np.flatnonzero(rules[-1][:, 0] < 0)
    if bad.size:
        raise ValueError(f"tokens row {bad[0]} (of {num}) is not a valid sequence of the grammar")
    m = grammar.m
    digits = np.concatenate([rules[-1] // m] + [rules[grammar.L - 1 - i] % m for i in range(grammar.L)], 1)
    words, start = [], 0
    for radices in _word_radices(grammar):
        word = np.zeros(num, np.int64)
        for j, radix in enumerate(radices):
            word = word * radix + digits[:, start + j]
        words.append(word)
        start += len(radices)
    return _words_to_ints(grammar, np.stack(words, axis=1)).reshape(tokens.shape[:-1])


def decode(grammar: Grammar, indices) -> np.ndarray:
    """Sequences (..., D) int32 of indices in [0, P_max) (ints, int arrays or object arrays)."""
    index = np.asarray(indices)
    if index.dtype != object and not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {index.dtype}")
    flat = index.reshape(-1)
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= grammar.p_max):
        raise ValueError(f"indices must lie in 0..P_max-1 = 0..{grammar.p_max - 1}")
    tokens = _tokens_of_words(grammar, _ints_to_words(grammar, flat))
    return tokens.reshape(*index.shape, grammar.d)


# ---- Datasets ----------------------------------------------------------------------------------

def _first_occurrences(grammar: Grammar, words_NxW: np.ndarray) -> np.ndarray:
    """Sorted positions of the first occurrence of each distinct row, exactly."""
    exact = grammar.p_max < 2**63
    if exact:  # the index itself is the sort key
        key = _words_to_ints(grammar, words_NxW)
    else:  # a 64-bit mix of the words; equal mixes are settled by comparing rows below
        key = np.zeros(len(words_NxW), np.uint64)
        for w in range(words_NxW.shape[1]):
            key = (key ^ words_NxW[:, w].astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
    order = np.argsort(key, kind="stable")  # stable: the earliest copy leads each run
    starts = np.ones(len(order), bool)
    starts[1:] = key[order[1:]] != key[order[:-1]]
    if not exact:  # duplicates are rare here (P_max >= 2**63), so a loop is cheap
        heads = np.flatnonzero(starts)
        for q in np.flatnonzero(~starts):
            head = heads[np.searchsorted(heads, q, side="right") - 1]
            earlier = words_NxW[order[head:q]][starts[head:q]]
            starts[q] = not (earlier == words_NxW[order[q]]).all(axis=1).any()
    return np.sort(order[starts])


def _draw_words(rng: np.random.Generator, grammar: Grammar, num: int) -> np.ndarray:
    """``num`` uniform random trees as (num, W) index words (each word uniform in its range)."""
    return np.stack([rng.integers(0, math.prod(r), size=num, dtype=np.int64)
                     for r in _word_radices(grammar)], axis=1)


def _index_order(rng: np.random.Generator, grammar: Grammar, total: int) -> np.ndarray:
    """Words (total, W) of the first ``total`` indices of a seed-determined uniform ordering.

    The ordering is the first-occurrence order of an i.i.d. stream of random trees (blocks of
    fixed sizes, so the stream does not depend on ``total``) until half of P_max is reached,
    then a shuffle of the unseen rest. Prefixes of it are nested samples without replacement.
    """
    half, block = (grammar.p_max + 1) // 2, 2**10
    seen = np.zeros((0, len(_word_radices(grammar))), np.int64)
    while len(seen) < min(total, half):
        stream = np.concatenate([seen, _draw_words(rng, grammar, block)])
        seen = stream[_first_occurrences(grammar, stream)]
        block = min(4 * block, 2**22)
    if total <= half:
        return seen[:total]
    # total > P_max/2 means P_max < 2 * total: small enough to list the unseen indices.
    unseen = np.ones(grammar.p_max, bool)
    unseen[_words_to_ints(grammar, seen[:half])] = False
    rest = _ints_to_words(grammar, rng.permutation(np.flatnonzero(unseen)))
    return np.concatenate([seen[:half], rest])[:total]


def sample_dataset(key_or_seed: jax.Array | int, grammar: Grammar, num_train: int,
                   num_test: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train (num_train, D) and test (num_test, D) int32 sets, drawn without replacement.

    Test rows are the first ``num_test`` of a seed-determined random ordering of all P_max
    sequences, training rows the next ``num_train``: the test set does not depend on
    ``num_train``, and a smaller training set is a prefix of a larger one (same seed, num_test).
    """
    for name, value in dict(num_train=num_train, num_test=num_test).items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    total = int(num_train) + int(num_test)
    if total > grammar.p_max:
        raise ValueError(f"num_train + num_test = {num_train} + {num_test} = {total} exceeds "
                         f"P_max = {grammar.p_max}: not enough distinct sequences")
    rng = np.random.default_rng([*np.atleast_1d(host_seed(key_or_seed)), 0xDA7A])  # not sample_rules' stream
    tokens = _tokens_of_words(grammar, _index_order(rng, grammar, total))
    return tokens[num_test:], tokens[:num_test]


# ---- Epoch permutation (device, element-wise) ---------------------------------------------

def _mix(x: jax.Array) -> jax.Array:
    """A 32-bit integer hash with full avalanche (uint32 in, uint32 out)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def permute(index: jax.Array, size: jax.Array, seed: jax.Array, epoch: jax.Array) -> jax.Array:
    """pi_(seed, epoch)(index): a keyed bijection of [0, size), element-wise, ``size`` traced.

    A swap-or-not shuffle (Hoang, Morris, Rogaway 2012): round r pairs x with k_r - x (mod size)
    and swaps the pair when a hash of max(x, k_r - x) says so; each round is an involution, so
    the composition is a bijection for any size, with no loop, storage or sort. (A Feistel
    network would need cycle walking, a data-dependent while loop that costs a device-to-host
    sync per iteration on GPUs.) After r rounds an index is left unswapped with probability 2**-r.
    """
    size = jnp.asarray(size, jnp.uint32)
    key = _mix(_mix(jnp.asarray(seed, jnp.uint32) ^ jnp.uint32(0x9E3779B9)) ^ jnp.asarray(epoch, jnp.uint32))
    x = jnp.asarray(index, jnp.uint32)
    for r in range(_SHUFFLE_ROUNDS):
        k = _mix(key + jnp.uint32(0x632BE5AB * (r + 1) % 2**32)) % size
        partner = (k + size - x) % size  # size < 2**31, so no wrap-around
        coin = _mix(jnp.maximum(x, partner) ^ _mix(key ^ jnp.uint32(0x85EBCA6B * (r + 1) % 2**32)))
        x = jnp.where((coin >> 7) & 1 == 1, partner, x)
    return x.astype(jnp.int32)


def batch_indices(data_seed: jax.Array, P: jax.Array, step: jax.Array, batch_size: int,
                  rows_per_step: jax.Array | None = None) -> jax.Array:
    """Pool rows (B,) read by one model at ``step``: stream elements [step*b, step*b + B).

    ``b = rows_per_step`` (traced, 1 <= b <= B; default B) is how far the stream advances per step:
    with b < B only the first b rows are the step's own (the rest are the next ones, to be given
    zero weight), which keeps one fixed batch shape for every model of a grid.
    """
    P = jnp.asarray(P, jnp.int32)
    step = jnp.asarray(step, jnp.int32)
    b = batch_size if rows_per_step is None else jnp.asarray(rows_per_step, jnp.int32)
    # step*b may overflow int32; split step = q*P + r so that only r*b < P*B is ever formed.
    q, r = step // P, step % P
    offset = r * b + jnp.arange(batch_size, dtype=jnp.int32)  # < P*B + B
    epoch_B = q * b + offset // P
    position_B = offset % P
    return jax.vmap(permute, in_axes=(0, None, None, 0))(position_B, P, data_seed, epoch_B)


# ---- Online batches (device) ------------------------------------------------------------------

def online_key(data_seed: jax.Array, step: jax.Array) -> jax.Array:
    """The key of a model's online batch at ``step``: fold_in(fold_in(key(data_seed), step), tag), one per step."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(data_seed), step), _ONLINE_TAG)


def online_batch(grammar_G: Grammar, g: jax.Array, data_seed: jax.Array, step: jax.Array,
                 batch_size: int) -> jax.Array:
    """(B, D) int32 rows drawn uniformly (with replacement) from grammar ``g`` of a stack, keyed by (data_seed, step).

    ``grammar_G``: grammars stacked on a leading axis G (``grammar.stack``); ``g``, ``data_seed`` and
    ``step`` may be traced, so a vmapped grid draws every model's batch in one program. The rows
    are those of ``grammar.sample``: every tree equally likely, so every sequence is.
    """
    own = jax.tree_util.tree_map(lambda x: x[g], grammar_G)
    return sample(online_key(data_seed, step), own, batch_size)
