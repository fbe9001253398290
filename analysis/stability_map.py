"""The stability map of a scheme: learning rate × init scale, each cell's outcomes and its stable accuracy.

A cell aggregates every finished trial at that point whatever its other hyperparameters, and counts each
failure kind of the one outcome rule (:data:`trainers.outcome.FAILURE_KINDS`: diverged, collapsed,
stalled) apart; errored and unfinished trials enter no cell. Its status is ``stable`` (no trial failed),
``mixed`` (some stable, some failed), the kind itself when every trial failed that one way, or ``failed``
(every trial failed, in more than one way). The *largest stable learning rate* of an init scale is the
largest lr tried at which no seed failed. An axis with more than :data:`MAX_LEVELS` distinct values
(optuna mode) is binned into :data:`BINS` log-spaced levels.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from analysis.collect import TrialData
from trainers.outcome import FAILURE_KINDS

MAX_LEVELS = 12  # more distinct values than this on an axis (optuna mode): bin it into log-spaced levels
BINS = 10


def kind_counts(outcomes: Iterable[str]) -> dict[str, int]:
    """``{kind: n}`` for every failure kind, in :data:`FAILURE_KINDS`' order (zeros included)."""
    outs = list(outcomes)
    return {k: outs.count(k) for k in FAILURE_KINDS}


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
    test_top1: float | None  # mean over the cell's stable trials
    failures: dict[str, int] = field(default_factory=dict)  # {kind: n}, every FAILURE_KINDS kind

    @property
    def n_failed(self) -> int:
        return sum(self.failures.values())

    @property
    def status(self) -> str:
        """``stable``, ``mixed``, the one failure kind of every trial, or ``failed`` (several kinds)."""
        if self.n_failed == 0:
            return "stable"
        if self.n_failed < self.n:
            return "mixed"
        only = [k for k, n in self.failures.items() if n == self.n]
        return only[0] if only else "failed"


@dataclass
class StabilityMap:
    lrs: list[float]
    init_scales: list[float | None]
    cells: list[Cell]
    largest_stable_lr: list[dict[str, float | None]]  # [{"init_scale": s, "lr": lr or None}]
    binned: bool = False

    def cell(self, lr: float, init_scale: float | None) -> Cell | None:
        return next((c for c in self.cells if c.lr == lr and c.init_scale == init_scale), None)


def _stable_mean(trials: Sequence[TrialData]) -> float | None:
    accs = [a for a in (t.final("final_test_top1") for t in trials if not t.failed) if a is not None]
    return statistics.fmean(accs) if accs else None


def stability_map(trials: Sequence[TrialData]) -> StabilityMap:
    done = [t for t in trials if t.finished and t.lr is not None]
    lr_level = levels(t.lr for t in done)
    is_level = levels(t.init_scale for t in done)
    binned = any(k != v for k, v in (*lr_level.items(), *is_level.items()))
    by_cell: dict[tuple, list[TrialData]] = defaultdict(list)
    for t in done:
        by_cell[(lr_level[t.lr], is_level[t.init_scale])].append(t)
    cells = [
        Cell(lr, s, len(ts), _stable_mean(ts), kind_counts(t.outcome for t in ts))
        for (lr, s), ts in sorted(by_cell.items(), key=lambda kv: (kv[0][1] or 0.0, kv[0][0]))
    ]
    init_scales = sorted({c.init_scale for c in cells}, key=lambda s: s or 0.0)
    largest = []
    for s in init_scales:
        stable = [c.lr for c in cells if c.init_scale == s and c.n_failed == 0]
        largest.append({"init_scale": s, "lr": max(stable) if stable else None})
    return StabilityMap(sorted({c.lr for c in cells}), init_scales, cells, largest, binned)


def failures_by_lr(smap: StabilityMap) -> list[dict]:
    """Per learning rate (all init scales together): ``n`` finished trials, ``failures`` {kind: n},
    ``rates`` {kind: n_kind / n}, ``n_failed`` and ``failure_rate`` (every kind together)."""
    out = []
    for lr in smap.lrs:
        cs = [c for c in smap.cells if c.lr == lr]
        n = sum(c.n for c in cs)
        counts = {k: sum(c.failures.get(k, 0) for c in cs) for k in FAILURE_KINDS}
        failed = sum(counts.values())
        out.append({"lr": lr, "n": n, "failures": counts, "rates": {k: v / n for k, v in counts.items()},
                    "n_failed": failed, "failure_rate": failed / n})
    return out
