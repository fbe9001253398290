"""The MLflow tracking store can be reached and written, checked before anything is written to it.

``check_tracking`` (``tracking.tracking_uri``): a SQLite file's folder exists and is writable (MLflow would
create it silently), the file, if any, is a SQLite database that is empty or an MLflow store at this
MLflow's schema (``study.store``: another program's database, a half-made or an older store is refused
before anything is written to it); an ``http(s)://`` server answers a TCP connect
and ``GET /health`` within a few seconds; a database server (``postgresql://``, ``mysql://``, ...) answers
a TCP connect; a file store (``./mlruns``, which MLflow 3 refuses) or an unknown scheme is refused. Each
failure is a :class:`SpecError` with one line naming the field and the fix.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from study import store
from study.spec import SpecError, StudySpec
from study.tracking import resolve_uri

CONNECT_TIMEOUT_S = 3.0  # per check: an unreachable tracking server is refused in a few seconds
DB_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}
SQLITE_MAGIC = b"SQLite format 3\x00"


def check_tracking(spec: StudySpec) -> None:
    """The MLflow store can be reached and written, without writing to it."""
    uri = resolve_uri(spec.tracking.tracking_uri)
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    field = "tracking.tracking_uri"
    if scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme in ("http", "https"):
        _check_http(uri, parsed)
    elif scheme.split("+")[0] in DB_PORTS:
        host = parsed.hostname
        if host:
            _check_connect(uri, host, parsed.port or DB_PORTS[scheme.split("+")[0]])
    elif scheme in ("databricks", "databricks-uc", "uc"):
        return  # profile-based: MLflow checks its own credentials
    elif scheme in ("", "file") or len(scheme) == 1:  # a bare path, file:// or a Windows drive letter
        raise SpecError(f"{field}: {uri!r} is a file store, which MLflow 3 refuses; use "
                        "sqlite:///mlruns.db (a SQLite file here) or http://127.0.0.1:5000 (an mlflow server)")
    else:
        raise SpecError(f"{field}: unknown scheme '{parsed.scheme}' in {uri!r}; use sqlite:///mlruns.db, "
                        "http(s)://host:port of an mlflow server, or postgresql:// / mysql://")


def _check_sqlite(uri: str) -> None:
    field = "tracking.tracking_uri"
    rest = uri[len("sqlite://"):].split("?", 1)[0]
    if rest in ("", "/", "/:memory:"):
        return
    if not rest.startswith("/"):
        raise SpecError(f"{field}: {uri!r} is not a SQLite URI; use sqlite:///relative.db or sqlite:////abs/path.db")
    db = Path(rest[1:] if rest.startswith("//") else rest)
    folder = db.parent
    if not folder.is_dir():
        raise SpecError(f"{field}: folder '{folder}' of the SQLite file does not exist; create it first "
                        "or point the URI at an existing folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SpecError(f"{field}: folder '{folder}' is not writable; choose a folder you can write to")
    if db.exists():
        if not db.is_file():
            raise SpecError(f"{field}: '{db}' is not a file; point the URI at a SQLite file")
        try:
            with db.open("rb") as fh:
                head = fh.read(len(SQLITE_MAGIC))
        except OSError as err:
            raise SpecError(f"{field}: cannot read '{db}' ({err.strerror}); fix its permissions") from None
        if head and head != SQLITE_MAGIC:
            raise SpecError(f"{field}: '{db}' is not a SQLite database; point the URI at a new or existing "
                            "MLflow .db file")
        if not os.access(db, os.W_OK):
            raise SpecError(f"{field}: '{db}' is read-only; make it writable or use another file")
        store.check(db.absolute())  # another program's database, a half-made or older store: refused here


def _check_connect(uri: str, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise SpecError(f"tracking.tracking_uri: cannot reach {uri} ({why}); start the server (e.g. "
                        f"mlflow server --host 127.0.0.1 --port {port}) or fix the URI") from None


def _check_http(uri: str, parsed) -> None:
    port = parsed.port or (443 if parsed.scheme.lower() == "https" else 80)
    if not parsed.hostname:
        raise SpecError(f"tracking.tracking_uri: {uri!r} has no host; use http://127.0.0.1:5000")
    _check_connect(uri, parsed.hostname, port)
    health = uri.rstrip("/") + "/health"
    started = time.monotonic()
    try:
        with urllib.request.urlopen(health, timeout=CONNECT_TIMEOUT_S) as resp:  # noqa: S310 - http(s) only
            status = resp.status
    except urllib.error.HTTPError as err:  # an answer: 401/403/404 behind a proxy still means "up"
        status = err.code
    except (OSError, ValueError) as err:
        why = getattr(err, "reason", None) or err
        raise SpecError(f"tracking.tracking_uri: {uri} accepts connections but does not answer HTTP "
                        f"({why}, {time.monotonic() - started:.1f} s); check that it is an mlflow server") from None
    if status >= 500:
        raise SpecError(f"tracking.tracking_uri: {health} answered HTTP {status}; the MLflow server is "
                        "failing, check its log and its backend store")
