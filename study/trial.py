"""One Tune trial (the driver side of a trial; the worker side is ``trainers.loop``).

``run_trial`` is the Tune *function* trainable. It resolves the trial's spec from the sampled
hyperparameters, opens the trial's MLflow run, then trains:
- single-worker CPU trials run ``train_loop_per_worker`` right here in the trial process (no worker
  group to start: ~20–45 s saved per trial on 2 cores; docs/design.md §2);
- multi-worker or GPU trials build a Ray Train ``TorchTrainer`` (Train V2) whose run name is the trial
  id, so a restored trial finds its checkpoints, and forward its reports to Tune with
  ``TuneReportCallback``.
Either way it is the same loop, metrics and MLflow records. A diverged trial ends normally with
``diverged=1``; an exception marks the MLflow run FAILED with its reason and re-raises.
"""

from __future__ import annotations

import os
from typing import Any

import search_spaces
from study import provenance
from study import spec as spec_mod
from study.spec import StudySpec
from study.tracking import NOTE, StudyTracker, scheme_progress_note, trial_note

# The loop's summary values a trial's run also carries as tags (strings: the runs table filters on them).
SUMMARY_TAGS = ("divergence_cause", "divergence_step", "divergence_layer", "collapsed", "outcome", "collapse_cause",
                "collapse_step", "collapse_layer")


def resolve_trial_spec(study_spec: dict[str, Any], scheme: str, hp: dict[str, Any]) -> StudySpec:
    """The study spec with this trial's sampled values ``hp`` applied."""
    spec = StudySpec.model_validate(study_spec)
    return search_spaces.apply(spec, scheme, hp, search_spaces.for_scheme(spec, scheme))


def uses_torch_trainer(spec: StudySpec) -> bool:
    s = spec.scaling
    return s.torch_trainer == "always" or s.num_workers > 1 or s.use_gpu


def run_trial(config: dict[str, Any], *, study_spec: dict[str, Any], parent_runs: dict[str, str],
              scheme: str | None = None) -> None:
    """Tune function trainable (wrapped with ``tune.with_parameters`` for the fixed arguments).

    ``config`` holds this trial's sampled hyperparameters (``lr``, ``init_scale``, ``seed``, ...); in grid
    mode it is ``{"point": {"scheme": ..., "lr": ..., ...}}`` (one experiment holds every scheme).
    ``parent_runs`` maps each scheme to its MLflow scheme run.
    """
    import ray.tune

    hp = dict(config.get("point", config))
    scheme = hp.pop("scheme", scheme)
    optuna_number = hp.pop("optuna_trial_number", None)
    spec = resolve_trial_spec(study_spec, scheme, hp)
    trial_id = ray.tune.get_context().get_trial_id()
    tracker = StudyTracker(spec.tracking.tracking_uri, spec.tracking.experiment)
    resuming = ray.tune.get_checkpoint() is not None
    run_id = _trial_run(tracker, spec, scheme, trial_id, parent_runs[scheme], hp, resuming)
    if optuna_number is not None:
        tracker.set_tags(run_id, {"optuna_trial_number": optuna_number})
    loop_config = {"spec": spec.to_dict(), "scheme": scheme, "tracking_uri": spec.tracking.tracking_uri,
                   "run_id": run_id}
    try:
        if uses_torch_trainer(spec):
            summary = _run_torch_trainer(spec, loop_config, trial_id)
        else:
            from trainers.loop import train_loop_per_worker

            if spec.training.torch_threads == 0:
                import torch

                torch.set_num_threads(max(1, int(spec.scaling.cpus_per_worker)))
            summary = train_loop_per_worker(dict(loop_config, session="tune"))
        tags = {"diverged": str(int(summary.get("diverged", 0))), NOTE: trial_note(summary)}
        tags.update({k: _tag(summary[k]) for k in SUMMARY_TAGS if summary.get(k) is not None})
        tracker.set_tags(run_id, tags)
        tracker.finish(run_id)
    except BaseException as err:  # noqa: BLE001 - any stop (error, kill, ASHA) leaves the run closed
        if isinstance(err, Exception):
            tracker.finish(run_id, "FAILED", reason=repr(err))  # its description: "failed: <the error>"
            _update_scheme_note(tracker, spec.tracking.study_name, scheme, parent_runs[scheme])
        else:  # Tune ends a stopped trial's thread with SystemExit
            tracker.finish(run_id, "KILLED", reason=f"stopped early by Tune (scheduler or shutdown): {err!r}",
                           note="stopped early by Tune (scheduler or shutdown)")
        raise
    _update_scheme_note(tracker, spec.tracking.study_name, scheme, parent_runs[scheme])


def _update_scheme_note(tracker: StudyTracker, study: str, scheme: str, scheme_run: str) -> None:
    """The scheme run's description, recounted from its trial runs as each one ends; the report, when
    written, replaces it with its own summary. Two trials ending at once may leave it a trial short
    until the next one ends (each counts after closing its own run, but the writes can cross)."""
    try:
        tracker.set_note(scheme_run, scheme_progress_note(tracker.trial_runs(study, scheme)))
    except Exception:  # noqa: BLE001 - a description must not fail a trial that trained
        pass


def _trial_run(tracker: StudyTracker, spec: StudySpec, scheme: str, trial_id: str, parent: str,
               hp: dict[str, Any], resuming: bool) -> str:
    if resuming:  # a restored trial keeps its run and history
        found = tracker.find_trial_run(spec.tracking.study_name, trial_id)
        if found is not None:
            tracker.client.update_run(found.info.run_id, status="RUNNING")
            return found.info.run_id
    params = spec_mod.flatten(spec)
    params.update({f"hp.{k}": v for k, v in hp.items()})
    params["scheme"] = scheme
    params.update(provenance.collect())
    # lr and init scale beside seed and diverged: the tags MLflow's compare view lists in one short table
    tags = {"seed": spec.training.seed, "diverged": "0", NOTE: "running",
            **{k: hp[k] for k in ("lr", "init_scale") if k in hp}}
    return tracker.trial_run(spec.tracking.study_name, scheme, trial_id, parent, params, tags)


def _run_torch_trainer(spec: StudySpec, loop_config: dict[str, Any], trial_id: str) -> dict[str, Any]:
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from trainers.loop import train_loop_per_worker

    s = spec.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {}), **s.resources_per_worker}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=dict(loop_config, session="train"),
        scaling_config=ray.train.ScalingConfig(num_workers=s.num_workers, use_gpu=s.use_gpu,
                                               resources_per_worker=resources,
                                               placement_strategy=s.placement_strategy),
        run_config=ray.train.RunConfig(
            name=f"trial-{trial_id}",  # stable: a restored trial resumes from its own checkpoints
            storage_path=os.path.abspath(spec.tracking.storage_path),
            callbacks=[TuneReportCallback()],
            # A worker group that can never start would otherwise retry forever (docs/design.md §11).
            failure_config=ray.train.FailureConfig(max_failures=s.max_failures),
        ),
    )
    result = trainer.fit()
    return dict(result.metrics or {})


def _tag(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)
