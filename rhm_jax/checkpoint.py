"""Checkpoints of a stacked train state: an orbax CheckpointManager with a safe keep policy.

One checkpoint per step holds two items: ``state`` (the (M, ...) TrainState pytree, orbax
StandardSave) and ``meta`` (a JSON dict: grid rows, step, config hash). Saves are synchronous, so a
checkpoint is complete on disk before the next device call may reuse (donate) its buffers.

Keep policy: the ``keep_last`` most recent steps plus every step in ``keep_steps`` (the evaluation
steps), through orbax's preservation policies (orbax-checkpoint >= 0.12.4, a dependency). A
checkpoint is only ever removed by that policy once newer ones exist.

Integrity: ``meta`` holds ``checksums``, one uint32 per model of the state's array bits (computed
on the device at save, checked after every restore). A restore fails in one of two ways:
- ``BrokenCheckpoint`` (a ValueError): the checkpoint is provably damaged (missing or inconsistent
  files, undecodable data, checksum mismatch, bad metadata). ``restore_latest`` moves it aside to
  ``broken-<step>-<time>`` (never deleted) and falls back to the previous one.
- ``ReadFailure`` (an OSError): the environment failed (I/O error, permissions, memory, a network
  filesystem timing out). Nothing is moved and the error propagates: the files may be fine.
Before either, what wrote the checkpoint is checked against what the restore expects: ``meta``
holds ``tree`` (each leaf's path, per-model shape and dtype) and the caller's ``config_hash``. A
difference is ``Mismatch`` (a ValueError naming it): the files are intact, written by another code
version or config, so nothing is moved.
"""
from __future__ import annotations

import datetime
import errno
import logging
import os
from typing import Any, Iterable

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

_managers = ocp.checkpoint_managers


# Errors of the environment rather than of the files: errno values, and the words tensorstore and
# XLA put in their messages for them (they wrap OS errors in ValueError / RuntimeError text).
_ENVIRONMENT_ERRNOS = frozenset({
    errno.EIO, errno.EACCES, errno.EPERM, errno.ENOMEM, errno.ENOSPC, errno.EROFS, errno.ESTALE,
    errno.ETIMEDOUT, errno.EAGAIN, errno.EBUSY, errno.EINTR, errno.ENXIO, errno.ENODEV, errno.ECONNRESET,
    errno.ECONNABORTED, errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EREMOTEIO, errno.ENOLCK})
_ENVIRONMENT_WORDS = ("PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED",
                      "Input/output error", "Permission denied", "Cannot allocate memory", "out of memory",
                      "Out of memory", "Stale file handle", "No space left", "Read-only file system",
                      "Connection reset", "timed out")


class BrokenCheckpoint(ValueError):
    """A checkpoint that is provably damaged (missing, inconsistent or corrupted files)."""


class ReadFailure(OSError):
    """Reading a checkpoint failed for a reason of the environment (I/O, permissions, memory)."""


class Mismatch(ValueError):
    """An intact checkpoint written for another state tree or config than the restore expects."""


def tree_signature(state: Any) -> list[list]:
    """[path, per-model shape, dtype] of every leaf of a stacked (M, ...) state: the model axis is left
    out, since a grid padded for another device count restores into another M."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    return [[jax.tree_util.keystr(path), [int(n) for n in leaf.shape[1:]], str(leaf.dtype)] for path, leaf in leaves]


def tree_difference(saved: list, expected: list) -> str:
    """The first difference between two ``tree_signature`` values in words ('' when they agree)."""
    old = {path: (tuple(shape), dtype) for path, shape, dtype in saved}
    new = {path: (tuple(shape), dtype) for path, shape, dtype in expected}
    lacking, extra = [p for p in new if p not in old], [p for p in old if p not in new]
    if lacking or extra:
        parts = ([f"the run expects {len(lacking)} leaves it lacks ({', '.join(lacking[:3])})"] if lacking else []) + (
            [f"it holds {len(extra)} leaves the run lacks ({', '.join(extra[:3])})"] if extra else [])
        return "; ".join(parts)
    for path, (shape, dtype) in new.items():
        if old[path] != (shape, dtype):
            return (f"leaf {path} was saved with per-model shape {old[path][0]} {old[path][1]}, the run expects"
                    f" {shape} {dtype}")
    return ""


def environmental(err: BaseException) -> bool:
    """True when an exception (or one it was raised from) is an I/O, permission or memory failure."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, MemoryError) or (isinstance(err, OSError) and err.errno in _ENVIRONMENT_ERRNOS):
            return True
        if any(word in str(err) for word in _ENVIRONMENT_WORDS):
            return True
        err = err.__cause__ or err.__context__
    return False


def _bits_u32(x: jax.Array) -> jax.Array:
    """The raw bits of an (M, ...) array as (M, K) uint32 (exact: no float arithmetic)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    size = x.dtype.itemsize
    if x.dtype == jnp.bool_ or size == 1:
        u = x.astype(jnp.uint8).astype(jnp.uint32)
    elif size == 2:
        u = jax.lax.bitcast_convert_type(x, jnp.uint16).astype(jnp.uint32)
    else:  # 4 bytes, or 8 bytes as two uint32 words
        u = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return u.reshape(u.shape[0], -1)


@jax.jit
def checksums(state: Any) -> jax.Array:
    """(M,) uint32 per-model checksum of a stacked state: sum of bits_i * (2 i + 1) mod 2**32.

    Every weight is odd, so flipping any single bit changes the sum; integer sums are exact in
    any order, so the value does not depend on the device count or sharding.
    """
    leaves = [_bits_u32(x) for x in jax.tree.leaves(state)]
    total = jnp.zeros(leaves[0].shape[0], jnp.uint32)
    offset = 0
    for u in leaves:
        position = jnp.arange(u.shape[1], dtype=jnp.uint32) + jnp.uint32(offset % 2**32)
        total = total + (u * (2 * position + 1)).sum(axis=1, dtype=jnp.uint32)
        offset += u.shape[1]
    return total


def _abstract(target: Any) -> Any:
    """Shape/dtype/sharding tree (the target's shardings, else the first device): restores never
    need a concrete target in memory."""
    default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

    def leaf(x: Any) -> jax.ShapeDtypeStruct:
        sharding = getattr(x, "sharding", None)
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding if sharding is not None else default)

    return jax.tree.map(leaf, target)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:400] if text else type(err).__name__


def _root_os_error(err: BaseException) -> OSError | None:
    """The innermost OSError an exception was raised from (disk full, permissions), if any."""
    found, seen = None, set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno is not None:
            found = err
        err = err.__cause__ or err.__context__
    return found


def _drop_read_only_notice(record: logging.LogRecord) -> bool:
    """Logging filter: orbax warns 'Given directory is read only' on every read-only open; we asked for it."""
    return not str(record.msg).startswith("Given directory is read only")


def _drop_unretrieved(record: logging.LogRecord) -> bool:
    """Logging filter: asyncio's 'Future/Task exception was never retrieved' of a read or write already reported."""
    return "exception was never retrieved" not in str(record.msg)


def _hide_unretrieved() -> None:
    """After a failed read or save (reported by us): orbax's other reads and writes of the same
    checkpoint fail too, and asyncio logs each task's exception, with its traceback, when the task
    is collected. Those records are dropped from now on (the failure is already reported)."""
    asyncio_logger = logging.getLogger("asyncio")
    if _drop_unretrieved not in asyncio_logger.filters:
        asyncio_logger.addFilter(_drop_unretrieved)


def _silence_failed_writes() -> None:
    """After a failed save (reported as one line): orbax's writer threads, still failing one by one,
    log their tracebacks through absl and asyncio; the run is ending, so those stay hidden from now on."""
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    _hide_unretrieved()


class Checkpointer:
    """Save / list / restore checkpoints of one (sub-)grid in ``directory``."""

    def __init__(self, directory: str, keep_last: int = 3, keep_steps: Iterable[int] = (),
                 read_only: bool = False):
        if keep_last < 1:
            raise ValueError(f"keep_last={keep_last} must be >= 1")
        self.directory = os.path.abspath(directory)
        self.keep_last = int(keep_last)
        self.keep_steps = frozenset(int(s) for s in keep_steps)
        self.read_only = read_only
        if read_only:
            if not os.path.isdir(self.directory):
                raise ValueError(f"no checkpoint directory {self.directory}")
            # The options that read_only overrides are set to their read-only values here, or
            # orbax logs a warning for each one it changes.
            options = ocp.CheckpointManagerOptions(read_only=True, enable_async_checkpointing=False,
                                                   save_interval_steps=0, create=False)
        else:
            policy = _managers.AnyPreservationPolicy([
                _managers.LatestN(self.keep_last), _managers.CustomSteps(sorted(self.keep_steps))])
            options = ocp.CheckpointManagerOptions(preservation_policy=policy, create=True,
                                                   enable_async_checkpointing=False)
        absl_logger = logging.getLogger("absl")  # orbax logs through absl
        absl_logger.addFilter(_drop_read_only_notice)
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        finally:
            absl_logger.removeFilter(_drop_read_only_notice)

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
        sums = [int(x) for x in jax.device_get(checksums(state))]
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(dict(meta, step=step, checksums=sums,
                                                              tree=tree_signature(state))))
        absl = logging.getLogger("absl")
        level = absl.level
        absl.setLevel(logging.CRITICAL)  # orbax logs a failed write's asyncio traceback from its threads
        try:
            saved = self._manager.save(step, args=args, force=True)
            self._manager.wait_until_finished()
        except Exception as err:  # disk full, permissions: re-raised as one line naming the step
            _silence_failed_writes()  # orbax's other threads go on failing after this one: keep them quiet
            cause = _root_os_error(err) or err
            number = getattr(cause, "errno", None) or (errno.ENOSPC if "No space left" in str(err) else errno.EIO)
            raise OSError(number, f"could not write the checkpoint of step {step} in {self.directory}:"
                                  f" {_first_line(cause)}") from err
        absl.setLevel(level)
        if not saved:
            raise RuntimeError(f"orbax refused to save step {step} in {self.directory}")

    def written_for(self, step: int) -> dict | None:
        """The ``meta`` of ``step`` alone (no arrays read), or None when it cannot be read."""
        try:
            return self._manager.restore(int(step), args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        except Exception as err:  # an unreadable meta is judged by the full restore that follows
            if environmental(err):
                raise ReadFailure(f"could not read the checkpoint at step {step} in {self.directory}"
                                  f" ({_first_line(err)}); nothing was changed, retry") from err
            return None

    def check_written_for(self, step: int, target: Any, config_hash: str | None = None) -> None:
        """``Mismatch`` (one line naming the difference) when ``step`` was written for another state tree
        or config hash than ``target`` and ``config_hash``; silent when its metadata cannot tell."""
        meta = self.written_for(step)
        if not isinstance(meta, dict):
            return
        why = tree_difference(meta["tree"], tree_signature(target)) if isinstance(meta.get("tree"), list) else ""
        if config_hash is not None and meta.get("config_hash") not in (None, config_hash):
            why = "; ".join(w for w in (why, f"config hash {meta['config_hash']}, the run's {config_hash}") if w)
        if why:
            raise Mismatch(f"checkpoint at step {step} in {self.directory} was written for another state or config"
                           f" than this run's ({why}): its files are intact and nothing was moved; resume it with"
                           " the code and config that wrote it, or choose a new --workdir")

    def restore(self, step: int, target: Any, strict: bool = True,
                config_hash: str | None = None) -> tuple[Any, dict]:
        """(state, meta) of ``step``; ``target`` gives the tree structure, shapes, dtypes, shardings.

        ValueError if there is no such step (listing those available); ``Mismatch`` if its metadata
        says it was written for another state tree (or, given, another ``config_hash``);
        ``BrokenCheckpoint`` if the checkpoint is damaged, does not match the target tree or fails
        its checksum; ``ReadFailure`` if the environment failed while reading. ``strict=False`` lets
        arrays be truncated or zero-padded to the target's shapes (a grid padded for another device
        count); the caller must then check ``meta`` to know which models it holds.
        """
        steps = self.steps()
        if int(step) not in steps:
            raise ValueError(f"no checkpoint at step {step} in {self.directory}; available steps: {steps}")
        where = f"checkpoint at step {step} in {self.directory}"
        self.check_written_for(step, target, config_hash)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(target), strict=strict),
                                  meta=ocp.args.JsonRestore())
        try:
            restored = self._manager.restore(int(step), args=args)
            state, meta = restored.state, restored.meta
            sums = None if not isinstance(meta, dict) or "checksums" not in meta else checksums(state)
        except Exception as err:  # orbax/tensorstore raise many types for damaged files
            _hide_unretrieved()  # the other arrays' failed reads, logged by asyncio when collected
            if environmental(err):
                raise ReadFailure(f"could not read the {where} ({_first_line(err)}); a failure of the"
                                  " filesystem or memory, not of the checkpoint: nothing was changed, retry") from err
            raise BrokenCheckpoint(f"{where} is unreadable or does not match the expected state tree:"
                                   f" {type(err).__name__}: {_first_line(err)}") from err
        if not isinstance(meta, dict) or meta.get("step") != int(step):
            raise BrokenCheckpoint(f"{where} has bad metadata: {meta!r}")
        if sums is None:
            log.warning("%s has no checksums (written by an older rhm_jax): restored unverified", where)
        else:
            found, stored = [int(x) for x in jax.device_get(sums)], [int(x) for x in meta["checksums"]]
            k = min(len(found), len(stored))  # a padded grid restored for another device count
            bad = [j for j in range(k) if found[j] != stored[j]]
            if bad or k == 0:
                raise BrokenCheckpoint(f"{where} fails its checksum (models at positions {bad[:8]} of the"
                                       " state differ from what was saved): its data is corrupted")
        return state, meta

    def restore_latest(self, target: Any, move_broken: bool = True, strict: bool = True,
                       config_hash: str | None = None) -> tuple[int, Any, dict] | None:
        """(step, state, meta) of the newest readable checkpoint, or None if there is none.

        A broken newer checkpoint is logged and skipped; with ``move_broken`` it is moved aside so
        that the run can save that step again (never when read-only). A ``ReadFailure`` and a
        ``Mismatch`` (an intact checkpoint of another state tree or config) propagate: nothing moved.
        """
        move_broken = move_broken and not self.read_only
        for step in reversed(self.steps()):
            try:
                state, meta = self.restore(step, target, strict=strict, config_hash=config_hash)
            except BrokenCheckpoint as err:
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
