"""Denoiser networks: ``make(network_config, v, s, L, process) -> Network`` (pure init / apply).

Shape letters: M models, B batch, D = s**L length, V = v x0 classes (never the mask class).

What is read from the diffusion ``process`` (duck-typed, so a stand-in works in tests; all of it is
in the Process contract of docs/architecture.md); the network never asks which process it is:
- ``v`` (must equal the grammar's) and ``input_vocab`` (token ids in x_t: the embedding's size);
- bpUNet: ``input_features(x_t_BxD, t_B, authors_schedule) -> BxDxC`` (C = ``input_vocab``),
  the standardized input that is its only time conditioning, and ``feature_stats(
  authors_schedule)``, called once at build time so that an option the process cannot honour
  fails before compilation;
- transformer: ``tokens_reveal_time`` (the default of ``time_conditioning`` is its negation).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rhm_jax.networks import bpunet, transformer

NAMES = ("bpunet", "transformer")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# bpUNet's backward rule: 'rowmajor' (issue 12's products and fenced cotangents, tuned for XLA's
# CPU backend), 'jax' (JAX's own rule), 'auto' (rowmajor on the CPU backend, jax on any other; the
# rowmajor rule has not been measured on GPUs). The transformer has one rule and ignores the key.
BACKWARDS = ("auto", "jax", "rowmajor")

Params = Any


class Network(NamedTuple):
    """Pure denoiser: init(key) -> params, apply(params, x_t_BxD, t_B) -> logits_BxDxV float32."""

    init: Callable[[jax.Array], Params]
    apply: Callable[[Params, jax.Array, jax.Array], jax.Array]
    num_params: Callable[[Params], int]


def init_from_one_draw(abstract: Params, std_of: Callable[[str, tuple[int, ...]], float | None]) -> Callable:
    """init(key) filling the leaves of `abstract` from ONE normal draw, scaled by std_of(path, shape).

    std_of returns a float for N(0, std**2) leaves and None for LayerNorm-style constants (scale 1,
    everything else 0). One draw keeps init cheap to compile: a separate key and draw per leaf
    costs XLA about 0.2 s of CPU per array, several seconds per network (more under vmap).
    """
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    names = ["/".join(str(getattr(k, "key", k)) for k in path) for path, _ in paths_leaves]
    shapes = [tuple(leaf.shape) for _, leaf in paths_leaves]
    stds = [std_of(name, shape) for name, shape in zip(names, shapes)]
    total = sum(int(np.prod(shape)) for shape, std in zip(shapes, stds) if std is not None)

    def init(key: jax.Array) -> Params:
        flat_N = jax.random.normal(key, (total,), jnp.float32)
        leaves, offset = [], 0
        for name, shape, std in zip(names, shapes, stds):
            if std is None:
                leaves.append(jnp.full(shape, 1.0 if name.endswith("scale") else 0.0, jnp.float32))
                continue
            size = int(np.prod(shape))
            leaves.append(std * flat_N[offset : offset + size].reshape(shape))
            offset += size
        return treedef.unflatten(leaves)

    return init


def count_params(params: Params) -> int:
    """Number of scalars in a parameter pytree (a stacked tree counts all models)."""
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def default_config() -> ml_collections.ConfigDict:
    """Network config: bpUNet at the paper's width; transformer fields used when name='transformer'."""
    return ml_collections.ConfigDict(
        dict(
            name="bpunet",
            width=1024,
            dtype="float32",
            authors_schedule=False,
            depth=4,
            heads=8,
            mlp_ratio=4.0,
            time_conditioning=None,  # None: on unless process.tokens_reveal_time (uniform on, masked off)
            backward="auto",  # bpUNet's backward rule, one of BACKWARDS ('auto': by backend)
        )
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _positive_int(name: str, value: Any) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"network {name}={value!r} must be an integer >= 1")


def validate(network_config: Any, v: int, s: int, L: int, process: Any) -> None:
    """Raise ValueError naming the parameter and its bound when the network cannot be built."""
    cfg = network_config
    name = cfg.get("name")
    if name not in NAMES:
        raise ValueError(f"network name={name!r} must be one of {NAMES}")
    _positive_int("width", cfg.get("width"))
    if cfg.get("dtype", "float32") not in DTYPES:
        raise ValueError(f"network dtype={cfg.get('dtype')!r} must be one of {tuple(DTYPES)}")
    backward = cfg.get("backward", "auto")
    if not isinstance(backward, str) or backward not in BACKWARDS:
        raise ValueError(f"network backward={backward!r} must be one of {BACKWARDS}")
    for key, value, low in (("v", v, 2), ("s", s, 2), ("L", L, 1)):
        if not _is_int(value) or value < low:
            raise ValueError(f"network {key}={value!r} must be an integer >= {low}")
    _check_process(process, v)
    authors = cfg.get("authors_schedule", False)
    if not isinstance(authors, bool):
        raise ValueError(f"network authors_schedule={authors!r} must be a bool")
    time_cond = cfg.get("time_conditioning", None)
    if time_cond is not None and not isinstance(time_cond, bool):
        raise ValueError(f"network time_conditioning={time_cond!r} must be None, True or False")
    if name == "bpunet":
        _validate_bpunet(authors, time_cond, process)
        try:  # the transformer's keys: unused, but config.json records them, so they must be valid too
            _transformer_fields(cfg)
        except ValueError as err:
            raise ValueError(f"{err} (unused by network name='bpunet', but recorded in config.json)") from None
    else:
        if authors:
            raise ValueError("network authors_schedule=True applies to bpunet only")
        if time_cond is None and not isinstance(getattr(process, "tokens_reveal_time", None), bool):
            raise ValueError("transformer with time_conditioning=None needs process.tokens_reveal_time (a bool)")
        _validate_transformer(cfg)


def _validate_bpunet(authors: bool, time_cond: Any, process: Any) -> None:
    if time_cond:
        raise ValueError("network time_conditioning=True is not a bpunet option (its time input is the leaf message)")
    for method in ("input_features", "feature_stats"):
        if not callable(getattr(process, method, None)):
            raise ValueError(f"bpunet needs process.{method} (the process provides the network's input)")
    process.feature_stats(authors_schedule=authors)  # raises ValueError if the process cannot honour it


def _transformer_fields(cfg: Any) -> None:
    """depth, heads and mlp_ratio each in its own range (whichever network is chosen)."""
    _positive_int("depth", cfg.get("depth"))
    _positive_int("heads", cfg.get("heads"))
    ratio = cfg.get("mlp_ratio")
    if not isinstance(ratio, (int, float)) or isinstance(ratio, bool) or not np.isfinite(ratio) or ratio <= 0:
        raise ValueError(f"network mlp_ratio={ratio!r} must be a finite number > 0")
    width = cfg.get("width")
    if isinstance(width, int) and width >= 1 and round(ratio * width) < 1:
        raise ValueError(f"network mlp_ratio={ratio!r} must be > 0 with round(mlp_ratio * width) >= 1"
                         f" (width={width}: the transformer's MLP would have no unit)")


def _validate_transformer(cfg: Any) -> None:
    _transformer_fields(cfg)
    width, heads = cfg.get("width"), cfg.get("heads")
    if width % heads:
        raise ValueError(f"network heads={heads} must divide width={width}")


def _check_process(process: Any, v: int) -> None:
    """process.v must be the grammar's v and process.input_vocab an integer >= v."""
    if getattr(process, "v", None) != v:
        raise ValueError(f"process.v={getattr(process, 'v', None)!r} must equal the grammar's v={v}")
    input_vocab = getattr(process, "input_vocab", None)
    if not _is_int(input_vocab) or input_vocab < v:
        raise ValueError(f"process.input_vocab={input_vocab!r} must be an integer >= v={v}")


def _check_inputs(x_t_BxD: jax.Array, t_B: jax.Array, d: int) -> None:
    """Shape/dtype checks at trace time, so bad inputs fail before compilation."""
    if x_t_BxD.ndim != 2 or x_t_BxD.shape[1] != d:
        raise ValueError(f"x_t shape {x_t_BxD.shape} must be (B, d) with d = s**L = {d}")
    if not jnp.issubdtype(x_t_BxD.dtype, jnp.integer):
        raise ValueError(f"x_t dtype {x_t_BxD.dtype} must be an integer type (token ids)")
    if t_B.shape != (x_t_BxD.shape[0],):
        raise ValueError(f"t shape {t_B.shape} must be (B,) = ({x_t_BxD.shape[0]},)")


def backward_name(name: str, backend: str | None = None) -> str:
    """'jax' or 'rowmajor' for a ``network.backward`` value; 'auto' reads ``backend`` (default: JAX's)."""
    if name not in BACKWARDS:
        raise ValueError(f"network backward={name!r} must be one of {BACKWARDS}")
    if name == "auto":
        return "rowmajor" if (backend or jax.default_backend()) == "cpu" else "jax"
    return name


def backward_rule(name: str, backend: str | None = None) -> bpunet.Backward:
    """The bpUNet rule of a ``network.backward`` value (see ``backward_name``)."""
    return bpunet.RULES[backward_name(name, backend)]


def make(network_config: Any, v: int, s: int, L: int, process: Any,
         backward: bpunet.Backward | None = None) -> Network:
    """Build the configured denoiser for a grammar (v, s, L) and a diffusion process.

    ``backward`` replaces the rule ``network.backward`` names (bpUNet only), for tests and
    benchmarks that take the rule apart part by part.
    """
    validate(network_config, v, s, L, process)
    return build(network_config, v, s, L, process, backward)


def build(network_config: Any, v: int, s: int, L: int, process: Any,
          backward: bpunet.Backward | None = None) -> Network:
    """``make`` for a section that ``validate`` already accepted (``settings.Settings.network``)."""
    if network_config.get("name") == "bpunet":
        rule = backward_rule(network_config.get("backward", "auto")) if backward is None else backward
        return _make_bpunet(network_config, v, s, L, process, rule)
    return _make_transformer(network_config, v, s, L, process)


def _make_bpunet(cfg: Any, v: int, s: int, L: int, process: Any, backward: bpunet.Backward) -> Network:
    d = s**L
    dtype = DTYPES[cfg.get("dtype", "float32")]
    module = bpunet.BPUNet(v=v, s=s, L=L, width=cfg.get("width"), dtype=dtype, backward=backward)
    authors = bool(cfg.get("authors_schedule", False))
    in_channels = process.input_vocab

    abstract = jax.eval_shape(module.init, jax.random.key(0), jax.ShapeDtypeStruct((1, d, in_channels), jnp.float32))
    init = init_from_one_draw(abstract["params"], bpunet.init_std)

    def apply(params: Params, x_t_BxD: jax.Array, t_B: jax.Array) -> jax.Array:
        _check_inputs(x_t_BxD, t_B, d)
        return module.apply({"params": params}, process.input_features(x_t_BxD, t_B, authors_schedule=authors))

    return Network(init, apply, count_params)


def _make_transformer(cfg: Any, v: int, s: int, L: int, process: Any) -> Network:
    d = s**L
    time_cond = cfg.get("time_conditioning", None)
    module = transformer.Transformer(
        input_vocab=process.input_vocab,
        v=v,
        length=d,
        width=cfg.get("width"),
        depth=cfg.get("depth"),
        heads=cfg.get("heads"),
        mlp_ratio=float(cfg.get("mlp_ratio")),
        time_conditioning=(not process.tokens_reveal_time) if time_cond is None else time_cond,
        dtype=DTYPES[cfg.get("dtype", "float32")],
    )

    x_1xD, t_1 = jax.ShapeDtypeStruct((1, d), jnp.int32), jax.ShapeDtypeStruct((1,), jnp.float32)
    abstract = jax.eval_shape(module.init, jax.random.key(0), x_1xD, t_1)
    init = init_from_one_draw(abstract["params"], transformer.init_std)

    def apply(params: Params, x_t_BxD: jax.Array, t_B: jax.Array) -> jax.Array:
        _check_inputs(x_t_BxD, t_B, d)
        return module.apply({"params": params}, x_t_BxD, t_B)

    return Network(init, apply, count_params)
