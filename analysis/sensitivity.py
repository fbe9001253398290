"""Learning-rate sensitivity: how much of a scheme's final loss depends on getting the learning rate right.

Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer training instabilities", §2. For
one *sweep* — a scheme at one init scale (its other hyperparameters fixed) trained at each learning rate η
of the sweep — and one seed s:

    sensitivity_s = mean_η min(L_s(η), L_s,0) − min_η L_s(η)

``L_s(η)`` is the run's final train loss, ``L_s,0`` its initial loss (before the first step), a diverged
run counts at ``L_s,0`` (it ended no better than it started) and the minimum runs over the rates that did
not diverge. 0: every rate of the sweep reaches the best loss; about ``L_0``: one rate trains, the others
do not. Over seeds: the mean and its 95% t interval (:func:`analysis.intervals.t_mean`). A scheme's value
averages its sweeps (init scales) seed by seed first, then over seeds.

Losses, both measured the same way (eval mode, the fixed train subset: trainers/evaluation.py):
``L`` is the metric ``final_train_loss`` (stores older than it: the last ``train_loss_eval``), ``L_0`` the
metric ``initial_train_loss`` (older stores: ln C, a uniform guess's loss; the report says which). Wortsman
et al. use a language model's final validation loss; the train loss is what a learning rate that is too
large spoils first, and what the stall rule (trainers/stall.py) reads.

A seed enters a sweep only when it has a valued trial at every learning rate of the sweep (an errored or
unfinished trial would change the rates averaged over); a seed none of whose runs ended below its
initial loss has no best loss and is counted apart (``unfit_seeds``), not as 0.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from analysis.collect import TrialData
from analysis.intervals import Interval, t_mean

FINAL_KEYS = ("final_train_loss", "train_loss_eval")  # the first a trial has is its final loss
INITIAL_KEY = "initial_train_loss"
LN_C = "ln(num_classes)"  # the initial loss's fallback, named as report.json says it


def final_loss(t: TrialData) -> tuple[float | None, str | None]:
    """The trial's final train loss and the metric it came from (None, None: not measured)."""
    for key in FINAL_KEYS:
        v = t.final(key)
        if v is not None:
            return v, key
    return None, None


def initial_loss(t: TrialData, num_classes: int | None) -> tuple[float | None, str | None]:
    """The trial's initial train loss and where it came from: the metric, else ln C (None: neither)."""
    v = t.final(INITIAL_KEY)
    if v is not None and v > 0:
        return v, INITIAL_KEY
    return (math.log(num_classes), LN_C) if num_classes and num_classes >= 2 else (None, None)


@dataclass(frozen=True)
class LossPoint:
    """One finished trial as the sensitivity reads it."""

    sweep: tuple[tuple[str, Any], ...]  # its hyperparameters without lr and seed (init_scale, ...)
    seed: int | None
    lr: float
    diverged: bool
    final: float | None  # None when diverged
    initial: float
    final_source: str | None
    initial_source: str

    @property
    def value(self) -> float:
        """min(L, L_0); a diverged run at L_0."""
        return self.initial if self.final is None else min(self.final, self.initial)


def loss_points(trials: Iterable[TrialData], num_classes: int | None) -> list[LossPoint]:
    """The finished trials with an lr, an initial loss and (unless diverged) a final loss."""
    out = []
    for t in trials:
        if not t.finished or t.lr is None:
            continue
        l0, l0_src = initial_loss(t, num_classes)
        lf, lf_src = (None, None) if t.diverged else final_loss(t)
        if l0 is None or (lf is None and not t.diverged):
            continue  # not measured: the seed is then incomplete for this sweep
        sweep = tuple(sorted((k, v) for k, v in t.hp.items() if k != "lr"))
        out.append(LossPoint(sweep, t.seed, t.lr, t.diverged, lf, l0, lf_src, l0_src))
    return out


@dataclass
class SweepSensitivity:
    config: dict[str, Any]  # the sweep's hyperparameters without lr and seed ({} or {"init_scale": 1.0})
    lrs: list[float]
    per_seed: dict[int | None, float]  # seed -> sensitivity
    best_loss: dict[int | None, float]  # seed -> min over its rates of L
    incomplete_seeds: list[int | None]  # lack a valued trial at some rate of the sweep
    unfit_seeds: list[int | None]  # no run ended below its initial loss
    loss_by_lr: list[dict[str, float | int]]  # per lr over the seeds that enter: mean/min/max of min(L, L_0)
    interval: Interval | None = None

    @property
    def init_scale(self) -> float | None:
        v = self.config.get("init_scale")
        return float(v) if isinstance(v, int | float) else None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.per_seed.values()) if self.per_seed else None


@dataclass
class Sensitivity:
    """A scheme's learning-rate sensitivity: its sweeps, and their mean seed by seed."""

    sweeps: list[SweepSensitivity]
    per_seed: dict[int | None, float]  # seed -> mean over the sweeps (seeds valued in every sweep)
    interval: Interval | None  # 95% t interval of the mean over seeds
    final_loss: str | None  # which metric L came from ("final_train_loss", "train_loss_eval", or a mix)
    initial_loss: str | None  # which L_0 ("initial_train_loss", "ln(num_classes)", or a mix)
    lr_range: tuple[float, float] | None = None  # only rates in this range entered
    sources: dict[str, dict[str, int]] = field(default_factory=dict)  # {"final": {metric: n}, "initial": ...}

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.per_seed.values()) if self.per_seed else None

    @property
    def n_seeds(self) -> int:
        return len(self.per_seed)


def _in(lr: float, lr_range: tuple[float, float] | None) -> bool:
    tol = 1e-9
    return lr_range is None or lr_range[0] * (1 - tol) <= lr <= lr_range[1] * (1 + tol)


def _sweep(config: dict[str, Any], points: Sequence[LossPoint]) -> SweepSensitivity:
    lrs = sorted({p.lr for p in points})
    by_seed: dict[int | None, dict[float, list[LossPoint]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        by_seed[p.seed][p.lr].append(p)
    per_seed, best, incomplete, unfit = {}, {}, [], []
    entered: dict[float, list[float]] = defaultdict(list)
    for seed in sorted(by_seed, key=lambda s: (s is None, s or 0)):
        at = by_seed[seed]
        if set(at) != set(lrs):
            incomplete.append(seed)
            continue
        # One value a rate (several trials at one rate and seed — other hyperparameters binned — average).
        values = {lr: statistics.fmean(p.value for p in ps) for lr, ps in at.items()}
        fitted = [p.final for ps in at.values() for p in ps if p.final is not None and p.final < p.initial]
        if not fitted:
            unfit.append(seed)
            continue
        best[seed] = min(fitted)
        per_seed[seed] = statistics.fmean(values.values()) - best[seed]
        for lr, v in values.items():
            entered[lr].append(v)
    loss_by_lr = [{"lr": lr, "mean": statistics.fmean(vs), "min": min(vs), "max": max(vs), "n": len(vs)}
                  for lr, vs in sorted(entered.items())]
    return SweepSensitivity(config, lrs, per_seed, best, incomplete, unfit, loss_by_lr,
                            t_mean(list(per_seed.values())))


def _source(counts: Counter) -> str | None:
    if not counts:
        return None
    if len(counts) == 1:
        return next(iter(counts))
    return "mixed: " + ", ".join(f"{k} ×{n}" for k, n in counts.most_common())


def sensitivity(points: Sequence[LossPoint], lr_range: tuple[float, float] | None = None) -> Sensitivity:
    """The sensitivity of one scheme's ``points`` (only rates in ``lr_range`` when given)."""
    pts = [p for p in points if _in(p.lr, lr_range)]
    groups: dict[tuple, list[LossPoint]] = defaultdict(list)
    for p in pts:
        groups[p.sweep].append(p)
    sweeps = [_sweep(dict(k), ps) for k, ps in sorted(groups.items(), key=lambda kv: repr(kv[0]))]
    seeds = set.intersection(*(set(s.per_seed) for s in sweeps)) if sweeps else set()
    per_seed = {seed: statistics.fmean(s.per_seed[seed] for s in sweeps)
                for seed in sorted(seeds, key=lambda s: (s is None, s or 0))}
    finals = Counter(p.final_source for p in pts if p.final_source)
    initials = Counter(p.initial_source for p in pts)
    return Sensitivity(sweeps, per_seed, t_mean(list(per_seed.values())), _source(finals), _source(initials),
                       lr_range, {"final": dict(finals), "initial": dict(initials)})


def describe_sources(sens: Iterable[Sensitivity]) -> dict[str, str | None]:
    """Which losses a set of sensitivities used, for report.json: ``final_loss`` and ``initial_loss``."""
    finals, initials = Counter(), Counter()
    for s in sens:
        finals.update(s.sources.get("final", {}))
        initials.update(s.sources.get("initial", {}))
    initial = _source(initials)
    if initial == LN_C:
        initial = f"{LN_C} (the study predates the metric {INITIAL_KEY})"
    final = _source(finals)
    if final == FINAL_KEYS[1]:
        final = f"{FINAL_KEYS[1]} at the last evaluation (the study predates the metric {FINAL_KEYS[0]})"
    return {"final_loss": final, "initial_loss": initial}
