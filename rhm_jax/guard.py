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
    SIGINT stops at once (KeyboardInterrupt). Only the main thread can install handlers.

    ``exit_at_once`` (the entry points): while ``at_once`` is set (set-up and compilation, before a
    sub-grid's first device call has returned: nothing to save yet), SIGINT or SIGTERM ends the
    process at once with one line, and so does a second SIGINT at any time. A thread woken through
    ``signal.set_wakeup_fd`` does it, since Python's own handlers wait until the main thread leaves
    the C++ call (a compilation, a device call) it is in.
    """

    def __init__(self, signums: Sequence[int], exit_at_once: bool = False):
        self.signums = tuple(signums)
        self.received: int | None = None
        self.at_once = True  # nothing to save until a device call has advanced the state
        self.exit_at_once = exit_at_once
        self._previous: dict[int, Any] = {}
        self._wakeup: tuple[int, int, int] | None = None  # (read end, write end, previous wakeup fd)
        self._interrupts = 0

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        log.warning("received %s: finishing the current device call, then saving a checkpoint and stopping"
                    " (press Ctrl-C again to stop at once)", signal.Signals(signum).name)

    def _watch(self, read_end: int) -> None:
        """Exit the process at once on a stop signal while there is nothing to save, or a second Ctrl-C."""
        while True:
            try:
                data = os.read(read_end, 64)
            except OSError:
                data = b""
            if not data:
                os.close(read_end)
                return
            for signum in data:
                if signum not in AT_ONCE or signum not in self.signums:
                    continue
                self._interrupts += signum == signal.SIGINT
                if self.at_once:
                    _exit_now(signum, f"stopped by {signal.Signals(signum).name} during set-up or compilation:"
                                      " nothing to save yet (the checkpoints on disk are kept); run the same"
                                      " command again to start or resume")
                if self._interrupts >= 2:
                    _exit_now(signum, "stopped at once by a second Ctrl-C: the newest checkpoint is kept; run the"
                                      " same command again to resume from it")

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for signum in self.signums:
                self._previous[signum] = signal.signal(signum, self._handle)
            if self.exit_at_once:
                read_end, write_end = os.pipe()
                os.set_blocking(write_end, False)
                previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
                self._wakeup = (read_end, write_end, previous)
                threading.Thread(target=self._watch, args=(read_end,), name="stop-signals", daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._wakeup is not None:
            read_end, write_end, previous = self._wakeup
            signal.set_wakeup_fd(previous)
            os.close(write_end)  # the watcher reads end-of-file and returns; it closes nothing itself
            self._wakeup = None
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _exit_now(signum: int, message: str) -> None:
    """One line on stderr, then end the process with status 128 + signum (no clean-up: nothing to save)."""
    os.write(2, f"{message}\n".encode())
    os._exit(128 + signum)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
AT_ONCE = STOP_SIGNALS  # never submitit's requeue signal: its handler must run


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
