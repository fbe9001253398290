"""Per-scheme numbers of the stability report: pure functions over :mod:`analysis.collect`'s dataclasses.

- a trial's outcome is the one rule's (:mod:`trainers.outcome`, via ``TrialData.outcome``): it *failed*
  when it diverged, collapsed (finite, at chance) or stalled (finite, did not fit) — every kind of
  :data:`trainers.outcome.FAILURE_KINDS`, each counted apart and all together; it is *stable* when it
  trained to the end and did none of them. *Errored* trials (the run raised) are counted and listed but
  enter no rate, no mean and no cell, nor do unfinished ones. A collapsed or stalled trial's final
  accuracies are real measurements, but never enter a mean, a best configuration or a stable cell;
- a *configuration* is a trial's sampled hyperparameters without the seed; its stable seeds give mean ± std;
- the *best configuration* is the one with the highest mean final test top-1 among configurations where
  no seed failed (if every configuration lost a seed, among those with at least one stable seed), marked
  converged or not (:mod:`analysis.convergence`);
- the *stability map* (:mod:`analysis.stability_map`) and the *learning-rate sensitivity*
  (:mod:`analysis.sensitivity`) are computed here for each scheme.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from analysis.collect import PROFILE_ERROR_TAG, PROFILE_TAGS, SchemeData, TrialData
from analysis.convergence import Convergence, convergence_of
from analysis.intervals import wilson
from analysis.sensitivity import LossPoint, Sensitivity, loss_points, sensitivity
from analysis.stability_map import StabilityMap, failures_by_lr, kind_counts, stability_map
from trainers.outcome import COLLAPSED, DIVERGED, ERRORED, FAILURE_KINDS, OUTCOMES, STABLE


@dataclass(frozen=True)
class Stat:
    """Mean ± sample standard deviation over ``n`` values (std is None below two values)."""

    mean: float | None
    std: float | None
    n: int


def stat(values: Iterable[float | None]) -> Stat:
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not xs:
        return Stat(None, None, 0)
    return Stat(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs))


def gap_of(t: TrialData) -> float | None:
    gap = t.final("final_gap")
    if gap is None and t.final("final_train_top1") is not None and t.final("final_test_top1") is not None:
        gap = t.final("final_train_top1") - t.final("final_test_top1")
    return gap


@dataclass
class ConfigGroup:
    config: dict[str, Any]  # hyperparameters without the seed
    seeds: list[int | None]
    trial_ids: list[str]
    n: int
    failures: dict[str, int]  # {kind: seeds that failed that way}, every FAILURE_KINDS kind
    train_top1: Stat  # over the stable seeds (no failure of any kind)
    test_top1: Stat
    gap: Stat

    @property
    def n_failed(self) -> int:
        """Seeds that failed, of any kind."""
        return sum(self.failures.values())

    @property
    def all_seeds_stable(self) -> bool:
        return self.n_failed == 0


def group_configs(trials: Sequence[TrialData]) -> list[ConfigGroup]:
    """Finished trials grouped by their hyperparameters (seed aside)."""
    groups: dict[tuple, list[TrialData]] = defaultdict(list)
    for t in trials:
        if t.finished:
            groups[tuple(sorted(t.hp.items(), key=lambda kv: kv[0]))].append(t)
    out = []
    for key, ts in groups.items():
        ok = [t for t in ts if not t.failed]
        out.append(
            ConfigGroup(
                config=dict(key),
                seeds=[t.seed for t in ts],
                trial_ids=[t.trial_id for t in ts],
                n=len(ts),
                failures=kind_counts(t.outcome for t in ts),
                train_top1=stat(t.final("final_train_top1") for t in ok),
                test_top1=stat(t.final("final_test_top1") for t in ok),
                gap=stat(gap_of(t) for t in ok),
            )
        )
    return out


def best_config(groups: Sequence[ConfigGroup]) -> ConfigGroup | None:
    """Highest mean test top-1 among all-seeds-stable groups; failing those, groups with a stable seed.
    A group whose every seed failed has no test mean and is never the best."""
    for pool in ([g for g in groups if g.all_seeds_stable], list(groups)):
        pool = [g for g in pool if g.test_top1.mean is not None]
        if pool:
            return max(pool, key=lambda g: (g.test_top1.mean, -g.n_failed))
    return None


# --------------------------------------------------------------------------------------------------
# A scheme's summary


@dataclass(frozen=True)
class KindStat:
    """One failure kind of a scheme: ``n`` of its finished trials, the rate, its 95% Wilson interval and the
    causes the trials were tagged with (kinds without a cause tag: empty)."""

    n: int
    rate: float | None
    rate_ci: tuple[float, float] | None
    causes: dict[str, int]


def _detail(t: TrialData) -> tuple[str | None, int | None, str | None]:
    """A failed trial's (cause, step, layer), from its kind's own tags: a divergence's rule, step and the
    layer that moved most; a collapse's cause, step and stage; a stall has no cause (its detail is the loss
    ratio) and ends at its last step."""
    if t.outcome == DIVERGED:
        return t.divergence_cause, t.divergence_step, t.divergence_layer
    if t.outcome == COLLAPSED:
        return t.collapse_cause, t.collapse_step, t.collapse_layer
    steps = t.final("steps_done")
    return None, (int(steps) if steps is not None else None), None


CAUSE_TAGGED = (DIVERGED, COLLAPSED)  # the kinds whose trials carry a cause tag (``unknown`` when missing)


def _kind_stat(kind: str, trials: Sequence[TrialData], n_finished: int) -> KindStat:
    mine = [t for t in trials if t.outcome == kind]
    causes = Counter(_detail(t)[0] or "unknown" for t in mine) if kind in CAUSE_TAGGED else Counter()
    return KindStat(len(mine), len(mine) / n_finished if n_finished else None,
                    wilson(len(mine), n_finished) if n_finished else None, dict(causes.most_common()))


@dataclass
class SchemeSummary:
    name: str
    run_id: str
    n_trials: int
    n_finished: int  # stable or failed; errored, running and killed trials are left out of every rate
    outcomes: dict[str, int]  # every outcome of trainers.outcome.OUTCOMES -> trials
    failures: dict[str, KindStat]  # every FAILURE_KINDS kind
    n_failed: int  # trials that failed, of any kind
    failure_rate: float | None  # n_failed / n_finished
    failure_rate_ci: tuple[float, float] | None
    best: ConfigGroup | None
    stability: StabilityMap
    failures_by_lr: list[dict]
    failed_trials: list[dict[str, Any]]  # every failed trial, with its ``outcome``
    errored_trials: list[dict[str, Any]]  # every errored trial, with its ``error``
    step_time_s: Stat
    norm_share: float | None
    conv_share: float | None
    profile_step_time_s: float | None
    norm_share_std: float | None = None  # over the profiler's repeated windows (trainers/profiling.py)
    profile_repeats: int = 0
    profile: dict[str, str | None] = field(default_factory=dict)  # where the shares were measured (PROFILE_TAGS)
    profile_error: str | None = None  # why the profile failed (its tag), when it did
    convergence: Convergence | None = None  # of the best configuration
    sensitivity: Sensitivity | None = None  # learning-rate sensitivity over every swept rate
    loss_points: list[LossPoint] = field(default_factory=list, repr=False)
    representative_stable: str | None = None  # trial ids whose curves the report plots
    representative_diverged: str | None = None
    groups: list[ConfigGroup] = field(default_factory=list, repr=False)

    @property
    def n_errored(self) -> int:
        return self.outcomes.get(ERRORED, 0)


def representatives(trials: Sequence[TrialData], best: ConfigGroup | None) -> tuple[str | None, str | None]:
    """Stable: the best configuration's lowest-seed stable trial (else the most accurate stable trial; never
    a failed one). Diverged: the diverged trial at the smallest learning rate, nearest the stable region."""
    stable = [t for t in trials if t.outcome == STABLE]
    pick = None
    if best is not None:
        in_best = [t for t in stable if t.trial_id in best.trial_ids]
        pick = min(in_best, key=lambda t: (t.seed is None, t.seed or 0), default=None)
    if pick is None and stable:
        pick = max(stable, key=lambda t: t.final("final_test_top1") or -1.0)
    diverged = [t for t in trials if t.outcome == DIVERGED]
    div = min(diverged, key=lambda t: (t.lr or math.inf, t.divergence_step or 0), default=None)
    return (pick.trial_id if pick else None), (div.trial_id if div else None)


def _share(metrics: dict[str, float], key: str) -> float | None:
    v = metrics.get(key)
    return v if v is not None and math.isfinite(v) else None


def _trial_row(t: TrialData) -> dict[str, Any]:
    return {"trial_id": t.trial_id, "run_id": t.run_id, "lr": t.lr, "init_scale": t.init_scale, "seed": t.seed}


def failed_row(t: TrialData) -> dict[str, Any]:
    """A failed trial for report.json: its outcome, cause, step, layer and — where it ended finite (every
    kind but diverged) — ``dead_frac`` (metric ``collapse_dead_frac``), ``loss_ratio`` (metric
    ``stall_loss_ratio``: the final train loss over min(L0, ln C)) and its final accuracies."""
    cause, step, layer = _detail(t)
    row = _trial_row(t) | {"outcome": t.outcome, "cause": cause, "step": step, "layer": layer}
    if t.outcome != DIVERGED:  # every other kind ended finite: its final numbers are measurements
        row |= {"dead_frac": t.final("collapse_dead_frac"), "loss_ratio": t.final("stall_loss_ratio"),
                "train_top1": t.final("final_train_top1"), "test_top1": t.final("final_test_top1")}
    return row


def summarize_scheme(scheme: SchemeData, num_classes: int | None = None) -> SchemeSummary:
    """``num_classes``: the study's (``data.num_classes``), for ln C where a trial has no initial loss."""
    trials = scheme.trials
    finished = [t for t in trials if t.finished]
    failed = [t for t in trials if t.failed]
    groups = group_configs(trials)
    best = best_config(groups)
    smap = stability_map(trials)
    stable_id, diverged_id = representatives(trials, best)
    outcomes = Counter(t.outcome for t in trials)
    points = loss_points(trials, num_classes)
    best_trials = [t for t in trials if best is not None and t.trial_id in best.trial_ids and not t.failed]
    return SchemeSummary(
        name=scheme.name,
        run_id=scheme.run_id,
        n_trials=len(trials),
        n_finished=len(finished),
        outcomes={o: outcomes.get(o, 0) for o in OUTCOMES},
        failures={k: _kind_stat(k, trials, len(finished)) for k in FAILURE_KINDS},
        n_failed=len(failed),
        failure_rate=len(failed) / len(finished) if finished else None,
        failure_rate_ci=wilson(len(failed), len(finished)) if finished else None,
        best=best,
        stability=smap,
        failures_by_lr=failures_by_lr(smap),
        failed_trials=[failed_row(t) for t in failed],
        errored_trials=[_trial_row(t) | {"error": t.error} for t in trials if t.outcome == ERRORED],
        step_time_s=stat(t.final("step_time_mean_s") for t in trials),
        norm_share=_share(scheme.metrics, "norm_share"),
        conv_share=_share(scheme.metrics, "conv_share"),
        profile_step_time_s=_share(scheme.metrics, "profile_step_time_s"),
        norm_share_std=_share(scheme.metrics, "norm_share_std"),
        profile_repeats=int(_share(scheme.metrics, "profile_repeats") or 0),
        profile={k: scheme.tags.get(tag) or None for k, tag in PROFILE_TAGS.items()},
        profile_error=scheme.tags.get(PROFILE_ERROR_TAG) or None,
        convergence=convergence_of(best_trials, num_classes) if best is not None else None,
        sensitivity=sensitivity(points),
        loss_points=points,
        representative_stable=stable_id,
        representative_diverged=diverged_id,
        groups=groups,
    )
