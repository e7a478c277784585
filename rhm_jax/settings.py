"""Typed settings of training, evaluation and placement, read once from a validated config.

The config (``rhm_jax.config``) is the loose edge: a ConfigDict that ``config.validate`` checks.
``train``, ``evaluate`` and ``sharding`` take these frozen (hashable) dataclasses instead, so they
never re-validate or default a key. Only static and execution values live here: a value that may
differ between the models of one compiled program (P, seeds, lr, budget, warmup, Adam's b1, b2,
eps) is a traced per-model leaf of ``train.Grid``.
"""
from __future__ import annotations

import dataclasses
from typing import Any


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
    models_per_batch: int  # 0: chosen from device memory
    width: int  # network width, for the memory guess of models_per_batch=0
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
class Settings:
    """All typed settings of a config."""

    train: TrainSettings
    eval: EvalSettings
    shard: ShardSettings


def of(config: Any) -> Settings:
    """Typed settings of a config that ``config.validate`` accepted (not checked again here)."""
    return Settings(TrainSettings.of(config), EvalSettings.of(config), ShardSettings.of(config))
