"""Read one study back from MLflow into plain dataclasses — the only analysis module that talks to MLflow.

The layout read here is the contract in docs/mlflow_layout.md: a study run (``normstudy.role=study``),
its scheme runs (children, ``mlflow.parentRunId`` = study run) and their trial runs (grandchildren).
Everything downstream (summarize, claims, early_warning, plots) works on the dataclasses below, so it is
testable without a store. A trial's outcome is the one rule's (:func:`trainers.outcome.outcome_of`), here
as everywhere else in normstudy.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from trainers.outcome import COLLAPSED, DIVERGED, ERRORED, STALLED, is_failure, is_finished, outcome_of

DEFAULT_EXPERIMENT = "normstudy"
# Per-step curves read for every trial: the loss and the early-warning signals (analysis/early_warning.py).
TRIAL_CURVES = ("loss", "grad_norm", "update_ratio_max", "spike_ratio", "sharpness", "sharpness_lr", "lr")
ACT_STD_PREFIX = "act_std/"  # per-stage activation std, read for every trial (early warning's act_std)
# Where claim 3's step shares were profiled (scheme-run tags, docs/mlflow_layout.md): device, dtype, the
# per-worker batch, and "driver" or "worker". A store older than them has none: the report says so.
PROFILE_TAGS = {k: f"normstudy.profile_{k}" for k in ("device", "dtype", "batch", "where")}
PROFILE_ERROR_TAG = "normstudy.profile_error"  # the profile failed: claim 3 is not measured for that scheme
NOTE_TAG = "mlflow.note.content"
RERUN_TAG = "normstudy.rerun"  # tuned|untuned on a seed re-run's trial run (study/reruns.py)
_PAGE = 1000


class ReportError(RuntimeError):
    """A report cannot be made; the message is one line that says why and what to do."""


@dataclass(frozen=True)
class Curve:
    """A metric's history: steps ascending, one value a step (the last logged one wins)."""

    steps: tuple[int, ...]
    values: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.steps)


@dataclass
class TrialData:
    run_id: str
    trial_id: str
    scheme: str
    status: str  # MLflow run status: FINISHED, RUNNING, FAILED, KILLED
    hp: dict[str, Any]  # sampled hyperparameters without the "hp." prefix (numbers parsed), seed excluded
    seed: int | None
    diverged: bool
    divergence_cause: str | None = None
    divergence_step: int | None = None
    divergence_layer: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)  # latest value of every metric
    curves: dict[str, Curve] = field(default_factory=dict)
    # Collapsed: finite to the end but at chance (trainers/divergence.py's collapse rule); never also diverged.
    collapsed: bool = False
    collapse_cause: str | None = None  # "dead_relu" | "chance_accuracy"; None when untagged
    collapse_step: int | None = None
    collapse_layer: str | None = None  # the stage ("layer2", ...)
    # Stalled: finite to the end but did not fit (trainers/stall.py); never also diverged or collapsed.
    stalled: bool = False
    error: str | None = None  # errored (the run FAILED): the error's last line, as its note says it
    rerun: str | None = None  # "tuned" | "untuned": a seed re-run (study/reruns.py), not a search trial

    @property
    def lr(self) -> float | None:
        v = self.hp.get("lr")
        return float(v) if isinstance(v, int | float) else None

    @property
    def init_scale(self) -> float | None:
        v = self.hp.get("init_scale")
        return float(v) if isinstance(v, int | float) else None

    def final(self, key: str) -> float | None:
        v = self.metrics.get(key)
        return v if v is not None and math.isfinite(v) else None

    @property
    def outcome(self) -> str:
        """The one rule's outcome (:func:`trainers.outcome.outcome_of`): ``errored`` when the run FAILED
        (raised), else ``diverged``, ``collapsed``, ``stalled``, ``stable`` (it has a final test accuracy) or
        ``unfinished``."""
        result = {"diverged": self.diverged, "collapsed": self.collapsed, "stalled": self.stalled,
                  "final_test_top1": self.final("final_test_top1")}
        return outcome_of(result, errored=self.status == "FAILED")

    @property
    def finished(self) -> bool:
        """Stable or failed: the trial enters the rates (errored and unfinished trials do not)."""
        return is_finished(self.outcome)

    @property
    def failed(self) -> bool:
        """Diverged, collapsed or stalled (:func:`trainers.outcome.is_failure`), whatever its final accuracy."""
        return is_failure(self.outcome)

    @property
    def stages(self) -> list[str]:
        return sorted(k[len(ACT_STD_PREFIX) :] for k in self.metrics if k.startswith(ACT_STD_PREFIX))


@dataclass
class SchemeData:
    name: str
    run_id: str
    params: dict[str, str]
    metrics: dict[str, float]  # norm_share, conv_share, profile_step_time_s where measured
    trials: list[TrialData]
    tags: dict[str, str] = field(default_factory=dict)  # the scheme run's tags (PROFILE_TAGS among them)
    reruns: list[TrialData] = field(default_factory=list)  # seed re-runs (RERUN_TAG), kept out of ``trials``


@dataclass
class StudyData:
    name: str
    run_id: str
    experiment: str
    tracking_uri: str
    params: dict[str, str]  # the study's spec, flattened, and provenance
    schemes: list[SchemeData]


# --------------------------------------------------------------------------------------------------
# Connecting


def normalize_uri(tracking_uri: str) -> str:
    """Accept a plain path to a SQLite file as well as a URI."""
    if "://" not in tracking_uri and tracking_uri.endswith((".db", ".sqlite")):
        return f"sqlite:///{Path(tracking_uri).resolve()}"
    return tracking_uri


def connect(tracking_uri: str):
    """An MlflowClient for ``tracking_uri``; a ReportError at once when the store is not there."""
    uri = normalize_uri(tracking_uri)
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        port = parsed.port or (443 if parsed.scheme == "https" else 80)
        try:
            socket.create_connection((parsed.hostname or "localhost", port), timeout=5).close()
        except OSError as e:
            raise ReportError(
                f"cannot reach the MLflow tracking server at {uri} ({e.strerror or e}); "
                "start `mlflow server` or fix --tracking-uri"
            ) from None
    elif parsed.scheme == "sqlite":
        path = uri[len("sqlite:///") :]
        if path and path != ":memory:" and not Path(path).is_file():
            raise ReportError(f"no MLflow database at {path} (tracking URI {uri}); run a study or fix --tracking-uri")
    from mlflow import MlflowClient

    with mlflow_errors(uri):
        return MlflowClient(tracking_uri=uri)


@contextmanager
def mlflow_errors(uri: str) -> Iterator[None]:
    """Turn MLflow/HTTP/DB failures into a one-line ReportError."""
    try:
        yield
    except ReportError:
        raise
    except Exception as e:  # MlflowException, requests and SQLAlchemy errors all land here
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ReportError(f"reading MLflow at {uri} failed: {first[:300]}") from None


# --------------------------------------------------------------------------------------------------
# Reading


def _quote(s: str) -> str:
    return "'" + s.replace("'", "\\'") + "'"


def search_all(client, experiment_ids: list[str], filter_string: str, order_by: list[str] | None = None) -> list:
    """Every run the filter matches, page by page (MLflow caps a page; the list is whole before it returns)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            max_results=_PAGE,
            order_by=order_by,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def find_study_run(client, *, experiment: str | None, study_run_id: str | None, study_name: str | None):
    """The study run to report on and its experiment's name."""
    if study_run_id:
        try:
            run = client.get_run(study_run_id)
        except Exception:
            raise ReportError(f"no MLflow run with id {study_run_id}; pass a study run's id to --study") from None
        if run.data.tags.get("normstudy.role") != "study":
            role = run.data.tags.get("normstudy.role", "no normstudy.role tag")
            raise ReportError(f"run {study_run_id} is not a study run ({role}); pass the study (parent) run's id")
        return run, client.get_experiment(run.info.experiment_id).name
    name = experiment or DEFAULT_EXPERIMENT
    exp = client.get_experiment_by_name(name)
    if exp is None:
        known = sorted(e.name for e in client.search_experiments())
        raise ReportError(f"unknown experiment '{name}'; experiments in this store: {', '.join(known) or 'none'}")
    flt = "tags.\"normstudy.role\" = 'study'"
    if study_name:
        flt += f' and tags."normstudy.study" = {_quote(study_name)}'
    runs = search_all(client, [exp.experiment_id], flt, order_by=["attributes.start_time DESC"])
    if not runs:
        which = f" named '{study_name}'" if study_name else ""
        raise ReportError(f"no study runs{which} in experiment '{name}'; run `normstudy run` first")
    return runs[0], name


def _number(s: str) -> Any:
    try:
        f = float(s)
    except (TypeError, ValueError):
        return s
    return int(f) if f.is_integer() and "." not in s and "e" not in s.lower() else f


def _int_or_none(s: Any) -> int | None:
    try:
        return int(float(s))
    except (TypeError, ValueError):
        return None


def error_of(tags: dict[str, str]) -> str | None:
    """A FAILED run's error in one line: its note without the ``errored:`` prefix study/trial.py writes,
    else the last line of the ``normstudy.failure_reason`` tag; None when neither says."""
    note = (tags.get(NOTE_TAG) or "").strip()
    for prefix in ("errored:", "failed:"):
        if note.startswith(prefix):
            return note[len(prefix):].strip() or None
    lines = [ln.strip() for ln in (tags.get("normstudy.failure_reason") or "").splitlines() if ln.strip()]
    return lines[-1][:300] if lines else None


def num_classes(params: dict[str, str]) -> int | None:
    """The study's class count (``data.num_classes``), None when the spec does not say."""
    n = _int_or_none(params.get("data.num_classes"))
    return n if n is not None and n >= 2 else None


def trial_from_run(run, scheme: str) -> TrialData:
    """A trial run as a :class:`TrialData`. Its outcome is :func:`trainers.outcome.outcome_of` over the run's
    metrics (the loop's summary: ``diverged``, ``collapsed``, ``stalled``, ``final_test_top1``; non-finite
    values left out) and tags (study/trial.py's end tags, which win) merged, ``errored`` when the run FAILED;
    the ``diverged``, ``collapsed`` and ``stalled`` fields say the same. Causes and layers are strings: tags only."""
    tags, params, metrics = run.data.tags, run.data.params, dict(run.data.metrics)
    hp = {k[3:]: _number(v) for k, v in params.items() if k.startswith("hp.") and k != "hp.seed"}
    result = {k: v for k, v in metrics.items() if math.isfinite(v)} | dict(tags)
    outcome = outcome_of(result, errored=run.info.status == "FAILED")
    diverged, collapsed = outcome == DIVERGED, outcome == COLLAPSED
    step = _int_or_none(tags.get("divergence_step"))
    if step is None and diverged:
        step = _int_or_none(metrics.get("divergence_step"))
    c_step = _int_or_none(tags.get("collapse_step"))
    if c_step is None and collapsed:
        c_step = _int_or_none(metrics.get("collapse_step"))
    return TrialData(
        run_id=run.info.run_id,
        trial_id=tags.get("normstudy.trial_id") or run.info.run_name or run.info.run_id,
        scheme=scheme,
        status=run.info.status,
        hp=hp,
        seed=_int_or_none(params.get("hp.seed", tags.get("seed"))),
        diverged=diverged,
        divergence_cause=tags.get("divergence_cause") if diverged else None,
        divergence_step=step if diverged else None,
        divergence_layer=tags.get("divergence_layer") if diverged else None,
        metrics=metrics,
        collapsed=collapsed,
        collapse_cause=tags.get("collapse_cause") if collapsed else None,
        collapse_step=c_step if collapsed else None,
        collapse_layer=tags.get("collapse_layer") if collapsed else None,
        stalled=outcome == STALLED,
        error=error_of(tags) if outcome == ERRORED else None,
        rerun=tags.get(RERUN_TAG),
    )


def read_curves(client, trial: TrialData, keys: Iterable[str]) -> None:
    """Fill ``trial.curves`` with the histories of those ``keys`` the trial logged."""
    for key in keys:
        if key not in trial.metrics or key in trial.curves:
            continue
        by_step: dict[int, tuple[int, float]] = {}
        for m in client.get_metric_history(trial.run_id, key):
            if m.step not in by_step or m.timestamp >= by_step[m.step][0]:
                by_step[m.step] = (m.timestamp, m.value)
        steps = sorted(by_step)
        trial.curves[key] = Curve(tuple(steps), tuple(by_step[s][1] for s in steps))


def read_study(
    tracking_uri: str,
    *,
    experiment: str | None = None,
    study_run_id: str | None = None,
    study_name: str | None = None,
    curves: Iterable[str] = TRIAL_CURVES,
    client=None,
) -> StudyData:
    """Read a study: the study run, its scheme runs, their trials and the trials' ``curves``."""
    uri = normalize_uri(tracking_uri)
    client = client or connect(uri)
    with mlflow_errors(uri):
        study, exp_name = find_study_run(
            client, experiment=experiment, study_run_id=study_run_id, study_name=study_name
        )
        exp_ids = [study.info.experiment_id]
        name = study.data.tags.get("normstudy.study") or study.info.run_name
        scheme_runs = search_all(
            client,
            exp_ids,
            f"tags.\"normstudy.role\" = 'scheme' and tags.mlflow.parentRunId = '{study.info.run_id}'",
        )
        trial_runs = search_all(
            client, exp_ids, f'tags."normstudy.role" = \'trial\' and tags."normstudy.study" = {_quote(name)}'
        )
        schemes: dict[str, SchemeData] = {}
        by_run_id: dict[str, SchemeData] = {}
        for run in scheme_runs:
            sname = run.data.tags.get("normstudy.scheme") or run.data.params.get("scheme") or run.info.run_name
            if sname in schemes:  # a resumed study may hold two runs of a scheme: keep the first (latest-listed)
                by_run_id[run.info.run_id] = schemes[sname]
                continue
            schemes[sname] = SchemeData(sname, run.info.run_id, dict(run.data.params), dict(run.data.metrics), [],
                                        dict(run.data.tags))
            by_run_id[run.info.run_id] = schemes[sname]
        for run in trial_runs:
            parent = by_run_id.get(run.data.tags.get("mlflow.parentRunId", ""))
            if parent is None:
                continue  # a trial of another study run with the same name
            trial = trial_from_run(run, parent.name)
            if trial.rerun is not None:  # the regularization claim's (analysis/regularization.py), no search trial
                parent.reruns.append(trial)
                continue
            read_curves(client, trial, curves)
            read_curves(client, trial, [ACT_STD_PREFIX + st for st in trial.stages])
            parent.trials.append(trial)
    for s in schemes.values():
        s.trials.sort(key=lambda t: (t.lr or 0.0, t.init_scale or 0.0, t.seed or 0, t.trial_id))
    return StudyData(
        name=name,
        run_id=study.info.run_id,
        experiment=exp_name,
        tracking_uri=uri,
        params=dict(study.data.params),
        schemes=sorted(schemes.values(), key=lambda s: scheme_order(s.name)),
    )


PAPER_ORDER = ("bn", "wn", "normprop", "wn_trelu", "gn", "ws_gn", "nf", "fixup", "none")


def scheme_order(name: str) -> tuple[int, str]:
    """BN first, then the paper's schemes, then the rest by name."""
    return (PAPER_ORDER.index(name) if name in PAPER_ORDER else len(PAPER_ORDER), name)
