"""Checks run before a study writes anything: a refused study leaves no runs, files or directories.

Each failure is a :class:`SpecError` with one line naming the field and the fix. ``preflight(spec)`` is
called by ``run_study`` and ``normstudy train`` after Ray is initialized and before the first MLflow
write. The checks, cheapest first (docs/reliability.md lists the faults each one covers):

- every number is finite (YAML's ``.inf``/``.nan`` pass pydantic's ``gt=0`` bounds);
- ``tracking``: the store can be reached and written — a SQLite file's folder exists and is writable
  (MLflow would create it silently), the file, if any, is a SQLite database; an ``http(s)://`` server
  answers a TCP connect and ``GET /health`` within a few seconds; a file store (``./mlruns``, which
  MLflow 3 refuses) or an unknown scheme is refused.
- names and paths (``check_paths``, no Ray needed; the CLI runs it before it takes the study's driver
  lock): the study name is a short folder name and MLflow tag, the experiment name one MLflow accepts
  (at most 500 characters, no quotes or control characters); ``storage_path`` and ``report_dir`` are not
  a system folder (``/``, the home folder, ``/etc``, ``/usr``, ...), every folder still to be created
  fits the filesystem's name limit and the whole path its path limit (with room for what Ray Tune puts
  under it), and the nearest existing folder really accepts a new folder — a probe folder is made and
  removed at once (``os.access`` says yes to root everywhere, and ``/proc`` or a read-only mount only
  fail on a real ``mkdir``). ``check_report_folder`` (CLI, unless ``--no-report``): an existing report
  folder holds nothing but a previous report of this study, unless ``--force``.
- ``search``: every scheme's search space loads (no empty file, no ``min > max``); a grid study's space
  has the dimensions its grid writes (``lr``, and ``init_scale`` where the scheme has one); an Optuna
  study's space has at least one dimension; ``search.space_dir`` and ``data.path`` are absolute (trials
  run in their own working directories, where a relative path is missing); ``search.metric`` is a
  metric the loop reports, optimised in a sensible direction.
- ``training``/``data``: the global batch splits evenly over the workers, every rank gets at least one
  full batch an epoch; a ``folder`` data path exists with ``train_dir``/``val_dir`` holding the same
  non-empty class folders, and every image file starts like an image (``scan_folder(verify=True)``:
  a corrupt or mislabelled file is named here, not in the middle of a trial).
- ``scaling``: the cluster can place one trial (needs Ray): CPUs, GPUs, the custom resources of
  ``resources_per_worker``, and for STRICT_SPREAD/STRICT_PACK enough nodes that each hold a worker (or
  one node that holds them all).
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import tempfile
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
# A study name is a folder (storage_path/<study>/...), part of the lock file's name and of MLflow run names
# "<study>/<scheme>/<trial id>", which MLflow keeps in a 250-character column on SQL databases.
MAX_STUDY_NAME = 128
MAX_EXPERIMENT_NAME = 500  # mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH
# Room for what Ray Tune/Train write under storage_path/<study>: experiment and trial folders (trial
# names are cut at TUNE_MAX_LEN_IDENTIFIER=130 characters, then a date), checkpoint folders and files.
TUNE_PATH_RESERVE = 512
# Folders a study must never write into as such (its results or report would be mixed with the system's).
SYSTEM_FOLDERS = frozenset({
    "/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib32", "/lib64", "/libx32", "/media", "/mnt",
    "/opt", "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/usr/bin", "/usr/lib",
    "/usr/lib64", "/usr/include", "/usr/local", "/usr/local/bin", "/usr/local/lib", "/usr/sbin", "/usr/share",
    "/usr/src", "/var/cache", "/var/lib", "/var/log", "/var/mail", "/var/spool", "/var/tmp", "/var/run"})
# ... nor anywhere inside these (kernel interfaces, devices, configuration, programs).
SYSTEM_TREES = ("/proc", "/sys", "/dev", "/boot", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/usr/bin",
                "/usr/sbin", "/usr/lib", "/usr/lib64", "/usr/include")
REPORT_FILES = frozenset({"report.json", "report.md", "report.html"})  # + the plots (*.png): analysis/report.py


def preflight(spec: StudySpec) -> None:
    """All checks, in order; call after Ray is initialized (placement needs the cluster's resources)."""
    check_finite(spec)
    check_paths(spec)
    check_tracking(spec)
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
# names and paths


def check_paths(spec: StudySpec) -> None:
    """Every name and path of the spec, for what MLflow and the filesystem will do with them (no Ray)."""
    check_names(spec)
    check_storage(spec)
    check_data_paths(spec)


def check_names(spec: StudySpec) -> None:
    """Study names go into MLflow filter strings (quoted), run names and folder names; experiments must
    be named the way MLflow accepts."""
    tr = spec.tracking
    if not NAME_RE.match(tr.study_name):
        raise SpecError(f"tracking.study_name: {_show(tr.study_name)} is not a usable name; use letters, digits, "
                        "'_', '.' or '-' (starting with a letter or digit)")
    if len(tr.study_name) > MAX_STUDY_NAME:
        raise SpecError(f"tracking.study_name: {len(tr.study_name)} characters, longer than {MAX_STUDY_NAME} (it "
                        "names folders and MLflow runs); use a shorter name")
    exp = tr.experiment
    if not exp.strip() or "'" in exp or any(ord(c) < 32 or ord(c) == 127 for c in exp):
        raise SpecError(f"tracking.experiment: {_show(exp)} is not a usable MLflow experiment name; "
                        "give a non-empty name without quotes or control characters")
    if len(exp) > MAX_EXPERIMENT_NAME:
        raise SpecError(f"tracking.experiment: {len(exp)} characters, longer than MLflow's limit of "
                        f"{MAX_EXPERIMENT_NAME}; use a shorter name")
    if not _encodable(exp):
        raise SpecError(f"tracking.experiment: {_show(exp)} is not valid Unicode text; give a plain name")


def _show(text: str, limit: int = 60) -> str:
    """A value quoted on one line, cut to ``limit`` characters (messages stay one readable line)."""
    shown = repr(text[:limit])
    return shown + ("..." if len(text) > limit else "")


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (YAML's "\ud800" escape)
        return False
    return True


# --------------------------------------------------------------------------------------------------
# tracking


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
    """``storage_path`` and ``report_dir`` can be created and written where they are asked for (only a
    probe folder is made, and removed at once)."""
    tr = spec.tracking
    storage = _as_path("tracking.storage_path", tr.storage_path)
    report = storage.parent / _as_path("tracking.report_dir", tr.report_dir, absolute=False)
    reserve = len(os.fsencode(tr.study_name)) + 1 + TUNE_PATH_RESERVE
    _check_folder("tracking.storage_path", storage, reserve=reserve)
    _check_folder("tracking.report_dir", report, reserve=64)  # + report.html, plot names


def report_folder(spec: StudySpec) -> Path:
    """Where ``normstudy run`` writes the report: ``report_dir`` beside ``storage_path``."""
    return Path(spec.tracking.storage_path).absolute().parent / spec.tracking.report_dir


def check_report_folder(spec: StudySpec, force: bool = False) -> None:
    """An existing report folder must be empty or hold a previous report of this study (report.json of
    the same study name, the report's files and nothing else): a report written into a folder of other
    files would mix with them, and overwrite any report.html/report.json among them."""
    folder = report_folder(spec)
    if force or not folder.is_dir():
        return
    try:
        names = sorted(p.name for p in folder.iterdir())
    except OSError as err:
        raise SpecError(f"tracking.report_dir: cannot list '{folder}' ({err.strerror}); fix its permissions "
                        "or choose another folder") from None
    if not names:
        return
    others = [n for n in names if n not in REPORT_FILES and not n.endswith(".png")]
    previous = _report_study(folder / "report.json")
    if previous == spec.tracking.study_name and not others:
        return
    what = (f"the report of study '{previous}'" if previous and not others
            else f"{len(names)} entries that are not a report of study '{spec.tracking.study_name}' "
                 f"(e.g. '{(others or names)[0]}')")
    raise SpecError(f"tracking.report_dir: '{folder}' already holds {what}; choose an empty or new folder "
                    "(--set tracking.report_dir=DIR), or pass --force to write the report there anyway")


def _report_study(path: Path) -> str | None:
    """The study name in a report.json (docs/report.md: ``study.name``), or None."""
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["study"]["name"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_data_paths(spec: StudySpec) -> None:
    """The data set's paths are paths: a folder data set's split folders lie inside it (the folder itself is
    scanned by ``check_data``); a data set normstudy writes (``digits``) can be written where asked."""
    d = spec.data
    if d.kind == "generated":
        return
    path = _as_path("data.path", d.path or "")
    if d.kind == "digits":
        _check_folder("data.path", path, reserve=64)
    for field, sub in (("data.train_dir", d.train_dir), ("data.val_dir", d.val_dir)):
        p = _as_path(field, sub, absolute=False)
        if p.is_absolute() or ".." in p.parts or not sub.strip():
            raise SpecError(f"{field}: {_show(sub)} must be a folder inside data.path; give a relative name "
                            "such as 'train'")


def _as_path(field: str, text: str, absolute: bool = True) -> Path:
    """The path a spec value names; refuses what no filesystem call can take."""
    if "\x00" in text:
        raise SpecError(f"{field}: {_show(text)} contains a NUL character; give a plain path")
    if not _encodable(text):
        raise SpecError(f"{field}: {_show(text)} is not valid Unicode text; give a plain path")
    if not text.strip():
        raise SpecError(f"{field}: empty path; give a folder, e.g. {field.split('.')[-1].replace('_dir', '')}")
    if "://" in text:
        raise SpecError(f"{field}: {_show(text)} is a URI; normstudy reads and writes it as a local (or mounted "
                        "shared) folder, give a path")
    if text.startswith("~"):
        raise SpecError(f"{field}: {_show(text)} starts with '~', which is not expanded (it would be a folder "
                        f"named '~'); spell the home folder out, e.g. {Path.home()}{text[1:]}")
    path = Path(text)
    return path.absolute() if absolute else path


def _check_folder(field: str, path: Path, reserve: int) -> None:
    """``path`` is, or can become, a folder this process can write, outside the system's folders."""
    try:
        real = Path(os.path.realpath(path))  # symlinks resolved: /bin -> /usr/bin, a link to /etc
    except OSError as err:  # a symlink loop
        raise SpecError(f"{field}: cannot resolve '{path}' ({err.strerror}); choose another path") from None
    home = os.path.realpath(Path.home())
    if str(real) in SYSTEM_FOLDERS or str(real) == home or any(
            str(real) == t or str(real).startswith(t + "/") for t in SYSTEM_TREES):
        what = "your home folder" if str(real) == home else "a system folder"
        raise SpecError(f"{field}: '{path}' is {what}; give a folder of its own, e.g. {Path.cwd() / 'normstudy'}"
                        f"{'_results' if 'storage' in field else '_report'}")
    ancestor, missing = _existing_part(field, path)
    if not missing and not path.is_dir():
        raise SpecError(f"{field}: '{path}' exists and is not a folder; choose another path")
    if missing and not ancestor.is_dir():
        raise SpecError(f"{field}: cannot create '{_cut(path)}' ('{ancestor}' is a file, not a folder); "
                        "choose a path you can write to")
    name_max = _pathconf(ancestor, "PC_NAME_MAX", 255)
    path_max = _pathconf(ancestor, "PC_PATH_MAX", 4096)
    for name in missing:
        if len(os.fsencode(name)) > name_max:
            raise SpecError(f"{field}: the folder name {_show(name, 40)} is {len(os.fsencode(name))} bytes, longer "
                            f"than this filesystem's {name_max}; use a shorter name")
    if len(os.fsencode(str(path))) + reserve > path_max:
        raise SpecError(f"{field}: '{_cut(path)}' is {len(os.fsencode(str(path)))} bytes long; with what is "
                        f"written under it that passes this filesystem's path limit of {path_max}; use a shorter path")
    try:  # the real test: make (and at once remove) a folder where the first missing one would go
        os.rmdir(tempfile.mkdtemp(prefix=".normstudy-probe-", dir=ancestor))
    except OSError as err:
        where = f"'{ancestor}'" + (f" (for '{_cut(path)}')" if missing else "")
        raise SpecError(f"{field}: cannot create folders in {where}: {err.strerror}; choose a path you can "
                        "write to") from None


def _existing_part(field: str, path: Path) -> tuple[Path, list[str]]:
    """The deepest existing folder on ``path`` and the names below it still to be created. Walks down from
    the root, so a name too long for the filesystem is reported as such (``stat`` of it fails otherwise)."""
    current, missing = Path(path.anchor), []
    for name in path.parts[1:]:
        if missing:
            missing.append(name)
            continue
        name_max = _pathconf(current, "PC_NAME_MAX", 255)
        if len(os.fsencode(name)) > name_max:
            raise SpecError(f"{field}: the folder name {_show(name, 40)} is {len(os.fsencode(name))} bytes, longer "
                            f"than this filesystem's {name_max}; use a shorter name")
        try:
            os.stat(current / name)
        except FileNotFoundError:
            missing.append(name)
            continue
        except NotADirectoryError:  # current is a file
            return current, [name]
        except OSError as err:  # permissions, a symlink loop
            raise SpecError(f"{field}: cannot use '{_cut(path)}' ({err.strerror}); choose another path") from None
        current = current / name
    return current, missing


def _pathconf(path: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(path, name))
    except (OSError, ValueError):
        return default


def _cut(path: Path, limit: int = 80) -> str:
    text = str(path)
    return text if len(text) <= limit else text[: limit // 2] + "..." + text[-limit // 2:]


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
        if s.mode in ("grid", "boundary"):
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
    for name, amount in s.resources_per_worker.items():
        if amount * s.num_workers > res.get(name, 0):
            raise SpecError(f"scaling.resources_per_worker: {s.num_workers} workers × {amount:g} '{name}' need "
                            f"{amount * s.num_workers:g} but the cluster has {res.get(name, 0):g}; start nodes with "
                            f"--resources='{{\"{name}\": N}}' or lower the amount")
    if s.placement_strategy in ("STRICT_SPREAD", "STRICT_PACK") and s.num_workers > 1:
        bundle = {"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {}), **s.resources_per_worker}
        per_node = [min(int(n["Resources"].get(k, 0) // v) for k, v in bundle.items() if v > 0)
                    for n in ray.nodes() if n.get("Alive")]
        if s.placement_strategy == "STRICT_SPREAD" and sum(1 for k in per_node if k >= 1) < s.num_workers:
            raise SpecError(f"scaling.placement_strategy: STRICT_SPREAD puts each of the {s.num_workers} workers on "
                            f"its own node, but only {sum(1 for k in per_node if k >= 1)} node(s) can hold one "
                            f"({bundle}); add nodes, lower num_workers or use SPREAD")
        if s.placement_strategy == "STRICT_PACK" and max(per_node, default=0) < s.num_workers:
            raise SpecError(f"scaling.placement_strategy: STRICT_PACK puts all {s.num_workers} workers on one node, "
                            f"but no node can hold them ({bundle} each); lower num_workers or use PACK")
