"""The study driver: Ray Tune experiments over the same budget for every scheme.

``grid`` mode runs every (lr × init scale × seed) point — the stability map needs the full grid — in
one experiment for all schemes; ``optuna`` mode lets Optuna's TPE (through Ray Tune's ``OptunaSearch``,
seeded) sample the scheme family's space from ``search_spaces/``, one experiment per scheme;
``boundary`` mode brackets and bisects log lr for the largest stable rate of every (scheme, init scale)
(``study.boundary_search.BoundarySearch``), in one experiment for all schemes. Trials are
``study.trial.run_trial``. Experiments are stored under ``tracking.storage_path/<study_name>/<name>``
so ``--resume`` restores them with ``Tuner.restore``; MLflow runs are found again by their tags.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

# The legacy reporter honours verbose=0; the new one still prints tables (we print a line a trial).
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

from study import provenance  # noqa: E402
from study import spec as spec_mod  # noqa: E402
from study.preflight import preflight  # noqa: E402
from study.spec import SpecError, StudySpec  # noqa: E402
from study.tracking import ROLE, STUDY, StudyTracker, resolve_uri  # noqa: E402


@dataclass
class TrialOutcome:
    scheme: str
    hp: dict[str, Any]
    metrics: dict[str, Any]
    error: str | None = None


@dataclass
class StudyResult:
    study_run_id: str
    tracking_uri: str
    experiment: str
    storage_path: str
    outcomes: list[TrialOutcome] = field(default_factory=list)
    seconds: float = 0.0
    boundary: list[dict[str, Any]] = field(default_factory=list)  # boundary mode: one row per bracket


def resolve_paths(spec: StudySpec, base: str | Path | None = None) -> StudySpec:
    """Absolute tracking URI and storage path: Ray workers and jobs run in other directories."""
    raw = spec.to_dict()
    raw["tracking"]["tracking_uri"] = resolve_uri(spec.tracking.tracking_uri, base)
    raw["tracking"]["storage_path"] = str((Path(base or Path.cwd()) / spec.tracking.storage_path).resolve())
    # Tune trials run in their own working directories: relative data and space paths would break there.
    if spec.data.path:
        raw["data"]["path"] = str((Path(base or Path.cwd()) / spec.data.path).resolve())
    if spec.search.space_dir:
        raw["search"]["space_dir"] = str((Path(base or Path.cwd()) / spec.search.space_dir).resolve())
    return StudySpec.model_validate(raw)


def init_ray(spec: StudySpec) -> None:
    import ray

    if ray.is_initialized():
        return
    address = spec.scaling.ray_address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parent.parent),
                                                                    os.environ.get("PYTHONPATH")]))}}
    if address:
        # Under `ray job submit` or on a cluster: ray.init(num_cpus=...) would raise (docs/design.md §11).
        ray.init(address=address, runtime_env=env, log_to_driver=False)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=env, log_to_driver=False,
                 configure_logging=True, logging_level="ERROR")


def max_concurrent(spec: StudySpec) -> int:
    import ray

    if spec.search.max_concurrent_trials:
        return spec.search.max_concurrent_trials
    res = ray.cluster_resources()
    s = spec.scaling
    if s.use_gpu:
        return max(1, int(res.get("GPU", 0) // s.num_workers))
    return max(1, int(res.get("CPU", 1) // (s.cpus_per_worker * s.num_workers)))


def run_study(spec: StudySpec, *, resume: bool = False, fresh: bool = False,
              out: TextIO | None = None) -> StudyResult:
    """Run (or, with ``resume``, continue) every scheme's experiment; returns what the trials reported."""
    from ray import tune

    from study.progress import TrialProgress
    from study.trial import run_trial, uses_torch_trainer

    started = time.time()
    check_mode(spec)
    spec = resolve_paths(spec)
    study = spec.tracking.study_name
    root = Path(spec.tracking.storage_path) / study
    replace = root.exists() and not resume
    if replace and not fresh:
        raise SpecError(f"tracking.study_name: study '{study}' already exists in {root.parent}; pass --resume to "
                        f"continue it, --fresh to replace it, or --set tracking.study_name=NEW")
    init_ray(spec)
    preflight(spec)  # everything that can be refused is refused before anything is written
    if replace:  # --fresh: the old study goes only once the new one has passed the preflight
        _delete_study(spec, root)
    tracker = StudyTracker(spec.tracking.tracking_uri, spec.tracking.experiment)
    params = spec_mod.flatten(spec)
    params.update(provenance.collect())
    study_run = tracker.study_run(study, params)
    tracker.log_text(study_run, spec_mod.dump(spec), "spec.yaml")
    result = StudyResult(study_run, spec.tracking.tracking_uri, spec.tracking.experiment, str(root))
    plans = {e.name: _plan(spec, e.name) for e in spec.schemes}
    progress = TrialProgress(total=sum(p["trials"] for p in plans.values()), out=out)
    parent_runs = {}
    for entry in spec.schemes:
        scheme_params = {"scheme": entry.name, "search.mode": spec.search.mode,
                         **{f"scheme_option.{k}": v for k, v in entry.options.items()}}
        parent_runs[entry.name] = tracker.scheme_run(study, entry.name, study_run, scheme_params)
        _profile_scheme(tracker, parent_runs[entry.name], spec, entry.name)

    import ray

    cpus = 0 if uses_torch_trainer(spec) else spec.scaling.cpus_per_worker
    # A trial that drives a TorchTrainer needs no CPU (its workers reserve their own), but Tune refuses an
    # all-zero bundle. Such trial drivers go on the study driver's node (Ray's node:<ip> resource): losing
    # a worker node then restarts the trial's workers from their checkpoint, never the trial's driver.
    trial_resources = {"CPU": cpus} if cpus else {f"node:{ray.util.get_node_ip_address()}": 0.001}
    if spec.search.mode == "grid":
        # One experiment holds every scheme's grid: trial actors are reused across schemes (a new
        # experiment per scheme pays the actor start-up — ~20 s on 2 cores — once per scheme).
        experiments = [("grid", None, grid_points(spec))]
    elif spec.search.mode == "boundary":  # one searcher over every (scheme, init scale) bracket
        experiments = [("boundary", None, None)]
    else:
        experiments = [(e.name, e.name, None) for e in spec.schemes]
    for name, scheme, points in experiments:
        trainable = tune.with_parameters(run_trial, study_spec=spec.to_dict(), parent_runs=parent_runs, scheme=scheme)
        wrapped = tune.with_resources(trainable, trial_resources)
        path = root / name
        progress.scheme = scheme or ""
        if resume and tune.Tuner.can_restore(str(path)):
            tuner = tune.Tuner.restore(str(path), trainable=wrapped, resume_unfinished=True, resume_errored=True)
        else:
            tuner = _new_tuner(spec, name, scheme, points, wrapped, progress, str(root))
        grid = tuner.fit()
        for r in grid:
            hp = dict((r.config or {}).get("point", r.config or {}))
            result.outcomes.append(TrialOutcome(hp.pop("scheme", scheme), _hp_of(hp), dict(r.metrics or {}),
                                                None if r.error is None else repr(r.error)))
    if spec.search.mode == "boundary":
        result.boundary = boundary_rows(spec, result.outcomes)
    for entry in spec.schemes:
        _close_stopped_trials(tracker, study, entry.name)
        tracker.finish(parent_runs[entry.name])
    tracker.finish(study_run)
    result.seconds = time.time() - started
    return result


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


def boundary_rows(spec: StudySpec, outcomes: list[TrialOutcome]) -> list[dict[str, Any]]:
    """The bracket of every (scheme, init scale) from the trials' results: scheme, init_scale, stable_lr,
    diverged_lr, ratio, converged (diverged/stable within search.boundary_tolerance), points, trials."""
    from study.boundary import bracket_of, point_status, within
    from study.boundary_search import bracket_keys, classify

    seeds: dict[tuple, dict[float, dict[int, str]]] = {k: {} for k in bracket_keys(spec)}
    for o in outcomes:
        key = (o.scheme, o.hp.get("init_scale"))
        if key in seeds and "lr" in o.hp:
            seeds[key].setdefault(float(o.hp["lr"]), {})[o.hp.get("seed")] = classify(o.metrics, o.error is not None)
    rows = []
    for (scheme, scale), points in seeds.items():
        stable, diverged = bracket_of({lr: point_status(v.values()) for lr, v in points.items()})
        ratio = diverged / stable if stable and diverged else None
        converged = ratio is not None and within(stable, diverged, spec.search.boundary_tolerance)
        rows.append({"scheme": scheme, "init_scale": scale, "stable_lr": stable, "diverged_lr": diverged,
                     "ratio": ratio, "converged": converged, "points": len(points),
                     "trials": sum(len(v) for v in points.values())})
    return rows


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every (scheme, lr, init scale, seed) point of a grid study, scheme-major; init scale only where
    the scheme has one (the stability map's second axis)."""
    from trainers import norms

    s = spec.search
    points = []
    for entry in spec.schemes:
        scales = s.grid_init_scale if norms.get(entry.name).has_init_scale else [None]
        for lr in s.grid_lr:
            for scale in scales:
                for seed in s.seeds:
                    point = {"scheme": entry.name, "lr": lr, "seed": seed}
                    if scale is not None:
                        point["init_scale"] = scale
                    points.append(point)
    return points


def _plan(spec: StudySpec, scheme: str) -> dict[str, Any]:
    """The trial budget of one scheme: the same for every scheme (grid: the shared lr × seed grid)."""
    from trainers import norms

    has_init = norms.get(scheme).has_init_scale
    rows = len(spec.search.grid_init_scale) if has_init else 1
    if spec.search.mode == "grid":
        n = len(spec.search.grid_lr) * len(spec.search.seeds) * rows
    elif spec.search.mode == "boundary":  # unknown up front: the cap (search.boundary_max_points) bounds it
        n = spec.search.boundary_max_points * len(spec.search.seeds) * rows
    else:
        n = spec.search.num_samples
    return {"trials": n, "has_init_scale": has_init}


def _new_tuner(spec: StudySpec, name: str, scheme: str | None, points: list[dict[str, Any]] | None,
               trainable, progress, root: str):
    from ray import tune

    s = spec.search
    metric, mode = "objective", s.mode_direction
    if points is not None:
        space: dict[str, Any] = {"point": tune.grid_search(points)}
        search_alg, num_samples = None, 1
    elif s.mode == "boundary":
        from study.boundary_search import BoundarySearch

        search_alg = BoundarySearch.from_spec(spec)
        # Tune stops asking after num_samples: the cap, which the searcher never exceeds (it says FINISHED).
        space, num_samples = {}, search_alg.upper_bound_trials()
    else:
        from ray.tune.search.optuna import OptunaSearch

        import search_spaces

        define = OptunaSpace(search_spaces.for_scheme(spec, scheme), s.seeds[0])
        # metric/mode on the searcher itself: it ignores TuneConfig's with a define-by-run space.
        search_alg = OptunaSearch(space=define, metric=metric, mode=mode, seed=s.optuna_seed)
        space, num_samples = {}, s.num_samples
    scheduler = None
    if s.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(metric=metric, mode=mode, grace_period=s.asha_grace_period, max_t=10**6)
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=num_samples,
                                    max_concurrent_trials=max_concurrent(spec),
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=root, callbacks=[progress], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=spec.scaling.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )


class OptunaSpace:
    """Optuna define-by-run space from a search_spaces file (a class, so Tune can pickle the searcher)."""

    def __init__(self, dims: dict[str, Any], seed: int) -> None:
        self.dims, self.seed = dims, seed

    def __call__(self, trial) -> dict[str, Any]:
        for name, d in self.dims.items():
            if d.type == "int":
                trial.suggest_int(name, int(d.min), int(d.max), log=d.scaling == "log")
            else:
                trial.suggest_float(name, d.min, d.max, log=d.scaling == "log")
        # Constants ride along in the trial's config; the trial tags its run with Optuna's number.
        return {"seed": self.seed, "optuna_trial_number": trial.number}


def _hp_of(config: dict[str, Any] | None) -> dict[str, Any]:
    return {k: v for k, v in (config or {}).items() if isinstance(v, int | float | str)}


def _close_stopped_trials(tracker: StudyTracker, study: str, scheme: str) -> None:
    """Trials stopped by the scheduler (ASHA) or killed leave RUNNING runs: close them as KILLED."""
    for run in tracker.trial_runs(study, scheme):
        if run.info.status == "RUNNING":
            tracker.finish(run.info.run_id, "KILLED", reason="stopped early by the scheduler or a kill")


def _profile_scheme(tracker: StudyTracker, run_id: str, spec: StudySpec, scheme: str) -> None:
    """Normalization's and convolution's share of one training step, measured once per scheme."""
    try:
        from trainers.profiling import profile_step

        shares = profile_step(spec, scheme)
    except Exception as err:  # noqa: BLE001 - a profiler failure must not stop the study
        tracker.set_tags(run_id, {"normstudy.profile_error": repr(err)[:500]})
        return
    tracker.log_metrics(run_id, shares)


def _delete_study(spec: StudySpec, root: Path) -> None:
    tracker = StudyTracker(spec.tracking.tracking_uri, spec.tracking.experiment)
    flt = f"tags.`{STUDY}` = '{spec.tracking.study_name}'"
    for run in tracker.client.search_runs([tracker.experiment_id], flt, max_results=100000):
        tracker.client.delete_run(run.info.run_id)
    shutil.rmtree(root, ignore_errors=True)


def summary_table(result: StudyResult) -> str:
    """One line per scheme: trials, diverged, best test top-1 with its hyperparameters, mean gap."""
    rows = ["scheme      trials  diverged  best test top-1  (lr, init, seed)          mean train/test of stable"]
    by_scheme: dict[str, list[TrialOutcome]] = {}
    for o in result.outcomes:
        by_scheme.setdefault(o.scheme, []).append(o)
    for scheme, outs in by_scheme.items():
        div = [o for o in outs if o.metrics.get("diverged", 0) >= 1 or o.error]
        ok = [o for o in outs if o not in div and "final_test_top1" in o.metrics]
        best = max(ok, key=lambda o: o.metrics["final_test_top1"], default=None)
        mean_tr = sum(o.metrics["final_train_top1"] for o in ok) / len(ok) if ok else math.nan
        mean_te = sum(o.metrics["final_test_top1"] for o in ok) / len(ok) if ok else math.nan
        best_s = (f"{best.metrics['final_test_top1']:.3f}            ({best.hp.get('lr'):g}, "
                  f"{best.hp.get('init_scale', '-')}, {best.hp.get('seed')})" if best else "-")
        rows.append(f"{scheme:10s}  {len(outs):6d}  {len(div):8d}  {best_s:42s}  {mean_tr:.3f} / {mean_te:.3f}")
    if result.boundary:
        rows += ["", "boundary    init    largest stable lr  smallest diverged lr  ratio  within tolerance  "
                 "rates  trials"]
        for b in result.boundary:
            ratio = "-" if b["ratio"] is None else f"{b['ratio']:.2f}"
            init = "-" if b["init_scale"] is None else f"{b['init_scale']:g}"
            rows.append(f"{b['scheme']:10s}  {init:6s}  {_lr_text(b['stable_lr']):17s}  "
                        f"{_lr_text(b['diverged_lr']):20s}  {ratio:5s}  {'yes' if b['converged'] else 'no':16s}  "
                        f"{b['points']:5d}  {b['trials']:6d}")
    return "\n".join(rows)


def _lr_text(lr: float | None) -> str:
    return "-" if lr is None else f"{lr:.4g}"


__all__ = ["run_study", "summary_table", "StudyResult", "ROLE"]
