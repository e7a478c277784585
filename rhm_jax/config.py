"""The experiment config: schema with defaults, validation before compilation, dicts and hashing.

A config is a locked ``ml_collections.ConfigDict`` (unknown keys raise) with sections ``grammar``,
``data``, ``process``, ``network``, ``train``, ``eval`` and ``run``. It is an experiment record:
never traced, never mutated to hold derived values. ``validate`` checks every setting before any
jit compilation and raises a ValueError naming the parameter and its bound. Reading a config file
and its ``--config.a.b=value`` overrides is ``rhm_jax.overrides`` (``load``, ``load_sweep`` and
``apply_override`` are re-exported here for scripts and tests).
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any, Sequence

import ml_collections
import numpy as np

from rhm_jax import diffusion, grammar, keys, networks

KEEP_EVALUATIONS = ("all", "octaves", "none")
# Size bounds checked with logarithms before anything computes s**L or P_max as an integer.
MAX_LOG2_LENGTH = 16  # d = s**L <= 2**16 tokens
MAX_LOG2_TUPLES = 26  # v**s <= 2**26 (the parse tables)
# The largest P plus the test rows: drawing takes about 5 us per row on a CPU (2**20 rows of
# v=16, m=4, s=2, L=4 in 5.5 s), so about 3 minutes at the limit, and the pool lives on the device.
MAX_DATASET_ROWS = 2**25

# Keys that change how a run executes, not what it computes (``rhm_jax.keys``: execution and layout
# keys, the latter up to float32 rounding, ``keys.LAYOUT_ROUNDING``); a work directory may be resumed
# with other values for these (results.prepare_workdir ignores them when comparing configs).
EXECUTION_KEYS = tuple(k for kind in keys.RESUMABLE for k in keys.of_kind(kind))
# The keys config_hash leaves out by default, frozen as they were when checkpoints began to record
# the hash: adding a key here would change the hash of every stored work directory and make its
# checkpoints unresumable. (The resume check itself compares configs up to EXECUTION_KEYS.)
HASH_IGNORED = ("train.steps_per_call", "run.checkpoint_every", "run.keep_last", "run.keep_evaluations",
                "run.max_models_per_program", "run.shard_models")


def base_config() -> ml_collections.ConfigDict:
    """Every field with its default: the paper's grammar experiment (v=n=8, m=3, s=2, L=3)."""
    config = ml_collections.ConfigDict()
    config.grammar = dict(v=8, n=8, m=3, s=2, L=3, seed=0)
    # num_train: the training-set sizes P of the grid; train and test sets are disjoint. P = 0 trains
    # online: a fresh batch drawn from the grammar at every step (data.ONLINE), no training set.
    config.data = dict(num_train=(1024,), num_test=1024, seed=0)
    config.process = diffusion.default_config()
    config.network = networks.default_config()
    config.train = dict(
        batch_size=64,
        lr=(1e-4,),  # a grid axis like num_train and seeds (Adam's peak learning rate)
        b1=0.9,
        b2=0.999,
        adam_eps=1e-8,  # PyTorch's default
        mu_dtype="float32",  # Adam's first moment: 'float32' or 'bfloat16' (less memory traffic)
        warmup_steps=0,
        ema_decay=0.0,  # 0: no EMA
        num_steps=2**14,  # exactly one of num_steps / num_epochs is > 0
        num_epochs=0.0,  # epochs of each model's own P: budgets then differ across the grid
        seeds=(0,),  # grid axis: each seed sets the init, per-step noise and data order; the
        # override --config.train.seeds=3 means seed 3, as config_flags; range(3) means seeds 0, 1, 2
        steps_per_call=100,  # steps fused in one device call (lax.scan); no effect on results
        # A model with P < batch_size: 'repeat' fills each batch with further epochs of its rows;
        # 'full_batch' is the authors' loader: the P rows once per step, loss averaged over them.
        p_below_batch="repeat",
    )
    config.eval = dict(
        num_samples=1024,  # generated per model and evaluation
        per_octave=4,  # evaluations per doubling of the step count
        num_windows=10,  # windows of diffusion time for the loss per window
        loss_rows=1024,  # train / test rows of the loss estimates
        models_per_batch=0,  # models evaluated at once, each batch padded to exactly this many; 0: one
    )
    config.run = dict(
        checkpoint_every=0,  # 0: checkpoint at evaluation steps only
        keep_last=3,  # most recent checkpoints kept, besides those at evaluation steps
        # Checkpoints kept at evaluation steps (for launch.score): 'all'; 'octaves' (steps that are
        # powers of two, and each model's last step); 'none'. A 64-model W=1024 grid with Adam
        # state takes about 14 GB per checkpoint.
        keep_evaluations="all",
        max_models_per_program=0,  # 0: as many as fit in memory (rhm_jax.memory); else a cap per sub-grid
        seed=0,  # sampling keys fold_in(key(run.seed), step); loss keys from run.seed and the model seed only
        shard_models=True,  # split the grid over all local devices when there are several
        grid_slice="",  # 'k/K': this process trains slice k of K of the grid (job arrays); '' = all
    )
    config.lock()
    return config


# ----------------------------------------------------------------------------- validation

def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _int_at_least(name: str, value: Any, low: int) -> None:
    if not _is_int(value) or value < low:
        raise ValueError(f"{name}={value!r} must be an integer >= {low}")


def _int_list(name: str, values: Any, low: int) -> list[int]:
    """A non-empty sequence of distinct integers >= low, as a list."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
        raise ValueError(f"{name}={values!r} must be a non-empty list of integers")
    for value in values:
        _int_at_least(f"{name} entry", value, low)
    if len(set(values)) != len(values):
        raise ValueError(f"{name}={tuple(values)!r} must not repeat a value (a repeat is a duplicate model)")
    return [int(x) for x in values]


def _validate_sizes(g: ml_collections.ConfigDict) -> None:
    """Bounds on s**L and v**s from logarithms: a huge L or s is refused without computing either."""
    if not all(_is_int(x) and x >= 2 for x in (g.v, g.s)) or not _is_int(g.L) or g.L < 1:
        return  # grammar.check_params names the bad value
    if g.L * math.log2(g.s) > MAX_LOG2_LENGTH:
        raise ValueError(f"grammar.L={g.L} with grammar.s={g.s} gives sequences of s**L = 2**{g.L * math.log2(g.s):.3g}"
                         f" tokens; the limit is 2**{MAX_LOG2_LENGTH}")
    if g.s * math.log2(g.v) > MAX_LOG2_TUPLES:
        raise ValueError(f"grammar.s={g.s} with grammar.v={g.v} needs parse tables of v**s = 2**{g.s * math.log2(g.v):.3g}"
                         f" entries; the limit is 2**{MAX_LOG2_TUPLES}")


def log2_p_max(g: ml_collections.ConfigDict) -> float:
    """log2 of P_max = n * m**((s**L - 1) / (s - 1)) (no big integers)."""
    return math.log2(g.n) + (g.s**g.L - 1) // (g.s - 1) * math.log2(g.m)


def validate(config: ml_collections.ConfigDict) -> diffusion.Process:
    """Raise ValueError naming the parameter and its bound for any setting that cannot run.

    Returns the Process it built to check the network against (``settings.of`` keeps it, so the
    process and network sections are validated once per program).
    """
    g = config.grammar
    _validate_sizes(g)
    grammar.check_params(g.v, g.n, g.m, g.s, g.L)
    _int_at_least("grammar.seed", g.seed, 0)
    _validate_data(config)
    _validate_train(config.train)
    _validate_eval(config.eval)
    r = config.run
    _int_at_least("run.checkpoint_every", r.checkpoint_every, 0)
    _int_at_least("run.keep_last", r.keep_last, 1)
    if r.keep_evaluations not in KEEP_EVALUATIONS:
        raise ValueError(f"run.keep_evaluations={r.keep_evaluations!r} must be one of {KEEP_EVALUATIONS}")
    _int_at_least("run.max_models_per_program", r.max_models_per_program, 0)
    _int_at_least("run.seed", r.seed, 0)
    if not isinstance(r.shard_models, bool):
        raise ValueError(f"run.shard_models={r.shard_models!r} must be True or False")
    _validate_slice(config)
    process = diffusion.make(config.process, g.v, g.s**g.L)  # validates the process settings
    networks.validate(config.network, g.v, g.s, g.L, process)
    return process


def _validate_data(config: ml_collections.ConfigDict) -> None:
    d, g = config.data, config.grammar
    num_train = _int_list("data.num_train", d.num_train, 0)  # 0: online (``data.ONLINE``)
    if 0 in num_train and config.train.num_epochs > 0:
        raise ValueError(f"data.num_train={tuple(num_train)!r} holds 0 (online: a fresh batch from the grammar at"
                         f" every step), which has no epochs: set train.num_steps > 0 and train.num_epochs=0"
                         f" (got {config.train.num_epochs!r})")
    _int_at_least("data.num_test", d.num_test, 1)
    _int_at_least("data.seed", d.seed, 0)
    rows = max(num_train) + d.num_test
    if rows > MAX_DATASET_ROWS:
        raise ValueError(f"data.num_train max P={max(num_train)} plus data.num_test={d.num_test} = {rows} rows; the"
                         f" limit is 2**{int(math.log2(MAX_DATASET_ROWS))} = {MAX_DATASET_ROWS} (drawing takes about"
                         f" 5 us per row on a CPU, so about {rows * 5e-6 / 60:.0f} min here, and the pool must fit"
                         " in device memory)")
    # P_max as an exact integer only when the logarithm says it is small (m**huge would hang).
    p_max = grammar.num_sequences(g.n, g.m, g.s, g.L) if log2_p_max(g) < 64 else math.inf
    if rows > p_max:
        raise ValueError(
            f"data.num_train max P={max(num_train)} plus data.num_test={d.num_test} must be <= P_max={p_max}"
            f" (the grammar v={g.v}, n={g.n}, m={g.m}, s={g.s}, L={g.L} has only P_max distinct sequences;"
            " train and test sets are disjoint)"
        )


def _validate_train(t: ml_collections.ConfigDict) -> None:
    # batch_size > P is allowed: a batch then spans several epochs of that model's data.
    _int_at_least("train.batch_size", t.batch_size, 1)
    lrs = t.lr if isinstance(t.lr, Sequence) else (t.lr,)
    if not lrs or any(not _is_real(x) or not np.isfinite(x) or x <= 0 or diffusion.below_float32(x) for x in lrs):
        raise ValueError(f"train.lr={t.lr!r} must be a non-empty list of finite numbers >= {diffusion.F32_TINY:.4g}"
                         " (> 0, and not 0 in float32)")
    if len(set(lrs)) != len(lrs):
        raise ValueError(f"train.lr={tuple(lrs)!r} must not repeat a value (a repeat is a duplicate model)")
    for name in ("b1", "b2", "ema_decay"):
        value = t[name]
        if not _is_real(value) or not 0.0 <= value < 1.0 or diffusion.below_float32(value):
            raise ValueError(f"train.{name}={value!r} must be 0 or in [{diffusion.F32_TINY:.4g}, 1) (float32)")
    if not _is_real(t.adam_eps) or not 0 < t.adam_eps < 1 or diffusion.below_float32(t.adam_eps):
        raise ValueError(f"train.adam_eps={t.adam_eps!r} must be in [{diffusion.F32_TINY:.4g}, 1) (> 0, and not 0"
                         " in float32: Adam would divide 0 by 0 where a gradient is 0)")
    _int_at_least("train.warmup_steps", t.warmup_steps, 0)
    _int_at_least("train.num_steps", t.num_steps, 0)
    if not _is_real(t.num_epochs) or not np.isfinite(t.num_epochs) or t.num_epochs < 0:
        raise ValueError(f"train.num_epochs={t.num_epochs!r} must be a finite number >= 0")
    if (t.num_steps > 0) == (t.num_epochs > 0):
        raise ValueError(
            f"exactly one of train.num_steps={t.num_steps} and train.num_epochs={t.num_epochs} must be > 0"
            " (set the other to 0)"
        )
    _int_list("train.seeds", t.seeds, 0)
    _int_at_least("train.steps_per_call", t.steps_per_call, 1)
    if t.p_below_batch not in ("repeat", "full_batch"):
        raise ValueError(f"train.p_below_batch={t.p_below_batch!r} must be 'repeat' or 'full_batch'")
    if t.mu_dtype not in ("float32", "bfloat16"):
        raise ValueError(f"train.mu_dtype={t.mu_dtype!r} must be 'float32' or 'bfloat16'")


def _validate_slice(config: ml_collections.ConfigDict) -> None:
    """run.grid_slice is '' or 'k/K' with 0 <= k < K; ``plan.make_plan`` checks K against the sweep's models."""
    spec = config.run.grid_slice
    k, _, K = str(spec).partition("/")
    if spec != "" and not (k.isdigit() and K.isdigit() and int(k) < int(K)):
        raise ValueError(f"run.grid_slice={spec!r} must be '' or 'k/K' with 0 <= k < K (slice k of K of the sweep)")


def _validate_eval(e: ml_collections.ConfigDict) -> None:
    _int_at_least("eval.num_samples", e.num_samples, 1)
    _int_at_least("eval.per_octave", e.per_octave, 1)
    _int_at_least("eval.num_windows", e.num_windows, 1)
    _int_at_least("eval.loss_rows", e.loss_rows, 1)
    _int_at_least("eval.models_per_batch", e.models_per_batch, 0)


# ----------------------------------------------------------------------------- dicts and hashes

def to_dict(config: ml_collections.ConfigDict) -> dict:
    """Plain JSON-ready nested dict (tuples become lists)."""
    return json.loads(json.dumps(config.to_dict(), default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"config value {value!r} of type {type(value).__name__} is not JSON-serializable")


def from_dict(values: dict) -> ml_collections.ConfigDict:
    """The base config updated with ``values`` (e.g. read from config.json); unknown keys raise."""
    config = base_config()
    _update(config, values, "")
    return config


def _update(config: ml_collections.ConfigDict, values: dict, prefix: str) -> None:
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in config:
            raise ValueError(f"unknown config key {name!r}; known keys here: {sorted(config.keys())}")
        if isinstance(config[key], ml_collections.ConfigDict):
            if not isinstance(value, dict):
                raise ValueError(f"config key {name!r} must be a section (dict), got {value!r}")
            _update(config[key], value, name + ".")
        else:
            config[key] = tuple(value) if isinstance(value, list) else copy.deepcopy(value)


def flatten(values: dict, prefix: str = "") -> dict:
    """Nested dict -> {'section.key': value}."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def with_defaults(values: dict) -> dict:
    """``values`` (e.g. an older config.json's) with every schema key it lacks set to its default.

    A key added to the schema after a work directory was written then reads as the default that
    reproduces the older behaviour, so that directory can still be resumed; keys the schema no
    longer has are kept (they still count as differences).
    """
    def merge(defaults: dict, given: dict) -> dict:
        out = dict(defaults)
        for key, value in given.items():
            both = isinstance(value, dict) and isinstance(defaults.get(key), dict)
            out[key] = merge(defaults[key], value) if both else value
        return out

    return merge(to_dict(base_config()), values)


def differences(a: dict, b: dict, ignore: Sequence[str] = ()) -> list[str]:
    """Dotted keys whose values differ between two config dicts (missing counts as different)."""
    flat_a, flat_b = flatten(a), flatten(b)
    keys = sorted(set(flat_a) | set(flat_b))
    return [k for k in keys if k not in ignore and flat_a.get(k, "<missing>") != flat_b.get(k, "<missing>")]


def config_hash(config: ml_collections.ConfigDict | dict, ignore: Sequence[str] = HASH_IGNORED) -> str:
    """Short sha256 of the canonical JSON of the result-determining settings."""
    values = config if isinstance(config, dict) else to_dict(config)
    flat = {k: v for k, v in flatten(values).items() if k not in ignore}
    text = json.dumps(flat, sort_keys=True, default=_json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


from rhm_jax.overrides import apply_override, load, load_sweep  # noqa: E402,F401  (re-exported)
