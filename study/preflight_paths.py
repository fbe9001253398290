"""Where a study writes and reads: every path and name checked before anything is written.

``check_paths`` needs no Ray; the CLI runs it on the spec as given, before it takes the study's driver lock,
and ``preflight`` runs it again on the resolved spec. Each failure is a :class:`SpecError` with one line
naming the field and the fix (docs/reliability.md lists the faults each check covers):

- names (``check_names``): the study name is a short folder name and MLflow tag, the experiment name one
  MLflow accepts (at most 500 characters, no quotes or control characters);
- folders (``check_storage``, ``check_data_paths``): ``storage_path`` and ``report_dir`` are not a system
  folder (``/``, the home folder, ``/etc``, ``/usr``, ...), every folder still to be created fits the
  filesystem's name limit and the whole path its path limit (with room for what Ray Tune puts under it),
  and the nearest existing folder really accepts a new folder — a probe folder is made and removed at once
  (``os.access`` says yes to root everywhere, and ``/proc`` or a read-only mount only fail on a real
  ``mkdir``); a folder data set's ``train_dir``/``val_dir`` lie inside ``data.path``;
- the report folder (``check_report_folder``, CLI, unless ``--no-report``): an existing report folder holds
  nothing but a previous report of this study, unless ``--force``;
- absolute paths (``_check_absolute``, used by ``check_search`` and ``check_data``): trials run in their own
  working directories, where a relative ``search.space_dir`` or ``data.path`` is missing.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from study.spec import SpecError, StudySpec

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
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


def check_paths(spec: StudySpec) -> None:
    """Every name and path of the spec, for what MLflow and the filesystem will do with them (no Ray)."""
    check_names(spec)
    check_storage(spec)
    check_data_paths(spec)


# --------------------------------------------------------------------------------------------------
# names


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
# folders


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


def _check_absolute(field: str, path: str | None) -> None:
    """Tune trials (and Train workers) run in their own working directories: a relative path that exists
    here is missing there, and every trial would fail on it."""
    if path and not Path(path).expanduser().is_absolute():
        raise SpecError(f"{field}: '{path}' is a relative path, but trials run in their own working directories; "
                        f"give an absolute path, e.g. {Path(path).expanduser().absolute()}")
