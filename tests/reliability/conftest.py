"""Helpers of the reliability tests (issue 9): the CLI in-process and as a subprocess, closed ports,
a tiny study, MLflow queries. Every fault these tests inject is real: a closed port, a killed process,
a corrupt file, a stopped server (docs/reliability.md)."""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.trainers.data.imagefolder import jpeg_folder  # noqa: F401  (the session fixture)

ROOT = Path(__file__).resolve().parents[2]
WRITTEN = ("mlruns.db", "normstudy_results", "normstudy_report", "mlruns")

# A study small enough for 2 slow cores (as tests/study/test_runner.py).
TINY = [
    "training.max_steps=12", "training.report_every=4", "training.eval_every=12",
    "data.train_size=256", "data.test_size=128", "data.train_eval_size=64", "training.batch_size=32",
    "training.lr_reference_batch=32", "model.cifar_blocks=[1, 1]",
]


def closed_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(ray_address: str | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               **extra)
    if ray_address:
        env["RAY_ADDRESS"] = ray_address  # join the session's Ray (docs/design.md §11: one Ray per session)
    return env


def cli_subprocess(args: list[str], cwd: Path, ray_address: str | None = None, timeout: float = 300,
                   **extra: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "normstudy"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "study.cli"]
    return subprocess.run(cmd + args, cwd=cwd, env=cli_env(ray_address, **extra), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory (the CLI's), apart from tmp_path where inputs live."""
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


@functools.lru_cache(maxsize=1)
def _new_store() -> Path:
    """A new MLflow store made once per test process (MLflow's migrations take seconds); tests copy it."""
    from study import store

    path = Path(tempfile.mkdtemp(prefix="normstudy-store-")) / "template.db"
    store._create_schema(path)
    return path


def new_store(path: Path) -> Path:
    """A new, whole MLflow store at ``path`` (a copy of the template)."""
    shutil.copyfile(_new_store(), path)
    return path


def foreign_db(path: Path) -> Path:
    """Another program's SQLite database (two tables of its own, one row)."""
    import sqlite3

    con = sqlite3.connect(path)
    con.executescript("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT); CREATE TABLE orders (id INTEGER);"
                      "INSERT INTO users (name) VALUES ('ada');")
    con.commit()
    con.close()
    return path


def half_made_store(path: Path) -> Path:
    """What two processes migrating one new file at once left (seen for real, docs/reliability.md): an MLflow
    store whose batch migration of ``experiments`` stopped with its copy ``_alembic_tmp_experiments`` in place,
    at an older schema version; last changed a minute ago (no one is making it now)."""
    import sqlite3

    shutil.copyfile(_new_store(), path)
    con = sqlite3.connect(path)
    con.executescript("CREATE TABLE _alembic_tmp_experiments (experiment_id INTEGER NOT NULL);"
                      "UPDATE alembic_version SET version_num = 'c8d9e0f1a2b3';")
    con.commit()
    con.close()
    old = time.time() - 60
    os.utime(path, (old, old))
    return path


def written(cwd: Path) -> list[str]:
    """What a refused command left behind in its working directory (must be nothing)."""
    return sorted(p.name for p in cwd.iterdir())
