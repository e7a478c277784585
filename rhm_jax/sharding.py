"""Several devices on one host: the stacked model axis M split over a 1-D device mesh.

Shape letters: M models of the grid, M' = M padded to a multiple of the device count n, G datasets,
Q pool rows, D sequence length.

Every leaf of a ``TrainState`` and of a ``Grid`` has the model axis first; it is split over the
mesh axis ``'models'`` (``NamedSharding(mesh, P('models'))``), each device holding M'/n whole
models. The training pools (G, Q, D) and the evaluation references are replicated. The train chunk and the evaluator run per device
(``jax.shard_map``), each vmapped over its own M'/n models, so their compiled programs hold no
cross-device traffic (``collectives`` finds none in the HLO; a test checks it).

A grid whose size does not divide the device count is padded, never refused: the M' - M dummy
models copy model 0's settings with a step budget of 0, so they are frozen from the start; their
rows are dropped (``unpad``, or by iterating over the real grid rows) before anything is reported.
Checkpoints hold the padded state as saved, one shard per device. ``restore_target`` gives the
abstract state for the NEW mesh, and an orbax restore with ``strict=False``
(``Checkpointer.restore(..., strict=False)``) truncates or zero-fills the stored M' rows to the new
M'. Zero rows can only be dummies, since the real models come first; the caller checks the
checkpoint's metadata for the model indices it holds.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rhm_jax import train
from rhm_jax.settings import ShardSettings, TrainSettings

AXIS = "models"
# HLO ops that move data between devices; none may appear in the compiled train chunk.
COLLECTIVES = ("all-reduce", "all-gather", "all-to-all", "reduce-scatter", "collective-permute",
               "collective-broadcast", "send", "recv")


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis 'models' over ``devices`` (default: every local device)."""
    devices = list(jax.local_devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must name at least one device")
    return Mesh(np.asarray(devices, dtype=object), (AXIS,))


def model_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (model) axis split over the mesh, the other axes whole on each device."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh (the shared data pool)."""
    return NamedSharding(mesh, PartitionSpec())


def padded_size(num_models: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is >= num_models."""
    if num_models < 1 or multiple < 1:
        raise ValueError(f"need num_models={num_models} >= 1 and multiple={multiple} >= 1")
    return -(-num_models // multiple) * multiple


def _num_rows(tree: Any) -> int:
    """The common leading-axis length of a tree's leaves; ValueError if they disagree."""
    sizes = {int(np.shape(x)[0]) for x in jax.tree_util.tree_leaves(tree) if np.ndim(x) > 0}
    if len(sizes) != 1:
        raise ValueError(f"every leaf must share one leading (model) axis length, got {sorted(sizes)}")
    return sizes.pop()


def pad_rows(tree: Any, size: int) -> Any:
    """Append copies of row 0 along the leading axis until it has ``size`` rows."""
    M = _num_rows(tree)
    if size < M:
        raise ValueError(f"size={size} must be >= the {M} rows present")
    if size == M:
        return tree
    return jax.tree_util.tree_map(
        lambda x: jnp.concatenate([x, jnp.repeat(x[:1], size - M, axis=0)], axis=0), tree)


def pad_grid(grid: train.Grid, multiple: int) -> train.Grid:
    """The grid padded to a multiple of ``multiple`` models; dummies copy model 0 with budget 0."""
    M = _num_rows(grid)
    padded = pad_rows(grid, padded_size(M, multiple))
    frozen_M = jnp.arange(padded.budget.shape[0]) >= M
    # Budget 0: the chunk never applies a step to a dummy, so its state stays finite and unchanged.
    return padded.replace(budget=jnp.where(frozen_M, 0, padded.budget).astype(padded.budget.dtype))


def unpad(tree: Any, num_models: int) -> Any:
    """The first ``num_models`` rows of every leaf, as host numpy arrays (the real models)."""
    host = jax.device_get(tree)
    return jax.tree_util.tree_map(lambda x: np.asarray(x)[:num_models] if np.ndim(x) else x, host)


def _check_divisible(tree: Any, mesh: Mesh) -> None:
    n = mesh.devices.size
    M = _num_rows(tree)
    if M % n:
        raise ValueError(f"the {M} models must be a multiple of the mesh's {n} devices: pad_grid first")


def shard(tree: Any, mesh: Mesh) -> Any:
    """Put every leaf on the mesh, model axis split (no copy for leaves already placed so)."""
    _check_divisible(tree, mesh)
    return jax.device_put(tree, model_sharding(mesh))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put every leaf on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def init_state(settings: TrainSettings, network: Any, grid: train.Grid, mesh: Mesh) -> train.TrainState:
    """``train.init_state`` of a padded grid, built directly in its shards (never whole on one device)."""
    _check_divisible(grid, mesh)
    build = jax.jit(lambda g: train.init_state(settings, network, g), out_shardings=model_sharding(mesh))
    return build(shard(grid, mesh))


def _per_device(fn: Callable, mesh: Mesh, in_specs: tuple, out_specs: Any) -> Callable:
    """``fn`` run by each device on its own block of models (``jax.shard_map``, no collectives)."""
    # check_vma=False: the outputs are per-model by construction; jax's check rejects some
    # primitives (e.g. random bits) that mix per-device and replicated operands.
    return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def shard_chunk(chunk: Callable, mesh: Mesh) -> Callable:
    """A train chunk that runs on each device over its own models only; jit it with ``train.jit_chunk``.

    Per-device programs hold no collective by construction, whatever the step contains: left to
    GSPMD, a data-dependent while loop under vmap (as an earlier batch shuffle had) agrees on its
    trip count across devices with an all-reduce every iteration.
    Arguments as the chunk's: (state_M', grid_M', pool_GxQxD replicated, num_steps replicated).
    """
    models, whole = PartitionSpec(AXIS), PartitionSpec()
    mapped = _per_device(chunk, mesh, (models, models, whole, whole), (models, models))

    def sharded_chunk(state: train.TrainState, grid: train.Grid, pool_GxQxD: jax.Array, num_steps: jax.Array):
        return mapped(state, grid, pool_GxQxD, num_steps)

    sharded_chunk.steps_per_call = getattr(chunk, "steps_per_call", None)
    return sharded_chunk


def shard_evaluator(evaluate: Any, mesh: Mesh) -> Any:
    """An ``evaluate.Evaluator`` whose halves each device runs on its own models: ``sample(state_M',
    grid_M', key, refs) -> tokens_M'`` and ``score(state_M', grid_M', tokens_M', refs) -> metrics_M'``
    (``refs``, the program's ``evaluate.References``, replicated)."""
    models, whole = PartitionSpec(AXIS), PartitionSpec()
    return type(evaluate)(jax.jit(_per_device(evaluate.sample, mesh, (models, models, whole, whole), models)),
                          jax.jit(_per_device(evaluate.score, mesh, (models, models, models, whole), models)))


def restore_target(abstract: Any, mesh: Mesh) -> Any:
    """ShapeDtypeStructs of a padded state on ``mesh``: the target of a sharded orbax restore."""
    _check_divisible(abstract, mesh)
    sharding = model_sharding(mesh)
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract)


def is_sharded(tree: Any, mesh: Mesh) -> bool:
    """True when every array leaf is laid out as ``shard`` places it on ``mesh``."""
    sharding = model_sharding(mesh)
    return all(isinstance(x, jax.Array) and x.sharding.is_equivalent_to(sharding, x.ndim)
               for x in jax.tree_util.tree_leaves(tree))


def collectives(hlo_text: str) -> list[str]:
    """Cross-device ops named in compiled HLO text (empty: a program with no device traffic)."""
    found = set()
    for op in COLLECTIVES:
        # An op appears as `= <type> all-reduce(` or `all-reduce-start(`; names like %all-reduce.1 don't count.
        if re.search(rf"\s{re.escape(op)}(-start)?\(", hlo_text):
            found.add(op)
    return sorted(found)


def use_mesh(settings: ShardSettings, devices: Sequence[Any] | None = None,
             num_models: int | None = None) -> Mesh | None:
    """The mesh a program of ``num_models`` models should use when ``run.shard_models``: the first
    min(n, num_models) of the n local devices (all n when ``num_models`` is None), None when that is
    one device or sharding is off.

    A program never takes more devices than it has models: a padded dummy computes as much as a
    model (its budget only freezes its state), and on the CPU's host devices (``hostflags``) it
    would take a core from the real ones, so one model keeps one device and all its threads.
    """
    devices = list(jax.local_devices() if devices is None else devices)
    if num_models is not None:
        if num_models < 1:
            raise ValueError(f"num_models={num_models} must be >= 1")
        devices = devices[:num_models]
    return make_mesh(devices) if settings.shard_models and len(devices) > 1 else None


class Placement:
    """Where a run's grid lives: one device (``mesh=None``: every method is the identity) or a mesh.

    The hooks the run loop needs, so that it reads the same with or without several devices.
    """

    def __init__(self, mesh: Mesh | None):
        self.mesh = mesh
        self.num_devices = 1 if mesh is None else int(mesh.devices.size)

    def grid(self, grid: train.Grid) -> train.Grid:
        """The grid padded to a multiple of the device count and split over the mesh."""
        return grid if self.mesh is None else shard(pad_grid(grid, self.num_devices), self.mesh)

    def init_state(self, settings: TrainSettings, network: Any, grid: train.Grid) -> train.TrainState:
        """Initial state of a (placed) grid, built in its shards."""
        if self.mesh is None:
            return train.init_state(settings, network, grid)
        return init_state(settings, network, grid, self.mesh)

    def target(self, abstract: Any) -> Any:
        """Restore target: the abstract state with this mesh's shardings (unchanged on one device)."""
        return abstract if self.mesh is None else restore_target(abstract, self.mesh)

    def chunk(self, chunk: Callable) -> Callable:
        """The train chunk, per device when on a mesh (jit it afterwards)."""
        return chunk if self.mesh is None else shard_chunk(chunk, self.mesh)

    def evaluator(self, evaluate: Any) -> Any:
        """The evaluator (``evaluate.Evaluator``), per device when on a mesh."""
        return evaluate if self.mesh is None else shard_evaluator(evaluate, self.mesh)

    def pool(self, tree: Any) -> Any:
        """Data every model may read (the stacked pools, the evaluation references), replicated on
        every device of the mesh."""
        return tree if self.mesh is None else replicate(tree, self.mesh)
