"""Checkpoints of a stacked train state: an orbax CheckpointManager with a safe keep policy.

One checkpoint per step holds two items: ``state`` (the (M, ...) TrainState pytree, orbax
StandardSave) and ``meta`` (a JSON dict: grid rows, step, config hash). Saves are synchronous, so a
checkpoint is complete on disk before the next device call may reuse (donate) its buffers.

Keep policy: the ``keep_last`` most recent steps plus every step in ``keep_steps`` (the evaluation
steps), through orbax's preservation policies (orbax >= 0.12.4), else by hand after each save.
A checkpoint is only ever removed by that policy once newer ones exist; one that cannot be read is
moved aside to ``broken-<step>-<time>`` (never deleted) so that the run can go on past it.
"""
from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Iterable

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

_managers = getattr(ocp, "checkpoint_managers", None)
HAS_PRESERVATION_POLICY = all(
    hasattr(_managers, name) for name in ("AnyPreservationPolicy", "LatestN", "CustomSteps"))


def _abstract(target: Any) -> Any:
    """Shape/dtype/sharding tree (the target's shardings, else the first device): restores never
    need a concrete target in memory."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def leaf(x: Any) -> jax.ShapeDtypeStruct:
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding if sharding is not None else default)

    return jax.tree.map(leaf, target)


class Checkpointer:
    """Save / list / restore checkpoints of one (sub-)grid in ``directory``."""

    def __init__(self, directory: str, keep_last: int = 3, keep_steps: Iterable[int] = (),
                 use_policy: bool = HAS_PRESERVATION_POLICY, read_only: bool = False):
        if keep_last < 1:
            raise ValueError(f"keep_last={keep_last} must be >= 1")
        self.directory = os.path.abspath(directory)
        self.keep_last = int(keep_last)
        self.keep_steps = frozenset(int(s) for s in keep_steps)
        self.read_only = read_only
        self._by_hand = not use_policy
        if read_only:
            if not os.path.isdir(self.directory):
                raise ValueError(f"no checkpoint directory {self.directory}")
            options = ocp.CheckpointManagerOptions(read_only=True, enable_async_checkpointing=False)
        elif use_policy:
            policy = _managers.AnyPreservationPolicy([
                _managers.LatestN(self.keep_last), _managers.CustomSteps(sorted(self.keep_steps))])
            options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                                   enable_async_checkpointing=False)
        else:
            options = ocp.CheckpointManagerOptions(max_to_keep=None, create=True,
                                                   enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Steps with a committed checkpoint, ascending."""
        return sorted(int(s) for s in self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Write the checkpoint of ``step`` (blocking), then apply the keep policy."""
        step = int(step)
        if self.read_only:
            raise ValueError(f"checkpoints in {self.directory} were opened read-only")
        if step in self.steps():
            self._move_aside(step, "superseded")  # e.g. a broken one from before a fallback
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(dict(meta, step=step)))
        if not self._manager.save(step, args=args, force=True):
            raise RuntimeError(f"orbax refused to save step {step} in {self.directory}")
        self._manager.wait_until_finished()
        if self._by_hand:
            self._prune()

    def _prune(self) -> None:
        """Delete steps neither among the last ``keep_last`` nor in ``keep_steps``."""
        steps = self.steps()
        keep = set(steps[-self.keep_last:]) | self.keep_steps
        for step in steps:
            if step not in keep:
                self._manager.delete(step)

    def restore(self, step: int, target: Any, strict: bool = True) -> tuple[Any, dict]:
        """(state, meta) of ``step``; ``target`` gives the tree structure, shapes, dtypes, shardings.

        ValueError if there is no such step (listing those available) or the checkpoint cannot
        be read or does not match the target tree. ``strict=False`` lets arrays be truncated or
        zero-padded to the target's shapes (a grid padded for another device count); the caller
        must then check ``meta`` to know which models it holds.
        """
        steps = self.steps()
        if int(step) not in steps:
            raise ValueError(f"no checkpoint at step {step} in {self.directory}; available steps: {steps}")
        args = ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(target), strict=strict),
                                  meta=ocp.args.JsonRestore())
        try:
            restored = self._manager.restore(int(step), args=args)
            state, meta = restored.state, restored.meta
        except Exception as err:  # orbax/tensorstore raise many types for damaged files
            raise ValueError(f"checkpoint at step {step} in {self.directory} is unreadable or does not"
                             f" match the expected state tree: {type(err).__name__}: {err}") from err
        if not isinstance(meta, dict) or meta.get("step") != int(step):
            raise ValueError(f"checkpoint at step {step} in {self.directory} has bad metadata: {meta!r}")
        return state, meta

    def restore_latest(self, target: Any, move_broken: bool = True,
                       strict: bool = True) -> tuple[int, Any, dict] | None:
        """(step, state, meta) of the newest readable checkpoint, or None if there is none.

        A broken newer checkpoint is logged and skipped; with ``move_broken`` it is moved aside so
        that the run can save that step again (never when read-only).
        """
        move_broken = move_broken and not self.read_only
        for step in reversed(self.steps()):
            try:
                state, meta = self.restore(step, target, strict=strict)
            except ValueError as err:
                log.warning("checkpoint at step %d is broken, falling back to the previous one: %s", step, err)
                if move_broken:
                    self._move_aside(step, "broken")
                continue
            return step, state, meta
        return None

    def _move_aside(self, step: int, why: str) -> None:
        """Rename a step's directory to a non-step name (kept on disk) and forget it."""
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        source = os.path.join(self.directory, str(step))
        target = os.path.join(self.directory, f"{why}-{step}-{stamp}")
        os.rename(source, target)
        log.warning("moved checkpoint %s aside to %s (%s)", source, target, why)
        self._manager.reload()

    def close(self) -> None:
        """Release orbax's resources."""
        self._manager.close()

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
