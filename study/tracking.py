"""The study's MLflow run hierarchy: study (parent) → scheme (child) → trial (grandchild).

Runs are found again by their tags, so names are stable and ``--resume`` reuses them instead of making
duplicates. docs/mlflow_layout.md is the contract with ``analysis/``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from study import runs_view, store
from study.run_names import trial_run_name
from trainers.outcome import COLLAPSED, DIVERGED, FAILURE_KINDS, STABLE, outcome_of
from trainers.run_logger import with_retries

ROLE, STUDY, SCHEME, TRIAL = "normstudy.role", "normstudy.study", "normstudy.scheme", "normstudy.trial_id"
PARENT = "mlflow.parentRunId"
PHASE, RERUN = "normstudy.phase", "normstudy.rerun"  # a seed re-run's tags (study/reruns.py): "rerun", tuned|untuned
FAILURE_REASON = "normstudy.failure_reason"  # why a run ended KILLED or FAILED
NOTE = "mlflow.note.content"  # a run's (or an experiment's) description in the MLflow UI

# --- how the MLflow UI opens the experiment (docs/mlflow_layout.md, "The MLflow UI") ----------------
# MLflow 3's experiment type: "custom_model_development" is its "Machine learning" kind (runs table first).
# Releases with a type per experiment read this tag; 3.17 follows a browser-wide GenAI / Model training
# switch instead (default GenAI), which the ``workflowType`` query of the links below sets.
EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"
MODEL_TRAINING_QUERY = "workflowType=machine_learning"
# A shared runs-table view (the UI's "share view": an experiment tag, opened by ``viewStateShareKey``):
# the runs' descriptions and the columns that compare trials, without choosing columns by hand.
RUNS_VIEW = "normstudy"
RUNS_VIEW_TAG = f"mlflow.sharedViewState.{RUNS_VIEW}"
RUNS_VIEW_STATE = runs_view.VIEW_STATE  # its columns, widths and order: study/runs_view.py
SCHEMES_VIEW_TAG = f"mlflow.sharedViewState.{runs_view.SCHEMES_VIEW}"  # the scheme runs alone, best first


def resolve_uri(uri: str, base: str | Path | None = None) -> str:
    """Make a relative ``sqlite:///x.db`` absolute (four slashes), so Ray workers and jobs in other
    working directories write to the same file."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///"):]
        return "sqlite:///" + str((Path(base or Path.cwd()) / rel).resolve())
    return uri


def runs_table_url(experiment_id: str, run_id: str | None = None, server: str | None = None,
                   view: str = RUNS_VIEW) -> str:
    """The MLflow UI page of an experiment's runs table (in normstudy's view), or of one run, in the
    model-training view.

    Absolute when ``server`` is an ``http(s)://`` tracking URI; otherwise the fragment ``#/experiments/...``,
    which resolves against wherever the UI is served (``mlflow ui`` on a SQLite store, or a link on one
    of MLflow's own pages, as in the descriptions normstudy writes)."""
    base = server.rstrip("/") + "/" if server and server.startswith(("http://", "https://")) else ""
    if run_id:
        return f"{base}#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_QUERY}"
    return f"{base}#/experiments/{experiment_id}/runs?viewStateShareKey={view}&{MODEL_TRAINING_QUERY}"


def experiment_note(experiment_id: str) -> str:
    # the links first: MLflow shows a description's first line only, until it is opened
    return (f"Compare schemes in the [runs table]({runs_table_url(experiment_id)}) or [the schemes alone]"
            f"({runs_table_url(experiment_id, view=runs_view.SCHEMES_VIEW)}). normstudy: one run per study, its "
            "schemes nested under it, their trials under each scheme; a run's description says what happened, a "
            "study run's artifacts (report/) hold its stability report.")


def last_line(err: BaseException, limit: int = 300) -> str:
    """An error's last non-empty line (a worker's error arrives wrapped, its own message last), with its type:
    an errored trial's note, a failed profile's tag."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    if len(lines) > 1:  # a traceback's text (Ray's wrapped errors): its last line names the cause
        return lines[-1][:limit]
    return f"{type(err).__name__}: {lines[0]}"[:limit] if lines else type(err).__name__


def trial_note(summary: Mapping[str, Any]) -> str:
    """One line on what a trial did, from the loop's summary: "diverged at step 37: loss_spike, layer
    layer3.0.conv2.v", "train 0.97 / test 0.91", or for a trial that stayed finite at chance "collapsed
    at step 150: dead_relu, layer layer2; train 0.10 / test 0.10"."""
    def what(kind: str) -> str:
        step, cause, layer = (summary.get(f"{kind}_{k}") for k in ("step", "cause", "layer"))
        where = f" at step {int(float(step))}" if step is not None else ""
        return f"{where}: {cause or 'unknown cause'}" + (f", layer {layer}" if layer else "")

    if float(summary.get("diverged", 0) or 0) >= 1:
        return "diverged" + what("divergence")
    train, test = summary.get("final_train_top1"), summary.get("final_test_top1")
    if train is None or test is None:
        return f"finished {int(float(summary.get('steps_done', 0)))} steps without a final evaluation"
    accuracy = f"train {float(train):.2f} / test {float(test):.2f}"
    if float(summary.get("collapsed", 0) or 0) >= 1:
        return f"collapsed{what('collapse')}; {accuracy}"
    if float(summary.get("stalled", 0) or 0) >= 1:
        ratio = summary.get("stall_loss_ratio")
        of = f": train loss {float(ratio):.2f} of its start" if ratio is not None else ""
        return f"stalled{of}; {accuracy}"
    return accuracy


# The tag that names a failure kind's cause (a stall has none: its ratio says it all).
CAUSE_TAGS = {DIVERGED: "divergence_cause", COLLAPSED: "collapse_cause"}


def scheme_progress_note(trial_runs: list[Any]) -> str:
    """A scheme run's one line while its trials finish: how many, how many failed of each kind and why, the
    best — each trial's outcome by the one rule (trainers/outcome.py) over its metrics and end tags."""
    done = [r for r in trial_runs if r.info.status == "FINISHED"]
    judged = [(r, outcome_of({**r.data.metrics, **r.data.tags})) for r in done]
    note = f"{len(done)} trials finished"
    for kind in FAILURE_KINDS:
        runs = [r for r, outcome in judged if outcome == kind]
        if runs or kind == DIVERGED:
            cause_tag = CAUSE_TAGS.get(kind)
            causes = Counter(r.data.tags.get(cause_tag) or "unknown" for r in runs) if cause_tag else Counter()
            note += f", {len(runs)} {kind}" + (" (" + ", ".join(f"{n} {c}" for c, n in causes.most_common()) + ")"
                                              if causes else "")
    others = Counter(r.info.status.lower() for r in trial_runs if r.info.status != "FINISHED")
    if others:
        note += "; " + ", ".join(f"{n} {s}" for s, n in sorted(others.items()))
    stable = [r for r, outcome in judged if outcome == STABLE and "final_test_top1" in r.data.metrics]
    if stable:
        best = max(stable, key=lambda r: r.data.metrics["final_test_top1"])
        m, p = best.data.metrics, best.data.params
        at = ", ".join(f"{label} {p[k]}" for k, label in (("hp.lr", "lr"), ("hp.init_scale", "init scale"),
                                                          ("hp.seed", "seed")) if k in p)
        note += f"; best: train {m.get('final_train_top1', float('nan')):.2f} / test {m['final_test_top1']:.2f}"
        note += f" ({at})" if at else ""
    return note


class StudyTracker:
    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.uri = tracking_uri
        store.ensure(tracking_uri)  # a new SQLite store is made whole, by one process (study/store.py)
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = with_retries(lambda: self.client.get_experiment_by_name(experiment))
        if exp is None:
            self.experiment_id = with_retries(lambda: self.client.create_experiment(
                experiment, tags={EXPERIMENT_KIND: MODEL_TRAINING, RUNS_VIEW_TAG: RUNS_VIEW_STATE,
                                  SCHEMES_VIEW_TAG: runs_view.SCHEMES_VIEW_STATE}))
            self._set_experiment_tag(NOTE, experiment_note(self.experiment_id))
        else:
            self.experiment_id = exp.experiment_id
            self._mark_model_training(exp.tags)

    def _mark_model_training(self, tags: Mapping[str, str]) -> None:
        """An existing experiment (an older normstudy's, or one made by hand) gets the kind and the runs
        view too; a description of its own is kept. Nothing is written when all is in place (every trial
        opens a tracker)."""
        for key, value in ((EXPERIMENT_KIND, MODEL_TRAINING), (RUNS_VIEW_TAG, RUNS_VIEW_STATE),
                           (SCHEMES_VIEW_TAG, runs_view.SCHEMES_VIEW_STATE)):
            if tags.get(key) != value:
                self._set_experiment_tag(key, value)
        if not tags.get(NOTE):
            self._set_experiment_tag(NOTE, experiment_note(self.experiment_id))

    def _set_experiment_tag(self, key: str, value: str) -> None:
        with_retries(lambda: self.client.set_experiment_tag(self.experiment_id, key, value))

    # --- find-or-create -------------------------------------------------------------------------
    def _find(self, tags: Mapping[str, str]) -> Any | None:
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = with_retries(lambda: self.client.search_runs([self.experiment_id], flt, max_results=2))
        return runs[0] if runs else None

    def _get_or_create(self, name: str, tags: dict[str, str], parent: str | None) -> tuple[str, bool]:
        found = self._find(tags)
        if found is not None:
            if found.info.status != "RUNNING":  # --resume: the run goes on, and no longer says why it stopped
                with_retries(lambda: self.client.update_run(found.info.run_id, status="RUNNING"))
                for key in (FAILURE_REASON, NOTE) if FAILURE_REASON in found.data.tags else ():
                    with_retries(lambda key=key: self.client.delete_tag(found.info.run_id, key))
            return found.info.run_id, False
        all_tags = dict(tags, **({PARENT: parent} if parent else {}))
        run = with_retries(lambda: self.client.create_run(self.experiment_id, run_name=name, tags=all_tags))
        return run.info.run_id, True

    def study_run(self, study: str, params: Mapping[str, str]) -> str:
        run_id, new = self._get_or_create(study, {ROLE: "study", STUDY: study}, None)
        self._log_missing_params(run_id, params, new)
        return run_id

    def scheme_run(self, study: str, scheme: str, parent: str, params: Mapping[str, str]) -> str:
        run_id, new = self._get_or_create(f"{study}/{scheme}", {ROLE: "scheme", STUDY: study, SCHEME: scheme}, parent)
        self._log_missing_params(run_id, params, new)
        return run_id

    def _log_missing_params(self, run_id: str, params: Mapping[str, str], new: bool) -> None:
        """A new run gets every param; a run found again (``--resume``) the ones it lacks: a driver killed
        between creating a run and writing its params must not leave it without them for good. Params it
        has are left as they are (MLflow refuses to change a param)."""
        if not new:
            have = with_retries(lambda: self.client.get_run(run_id)).data.params
            params = {k: v for k, v in params.items() if k not in have}
        if params:
            self.log_params(run_id, params)

    def find_trial_run(self, study: str, trial_id: str) -> Any | None:
        return self._find({ROLE: "trial", STUDY: study, TRIAL: trial_id})

    def trial_run(self, study: str, scheme: str, trial_id: str, parent: str, params: Mapping[str, str],
                  tags: Mapping[str, str]) -> str:
        """One run per Tune trial id. A restarted trial gets a fresh run: the old one, if any, is deleted
        so MLflow never holds two histories of one trial."""
        key = {ROLE: "trial", STUDY: study, TRIAL: trial_id}
        old = self._find(key)
        if old is not None:
            with_retries(lambda: self.client.delete_run(old.info.run_id))
        name = trial_run_name(scheme, tags)  # what it is, not Ray's id: stable across --resume
        run_id, _ = self._get_or_create(name, dict(key, **{SCHEME: scheme}), parent)
        self.set_tags(run_id, tags)
        self.log_params(run_id, params)
        return run_id

    # --- writes ---------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's limit of params per batch
            chunk = items[i:i + 100]
            with_retries(lambda chunk=chunk: self.client.log_batch(run_id, params=chunk))

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        if tags:
            chunk = [RunTag(k, str(v)) for k, v in tags.items()]
            with_retries(lambda: self.client.log_batch(run_id, tags=chunk))

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if batch:
            with_retries(lambda: self.client.log_batch(run_id, metrics=batch))

    def log_text(self, run_id: str, text: str, path: str) -> None:
        with_retries(lambda: self.client.log_text(run_id, text, path))

    def log_artifacts(self, run_id: str, files: list[Path], artifact_path: str) -> None:
        for f in files:
            with_retries(lambda f=f: self.client.log_artifact(run_id, str(f), artifact_path))

    def set_note(self, run_id: str, text: str) -> None:
        """The run's description on its MLflow page (one line: what happened)."""
        self.set_tags(run_id, {NOTE: text})

    def runs_table_url(self) -> str:
        return runs_table_url(self.experiment_id)

    def finish(self, run_id: str, status: str = "FINISHED", reason: str | None = None, note: str | None = None) -> None:
        """Close a run. A run that did not finish says why in its description too (``note``, else
        "killed: <reason>"), so a trial stopped by the scheduler does not read "running" for good."""
        tags = {FAILURE_REASON: reason[:5000]} if reason else {}
        if note is None and reason and status != "FINISHED":
            note = f"{status.lower()}: {(reason.strip().splitlines() or [''])[0][:300]}"
        if note:
            tags[NOTE] = note
        self.set_tags(run_id, tags)
        with_retries(lambda: self.client.set_terminated(run_id, status=status))

    def trial_runs(self, study: str, scheme: str | None = None) -> list[Any]:
        tags = {ROLE: "trial", STUDY: study, **({SCHEME: scheme} if scheme else {})}
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return with_retries(lambda: self.client.search_runs([self.experiment_id], flt, max_results=10000))
