"""Networks: bpUNet against a brute-force PyTorch-semantics reference, counts, tree structure, vmap."""
from __future__ import annotations

import dataclasses
import functools
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from rhm_jax import diffusion, networks
from rhm_jax.diffusion import uniform
from rhm_jax.networks import bpunet, transformer


def process(kind: str, v: int, T: int = 200):
    cfg = diffusion.default_config(kind)
    cfg.T = T
    return diffusion.make(cfg, v)


def config(**overrides):
    cfg = networks.default_config()
    cfg.update(overrides)
    return cfg


def built(kind: str = "uniform", v: int = 4, s: int = 2, L: int = 3, **overrides):
    """(network, jitted init, jitted apply), shared across tests to keep compilations few."""
    settings = {"name": "bpunet", "width": 16, "heads": 2, "depth": 1, **overrides}
    return _built(kind, v, s, L, tuple(sorted(settings.items())))


@functools.lru_cache(maxsize=None)
def _built(kind: str, v: int, s: int, L: int, settings: tuple):
    net = networks.make(config(**dict(settings)), v, s, L, process(kind, v))
    return net, jax.jit(net.init), jax.jit(net.apply)


def tokens(seed: int, shape: tuple[int, ...], high: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, high, shape), jnp.int32)


def one_token_moved(x_D: jax.Array, high: int) -> jax.Array:
    """Rows: x itself, then x with token j moved to (x_j + 1) % high, for j = 0..D-1."""
    d = x_D.shape[0]
    return jnp.concatenate([x_D[None], jnp.where(jnp.eye(d, dtype=bool), (x_D + 1) % high, x_D)])


def perturbed(params, seed: int):
    """Move every parameter (LayerNorm scale/offset too) so that tests exercise all of them."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda a: a + np.float32(0.3) * rng.standard_normal(a.shape, np.float32), params)


# ---------- brute-force reference: the authors' forward in PyTorch layout (B, C, N), float64 ----------


def gelu_erf(x):
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def conv1d(x_BxCxN, filt_OxCxK, stride):
    """PyTorch F.conv1d without padding: out[b,o,j] = sum_{c,k} x[b,c,j*stride+k] filt[o,c,k]."""
    O, _, K = filt_OxCxK.shape
    n_out = (x_BxCxN.shape[2] - K) // stride + 1
    out = np.zeros((x_BxCxN.shape[0], O, n_out))
    for j in range(n_out):
        for k in range(K):
            out[:, :, j] += x_BxCxN[:, :, j * stride + k] @ filt_OxCxK[:, :, k].T
    return out


def conv_transpose1d(x_BxCxN, filt_CxOxK, stride):
    """PyTorch F.conv_transpose1d: out[b,o,j*stride+k] += x[b,c,j] filt[c,o,k]."""
    _, O, K = filt_CxOxK.shape
    n = x_BxCxN.shape[2]
    out = np.zeros((x_BxCxN.shape[0], O, (n - 1) * stride + K))
    for j in range(n):
        for k in range(K):
            out[:, :, j * stride + k] += x_BxCxN[:, :, j] @ filt_CxOxK[:, :, k]
    return out


def channel_layer_norm(x_BxCxN, scale, offset):
    mean = x_BxCxN.mean(1, keepdims=True)
    var = x_BxCxN.var(1, keepdims=True)
    return (x_BxCxN - mean) / np.sqrt(var + 1e-5) * scale[None, :, None] + offset[None, :, None]


def reference_bpunet(params, feats_BxCxN, s, L, W):
    """The authors' bpUNET.forward on our stored parameters, converted to PyTorch filter layouts."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
    C = feats_BxCxN.shape[1]
    h = gelu_erf(conv1d(feats_BxCxN, p["embed"]["kernel"].T[:, :, None], 1) / math.sqrt(C))
    downs = [h]
    for i in range(L):
        filt = p[f"down_{i}"]["kernel"].reshape(s, W, W).transpose(2, 1, 0)  # (out, in, k)
        ln = p[f"down_{i}_norm"]
        h = gelu_erf(channel_layer_norm(conv1d(h, filt, s) / math.sqrt(s * W), ln["scale"], ln["bias"]))
        downs.append(h)
    for i in range(L):
        filt = p[f"up_{i}"]["kernel"].reshape(2 * W, s, W).transpose(0, 2, 1)  # (in, out, k)
        ln = p[f"up_{i}_norm"]
        cat = np.concatenate([h, downs.pop()], axis=1)  # the first up block: the bottleneck twice
        h = gelu_erf(channel_layer_norm(conv_transpose1d(cat, filt, s) / math.sqrt(s * 2 * W), ln["scale"], ln["bias"]))
    cat = np.concatenate([h, downs.pop()], axis=1)
    return conv1d(cat, p["readout"]["kernel"].T[:, :, None], 1) / (2 * W)


@pytest.mark.parametrize("v,s,L,W", [(4, 2, 3, 16), (3, 3, 2, 8)])
def test_bpunet_matches_pytorch_semantics_reference(v, s, L, W):
    T = 200
    net, init, apply = built("uniform", v, s, L, width=W)
    params = perturbed(init(jax.random.key(0)), 1)
    step_B = np.array([1, 37, 120, 200])
    x_BxD = tokens(2, (4, s**L), v)
    logits_BxDxV = apply(params, x_BxD, jnp.asarray(step_B, jnp.float32) / T)
    # the message and its standardization, straight from SPEC sections 2 and 3
    a_T1 = np.cumprod(1.0 - (1e-3 + (0.1 - 1e-3) * np.arange(T + 1) / T))
    mean = np.mean(a_T1 + (1 - a_T1) / v)
    std = np.sqrt(np.mean(a_T1 + (1 - a_T1) / v**2) - mean**2)
    a_B = a_T1[step_B][:, None, None]
    message_BxVxD = a_B * np.eye(v)[np.asarray(x_BxD)].transpose(0, 2, 1) + (1 - a_B) / v
    expected_BxVxD = reference_bpunet(params, (message_BxVxD - mean) / std, s, L, W)
    np.testing.assert_allclose(np.asarray(logits_BxDxV), expected_BxVxD.transpose(0, 2, 1), rtol=2e-4, atol=2e-5)


def test_param_counts_match_paper_and_closed_form():
    # v=8, s=2, L=3, W=1024, uniform (input v channels), no biases:
    #   embedding 1x1 conv v->W:                 8 * 1024                      =      8,192
    #   3 down blocks, conv s*W->W + LN(2W):  3 * (2*1024*1024 + 2*1024)       =  6,297,600
    #   3 up blocks, convT 2W->W k=s + LN:    3 * (2*1024*1024*2 + 2*1024)     = 12,589,056
    #   readout 1x1 conv 2W->v:               2048 * 8                         =     16,384
    #   total                                                                  = 18,911,232
    # masked: the embedding sees v+1 = 9 channels, 1,024 more: 18,912,256.
    for kind, expected in (("uniform", 18_911_232), ("masked", 18_912_256)):
        net = networks.make(config(width=1024), 8, 2, 3, process(kind, 8))
        assert net.num_params(jax.eval_shape(net.init, jax.random.key(0))) == expected
        assert bpunet.param_count(8 + (kind == "masked"), 8, 2, 3, 1024) == expected


@pytest.mark.parametrize("time_conditioning", [True, False])
def test_transformer_param_count_closed_form(time_conditioning):
    cfg = config(name="transformer", width=24, depth=2, heads=3, mlp_ratio=2.5, time_conditioning=time_conditioning)
    net = networks.make(cfg, 6, 2, 3, process("masked", 6))
    count = net.num_params(jax.eval_shape(net.init, jax.random.key(0)))
    assert count == transformer.param_count(7, 6, 8, 24, 2, 2.5, time_conditioning)
    # sizes from ~0.1M to ~100M are reachable by width/depth alone
    assert transformer.param_count(9, 8, 16, 64, 2, 4, True) < 2e5
    assert transformer.param_count(9, 8, 16, 1024, 8, 4, True) > 1e8


def test_init_statistics():
    _, init, _ = built("uniform", 8, 2, 3, width=256)
    params = init(jax.random.key(3))
    for name, layer in params.items():
        if name.endswith("_norm"):
            np.testing.assert_array_equal(layer["scale"], 1.0)
            np.testing.assert_array_equal(layer["bias"], 0.0)
        else:
            # stored N(0, 1); the forward divides by sqrt(fan_in) (the reference test pins that down)
            kernel = np.asarray(layer["kernel"])
            assert kernel.dtype == np.float32
            tol = 5.0 / math.sqrt(kernel.size)
            assert abs(kernel.mean()) < tol and abs(kernel.std() - 1.0) < tol, name
    # different arrays get independent draws
    assert abs(np.corrcoef(np.ravel(params["down_0"]["kernel"]), np.ravel(params["down_1"]["kernel"]))[0, 1]) < 0.02
    # effective weights kernel / sqrt(fan_in): unit-variance inputs give unit-variance pre-activations
    feats = np.random.default_rng(0).standard_normal((4096, 8))
    pre = feats @ np.asarray(params["embed"]["kernel"]) / math.sqrt(8)
    assert abs(pre.std() - 1.0) < 0.08  # 8 x 256 kernel entries: the sample std is within ~2%


def test_transformer_init_statistics():
    _, init, _ = built("masked", 8, 2, 3, name="transformer", width=64, heads=4)
    for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(init(jax.random.key(0)))):
        name = jax.tree_util.keystr(path)
        if name.endswith("'kernel']"):
            expected = leaf.shape[0] ** -0.5  # LeCun normal
        elif name.endswith("'embedding']") or name.endswith("'pos_embed']"):
            expected = leaf.shape[-1] ** -0.5
        else:
            np.testing.assert_array_equal(leaf, 1.0 if name.endswith("'scale']") else 0.0, err_msg=name)
            continue
        assert abs(leaf.std() / expected - 1.0) < 6.0 / math.sqrt(leaf.size), name
        assert abs(leaf.mean()) < 6.0 * expected / math.sqrt(leaf.size), name


def test_every_logit_sees_every_position():
    v, d = 4, 8
    _, init, apply = built("uniform", v, 2, 3)
    x_BxD = one_token_moved(tokens(1, (d,), v), v)
    logits_BxDxV = apply(init(jax.random.key(0)), x_BxD, jnp.full((d + 1,), 0.3))
    changed_DxD = np.abs(np.asarray(logits_BxDxV[1:] - logits_BxDxV[:1])).max(-1) > 1e-6
    assert changed_DxD.all()  # changed_DxD[j, i]: logit i moved when token j changed


def test_down_path_is_a_tree_of_stride_s():
    v, s, L, W = 3, 3, 2, 8
    d = s**L
    _, init, _ = built("uniform", v, s, L, width=W)
    params = init(jax.random.key(0))
    module = bpunet.BPUNet(v=v, s=s, L=L, width=W)
    features = process("uniform", v).input_features

    @jax.jit
    def downs(x_BxD):
        _, state = module.apply({"params": params}, features(x_BxD, jnp.full((d + 1,), 0.2)), mutable=["intermediates"])
        return state["intermediates"]["down"]

    downs_k = downs(one_token_moved(tokens(5, (d,), v), v))
    assert [h.shape for h in downs_k] == [(d + 1, s ** (L - k), W) for k in range(1, L + 1)]
    for k, h_BxnxW in enumerate(downs_k):
        # changed[pos, j]: node j of down block k moved when token pos changed; only its subtree can
        changed = np.abs(np.asarray(h_BxnxW[1:] - h_BxnxW[:1])).max(-1) > 1e-6
        subtree = np.arange(d)[:, None] // s ** (k + 1) == np.arange(s ** (L - k - 1))[None, :]
        np.testing.assert_array_equal(changed, subtree)


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["bpunet", "transformer"])
def test_bf16_close_to_fp32(name):
    v = 8
    _, init, apply32 = built("uniform", v, 2, 3, name=name, width=32)
    _, _, apply16 = built("uniform", v, 2, 3, name=name, width=32, dtype="bfloat16")
    params = perturbed(init(jax.random.key(0)), 1)
    x_BxD, t_B = tokens(2, (16, 8), v), jnp.linspace(0.05, 1.0, 16)
    l32, l16 = apply32(params, x_BxD, t_B), apply16(params, x_BxD, t_B)
    assert l16.dtype == jnp.float32
    chex.assert_tree_all_finite(l16)
    rel = float(jnp.linalg.norm(l16 - l32) / jnp.linalg.norm(l32))
    assert 0 < rel < 2e-2


@pytest.mark.heavy
@pytest.mark.parametrize("name,kind", [("bpunet", "masked"), ("transformer", "uniform")])
def test_vmap_over_models_equals_separate_models(name, kind):
    v, M, B, d = 4, 3, 5, 8
    net, init, apply = built(kind, v, 2, 3, name=name)
    keys_M = jax.random.split(jax.random.key(0), M)
    x_MxBxD = tokens(1, (M, B, d), v + (kind == "masked"))
    t_MxB = jnp.asarray(np.random.default_rng(2).uniform(size=(M, B)), jnp.float32)

    @jax.jit
    def grid(keys_M, x_MxBxD, t_MxB):
        params_M = jax.vmap(net.init)(keys_M)
        return params_M, jax.vmap(net.apply)(params_M, x_MxBxD, t_MxB)

    params_M, logits_MxBxDxV = jax.device_get(grid(keys_M, x_MxBxD, t_MxB))  # numpy: no eager slicing ops
    chex.assert_shape(logits_MxBxDxV, (M, B, d, v))
    chex.assert_tree_all_finite(logits_MxBxDxV)
    for i in range(M):
        params_i = init(keys_M[i])
        chex.assert_trees_all_close(jax.tree_util.tree_map(lambda a: a[i], params_M), params_i)
        chex.assert_trees_all_close(logits_MxBxDxV[i], apply(params_i, x_MxBxD[i], t_MxB[i]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(logits_MxBxDxV[0], logits_MxBxDxV[1])


def test_apply_compiles_once_for_new_params():
    net, init, _ = built("uniform", 4, 2, 3)
    apply = jax.jit(chex.assert_max_traces(net.apply, n=1))
    x_BxD, t_B = tokens(0, (3, 8), 4), jnp.array([0.1, 0.5, 0.9])
    outs = [apply(init(jax.random.key(k)), x_BxD, t_B) for k in range(3)]
    assert not np.allclose(outs[0], outs[1])


@pytest.mark.heavy
@pytest.mark.parametrize("kind,authors", [("uniform", False), ("masked", False), ("uniform", True)])
def test_bpunet_reads_the_process_features_unchanged(kind, authors):
    # The network's output is BPUNet applied to the process's features, bit for bit: the
    # features written out as the network computed them before the process owned them.
    v, T = 4, 200
    proc = process(kind, v)
    net, init, apply = built(kind, v, 2, 3, authors_schedule=authors)
    params = perturbed(init(jax.random.key(0)), 1)
    x_BxD = tokens(1, (T + 1, 8), v + (kind == "masked"))
    t_B = jnp.asarray(np.arange(T + 1) / T, jnp.float32)  # i / T correctly rounded, as torch
    if kind == "masked":
        p = 1.0 / (v + 1)
        old = lambda x, t: (jax.nn.one_hot(x, v + 1, dtype=jnp.float32) - p) / float(np.sqrt(p * (1.0 - p)))
    else:
        table = uniform.authors_alphabar() if authors else np.asarray(proc.alphabar_schedule(), np.float64)
        a_T1 = np.asarray(table, np.float64)
        mean = float(np.mean(a_T1 + (1.0 - a_T1) / v))
        std = float(np.sqrt(float(np.mean(a_T1 + (1.0 - a_T1) / v**2)) - mean**2))
        if authors:
            at = lambda t: jnp.asarray(table)[jnp.clip(jnp.floor(t * np.float32(1000)).astype(jnp.int32), 0, 1000)]
        else:
            at = proc.alphabar

        def old(x, t):
            a = at(t).astype(jnp.float32)[:, None, None]
            return (a * jax.nn.one_hot(x, v, dtype=jnp.float32) + (1.0 - a) / v - mean) / std

    module = bpunet.BPUNet(v=v, s=2, L=3, width=16)
    want = jax.jit(lambda p, x, t: module.apply({"params": p}, old(x, t)))(params, x_BxD, t_B)
    np.testing.assert_array_equal(np.asarray(apply(params, x_BxD, t_B)), np.asarray(want))


@pytest.mark.heavy
def test_authors_schedule_changes_the_message():
    v = 4
    _, init, apply_ours = built("uniform", v, 2, 3)
    _, _, apply_authors = built("uniform", v, 2, 3, authors_schedule=True)
    params, x_BxD, t_B = init(jax.random.key(0)), tokens(1, (5, 8), v), jnp.array([0.005, 0.1, 0.5, 0.9, 1.0])
    # theirs is far less noisy at the same t
    assert np.abs(np.asarray(apply_authors(params, x_BxD, t_B) - apply_ours(params, x_BxD, t_B))).max() > 1e-3


@dataclasses.dataclass(frozen=True)
class ThreeChannelProcess:
    """A process the networks package has never heard of: its own features, v + 2 channels."""

    v: int
    input_vocab: int = 6
    tokens_reveal_time: bool = True

    def feature_stats(self, authors_schedule=False):
        return 0.0, 1.0

    def input_features(self, x_t_BxD, t_B, authors_schedule=False):
        return jax.nn.one_hot(x_t_BxD, self.input_vocab) * (1.0 + t_B[:, None, None])


@pytest.mark.heavy
@pytest.mark.parametrize("name", ["bpunet", "transformer"])
def test_a_new_process_needs_no_change_to_the_networks(name):
    net = networks.make(config(name=name, width=8, heads=2, depth=1), 4, 2, 2, ThreeChannelProcess(4))
    x_BxD = tokens(0, (3, 4), 6)
    logits_BxDxV = jax.jit(net.apply)(net.init(jax.random.key(0)), x_BxD, jnp.array([0.1, 0.5, 0.9]))
    chex.assert_shape(logits_BxDxV, (3, 4, 4))
    chex.assert_tree_all_finite(logits_BxDxV)


@pytest.mark.parametrize(
    "name,kind,time_conditioning,depends_on_t",
    [
        ("bpunet", "masked", None, False),
        ("bpunet", "uniform", None, True),
        ("transformer", "masked", None, False),
        ("transformer", "masked", True, True),
        ("transformer", "uniform", None, True),
    ],
)
def test_time_conditioning(name, kind, time_conditioning, depends_on_t):
    v = 4
    extra = {} if time_conditioning is None else dict(time_conditioning=time_conditioning)
    _, init, apply = built(kind, v, 2, 3, name=name, **extra)
    x_BxD = jnp.tile(tokens(0, (2, 8), v + (kind == "masked")), (2, 1))
    logits_BxDxV = apply(init(jax.random.key(1)), x_BxD, jnp.array([0.1, 0.2, 0.8, 0.9]))
    delta = np.abs(np.asarray(logits_BxDxV[:2] - logits_BxDxV[2:])).max()
    assert (delta > 1e-6) == depends_on_t


def test_transformer_is_bidirectional():
    v = 4
    _, init, apply = built("masked", v, 2, 3, name="transformer")
    x_D = tokens(3, (8,), v)
    x_3xD = jnp.stack([x_D, x_D.at[0].set(v), x_D.at[7].set(v)])  # mask either end
    logits_3xDxV = apply(init(jax.random.key(0)), x_3xD, jnp.full((3,), 0.5))
    assert np.all(np.abs(np.asarray(logits_3xDxV[1:] - logits_3xDxV[:1])).max(-1) > 1e-6)


@dataclasses.dataclass(frozen=True)
class NamedProcess:
    name: str
    v: int
    input_vocab: int


@pytest.mark.parametrize(
    "overrides,proc,match",
    [
        (dict(name="resnet"), process("uniform", 4), "network name='resnet'"),
        (dict(width=0), process("uniform", 4), "width=0 must be an integer >= 1"),
        (dict(dtype="float16"), process("uniform", 4), "dtype='float16'"),
        (dict(name="transformer", width=10, heads=4), process("uniform", 4), "heads=4 must divide width=10"),
        (dict(name="transformer", depth=0), process("uniform", 4), "depth=0"),
        (dict(authors_schedule=True), process("masked", 4), "authors_schedule=True needs the uniform"),
        (dict(time_conditioning=True), process("uniform", 4), "time_conditioning=True is not a bpunet"),
        (dict(), process("uniform", 5), "process.v=5 must equal"),
        (dict(), NamedProcess("uniform", 4, 3), "process.input_vocab=3 must be an integer >= v=4"),
        (dict(), NamedProcess("uniform", 4, 4), "bpunet needs process.input_features"),
        (dict(name="transformer"), NamedProcess("uniform", 4, 4), "needs process.tokens_reveal_time"),
    ],
)
def test_bad_config_raises(overrides, proc, match):
    with pytest.raises(ValueError, match=match):
        networks.make(config(**overrides), 4, 2, 2, proc)


def test_bad_inputs_raise_before_compilation():
    net, init, apply = built("uniform", 4, 2, 3)
    params = init(jax.random.key(0))
    with pytest.raises(ValueError, match="s\\*\\*L = 8"):
        apply(params, jnp.zeros((2, 4), jnp.int32), jnp.zeros((2,)))
    with pytest.raises(ValueError, match="integer"):
        apply(params, jnp.zeros((2, 8)), jnp.zeros((2,)))
    with pytest.raises(ValueError, match="t shape"):
        apply(params, jnp.zeros((2, 8), jnp.int32), jnp.zeros((3,)))
    with pytest.raises(ValueError, match="s=1"):
        networks.make(config(width=8), 4, 1, 2, process("uniform", 4))


# ---------- bpUNet's backward products (issue 12: one model trained 2.5x slower than a grid) ----------


def _bpunet_grad(width: int, dtype: str, backward, models: int | None, batch: int = 64):
    """Jitted gradient of a fixed loss of bpUNet logits; vmapped over ``models`` unless None.

    ``backward``: a ``network.backward`` value ('rowmajor', 'jax', 'auto'), or a ``bpunet.Backward``
    handed to ``networks.make`` (a rule taken apart, e.g. without the fence).
    """
    v = 4
    name = backward if isinstance(backward, str) else "auto"
    rule = None if isinstance(backward, str) else backward
    net = networks.make(config(name="bpunet", width=width, dtype=dtype, backward=name), v, 2, 3,
                        process("uniform", v), backward=rule)
    weights_V = jnp.arange(1.0, v + 1.0)

    def loss(params, x_t_BxD, t_B):
        logits_BxDxV = net.apply(params, x_t_BxD, t_B)
        return jnp.sum(jax.nn.log_softmax(logits_BxDxV) * weights_V) + jnp.sum(logits_BxDxV**2)

    grad = jax.grad(loss) if models is None else jax.vmap(jax.grad(loss))
    keys = jax.random.split(jax.random.key(3), models or 1)
    params = jax.vmap(net.init)(keys)
    params = perturbed(params if models else jax.tree_util.tree_map(lambda a: a[0], params), 4)
    shape = (models, batch, 8) if models else (batch, 8)
    x_t, t = tokens(5, shape, v), jnp.asarray(np.random.default_rng(6).uniform(size=shape[:-1]), jnp.float32)
    compiled = jax.jit(grad).lower(params, x_t, t).compile()
    return compiled(params, x_t, t), compiled.as_text()


UNFENCED = bpunet.Backward(rowmajor_kernels=True, rowmajor_thin=True, fenced=False)


@pytest.mark.heavy
@pytest.mark.parametrize("width,dtype,models", [(64, "float32", None), (64, "float32", 1), (64, "float32", 2),
                                                (256, "float32", 1)])
def test_bpunet_gradients_are_bit_identical_to_jax_rule_at_batch_64(width, dtype, models):
    """At the batch of every experiment (64) and widths in multiples of 64, not one bit moves.

    Except in the thin kernels' own gradients (embedding, readout: ``thin_matmul``), which XLA
    sums over the rows in another order: equal to float32 rounding. (float32 only: in bf16 the
    row-major rule multiplies a bf16 cotangent, JAX's rule a float32 one; see the next tests.)
    """
    ours, _ = _bpunet_grad(width, dtype, "rowmajor", models)
    reference, _ = _bpunet_grad(width, dtype, "jax", models)
    thin = lambda tree: {name: tree[name] for name in ("embed", "readout")}
    rest = lambda tree: {name: leaf for name, leaf in tree.items() if name not in ("embed", "readout")}
    chex.assert_trees_all_equal(rest(ours), rest(reference))
    tolerance = dict(rtol=1e-2, atol=1e-2) if dtype == "bfloat16" else dict(rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(thin(ours), thin(reference), **tolerance)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree_util.tree_leaves(ours))
    assert len(rest(ours)) == 2 * 3 * 2  # down and up kernels and their LayerNorms: the check sees them


def _dot_operand_dtypes(jaxpr) -> list[tuple[str, ...]]:
    """The input dtypes of every dot_general in a jaxpr, sub-jaxprs (jit, custom rules, scans) included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(tuple(str(var.aval.dtype) for var in eqn.invars))
        for param in eqn.params.values():
            for sub in param if isinstance(param, (tuple, list)) else (param,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    found += _dot_operand_dtypes(inner)
    return found


@pytest.mark.heavy
@pytest.mark.parametrize("models", [None, 2])
def test_a_bf16_bpunets_every_product_takes_bf16_operands(models):
    """Issue 25: the backward products of a bf16 network multiply bf16 operands, not promoted float32.

    Before, the custom VJPs multiplied the float32 cotangent (the forward accumulates in float32)
    with the bf16 activations and kernels: 15 of the 23 dots of a bf16 training step ran in float32.
    """
    v = 4
    net = networks.make(config(name="bpunet", width=64, dtype="bfloat16", backward="rowmajor"), v, 2, 3,
                        process("uniform", v))

    def loss(params, x_t_BxD, t_B):
        return jnp.sum(net.apply(params, x_t_BxD, t_B) ** 2)

    grad = jax.grad(loss) if models is None else jax.vmap(jax.grad(loss))
    params = jax.vmap(net.init)(jax.random.split(jax.random.key(3), models or 1))
    params = params if models else jax.tree_util.tree_map(lambda a: a[0], params)
    shape = (models, 64, 8) if models else (64, 8)
    x_t, t = tokens(5, shape, v), jnp.full(shape[:-1], 0.5, jnp.float32)
    dots = _dot_operand_dtypes(jax.make_jaxpr(grad)(params, x_t, t).jaxpr)
    assert len(dots) == 3 * (2 * 3 + 2)  # forward, input and kernel gradient of 3 down, 3 up, embed, readout
    assert all(dtypes == ("bfloat16", "bfloat16") for dtypes in dots), dots
    grads = jax.jit(grad)(params, x_t, t)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(grads))  # float32 parameters
    float32_net = networks.make(config(name="bpunet", width=64, backward="rowmajor"), v, 2, 3, process("uniform", v))
    float32_dots = _dot_operand_dtypes(jax.make_jaxpr(jax.grad(
        lambda p, x, t: jnp.sum(float32_net.apply(p, x, t) ** 2)))(
            jax.tree_util.tree_map(lambda a: a[0], jax.vmap(net.init)(jax.random.split(jax.random.key(3), 1))),
            x_t.reshape(-1, 8)[:64], t.reshape(-1)[:64]).jaxpr)
    assert float32_dots == [("float32", "float32")] * len(dots)  # the check reads dtypes: float32 is seen as such


@pytest.mark.heavy
def test_bf16_row_major_gradients_stay_close_to_jax_rule():
    """In bf16 the row-major rule rounds the cotangent to bf16 and JAX's rule does not: close, not equal."""
    ours, _ = _bpunet_grad(64, "bfloat16", "rowmajor", 2)
    reference, _ = _bpunet_grad(64, "bfloat16", "jax", 2)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree_util.tree_leaves(reference)):
        rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
        assert rel < 2e-2, (jax.tree_util.keystr(path), rel)
    assert not all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree_util.tree_leaves(ours),
                                                                jax.tree_util.tree_leaves(reference)))


@pytest.mark.heavy
@pytest.mark.parametrize("width,batch,models", [(16, 8, 2), (48, 16, 1)])
def test_bpunet_gradients_match_jax_rule_to_rounding_at_small_shapes(width, batch, models):
    """Small or odd shapes: XLA's CPU dot kernels may sum in another order once operands swap."""
    ours, _ = _bpunet_grad(width, "float32", "rowmajor", models, batch)
    reference, _ = _bpunet_grad(width, "float32", "jax", models, batch)
    chex.assert_trees_all_close(ours, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.heavy
@pytest.mark.parametrize("width,models", [(64, None), (64, 2), (256, 1), (48, 3)])
def test_fence_moves_no_bit_of_the_gradient(width, models):
    """The cotangent fence only keeps XLA from fusing: every gradient entry is the same float."""
    ours, _ = _bpunet_grad(width, "float32", "rowmajor", models, batch=64 if width % 64 == 0 else 16)
    unfenced, _ = _bpunet_grad(width, "float32", UNFENCED, models, batch=64 if width % 64 == 0 else 16)
    chex.assert_trees_all_equal(ours, unfenced)


@pytest.mark.heavy
def test_one_models_backward_transposes_no_kernel():
    """XLA's program for one model (M = 1) copies no down/up kernel or its gradient transposed.

    The cause of issue 12: with JAX's rule the unbatched dots left 24 kernel-sized transposes and
    copies here (15 of 16 MB per step at W = 1024, read strided by Adam). Activations here are at
    most 5 x 8 x 96 = 3840 entries, less than the smallest kernel (96 x 48), so size tells them apart.
    """
    _, hlo = _bpunet_grad(48, "float32", "rowmajor", 1, batch=5)
    _, hlo_jax_rule = _bpunet_grad(48, "float32", "jax", 1, batch=5)

    def kernel_sized_moves(text):
        found = re.findall(r"= f32\[([0-9,]*)\]\{[0-9,]*\} (?:transpose|copy)\(", text)
        return [shape for shape in found if math.prod(int(d) for d in shape.split(",") if d) >= 96 * 48]

    assert kernel_sized_moves(hlo) == []
    assert len(kernel_sized_moves(hlo_jax_rule)) >= 6  # the check sees what it guards against


# ---------- the backward rule as a setting (issue 23) ----------


@pytest.mark.heavy
def test_auto_backward_is_the_rowmajor_rule_on_the_cpu_and_jax_rule_elsewhere():
    """'auto' (the default) compiles to the very program of 'rowmajor' on the CPU: same HLO, same bits."""
    assert networks.default_config().backward == "auto"
    assert networks.backward_rule("auto", backend="cpu") == bpunet.RULES["rowmajor"]
    for backend in ("gpu", "cuda", "tpu"):
        assert networks.backward_rule("auto", backend=backend) == bpunet.RULES["jax"]
    assert jax.default_backend() == "cpu"  # the test suite's premise
    auto, auto_hlo = _bpunet_grad(64, "float32", "auto", 2)
    rowmajor, rowmajor_hlo = _bpunet_grad(64, "float32", "rowmajor", 2)
    _, jax_hlo = _bpunet_grad(64, "float32", "jax", 2)
    chex.assert_trees_all_equal(auto, rowmajor)
    def ops(hlo):  # the computations, without the source locations of each op
        return re.sub(r", metadata=\{[^}]*\}", "", hlo[re.search(r"^(%|ENTRY)", hlo, re.M).start():])

    assert ops(auto_hlo) == ops(rowmajor_hlo) != ops(jax_hlo)  # the setting reaches the compiled program


@pytest.mark.heavy
def test_backward_rule_is_a_field_of_the_module_not_a_global():
    """Two networks with different rules built side by side keep their own (no global is swapped)."""
    v = 4
    nets = {name: networks.make(config(name="bpunet", width=48, backward=name), v, 2, 3, process("uniform", v))
            for name in ("jax", "rowmajor")}
    params = perturbed(nets["jax"].init(jax.random.key(0)), 1)
    x_t, t = tokens(2, (5, 8), v), jnp.linspace(0.1, 0.9, 5)
    hlo = {name: jax.jit(jax.grad(lambda p, net=net: jnp.sum(net.apply(p, x_t, t) ** 2))).lower(params).as_text()
           for name, net in nets.items()}
    assert "optimization_barrier" in hlo["rowmajor"] and "optimization_barrier" not in hlo["jax"]


@pytest.mark.parametrize("name", ["bpunet", "transformer"])
@pytest.mark.parametrize("value", ["fast", "JAX", None, 1])
def test_a_bad_backward_rule_is_refused_naming_the_key(name, value):
    """The transformer has one rule and ignores the key, but a bad value is refused all the same."""
    with pytest.raises(ValueError, match=r"^network backward=.* must be one of \('auto', 'jax', 'rowmajor'\)$"):
        networks.make({**config(name=name, width=8).to_dict(), "backward": value}, 4, 2, 3, process("uniform", 4))


def test_the_transformer_builds_with_every_backward_value():
    for value in networks.BACKWARDS:
        networks.make(config(name="transformer", width=8, heads=2, depth=1, backward=value), 4, 2, 3,
                      process("masked", 4))


@pytest.mark.parametrize("key", ["depth", "heads", "mlp_ratio"])
@pytest.mark.parametrize("bad", [-1, "abc", 2.5, None, float("inf")])
def test_transformer_keys_are_validated_for_a_bpunet_too(key, bad):
    """Issue 26: network.depth/heads/mlp_ratio took any value with the bpUNet (which does not use them)."""
    if key == "mlp_ratio" and bad == 2.5:
        return  # a valid ratio
    config = networks.default_config().to_dict()  # a plain dict: ConfigDict refuses some types itself
    config[key] = bad
    process = diffusion.make(diffusion.default_config(), 4, 8)
    with pytest.raises(ValueError, match=rf"^network {key}=.*unused by network name='bpunet'"):
        networks.validate(config, 4, 2, 3, process)
