"""Checks run before a study writes anything: a refused study leaves no runs, files or directories.

Each failure is a :class:`SpecError` with one line naming the field and the fix. ``preflight(spec)`` is
called by ``run_study`` and ``normstudy train`` after Ray is initialized and before the first MLflow
write. The checks, cheapest first (docs/reliability.md lists the faults each one covers):

- every number is finite (YAML's ``.inf``/``.nan`` pass pydantic's ``gt=0`` bounds);
- ``tracking``: the store can be reached and written — a SQLite file's folder exists and is writable
  (MLflow would create it silently), the file, if any, is a SQLite database; an ``http(s)://`` server
  answers a TCP connect and ``GET /health`` within a few seconds; a file store (``./mlruns``, which
  MLflow 3 refuses) or an unknown scheme is refused; study and experiment names are usable as tags and
  folder names; ``storage_path`` and ``report_dir`` can be created.
- ``search``: every scheme's search space loads (no empty file, no ``min > max``); a grid study's space
  has the dimensions its grid writes (``lr``, and ``init_scale`` where the scheme has one); an Optuna
  study's space has at least one dimension; ``search.space_dir`` and ``data.path`` are absolute (trials
  run in their own working directories, where a relative path is missing); ``search.metric`` is a
  metric the loop reports, optimised in a sensible direction.
- ``training``/``data``: the global batch splits evenly over the workers, every rank gets at least one
  full batch an epoch; a ``folder`` data path exists with ``train_dir``/``val_dir`` holding the same
  non-empty class folders, and every image file starts like an image (``scan_folder(verify=True)``:
  a corrupt or mislabelled file is named here, not in the middle of a trial).
- ``scaling``: the cluster can place one trial (needs Ray).
"""

from __future__ import annotations

import math
import os
import re
import socket
import time
from pathlib import Path
from urllib.parse import urlparse

from study.spec import SpecError, StudySpec

CONNECT_TIMEOUT_S = 3.0  # per check: an unreachable tracking server is refused in a few seconds
EVAL_METRICS = {"train_top1": "max", "train_top5": "max", "test_top1": "max", "test_top5": "max",
                "train_loss_eval": "min", "test_loss": "min"}  # what trainers.loop.evaluate reports
DB_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
SQLITE_MAGIC = b"SQLite format 3\x00"


def preflight(spec: StudySpec) -> None:
    """All checks, in order; call after Ray is initialized (placement needs the cluster's resources)."""
    check_finite(spec)
    check_names(spec)
    check_tracking(spec)
    check_storage(spec)
    check_search(spec)
    check_batches(spec)
    check_data(spec)
    check_placeable(spec)


def check_finite(spec: StudySpec) -> None:
    """YAML's ``.inf``/``.nan`` pass ``gt=0`` bounds (``training.epochs: .inf`` would overflow the step count
    in every worker): refuse any non-finite number."""

    def walk(value, path: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{path}: must be a finite number, got {value}; give a number")
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{path}.{i}")

    walk(spec.model_dump(), "")


# --------------------------------------------------------------------------------------------------
# tracking


def check_names(spec: StudySpec) -> None:
    """Study names go into MLflow filter strings (quoted) and folder names; experiments must be named."""
    tr = spec.tracking
    if not NAME_RE.match(tr.study_name):
        raise SpecError(f"tracking.study_name: {tr.study_name!r} is not a usable name; use letters, digits, "
                        "'_', '.' or '-' (starting with a letter or digit)")
    if not tr.experiment.strip() or "'" in tr.experiment or "\n" in tr.experiment:
        raise SpecError(f"tracking.experiment: {tr.experiment!r} is not a usable MLflow experiment name; "
                        "give a non-empty name without quotes or newlines")


def check_tracking(spec: StudySpec) -> None:
    """The MLflow store can be reached and written, without writing to it."""
    from study.tracking import resolve_uri

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


def _check_connect(uri: str, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as err:
        why = err.strerror or type(err).__name__
        raise SpecError(f"tracking.tracking_uri: cannot reach {uri} ({why}); start the server (e.g. "
                        f"mlflow server --host 127.0.0.1 --port {port}) or fix the URI") from None


def _check_http(uri: str, parsed) -> None:
    import urllib.error
    import urllib.request

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


def check_storage(spec: StudySpec) -> None:
    """``storage_path`` and ``report_dir`` can be created where they are asked for (nothing is created)."""
    storage = Path(spec.tracking.storage_path).expanduser().absolute()
    report = storage.parent / spec.tracking.report_dir
    for field, path in (("tracking.storage_path", storage), ("tracking.report_dir", report)):
        if path.exists() and not path.is_dir():
            raise SpecError(f"{field}: '{path}' exists and is not a folder; choose another path")
        ancestor = path
        while not ancestor.exists():
            ancestor = ancestor.parent
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            raise SpecError(f"{field}: cannot create '{path}' ('{ancestor}' is not a writable folder); "
                            "choose a path you can write to")


# --------------------------------------------------------------------------------------------------
# search


def check_search(spec: StudySpec) -> None:
    """Load every scheme's space now (a bad file fails here, not in the first trial of that scheme)."""
    import yaml

    import search_spaces
    from trainers import norms

    s = spec.search
    if s.metric not in EVAL_METRICS:
        raise SpecError(f"search.metric: {s.metric!r} is not reported by the trainer; use one of "
                        f"{', '.join(EVAL_METRICS)}")
    if EVAL_METRICS[s.metric] != s.mode_direction:
        raise SpecError(f"search.mode_direction: {s.metric} should be {EVAL_METRICS[s.metric]}imized, not "
                        f"{s.mode_direction}imized; set search.mode_direction: {EVAL_METRICS[s.metric]}")
    _check_absolute("search.space_dir", s.space_dir)
    if s.space_dir is not None and not Path(s.space_dir).is_dir():
        raise SpecError(f"search.space_dir: folder '{s.space_dir}' not found; give a folder of <family>.yaml "
                        "search spaces or remove the key to use the bundled ones")
    for entry in spec.schemes:
        try:
            space = search_spaces.for_scheme(spec, entry.name)
        except SpecError as err:
            raise SpecError(f"search.space_dir: {err}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise SpecError(f"search.space_dir: the space of scheme '{entry.name}'{where} is not valid YAML; "
                            "fix its syntax") from None
        except (OSError, UnicodeDecodeError) as err:
            raise SpecError(f"search.space_dir: cannot read the space of scheme '{entry.name}' ({err}); "
                            "fix the file") from None
        if s.mode == "grid":
            need = ["lr"] + (["init_scale"] if norms.get(entry.name).has_init_scale else [])
            missing = [d for d in need if d not in space]
            if missing:
                raise SpecError(f"search.space_dir: the space of scheme '{entry.name}' has no "
                                f"{', '.join(missing)}, which the grid sets; add {missing[0]}: "
                                "{min, max, default, target}")
        elif not space:
            raise SpecError(f"search.space_dir: the space of scheme '{entry.name}' has no dimension to search; "
                            "add one, e.g. lr: {min: 0.01, max: 1, scaling: log, default: 0.1, target: training.lr}")


def _check_absolute(field: str, path: str | None) -> None:
    """Tune trials (and Train workers) run in their own working directories: a relative path that exists
    here is missing there, and every trial would fail on it."""
    if path and not Path(path).expanduser().is_absolute():
        raise SpecError(f"{field}: '{path}' is a relative path, but trials run in their own working directories; "
                        f"give an absolute path, e.g. {Path(path).expanduser().absolute()}")


# --------------------------------------------------------------------------------------------------
# training and data


def check_batches(spec: StudySpec) -> None:
    t, w = spec.training, spec.scaling.num_workers
    if t.batch_size < w:
        raise SpecError(f"training.batch_size: a global batch of {t.batch_size} cannot feed {w} workers; "
                        f"use a batch of at least {w} or fewer workers")
    if t.batch_size % w:
        raise SpecError(f"training.batch_size: {t.batch_size} does not split evenly over {w} workers "
                        f"(the lr is scaled for the global batch); use a multiple of {w}")
    if spec.data.kind == "generated" and _steps(spec.data.train_size, t.batch_size, w) < 1:
        raise SpecError(f"data.train_size: {spec.data.train_size} samples give no full batch of "
                        f"{t.batch_size // w} per worker on {w} worker(s); raise data.train_size or lower "
                        "training.batch_size")


def _steps(samples: int, global_batch: int, workers: int) -> int:
    from trainers.data.base import steps_per_epoch

    return steps_per_epoch(samples, global_batch // workers, workers)


def check_data(spec: StudySpec) -> None:
    """A folder data set: scanned and its image headers checked now (see trainers.data.folder)."""
    if spec.data.kind != "folder":
        return
    from trainers.data.folder import scan_folder

    _check_absolute("data.path", spec.data.path)
    try:
        splits = scan_folder(spec.data, verify=True)
    except (OSError, ValueError) as err:
        msg = str(err).strip("'\"").replace("\n", " ")
        raise SpecError(msg if msg.startswith(("data.", "data:")) else f"data.path: {msg}") from None
    t, w = spec.training, spec.scaling.num_workers
    if _steps(len(splits.train), t.batch_size, w) < 1:
        raise SpecError(f"data.path: {len(splits.train)} training images give no full batch of "
                        f"{t.batch_size // w} per worker on {w} worker(s); lower training.batch_size or add images")


# --------------------------------------------------------------------------------------------------
# scaling


def check_placeable(spec: StudySpec) -> None:
    """Refuse a trial shape the cluster can never place (it would wait forever)."""
    import ray

    res, s = ray.cluster_resources(), spec.scaling
    need_cpu = s.cpus_per_worker * s.num_workers
    if need_cpu > res.get("CPU", 0):
        raise SpecError(f"scaling.num_workers: {s.num_workers} workers × {s.cpus_per_worker:g} CPUs need {need_cpu:g} "
                        f"CPUs but the cluster has {res.get('CPU', 0):g}; lower num_workers or cpus_per_worker")
    if s.use_gpu and s.num_workers > res.get("GPU", 0):
        raise SpecError(f"scaling.use_gpu: {s.num_workers} GPU workers but the cluster has "
                        f"{res.get('GPU', 0):g} GPUs; lower scaling.num_workers or set use_gpu: false")
