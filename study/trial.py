"""One Tune trial (the driver side of a trial; the worker side is ``trainers.loop``).

``run_trial`` is the Tune *function* trainable. Its config is ``{"trial": TrialConfig}``, resolved and
validated on the study driver (``study.trial_configs``) and trusted here; what every trial of the study
shares (tracking, scaling, the study's params, the scheme runs) comes as a :class:`StudyContext` through
``tune.with_parameters``. It opens the trial's MLflow run, then trains:
- single-worker CPU trials run ``train_loop_per_worker`` right here in the trial process (no worker
  group to start: ~20–45 s saved per trial on 2 cores; docs/design.md §2);
- multi-worker or GPU trials run the one ``TorchTrainer`` builder (``study.torch_trainer``), whose run name
  is the trial id, so a restored trial finds its checkpoints, and forward its reports to Tune with
  ``TuneReportCallback``.
Either way it is the same loop, metrics and MLflow records. A diverged trial ends normally with
``diverged=1``; an exception marks the MLflow run FAILED with its reason and re-raises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray.tune
import torch
from ray.tune.integration.ray_train import TuneReportCallback

from study import provenance
from study.spec import ScalingSpec, TrackingSpec, flatten_trial
from study.torch_trainer import build_torch_trainer, uses_torch_trainer
from study.tracking import NOTE, PHASE, RERUN, StudyTracker, last_line, scheme_progress_note, trial_note
from study.trial_configs import trial_of
from trainers.config import TrialConfig
from trainers.loop import train_loop_per_worker
from trainers.outcome import outcome_of

# The loop's summary values a trial's run also carries as tags (strings: the runs table filters on them).
SUMMARY_TAGS = ("divergence_cause", "divergence_step", "divergence_layer", "collapsed", "outcome", "collapse_cause",
                "collapse_step", "collapse_layer", "stalled", "stall_loss_ratio")


@dataclass(frozen=True)
class StudyContext:
    """What every trial of a study shares: where it logs, how it scales, the study's flattened spec
    (``params``: every value is logged with each trial) and each scheme's MLflow run."""

    tracking: TrackingSpec
    scaling: ScalingSpec
    params: Mapping[str, str]
    parent_runs: Mapping[str, str]


def trial_params(context: StudyContext, trial: TrialConfig) -> dict[str, str]:
    """A trial run's MLflow params: the study's spec with the trial's values, ``hp.*``, provenance."""
    params = {**context.params, **flatten_trial(trial)}
    params.update({f"hp.{k}": str(v) for k, v in trial.hp.items()})
    params["scheme"] = trial.scheme_name
    params.update(provenance.collect())
    return params


def end_tags(summary: Mapping[str, Any]) -> dict[str, str]:
    """The tags a trial's run gets from its summary: the outcome (the one rule), its cause, step and layer,
    and the one-line description."""
    outcome = outcome_of(summary)
    tags = {"diverged": str(int(outcome == "diverged")), NOTE: trial_note(summary)}
    tags.update({k: _tag(summary[k]) for k in SUMMARY_TAGS if summary.get(k) is not None})
    tags["outcome"] = outcome  # the rule's word, whatever the summary carried
    return tags


def loop_config(trial: TrialConfig, tracking_uri: str, run_id: str | None) -> dict[str, Any]:
    """``trainers.loop``'s config for this trial (the session is chosen where it runs)."""
    return {"trial": trial, "tracking_uri": tracking_uri, "run_id": run_id}


def run_trial(config: dict[str, Any], *, context: StudyContext) -> None:
    """Tune function trainable (wrapped with ``tune.with_parameters`` for the study's context)."""
    trial = trial_of(config)
    if trial is None:
        raise ValueError(f"a normstudy trial's config is {{'trial': TrialConfig}}, got keys {sorted(config)}")
    scheme, trial_id = trial.scheme_name, ray.tune.get_context().get_trial_id()
    tracker = StudyTracker(context.tracking.tracking_uri, context.tracking.experiment)
    run_id = _trial_run(tracker, context, trial, trial_id, resuming=ray.tune.get_checkpoint() is not None)
    try:
        summary = _train(trial, context, loop_config(trial, context.tracking.tracking_uri, run_id), trial_id)
        tracker.set_tags(run_id, end_tags(summary))
        tracker.finish(run_id)
    except BaseException as err:  # noqa: BLE001 - any stop (error, kill, ASHA) leaves the run closed
        if isinstance(err, Exception):
            tracker.finish(run_id, "FAILED", reason=repr(err), note=f"errored: {last_line(err)}")
            _update_scheme_note(tracker, context, scheme)
        else:  # Tune ends a stopped trial's thread with SystemExit
            tracker.finish(run_id, "KILLED", reason=f"stopped early by Tune (scheduler or shutdown): {err!r}",
                           note="stopped early by Tune (scheduler or shutdown)")
        raise
    _update_scheme_note(tracker, context, scheme)


def _train(trial: TrialConfig, context: StudyContext, config: dict[str, Any], trial_id: str) -> dict[str, Any]:
    if uses_torch_trainer(context.scaling):
        trainer = build_torch_trainer(config, context.scaling, name=f"trial-{trial_id}",
                                      storage_path=context.tracking.storage_path, callbacks=[TuneReportCallback()])
        return dict(trainer.fit().metrics or {})
    if trial.training.torch_threads == 0:
        torch.set_num_threads(max(1, int(context.scaling.cpus_per_worker)))
    return train_loop_per_worker(dict(config, session="tune"))


def _update_scheme_note(tracker: StudyTracker, context: StudyContext, scheme: str) -> None:
    """The scheme run's description, recounted from its trial runs as each one ends; the report, when
    written, replaces it with its own summary. Two trials ending at once may leave it a trial short
    until the next one ends (each counts after closing its own run, but the writes can cross)."""
    try:
        runs = tracker.trial_runs(context.tracking.study_name, scheme)
        tracker.set_note(context.parent_runs[scheme], scheme_progress_note(runs))
    except Exception:  # noqa: BLE001 - a description must not fail a trial that trained
        pass


def _trial_run(tracker: StudyTracker, context: StudyContext, trial: TrialConfig, trial_id: str,
               resuming: bool) -> str:
    study, scheme = context.tracking.study_name, trial.scheme_name
    if resuming:  # a restored trial keeps its run and history
        found = tracker.find_trial_run(study, trial_id)
        if found is not None:
            tracker.client.update_run(found.info.run_id, status="RUNNING")
            return found.info.run_id
    # lr and init scale beside seed and diverged: the tags MLflow's compare view lists in one short table
    tags = {"seed": trial.seed, "diverged": "0", NOTE: "running",
            **{k: trial.hp[k] for k in ("lr", "init_scale", "variant") if k in trial.hp}}
    if trial.optuna_trial_number is not None:
        tags["optuna_trial_number"] = trial.optuna_trial_number
    if trial.rerun is not None:  # a seed re-run (study/reruns.py): the report keeps it apart from the search
        tags.update({PHASE: "rerun", RERUN: trial.rerun})
    return tracker.trial_run(study, scheme, trial_id, context.parent_runs[scheme], trial_params(context, trial), tags)


def _tag(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
