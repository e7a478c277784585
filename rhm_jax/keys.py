"""Every config key, classified once: execution, traced or static, with its results column.

*execution*: how a run executes, never what it computes; may change when a work directory is
resumed. *layout*: which models share one compiled operation (sub-grids, slices, devices, evaluation
batches); changes no key, data row or schedule and may change on resume, but float32 rounding may
follow it (``LAYOUT_ROUNDING``). *traced*: a per-model value inside one compiled program (the model axis of the grid
carries it). *static*: changes shapes or the program; each distinct combination of static values
is one program. The resume check (``config.EXECUTION_KEYS``: execution and layout keys), the sweep planner (``rhm_jax.plan``),
the results table (``results.CONFIG_COLUMNS``) and the README's key table all read ``KEYS``.
Imports nothing of the package: it lies before everything in the data flow.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

KIND = Literal["execution", "layout", "traced", "static"]
KINDS = ("execution", "layout", "traced", "static")
RESUMABLE = ("execution", "layout")  # kinds that may change on resume and are never swept nor columns
# What a layout key may change, measured on XLA's CPU backend (jax 0.12.1; README "What is guaranteed").
LAYOUT_ROUNDING = (
    "evaluation rows never depend on the number of models in a grid, sub-grid or slice with the default\n"
    "eval.models_per_batch (one model at a time; with k > 1 a model's place in its batch of k may move\n"
    "the last bits of a few values). Training rounds the same wherever each model's own reductions\n"
    "hold at least 4096 elements (measured: bpUNet at batch 64, v = 8, d = 8, width 64 gives\n"
    "bit-identical rows). Below that (e.g. width 16 or 32) XLA's CPU backend sums a reduction in\n"
    "another order once a vmap over M models makes it larger, so parameters and losses differ in the\n"
    "last float32 bits and a sample drawn near a tie can flip (a few samples in a row's validity).")
# List-valued keys that are a product inside each sweep point (P outermost, then seeds, then lr).
GRID_KEYS = ("data.num_train", "train.seeds", "train.lr")


@dataclasses.dataclass(frozen=True)
class Key:
    """One config key: its kind, its column in the results table, and what it sets."""
    kind: str
    column: str
    doc: str


def _key(kind: str, doc: str, column: str = "") -> Key:
    return Key(kind, column, doc)


# Keys without a short column name get their dotted name as column (filled in below).
KEYS: dict[str, Key] = {
    "grammar.v": _key("static", "vocabulary size per level", "v"),
    "grammar.n": _key("static", "number of root classes", "n"),
    "grammar.m": _key("static", "synonyms (rules) per symbol", "m"),
    "grammar.s": _key("static", "branching factor", "s"),
    "grammar.L": _key("static", "depth; sequences have s**L tokens", "L"),
    "grammar.seed": _key("traced", "which rules: the grammar's random draw", "grammar_seed"),
    "data.num_train": _key("traced", "training-set sizes P (grid axis); 0: online, a fresh batch from the grammar every step", "P"),
    "data.num_test": _key("static", "test rows per model", "num_test"),
    "data.seed": _key("traced", "which sequences form the train and test sets, and their order", "data_seed"),
    "process.name": _key("static", "diffusion process: 'uniform' or 'masked'", "process"),
    "process.T": _key("static", "uniform: steps of the chain", "T"),
    "process.beta1": _key("static", "uniform: beta at step 0"),
    "process.beta2": _key("static", "uniform: beta at step T"),
    "process.schedule": _key("static", "masked: 'linear', 'cosine' or 'poly'"),
    "process.power": _key("static", "masked: exponent of the 'poly' schedule"),
    "process.eps": _key("static", "masked: alpha(t) stays in [eps, 1 - eps]"),
    "process.sampler_steps": _key("static", "sampler steps of evaluations (None: exact; uniform T steps, masked one position per step)"),
    "network.name": _key("static", "denoiser: 'bpunet' or 'transformer'", "network"),
    "network.width": _key("static", "channels (bpUNet) or model width (transformer)", "width"),
    "network.dtype": _key("static", "matmul dtype"),
    "network.authors_schedule": _key("static", "bpUNet input message from the authors' fixed schedule"),
    "network.depth": _key("static", "transformer: blocks"),
    "network.heads": _key("static", "transformer: attention heads"),
    "network.mlp_ratio": _key("static", "transformer: MLP width / model width"),
    "network.time_conditioning": _key("static", "time input (None: unless tokens reveal the time)"),
    "network.backward": _key("static", "bpUNet's backward rule: 'jax', 'rowmajor' or 'auto' (rowmajor on CPU)"),
    "train.batch_size": _key("static", "rows per training step", "batch_size"),
    "train.lr": _key("traced", "Adam's peak learning rates (grid axis)", "lr"),
    "train.b1": _key("traced", "Adam's beta1", "b1"),
    "train.b2": _key("traced", "Adam's beta2", "b2"),
    "train.adam_eps": _key("traced", "Adam's epsilon", "adam_eps"),
    "train.mu_dtype": _key("static", "dtype of Adam's first moment"),
    "train.warmup_steps": _key("traced", "linear learning-rate warmup steps", "warmup_steps"),
    "train.ema_decay": _key("static", "EMA of the weights (0: none)"),
    "train.num_steps": _key("traced", "step budget per model (or 0)", "num_steps"),
    "train.num_epochs": _key("traced", "budget in epochs of each model's own P (or 0)", "num_epochs"),
    "train.seeds": _key("traced", "model seeds: init and per-step noise (grid axis)", "seed"),
    "train.steps_per_call": _key("execution", "steps fused in one device call"),
    "train.p_below_batch": _key("static", "P < batch: 'repeat' epochs or the authors' 'full_batch'"),
    "eval.num_samples": _key("static", "samples generated per model and evaluation", "num_samples"),
    "eval.per_octave": _key("static", "evaluations per doubling of the step count"),
    "eval.num_windows": _key("static", "windows of diffusion time for the loss"),
    "eval.loss_rows": _key("static", "train / test rows of the loss estimates"),
    "eval.models_per_batch": _key("layout", "models evaluated at once; each batch padded to exactly this many (0: one)"),
    "run.checkpoint_every": _key("execution", "checkpoint period in steps (0: at evaluations only)"),
    "run.keep_last": _key("execution", "most recent checkpoints kept"),
    "run.keep_evaluations": _key("execution", "checkpoints kept at evaluation steps"),
    "run.max_models_per_program": _key("layout", "cap on models per compiled sub-grid (0: as many as fit in memory)"),
    "run.seed": _key("static", "evaluation keys: sampling fold_in(key(run.seed), step), losses the same at every step", "run_seed"),
    "run.shard_models": _key("layout", "split the models over local devices"),
    "run.grid_slice": _key("layout", "'k/K': this process trains slice k of K of the sweep"),
}
KEYS = {name: dataclasses.replace(key, column=key.column or name) for name, key in KEYS.items()}


def of_kind(kind: str) -> tuple[str, ...]:
    """Dotted keys of one kind, in table order."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} must be one of {KINDS}")
    return tuple(name for name, key in KEYS.items() if key.kind == kind)


def columns() -> dict[str, str]:
    """Results column -> dotted key, for every key."""
    return {key.column: name for name, key in KEYS.items()}


def table() -> str:
    """The key table as Markdown (key, kind, column, what it sets): the README shows it."""
    lines = ["| key | kind | column | sets |", "| --- | --- | --- | --- |"]
    lines += [f"| `{name}` | {key.kind} | `{key.column}` | {key.doc} |" for name, key in KEYS.items()]
    return "\n".join(lines)
