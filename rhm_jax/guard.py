"""What keeps a run safe while it holds its work directory: the directory's lock (taken before
``--force`` moves an old one aside) and the stop signals that end the run at a device-call boundary.

``rhm_jax.runner`` uses both; ``Interrupted`` is what it raises after saving (``runner.Interrupted``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from typing import Any, Sequence

from rhm_jax import lock, results

log = logging.getLogger(__name__)


class Interrupted(Exception):
    """The run stopped on a signal after saving a checkpoint and its rows (``signum``: which)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = int(signum)


class StopSignals:
    """While active, the given signals request a stop at the next device-call boundary; a second
    SIGINT stops at once (KeyboardInterrupt). Only the main thread can install handlers."""

    def __init__(self, signums: Sequence[int]):
        self.signums = tuple(signums)
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: finishing the current device call, then saving a checkpoint and stopping"
                    " (press Ctrl-C again to stop at once)", signal.Signals(signum).name)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def lock_workdir(workdir: str, force: bool, stack: contextlib.ExitStack) -> None:
    """Create and lock ``workdir``; with ``force`` move an existing one aside (under its lock) first.

    A directory that is not a work directory, or a job-array root, is refused before anything is created.
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ValueError(f"workdir={workdir!r} is a file, not a directory")
    results.check_not_foreign(workdir, force)  # refused before the lock file is created: nothing left behind
    results.check_layout(workdir, "local")
    os.makedirs(workdir, exist_ok=True)
    stack.enter_context(lock.hold(workdir))
    if force and results.move_aside(workdir):  # the lock held is now the old directory's
        os.makedirs(workdir)
        stack.enter_context(lock.hold(workdir))
