"""Typed settings of one program, read once from a validated config by ``plan.make_plan``.

The config (``rhm_jax.config``) is the loose edge: a ConfigDict that ``config.validate`` checks.
Below the plan nothing reads a ConfigDict: ``program``, ``train``, ``evaluate``, ``sharding``, the
run loop, the notebook and the clustering learner take these frozen (hashable) dataclasses, so they
never re-validate or default a key, and ``program`` memoizes compiled functions on them. Only
static and execution values live here: a value that may differ between the models of one compiled
program (P, seeds, lr, budget, warmup, Adam's b1, b2, eps, grammar and data seeds) is a traced
per-model leaf of ``train.Grid`` (built from the plan's grid rows).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from rhm_jax import diffusion


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """What the compiled train chunk and the initial state depend on (besides process and network)."""

    batch_size: int  # B, rows per step
    steps_per_call: int  # K, steps fused in one device call
    mu_dtype: str  # Adam's first moment: 'float32' or 'bfloat16'
    ema_decay: float  # 0: no EMA kept
    full_batch: bool  # train.p_below_batch == 'full_batch' (the authors' loader when P < B)

    @classmethod
    def of(cls, config: Any) -> "TrainSettings":
        """The settings of a validated config."""
        t = config.train
        return cls(batch_size=int(t.batch_size), steps_per_call=int(t.steps_per_call), mu_dtype=str(t.mu_dtype),
                   ema_decay=float(t.ema_decay), full_batch=t.p_below_batch == "full_batch")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """What the compiled evaluator depends on (besides process, network and the train settings)."""

    num_samples: int  # N generated per model
    num_windows: int  # W windows of diffusion time
    loss_rows: int  # R train / test rows of the loss estimates
    models_per_batch: int  # k models evaluated at once (0: one), each batch padded to exactly k
    width: int  # network width (the memory estimate, rhm_jax.memory)
    loss_seed: int = 0  # run.seed: the root of the loss keys, the same at every step (common random numbers)

    @classmethod
    def of(cls, config: Any) -> "EvalSettings":
        """The settings of a validated config."""
        e = config.eval
        return cls(num_samples=int(e.num_samples), num_windows=int(e.num_windows), loss_rows=int(e.loss_rows),
                   models_per_batch=int(e.models_per_batch), width=int(config.network.width),
                   loss_seed=int(config.run.seed))


@dataclasses.dataclass(frozen=True)
class ShardSettings:
    """Placement of the model axis: split over all local devices when there are several."""

    shard_models: bool

    @classmethod
    def of(cls, config: Any) -> "ShardSettings":
        """The settings of a validated config."""
        return cls(shard_models=bool(config.run.shard_models))


@dataclasses.dataclass(frozen=True)
class GrammarSizes:
    """The grammar's shape (the seed is a traced per-model value)."""

    v: int
    n: int
    m: int
    s: int
    L: int

    @property
    def d(self) -> int:
        """Sequence length s**L."""
        return self.s**self.L

    @classmethod
    def of(cls, config: Any) -> "GrammarSizes":
        g = config.grammar
        return cls(v=int(g.v), n=int(g.n), m=int(g.m), s=int(g.s), L=int(g.L))


@dataclasses.dataclass(frozen=True)
class Section:
    """One config section frozen as sorted (key, value) pairs (lists as tuples); ``get`` as a ConfigDict's."""

    items: tuple[tuple[str, Any], ...]

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.items).get(key, default)

    def __getitem__(self, key: str) -> Any:
        return dict(self.items)[key]

    @classmethod
    def of(cls, section: Any) -> "Section":
        freeze = lambda v: tuple(freeze(x) for x in v) if isinstance(v, (list, tuple)) else v
        return cls(tuple(sorted((str(k), freeze(v)) for k, v in section.items())))


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How a program runs: evaluation schedule, checkpoint policy, evaluation keys, sub-grid cap."""

    per_octave: int  # evaluations per doubling of the step count
    checkpoint_every: int  # 0: checkpoints at evaluation steps only
    keep_last: int
    keep_evaluations: str  # 'all' | 'octaves' | 'none'
    max_models_per_program: int  # 0: as many as fit (rhm_jax.memory)
    seed: int  # evaluation keys are fold_in(key(seed), step)

    @classmethod
    def of(cls, config: Any) -> "RunSettings":
        r = config.run
        return cls(per_octave=int(config.eval.per_octave), checkpoint_every=int(r.checkpoint_every),
                   keep_last=int(r.keep_last), keep_evaluations=str(r.keep_evaluations),
                   max_models_per_program=int(r.max_models_per_program), seed=int(r.seed))


@dataclasses.dataclass(frozen=True)
class Settings:
    """All typed settings of one program."""

    train: TrainSettings
    eval: EvalSettings
    shard: ShardSettings
    grammar: GrammarSizes
    process: Any  # a diffusion.Process: frozen, hashable, validated once
    network: Section  # the validated network section (``networks.build`` reads it)
    num_test: int  # test rows per dataset
    run: RunSettings | None  # None in ``compiled()``

    @property
    def sampler_label(self) -> str:
        """The evaluations' sampler in score file names: its steps, or 'exact' (``diffusion.sampler_label``)."""
        return diffusion.sampler_label(self.process)

    def compiled(self) -> "Settings":
        """These settings with the values that never reach a compiled function blanked: the memo key."""
        return dataclasses.replace(self, num_test=0, run=None)


def of(config: Any, process: Any = None) -> Settings:
    """Typed settings of a config that ``config.validate`` accepted (not checked again here).

    ``process``: the Process ``config.validate`` returned (default: built here from the config).
    """
    sizes = GrammarSizes.of(config)
    if process is None:
        process = diffusion.make(config.process, sizes.v, sizes.d)
    return Settings(TrainSettings.of(config), EvalSettings.of(config), ShardSettings.of(config), sizes, process,
                    Section.of(config.network), int(config.data.num_test), RunSettings.of(config))
