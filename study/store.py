"""A SQLite MLflow store: what an existing file is, and making a new one safely beside other processes.

MLflow's SQLAlchemy store makes its schema on the first connect to a file without it: ``create_all`` of
the first tables, then some 65 Alembic migrations, each SQLite batch migration copying a table through
``_alembic_tmp_<table>``. SQLite runs that DDL outside a transaction, so two processes that both find a
new file migrate it at once and break it for good (``table _alembic_tmp_experiments already exists`` on
every later open), and a file that is some other program's database gets MLflow's tables written into it.
Hence, for every process of normstudy that opens a SQLite store (:class:`study.tracking.StudyTracker`:
the driver first, then trials, ``normstudy train`` and the report's publisher):

- :func:`inspect` reads the file read-only (``mode=ro``) and says what it is: ``missing``, ``empty`` (no
  table), ``ready`` (an MLflow store at this MLflow's schema), ``half`` (MLflow's tables but a migration
  left undone: ``_alembic_tmp_*`` tables, no ``experiments``/``alembic_version``, or no version row),
  ``outdated`` (an older MLflow's schema), ``newer`` (a version this MLflow does not know) or ``foreign``
  (tables that are not MLflow's). :func:`refusal` turns all but the first three into a one-line
  :class:`SpecError` naming the fix; the preflight calls it before anything is written.
- :func:`ensure` returns at once on a ready store (no lock: trials open the store many times). Otherwise
  it takes an exclusive lock on ``<db>.lock`` beside the file (:mod:`study.file_lock`), looks again, and
  makes the store in a private file in the same folder (``.<db>.<pid>.new``), which it then moves to the
  file's name: ``os.link`` when there is no file (fails if one appeared meanwhile — made by a process that
  does not take the lock, such as ``mlflow ui``; then that file is awaited, never replaced), ``os.replace``
  over an empty file. Either is one atomic rename in one folder: a process that opens the store sees no
  file or a whole store, never a half-made one, and a process killed while making it leaves only its
  private file (removed by the next maker).

Why a lock *and* a private file: the lock alone serializes normstudy's processes, but a maker killed
mid-migration would still leave a half-made store under the real name; the private file alone would let
two makers race to the rename and both spend the ~10 s migration. An upgrade of an existing store (an
older MLflow's) is not done here: MLflow asks for a backup first and so does the refusal.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from study import file_lock
from study.spec import SpecError

FIELD = "tracking.tracking_uri"
TMP_PREFIX = "_alembic_tmp_"  # Alembic's copy of a table during a SQLite batch migration
WAIT_S = 300.0  # how long a process waits for another to finish making the store (~10 s on 2 slow cores)
SETTLE_S = 30.0  # a half-made store this young may still be being made by a process without the lock
BUSY_TIMEOUT_S = 20.0  # as MLflow's own PRAGMA busy_timeout


@dataclass(frozen=True)
class StoreState:
    kind: str  # missing | empty | ready | half | outdated | newer | foreign
    detail: str = ""  # what makes it so: the odd tables, the schema version
    runs: int = 0  # runs the file holds (half-made and outdated stores: whether it is safe to remove)


def sqlite_file(uri: str) -> Path | None:
    """The file of a ``sqlite:///`` URI (absolute or relative to the working directory); None for any other
    URI and for an in-memory database."""
    if not uri.startswith("sqlite://"):
        return None
    rest = uri[len("sqlite://"):].split("?", 1)[0]
    if rest in ("", "/", "/:memory:") or not rest.startswith("/"):
        return None
    return Path(rest[1:] if rest.startswith("//") else rest).absolute()


def lock_file(db: Path) -> Path:
    return db.with_name(db.name + ".lock")


def inspect(db: Path) -> StoreState:
    """What ``db`` is, read without writing (a read-only connection; a missing file is not created)."""
    try:
        if db.stat().st_size == 0:
            return StoreState("empty")
    except FileNotFoundError:
        return StoreState("missing")
    with _read_only(db) as con:
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                  if not name.startswith("sqlite_")}  # SQLite's own (sqlite_sequence, sqlite_stat1)
        if not tables:
            return StoreState("empty")
        runs = con.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
        version = None
        if "alembic_version" in tables:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
            version = row[0] if row else None
    mlflow_tables, head, known = _schema()
    tmp = sorted(t for t in tables if t.startswith(TMP_PREFIX))
    others = sorted(tables - mlflow_tables - {"alembic_version"} - set(tmp))
    if others:
        return StoreState("foreign", ", ".join(others[:3]) + (" ..." if len(others) > 3 else ""))
    if tmp or not {"experiments", "alembic_version"} <= tables or version is None:
        return StoreState("half", ", ".join(tmp) or "no schema version", runs)
    if version == head:
        return StoreState("ready")
    return StoreState("outdated" if version in known else "newer", version, runs)


def refusal(db: Path, state: StoreState) -> SpecError | None:
    """The one-line error for a file that cannot be used as it is (None: usable, or to be made)."""
    uri = f"sqlite:///{db}"
    if state.kind == "foreign":
        return SpecError(f"{FIELD}: '{db}' is a SQLite database but not an MLflow store (it has tables "
                         f"{state.detail}); nothing was written to it: point the URI at a new or MLflow .db file")
    if state.kind == "half":
        fix = (f"it holds no runs: remove it (rm '{db}') and run again" if not state.runs else
               f"back it up, drop its {TMP_PREFIX}* tables (sqlite3 '{db}' 'DROP TABLE <name>') and run "
               f"`mlflow db upgrade {uri}`")
        return SpecError(f"{FIELD}: '{db}' is an MLflow store left half-made by an interrupted schema "
                         f"migration ({state.detail}); {fix}")
    if state.kind == "outdated":
        return SpecError(f"{FIELD}: '{db}' is an MLflow store of an older schema ({state.detail}); back it up, "
                         f"then run `mlflow db upgrade {uri}`")
    if state.kind == "newer":
        return SpecError(f"{FIELD}: '{db}' has schema version {state.detail}, which this MLflow does not know "
                         "(a newer MLflow made it); upgrade mlflow or use another file")
    return None


def check(db: Path) -> None:
    """Refuse (one line) a file that is not a usable or new MLflow store; writes nothing. A half-made
    store younger than :data:`SETTLE_S` may still be being made (by ``mlflow ui``, say): it is awaited."""
    state = _settled(db, SETTLE_S)
    err = refusal(db, state)
    if err is not None:
        raise err


def ensure(uri: str) -> None:
    """Make sure the SQLite store of ``uri`` exists whole before MLflow opens it (no-op for other URIs)."""
    db = sqlite_file(uri)
    if db is None or inspect(db).kind == "ready":
        return
    check(db)

    def busy(fd: int) -> SpecError:
        return SpecError(f"{FIELD}: another process has been making the MLflow store '{db}' for over "
                         f"{WAIT_S:.0f} s (it holds '{lock_file(db)}'); wait for it or stop it")

    with file_lock.exclusive(lock_file(db), field=FIELD, busy=busy, wait_s=WAIT_S):
        state = _settled(db, SETTLE_S)
        if state.kind in ("missing", "empty"):
            _make(db, replace=state.kind == "empty")
            state = _settled(db, SETTLE_S)  # ours, or one that appeared beside it (made without the lock)
        err = refusal(db, state)
        if err is not None:
            raise err
        if state.kind != "ready":
            raise SpecError(f"{FIELD}: '{db}' is still empty after the store was made; check the folder's "
                            "file system")


def _settled(db: Path, settle_s: float) -> StoreState:
    """The file's state once no one is making it: a half-made (or empty) file that was changed less than
    ``settle_s`` ago is looked at again until it is ready or has stood still that long."""
    while True:
        state = inspect(db)
        if state.kind not in ("half", "empty"):
            return state
        try:
            age = time.time() - db.stat().st_mtime
        except FileNotFoundError:
            continue
        if age >= settle_s:
            return state
        time.sleep(min(0.5, settle_s - age))


def _make(db: Path, *, replace: bool) -> None:
    """Make a new store in a private file beside ``db`` and move it to ``db`` in one rename."""
    for stale in db.parent.glob(f".{db.name}.*.new"):  # left by a maker that was killed
        stale.unlink(missing_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.new")
    try:
        _create_schema(tmp)
        if replace:
            os.replace(tmp, db)
        else:
            try:
                os.link(tmp, db)
            except FileExistsError:
                pass  # made meanwhile by a process without the lock: _settled awaits it
    finally:
        tmp.unlink(missing_ok=True)


def _create_schema(path: Path) -> None:
    """MLflow's own store creation (tables, every migration, the Default experiment) on ``path``, its INFO
    lines kept off stderr (they would read as a problem on a run that went well)."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    with _quiet("mlflow.store.db.utils", "alembic"):
        store = SqlAlchemyStore(f"sqlite:///{path}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
        store.engine.dispose()


@contextmanager
def _quiet(*names: str) -> Iterator[None]:
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextmanager
def _read_only(db: Path) -> Iterator[sqlite3.Connection]:
    try:
        con = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S)
    except sqlite3.Error as err:
        raise SpecError(f"{FIELD}: cannot open '{db}' ({err}); check the file and its permissions") from None
    try:
        yield con
    except sqlite3.DatabaseError as err:
        raise SpecError(f"{FIELD}: '{db}' cannot be read as a SQLite database ({err}); point the URI at a new "
                        "or MLflow .db file") from None
    finally:
        con.close()


_SCHEMA: tuple[frozenset[str], str, frozenset[str]] | None = None


def _schema() -> tuple[frozenset[str], str, frozenset[str]]:
    """MLflow's table names, its head schema revision and every revision it knows (read once)."""
    global _SCHEMA
    if _SCHEMA is None:
        from alembic.script import ScriptDirectory
        from mlflow.store.db import utils
        from mlflow.store.db.base_sql_model import Base
        from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

        script = ScriptDirectory.from_config(utils._get_alembic_config(""))
        tables = frozenset(Base.metadata.tables) | frozenset(InitialBase.metadata.tables)
        _SCHEMA = tables, utils._get_latest_schema_revision(), frozenset(r.revision for r in script.walk_revisions())
    return _SCHEMA
