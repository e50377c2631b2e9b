"""Advisory file locks (fcntl.flock) that serialize registry writers across processes."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class LockBusy(Exception):
    """A non-blocking `file_lock` found the lock held by another process."""


@contextmanager
def file_lock(path: str | os.PathLike, shared: bool = False, blocking: bool = True) -> Iterator[None]:
    """Hold an exclusive (or shared) flock on `path` (created if missing) for the `with` body.

    The lock is released when the file descriptor closes, so a crashed holder never leaves it held.
    With `blocking=False`, LockBusy is raised at once when another process holds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            raise LockBusy(str(path)) from None
        yield
    finally:
        os.close(fd)  # closing drops the flock
