"""Per-scheme numbers of the stability report: pure functions over :mod:`analysis.collect`'s dataclasses.

- a trial's outcome is the one rule's (:mod:`trainers.outcome`, via ``TrialData.outcome``): it *failed*
  when it diverged or collapsed (finite to the end but at chance), it is *stable* when it trained to the
  end and did neither; errored and unfinished trials enter no rate. Collapsed trials have final
  accuracies, but those never enter a mean, a best configuration or a stable cell;
- a *configuration* is a trial's sampled hyperparameters without the seed; its stable seeds give mean ± std;
- the *best configuration* is the one with the highest mean final test top-1 among configurations where
  no seed failed (if every configuration lost a seed, among those with at least one stable seed);
- the *stability map* is learning rate × init scale (one row "-" for schemes without an init scale);
  a cell aggregates every trial at that point, whatever its other hyperparameters;
- the *largest stable learning rate* of an init scale is the largest lr tried at which no seed failed.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from analysis.collect import SchemeData, TrialData
from trainers.outcome import COLLAPSED, DIVERGED, STABLE

MAX_LEVELS = 12  # more distinct values than this on an axis (optuna mode): bin it into log-spaced levels
BINS = 10


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


def count(trials: Iterable[TrialData], outcome: str) -> int:
    """How many of ``trials`` have that outcome."""
    return sum(t.outcome == outcome for t in trials)


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
    n_diverged: int
    train_top1: Stat  # over the stable seeds (neither diverged nor collapsed)
    test_top1: Stat
    gap: Stat
    n_collapsed: int = 0

    @property
    def n_failed(self) -> int:
        """Seeds that diverged or collapsed."""
        return self.n_diverged + self.n_collapsed

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
                n_diverged=count(ts, DIVERGED),
                train_top1=stat(t.final("final_train_top1") for t in ok),
                test_top1=stat(t.final("final_test_top1") for t in ok),
                gap=stat(gap_of(t) for t in ok),
                n_collapsed=count(ts, COLLAPSED),
            )
        )
    return out


def best_config(groups: Sequence[ConfigGroup]) -> ConfigGroup | None:
    """Highest mean test top-1 among all-seeds-stable groups; failing those, groups with a stable seed.
    A group whose every seed diverged or collapsed has no test mean and is never the best."""
    for pool in ([g for g in groups if g.all_seeds_stable], list(groups)):
        pool = [g for g in pool if g.test_top1.mean is not None]
        if pool:
            return max(pool, key=lambda g: (g.test_top1.mean, -g.n_failed))
    return None


# --------------------------------------------------------------------------------------------------
# Stability map


def levels(values: Iterable[float | None]) -> dict[float | None, float | None]:
    """Map each value to its axis level: itself, or a log-spaced bin's centre when there are many."""
    distinct = sorted({v for v in values if v is not None})
    mapping: dict[float | None, float | None] = {None: None}
    if len(distinct) <= MAX_LEVELS or distinct[0] <= 0:
        mapping.update({v: v for v in distinct})
        return mapping
    lo, hi = math.log10(distinct[0]), math.log10(distinct[-1])
    width = (hi - lo) / BINS
    for v in distinct:
        i = min(int((math.log10(v) - lo) / width), BINS - 1)
        mapping[v] = float(f"{10 ** (lo + (i + 0.5) * width):.3g}")
    return mapping


@dataclass
class Cell:
    lr: float
    init_scale: float | None  # None: the scheme has no init scale (one row, shown as "-")
    n: int
    n_diverged: int
    test_top1: float | None  # mean over the cell's stable trials
    n_collapsed: int = 0

    @property
    def n_failed(self) -> int:
        return self.n_diverged + self.n_collapsed

    @property
    def status(self) -> str:
        """``stable`` (no trial failed), ``mixed`` (some stable, some diverged or collapsed), ``diverged`` or
        ``collapsed`` (every trial did that), ``failed`` (every trial failed, some each way)."""
        if self.n_failed == 0:
            return "stable"
        if self.n_failed < self.n:
            return "mixed"
        if self.n_diverged == self.n:
            return "diverged"
        return "collapsed" if self.n_collapsed == self.n else "failed"


@dataclass
class StabilityMap:
    lrs: list[float]
    init_scales: list[float | None]
    cells: list[Cell]
    largest_stable_lr: list[dict[str, float | None]]  # [{"init_scale": s, "lr": lr or None}]
    binned: bool = False

    def cell(self, lr: float, init_scale: float | None) -> Cell | None:
        return next((c for c in self.cells if c.lr == lr and c.init_scale == init_scale), None)


def stability_map(trials: Sequence[TrialData]) -> StabilityMap:
    done = [t for t in trials if t.finished and t.lr is not None]
    lr_level = levels(t.lr for t in done)
    is_level = levels(t.init_scale for t in done)
    binned = any(k != v for k, v in (*lr_level.items(), *is_level.items()))
    by_cell: dict[tuple, list[TrialData]] = defaultdict(list)
    for t in done:
        by_cell[(lr_level[t.lr], is_level[t.init_scale])].append(t)
    cells = [
        Cell(
            lr,
            s,
            len(ts),
            count(ts, DIVERGED),
            stat(t.final("final_test_top1") for t in ts if not t.failed).mean,
            count(ts, COLLAPSED),
        )
        for (lr, s), ts in sorted(by_cell.items(), key=lambda kv: (kv[0][1] or 0.0, kv[0][0]))
    ]
    init_scales = sorted({c.init_scale for c in cells}, key=lambda s: s or 0.0)
    largest = []
    for s in init_scales:
        stable = [c.lr for c in cells if c.init_scale == s and c.n_failed == 0]
        largest.append({"init_scale": s, "lr": max(stable) if stable else None})
    return StabilityMap(sorted({c.lr for c in cells}), init_scales, cells, largest, binned)


def divergence_by_lr(smap: StabilityMap) -> list[dict[str, float | int]]:
    """Per learning rate (all init scales together): the share of trials that diverged (``rate``), that
    collapsed (``collapse_rate``) and that failed either way (``failure_rate``)."""
    out = []
    for lr in smap.lrs:
        cs = [c for c in smap.cells if c.lr == lr]
        n, d, k = sum(c.n for c in cs), sum(c.n_diverged for c in cs), sum(c.n_collapsed for c in cs)
        out.append({"lr": lr, "n": n, "n_diverged": d, "rate": d / n, "n_collapsed": k, "collapse_rate": k / n,
                    "n_failed": d + k, "failure_rate": (d + k) / n})
    return out


# --------------------------------------------------------------------------------------------------
# A scheme's summary


@dataclass
class SchemeSummary:
    name: str
    run_id: str
    n_trials: int
    n_finished: int  # stable or failed; errored, running and killed trials are left out of every rate
    n_diverged: int
    divergence_rate: float | None
    divergence_causes: dict[str, int]
    best: ConfigGroup | None
    stability: StabilityMap
    divergence_by_lr: list[dict[str, float | int]]
    diverged_trials: list[dict[str, Any]]
    step_time_s: Stat
    norm_share: float | None
    conv_share: float | None
    profile_step_time_s: float | None
    norm_share_std: float | None = None  # over the profiler's repeated windows (trainers/profiling.py)
    profile_repeats: int = 0
    n_collapsed: int = 0  # finished finite at chance (never also counted in n_diverged)
    collapse_rate: float | None = None  # n_collapsed / n_finished
    collapse_causes: dict[str, int] = field(default_factory=dict)
    collapsed_trials: list[dict[str, Any]] = field(default_factory=list)
    n_failed: int = 0  # n_diverged + n_collapsed: the trials that are not stable
    failure_rate: float | None = None  # n_failed / n_finished
    representative_stable: str | None = None  # trial ids whose curves the report plots
    representative_diverged: str | None = None
    groups: list[ConfigGroup] = field(default_factory=list, repr=False)


def representatives(trials: Sequence[TrialData], best: ConfigGroup | None) -> tuple[str | None, str | None]:
    """Stable: the best configuration's lowest-seed stable trial (else the most accurate stable trial; never
    a collapsed one). Diverged: the diverged trial at the smallest learning rate, nearest the stable region."""
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


def _trial_row(t: TrialData, cause: str | None, step: int | None, layer: str | None) -> dict[str, Any]:
    return {
        "trial_id": t.trial_id,
        "run_id": t.run_id,
        "lr": t.lr,
        "init_scale": t.init_scale,
        "seed": t.seed,
        "cause": cause,
        "step": step,
        "layer": layer,
    }


def summarize_scheme(scheme: SchemeData) -> SchemeSummary:
    trials = scheme.trials
    finished = [t for t in trials if t.finished]
    diverged = [t for t in trials if t.outcome == DIVERGED]
    collapsed = [t for t in trials if t.outcome == COLLAPSED]
    groups = group_configs(trials)
    best = best_config(groups)
    smap = stability_map(trials)
    stable_id, diverged_id = representatives(trials, best)
    return SchemeSummary(
        name=scheme.name,
        run_id=scheme.run_id,
        n_trials=len(trials),
        n_finished=len(finished),
        n_diverged=len(diverged),
        divergence_rate=len(diverged) / len(finished) if finished else None,
        divergence_causes=dict(Counter(t.divergence_cause or "unknown" for t in diverged).most_common()),
        best=best,
        stability=smap,
        divergence_by_lr=divergence_by_lr(smap),
        diverged_trials=[_trial_row(t, t.divergence_cause, t.divergence_step, t.divergence_layer) for t in diverged],
        step_time_s=stat(t.final("step_time_mean_s") for t in trials),
        norm_share=_share(scheme.metrics, "norm_share"),
        conv_share=_share(scheme.metrics, "conv_share"),
        profile_step_time_s=_share(scheme.metrics, "profile_step_time_s"),
        norm_share_std=_share(scheme.metrics, "norm_share_std"),
        profile_repeats=int(_share(scheme.metrics, "profile_repeats") or 0),
        n_collapsed=len(collapsed),
        collapse_rate=len(collapsed) / len(finished) if finished else None,
        collapse_causes=dict(Counter(t.collapse_cause or "unknown" for t in collapsed).most_common()),
        collapsed_trials=[
            _trial_row(t, t.collapse_cause, t.collapse_step, t.collapse_layer)
            | {
                "dead_frac": t.final("collapse_dead_frac"),
                "train_top1": t.final("final_train_top1"),
                "test_top1": t.final("final_test_top1"),
            }
            for t in collapsed
        ],
        n_failed=len(diverged) + len(collapsed),
        failure_rate=(len(diverged) + len(collapsed)) / len(finished) if finished else None,
        representative_stable=stable_id,
        representative_diverged=diverged_id,
        groups=groups,
    )
