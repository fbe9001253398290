"""An exclusive OS file lock (``fcntl.flock``) on a lock file that goes away with its holder.

Used for one driver per study (:mod:`study.driver_lock`) and for making a SQLite MLflow store one process
at a time (:mod:`study.store`). Why flock: the kernel releases it when the holding process dies, however
it dies (SIGKILL included), so a lock file left by a dead process never blocks the next one. The file is
removed on release, while still locked; a process that opened it just before that would then hold a lock
on a file no longer in the folder, so a process that got the lock checks that the path still names the
file it locked (same inode) and tries again if not. flock is per host (and per NFS client on most NFS
setups): processes on two machines sharing a folder are not serialized by it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from study.spec import SpecError

POLL_S = 0.1  # flock has no timeout: a waiting process tries again this often


@contextmanager
def exclusive(path: Path, *, field: str, busy: Callable[[int], BaseException], wait_s: float = 0.0) -> Iterator[int]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block; yields its fd.

    ``wait_s``: how long to wait for another holder (0: not at all). When it is still held after that,
    ``busy(fd)`` is raised; it may read the holder's note from ``fd`` (see :func:`note`). A folder without
    file locks is refused as a :class:`SpecError` on ``field``."""
    fd = _acquire(path, field, busy, time.monotonic() + wait_s)
    try:
        yield fd
    finally:
        try:
            os.unlink(path)  # while still locked: see the module docstring for why this is safe
        except OSError:
            pass
        os.close(fd)


def note(fd: int, text: str) -> None:
    """Write the holder's one-line note (who holds it, since when) into the locked file."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, text.encode(), 0)


def _acquire(path: Path, field: str, busy: Callable[[int], BaseException], deadline: float) -> int:
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise SpecError(f"{field}: cannot lock '{path}' ({err.strerror}); use a local folder that supports "
                                "file locks") from None
            if time.monotonic() >= deadline:
                try:
                    raise busy(fd) from None
                finally:
                    os.close(fd)
            os.close(fd)
            time.sleep(POLL_S)
            continue
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed the file between our open and our lock: again
