"""The study driver: Ray Tune experiments over the same budget for every scheme.

``grid`` mode runs every (lr × init scale × seed) point — the stability map needs the full grid — in
one experiment for all schemes; ``optuna`` mode lets Optuna's TPE (``study.optuna_search``, seeded) sample
the scheme family's space from ``search_spaces/``, one experiment per scheme; ``boundary`` mode brackets
and bisects log lr for the largest stable rate of every (scheme, init scale)
(``study.boundary_search.BoundarySearch``), in one experiment for all schemes. In every mode a trial's
config is resolved and validated here, on the driver (``study.trial_configs``), and reaches
``study.trial.run_trial`` as ``{"trial": TrialConfig}``. Experiments are stored under
``tracking.storage_path/<study_name>/<name>`` so ``--resume`` restores them with ``Tuner.restore``; MLflow
runs are found again by their tags.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from analysis.collect import search_all
from study import provenance, reruns
from study import spec as spec_mod
from study.boundary_search import BoundarySearch
from study.interrupts import Interrupted, StopOnSignal, TuneStop
from study.optuna_search import TrialConfigSearch
from study.preflight import preflight
from study.progress import TrialProgress
from study.results import StudyResult, TrialResult, boundary_rows
from study.scale_params import scale_params, scale_variants
from study.scheme_profile import record_scheme_profile
from study.spec import SpecError, StudySpec
from study.torch_trainer import uses_torch_trainer
from study.tracking import STUDY, StudyTracker, resolve_uri
from study.trial import StudyContext, run_trial
from study.trial_configs import TRIAL, TrialConfigs, trial_of
from trainers import norms
from trainers.outcome import UNFINISHED


def resolve_paths(spec: StudySpec, base: str | Path | None = None) -> StudySpec:
    """Absolute tracking URI, storage, data and space paths: Ray workers, trials and jobs run in other
    directories. A spec whose paths are all absolute already comes back as it is (not validated again)."""
    root = Path(base or Path.cwd())
    raw = spec.to_dict()
    raw["tracking"]["tracking_uri"] = resolve_uri(spec.tracking.tracking_uri, base)
    raw["tracking"]["storage_path"] = str((root / spec.tracking.storage_path).resolve())
    if spec.data.path:
        raw["data"]["path"] = str((root / spec.data.path).resolve())
    if spec.search.space_dir:
        raw["search"]["space_dir"] = str((root / spec.search.space_dir).resolve())
    return spec if raw == spec.to_dict() else StudySpec.model_validate(raw)


def init_ray(spec: StudySpec) -> None:
    if ray.is_initialized():
        return
    address = spec.scaling.ray_address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                                    os.environ.get("PYTHONPATH")]))}}
    if address:
        # Under `ray job submit` or on a cluster: ray.init(num_cpus=...) would raise (docs/design.md §11).
        ray.init(address=address, runtime_env=env, log_to_driver=False, configure_logging=True, logging_level="ERROR")
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=env, log_to_driver=False,
                 configure_logging=True, logging_level="ERROR")


def max_concurrent(spec: StudySpec) -> int:
    if spec.search.max_concurrent_trials:
        return spec.search.max_concurrent_trials
    res = ray.cluster_resources()
    s = spec.scaling
    if s.use_gpu:
        return max(1, int(res.get("GPU", 0) // s.num_workers))
    return max(1, int(res.get("CPU", 1) // (s.cpus_per_worker * s.num_workers)))


class StudyInterrupted(Interrupted):
    """The study stopped on SIGINT/SIGTERM: every run it opened is closed KILLED. ``result`` holds the trials
    that finished (``result.trials``), ``budget`` the study's trial budget (an upper bound in boundary mode)."""

    def __init__(self, signum: int, result: StudyResult | None, budget: int) -> None:
        super().__init__(signum)
        self.result, self.budget = result, budget

    @property
    def finished(self) -> int:
        return len(self.result.trials) if self.result else 0


Announce = Callable[[StudySpec, list[str]], None]


def run_study(spec: StudySpec, *, resume: bool = False, fresh: bool = False, out: TextIO | None = None,
              paths_checked: bool = False, announce: Announce | None = None) -> StudyResult:
    """Run (or, with ``resume``, continue) every scheme's experiment; returns what the trials reported.
    ``paths_checked``: the caller ran ``preflight.check_paths`` on the spec as given (it is not run again).
    ``announce(spec, notes)`` is called once the preflight has passed, before anything is written (``notes``:
    the preflight's one-line notes, e.g. a folder's images per class).

    SIGINT or SIGTERM stops the study (``study.interrupts``): the trials that finished are kept, every run
    opened here is closed KILLED, and :class:`StudyInterrupted` is raised (never a return)."""
    with StopOnSignal() as stop:
        return _run(spec, stop, resume=resume, fresh=fresh, out=out, paths_checked=paths_checked,
                    announce=announce)


def _run(spec: StudySpec, stop: StopOnSignal, *, resume: bool, fresh: bool, out: TextIO | None, paths_checked: bool,
         announce: Announce | None) -> StudyResult:
    started = time.time()
    check_mode(spec)
    spec = resolve_paths(spec)
    root = Path(spec.tracking.storage_path) / spec.tracking.study_name
    replace = root.exists() and not resume
    if replace and not fresh:
        raise SpecError(f"tracking.study_name: study '{spec.tracking.study_name}' already exists in {root.parent}; "
                        "pass --resume to continue it, --fresh to replace it, or --set tracking.study_name=NEW")
    budget = sum(planned_trials(spec, e.name) for e in spec.schemes)
    try:
        init_ray(spec)
        stop.reinstall()
        notes = preflight(spec, paths=not paths_checked)  # all that can be refused is, before anything is written
        configs = TrialConfigs(spec)  # every trial's config is resolved from these, here on the driver
        if announce is not None:
            announce(spec, notes)
        if replace:  # --fresh: the old study goes only once the new one has passed the preflight
            _delete_study(spec, root)
        tracker = StudyTracker(spec.tracking.tracking_uri, spec.tracking.experiment)
    except Interrupted as err:
        raise StudyInterrupted(err.signum, None, budget) from None
    opened = _Opened(tracker, spec)
    result = StudyResult("", spec.tracking.tracking_uri, spec.tracking.experiment, str(root))
    try:
        context, result.study_run_id = _open_runs(tracker, spec, configs, opened)
        _run_experiments(spec, stop, configs, context, result, root, budget, resume=resume, out=out)
    except Interrupted as err:
        with stop.shielded():
            opened.close_killed(err.name, len(result.trials), budget)
        raise StudyInterrupted(err.signum, result, budget) from None
    if spec.search.mode == "boundary":
        result.boundary = boundary_rows(configs, result.trials)
    with stop.shielded():
        for entry in spec.schemes:
            _close_stopped_trials(tracker, spec.tracking.study_name, entry.name)
            tracker.finish(context.parent_runs[entry.name])
        tracker.finish(result.study_run_id)
    result.seconds = time.time() - started
    return result


def _run_experiments(spec: StudySpec, stop: StopOnSignal, configs: TrialConfigs, context: StudyContext,
                     result: StudyResult, root: Path, budget: int, *, resume: bool, out: TextIO | None) -> None:
    """Every experiment of the study, in turn; each trial lands in ``result.trials``, except those a signal
    stopped (no summary, no error): they run again on ``--resume``."""
    progress = TrialProgress(total=budget, out=out)
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), _trial_resources(spec))
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0 (we print lines)
    for name, scheme, variant in _experiments(spec):
        progress.scheme = scheme or ""
        path = root / name
        with stop.tune():
            if resume and tune.Tuner.can_restore(str(path)):
                tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True,
                                           resume_errored=True)
            else:
                tuner = _new_tuner(spec, configs, name, scheme, trainable, progress, str(root), variant)
            grid = tuner.fit()
        _collect(grid, stop, result.trials)
    planned = reruns.plan(configs, result.trials) if spec.search.rerun_seeds else []
    if planned:  # each scheme's best configuration on the re-run seeds (study/reruns.py)
        progress.total, progress.scheme = progress.total + len(planned), ""  # the count goes on: [65/88]
        callbacks = [progress, TuneStop()]
        with stop.tune():
            grid = reruns.tuner(planned, trainable, root, resume=resume, max_concurrent=max_concurrent(spec),
                                max_failures=spec.scaling.max_failures, callbacks=callbacks).fit()
        _collect(grid, stop, result.reruns)


def _collect(grid: Any, stop: StopOnSignal, into: list[TrialResult]) -> None:
    """An experiment's trials into ``into``, except those a signal stopped; then stop on a signal."""
    for r in grid:
        trial = trial_of(r.config)
        if trial is None:
            continue
        done = TrialResult(trial, _trial_id(r), dict(r.metrics or {}), None if r.error is None else repr(r.error))
        if done.outcome != UNFINISHED or stop.signum is None:  # (a scheduler's early stop is kept)
            into.append(done)
    stop.raise_if_stopped()


class _Opened:
    """The runs this driver opened (the study run, the scheme runs), to close them KILLED on a signal."""

    def __init__(self, tracker: StudyTracker, spec: StudySpec) -> None:
        self.tracker, self.spec = tracker, spec
        self.study_run: str | None = None
        self.scheme_runs: dict[str, str] = {}

    def close_killed(self, signal_name: str, finished: int, budget: int) -> None:
        """Every trial run still RUNNING, every scheme run and the study run: KILLED, saying why."""
        reason = (f"interrupted by {signal_name}: {finished} of {budget} trials finished; "
                  "`normstudy run --resume` continues the study")
        study = self.spec.tracking.study_name
        for scheme, run_id in self.scheme_runs.items():
            _close_stopped_trials(self.tracker, study, scheme, reason)
            self.tracker.finish(run_id, "KILLED", reason=reason)
        if self.study_run is not None:
            self.tracker.finish(self.study_run, "KILLED", reason=reason)


def _open_runs(tracker: StudyTracker, spec: StudySpec, configs: TrialConfigs,
               opened: _Opened) -> tuple[StudyContext, str]:
    """The study run (its spec as params and spec.yaml) and one run per scheme, each with its step
    profile; the context every trial shares. Each run is noted in ``opened`` as soon as it exists."""
    study = spec.tracking.study_name
    params = spec_mod.flatten(spec)
    study_run = opened.study_run = tracker.study_run(study, {**params, **provenance.collect(), **scale_params(spec)})
    tracker.log_text(study_run, spec_mod.dump(spec), "spec.yaml")
    parent_runs = {}
    for entry in spec.schemes:
        scheme_params = {"scheme": entry.name, "search.mode": spec.search.mode,
                         **{f"scheme_option.{k}": v for k, v in entry.options.items()}}
        parent_runs[entry.name] = opened.scheme_runs[entry.name] = tracker.scheme_run(study, entry.name, study_run,
                                                                                     scheme_params)
        _profile_scheme(tracker, parent_runs[entry.name], spec, entry.name)
    return StudyContext(spec.tracking, spec.scaling, params, parent_runs), study_run


def _trial_resources(spec: StudySpec) -> dict[str, float]:
    """A trial that drives a TorchTrainer needs no CPU (its workers reserve their own), but Tune refuses an
    all-zero bundle. Such trial drivers go on the study driver's node (Ray's node:<ip> resource): losing
    a worker node then restarts the trial's workers from their checkpoint, never the trial's driver."""
    if uses_torch_trainer(spec.scaling):
        return {f"node:{ray.util.get_node_ip_address()}": 0.001}
    return {"CPU": spec.scaling.cpus_per_worker}


def _experiments(spec: StudySpec) -> list[tuple[str, str | None, str | None]]:
    """(experiment name, its scheme or None for all, its variant): grid and boundary run every scheme (and
    every model variant) in one experiment (trial actors are reused across schemes; a new experiment per
    scheme pays the actor start-up — ~20 s on 2 cores — once per scheme); Optuna runs one experiment, with
    its own searcher, per scheme and variant (``<scheme>@<variant>``)."""
    if spec.search.mode in ("grid", "boundary"):
        return [(spec.search.mode, None, None)]
    return [(e.name if v is None else f"{e.name}@{v}", e.name, v) for v in scale_variants(spec) for e in spec.schemes]


def _trial_id(r: Any) -> str:
    path = getattr(r, "path", None) or ""
    return Path(path).name if path else ""


def check_mode(spec: StudySpec) -> None:
    """Refuse what the search mode cannot use, before anything is written."""
    s = spec.search
    if s.mode != "boundary":
        return
    low, high = s.boundary_lr
    if not low < high:
        raise SpecError(f"search.boundary_lr: the low end must be below the high end, got [{low:g}, {high:g}]; "
                        "e.g. [0.01, 1.0]")
    if s.scheduler != "none":
        raise SpecError(f"search.scheduler: {s.scheduler} stops trials early, so boundary mode could not tell a "
                        "stopped trial from a stable one; set search.scheduler: none")


def planned_trials(spec: StudySpec, scheme: str) -> int:
    """The trial budget of one scheme: the same for every scheme (grid: the shared lr × seed grid; boundary:
    unknown up front, bounded by search.boundary_max_points)."""
    rows = len(spec.search.grid_init_scale) if norms.get(scheme).has_init_scale else 1
    rows *= len(scale_variants(spec))  # every model variant runs the same search
    if spec.search.mode == "grid":
        return len(spec.search.grid_lr) * len(spec.search.seeds) * rows
    if spec.search.mode == "boundary":
        return spec.search.boundary_max_points * len(spec.search.seeds) * rows
    return spec.search.num_samples * len(scale_variants(spec))


def _new_tuner(spec: StudySpec, configs: TrialConfigs, name: str, scheme: str | None, trainable, progress,
               root: str, variant: str | None = None) -> tune.Tuner:
    s = spec.search
    metric, mode = "objective", s.mode_direction
    space: dict[str, Any] = {}
    if s.mode == "grid":
        search_alg, num_samples = None, 1
        space = {TRIAL: tune.grid_search([t.to_dict() for t in configs.grid()])}
    elif s.mode == "boundary":
        search_alg = BoundarySearch.from_configs(configs)
        # Tune stops asking after num_samples: the cap, which the searcher never exceeds (it says FINISHED).
        num_samples = search_alg.upper_bound_trials()
    else:
        search_alg = TrialConfigSearch.optuna(configs, scheme, metric=metric, mode=mode, variant=variant)
        num_samples = s.num_samples
    scheduler = None
    if s.scheduler == "asha":
        scheduler = ASHAScheduler(metric=metric, mode=mode, grace_period=s.asha_grace_period, max_t=10**6)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent(spec), reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=root, callbacks=[progress, TuneStop()], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=spec.scaling.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )


def _close_stopped_trials(tracker: StudyTracker, study: str, scheme: str,
                          reason: str = "stopped early by the scheduler or a kill") -> None:
    """Trials stopped by the scheduler (ASHA), a signal or a kill leave RUNNING runs: close them as KILLED."""
    for run in tracker.trial_runs(study, scheme):
        if run.info.status == "RUNNING":
            tracker.finish(run.info.run_id, "KILLED", reason=reason)


def _profile_scheme(tracker: StudyTracker, run_id: str, spec: StudySpec, scheme: str) -> None:
    """Normalization's and convolution's share of one training step, measured once per scheme on a worker with
    a trial worker's resources, device, dtype and memory format (study/scheme_profile.py), with its provenance
    tags; a failed profile is a tag, never a stopped study."""
    record_scheme_profile(tracker, run_id, spec, scheme)


def _delete_study(spec: StudySpec, root: Path) -> None:
    tracker = StudyTracker(spec.tracking.tracking_uri, spec.tracking.experiment)
    flt = f"tags.`{STUDY}` = '{spec.tracking.study_name}'"
    for run in search_all(tracker.client, [tracker.experiment_id], flt):  # every page read before any delete
        tracker.client.delete_run(run.info.run_id)
    shutil.rmtree(root, ignore_errors=True)


__all__ = ["run_study", "resolve_paths", "init_ray", "planned_trials", "StudyResult", "StudyInterrupted"]
