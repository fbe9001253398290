"""One study, one driver: an OS-level lock on the study, held for the driver's lifetime.

Two ``normstudy run`` of one study started at once would otherwise both pass the "already exists" check,
restore or create the same Ray Tune experiment and the same MLflow study run, and merge into one study
with every trial twice. :func:`hold` takes ``fcntl.flock(LOCK_EX | LOCK_NB)`` on
``<storage_path>/.<study_name>.driver.lock`` before the driver touches anything; a second driver is
refused at once with a one-line :class:`StudyLocked` naming the study, the holder and how to continue.

The lock is :func:`study.file_lock.exclusive` (flock, released by the kernel however the driver dies, the
file removed on release). What the lock created (the lock file, and the storage folder when it did not
exist) goes on release if nothing else was put there, so a study refused after the lock leaves nothing
behind. flock is per host: drivers of one study on two machines sharing a storage folder are not guarded.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from study import file_lock
from study.spec import SpecError

LOCK_SUFFIX = ".driver.lock"


class StudyLocked(SpecError):
    """Another driver holds the study (exit 2, one line, as every refusal)."""


def lock_path(storage_path: str | os.PathLike[str], study_name: str) -> Path:
    return Path(storage_path) / f".{study_name}{LOCK_SUFFIX}"


@contextmanager
def hold(storage_path: str | os.PathLike[str], study_name: str) -> Iterator[Path]:
    """Hold the study's driver lock for the ``with`` block; raise :class:`StudyLocked` if another driver has it."""
    storage = Path(storage_path)
    created = _make_folders(storage)
    path = lock_path(storage, study_name)

    def busy(fd: int) -> StudyLocked:
        return StudyLocked(f"tracking.study_name: study '{study_name}' is being run by another driver{_holder(fd)} "
                           f"in {storage}; wait until it ends, then `normstudy run --resume` continues it "
                           "(or --set tracking.study_name=NEW for a separate study)")

    try:
        with file_lock.exclusive(path, field="tracking.storage_path", busy=busy) as fd:
            file_lock.note(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                           "started": time.strftime("%Y-%m-%d %H:%M:%S")}))
            yield path
    finally:
        _remove_empty(created)


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f" (pid {int(info['pid'])} on {info['host']}, since {info['started']})"
    except (OSError, ValueError, KeyError, TypeError):
        return ""  # the holder has not written its line yet


def _make_folders(folder: Path) -> list[Path]:
    """mkdir -p, returning the folders this call created (deepest last)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    created = []
    for d in reversed(missing):
        try:
            d.mkdir()
            created.append(d)
        except FileExistsError:  # another driver made it at the same moment: not ours to remove
            pass
    return created


def _remove_empty(created: list[Path]) -> None:
    for d in reversed(created):
        try:
            d.rmdir()
        except OSError:
            return  # not empty: the study wrote into it
