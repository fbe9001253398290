"""The study's MLflow run hierarchy: study (parent) → scheme (child) → trial (grandchild).

Runs are found again by their tags, so names are stable and ``--resume`` reuses them instead of making
duplicates. docs/mlflow_layout.md is the contract with ``analysis/``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

from trainers.run_logger import with_retries

ROLE, STUDY, SCHEME, TRIAL = "normstudy.role", "normstudy.study", "normstudy.scheme", "normstudy.trial_id"
PARENT = "mlflow.parentRunId"


def resolve_uri(uri: str, base: str | Path | None = None) -> str:
    """Make a relative ``sqlite:///x.db`` absolute (four slashes), so Ray workers and jobs in other
    working directories write to the same file."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        rel = uri[len("sqlite:///"):]
        return "sqlite:///" + str((Path(base or Path.cwd()) / rel).resolve())
    return uri


class StudyTracker:
    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        exp = with_retries(lambda: self.client.get_experiment_by_name(experiment))
        self.experiment_id = exp.experiment_id if exp else with_retries(
            lambda: self.client.create_experiment(experiment))

    # --- find-or-create -------------------------------------------------------------------------
    def _find(self, tags: Mapping[str, str]) -> Any | None:
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = with_retries(lambda: self.client.search_runs([self.experiment_id], flt, max_results=2))
        return runs[0] if runs else None

    def _get_or_create(self, name: str, tags: dict[str, str], parent: str | None) -> tuple[str, bool]:
        found = self._find(tags)
        if found is not None:
            if found.info.status != "RUNNING":
                with_retries(lambda: self.client.update_run(found.info.run_id, status="RUNNING"))
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
        run_id, _ = self._get_or_create(f"{study}/{scheme}/{trial_id}", dict(key, **{SCHEME: scheme}), parent)
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

    def finish(self, run_id: str, status: str = "FINISHED", reason: str | None = None) -> None:
        if reason:
            self.set_tags(run_id, {"normstudy.failure_reason": reason[:5000]})
        with_retries(lambda: self.client.set_terminated(run_id, status=status))

    def trial_runs(self, study: str, scheme: str | None = None) -> list[Any]:
        tags = {ROLE: "trial", STUDY: study, **({SCHEME: scheme} if scheme else {})}
        flt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return with_retries(lambda: self.client.search_runs([self.experiment_id], flt, max_results=10000))
