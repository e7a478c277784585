"""An exclusive lock per work directory: one writer at a time (run, ``--force``, score, report).

The lock is ``flock`` on ``<workdir>/.lock``: the kernel releases it when its holder exits for
any reason (SIGKILL included), so a dead process never leaves a stale lock behind; the file's
text (pid, host, start time) only serves the error message. On NFS, Linux maps ``flock`` onto
the server's byte-range locks, which hold across hosts (a crashed host's lock lapses with its
lease). A read-only work directory cannot be written by anyone: it is used without a lock.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import logging
import os
import socket
from typing import Iterator

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class Busy(ValueError):
    """The work directory is locked by another process."""


def _holder(path: str) -> str:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        text = ""
    return text or "unknown process"


@contextlib.contextmanager
def hold(workdir: str, what: str = "run") -> Iterator[None]:
    """Hold ``workdir``'s lock for the ``with`` block; ``Busy`` (one line) if another process holds it."""
    workdir = os.path.abspath(workdir)
    path = os.path.join(workdir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        if err.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        try:  # read-only: lock the existing file if there is one (flock needs no write access)
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            log.info("%s is read-only and has no %s: proceeding without a lock", workdir, LOCK_FILE)
            yield
            return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise Busy(f"workdir={workdir!r} is in use by another {_holder(path)}; wait for it to end "
                           f"or choose another directory (this {what} changed nothing)") from None
            raise
        stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        with contextlib.suppress(OSError):  # a read-only file keeps the previous holder's text
            os.ftruncate(fd, 0)
            os.write(fd, f"process {os.getpid()} on {socket.gethostname()} ({what} since {stamp})\n".encode())
        yield
    finally:
        os.close(fd)  # releases the flock
