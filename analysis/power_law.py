"""How the largest stable learning rate scales with depth: lr* = a·depth^b, with a bootstrap interval on b.

Iyer, Hanin & Rolnick (ICML 2023) find the maximal initial learning rate of ReLU nets falls as a power of
depth × width; this fits that law per scheme to the boundary brackets of a scale study (docs/design.md §13).

Data: for each depth, the outcomes of the trials at each learning rate and seed (``{depth: {lr: {seed:
outcome}}}``, :func:`trainers.outcome.outcome_of`'s words). The bracket ``(S, D)`` of a depth is the one
rule's (:func:`trainers.outcome.bracket_of` over :func:`~trainers.outcome.point_status`): S the largest
stable rate below D, the smallest failed one. Only a closed bracket (both ends) places a depth; an open one
is listed, not fitted.

- Estimate: ordinary least squares of log lr* on log depth, lr* = √(S·D) (the bracket's log midpoint):
  b = cov(log d, log lr*) / var(log d), log a = mean(log lr*) − b·mean(log d).
- 95% interval (percentile bootstrap, :data:`REPLICATES` replicates, a fixed seed): each replicate, for
  every depth, resamples the seeds with replacement, recomputes the bracket from those seeds' outcomes and
  draws lr* uniformly in log space inside it (the boundary can lie anywhere in the bracket), then refits.
  The interval therefore covers seed noise *and* the width of the brackets: wide brackets give a wide
  interval on b, whatever the midpoints say.
- Prediction at a new depth d₀ (ResNet-50's 50): a·d₀^b in every replicate, its 2.5–97.5 percentiles —
  an extrapolation when d₀ lies outside the fitted depths.

Two schemes' exponents are compared replicate by replicate (independent resamples): b₁ − b₂ and its
percentile interval, judged by :func:`analysis.intervals.direction`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from analysis.intervals import LEVEL, Interval
from trainers.outcome import bracket_of, point_status

REPLICATES = 2000
SEED = 0  # the bootstrap's own seed: the same study gives the same intervals
Outcomes = Mapping[float, Mapping[int | None, str | None]]  # lr -> seed -> outcome


def bracket(outcomes: Outcomes, seeds: list | None = None) -> tuple[float | None, float | None]:
    """``(S, D)`` of one depth, from the given seeds' outcomes (all seeds when ``seeds`` is None; a seed
    drawn twice counts twice, which the one rule reads like once)."""
    statuses = {}
    for lr, by_seed in outcomes.items():
        outs = [by_seed[s] for s in (seeds if seeds is not None else by_seed) if s in by_seed]
        if outs:
            statuses[lr] = point_status(outs)
    return bracket_of(statuses)


def ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(intercept, slope) of y on x by least squares."""
    xm, ym = x.mean(), y.mean()
    slope = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())
    return float(ym - slope * xm), slope


@dataclass
class PowerLaw:
    """lr* = a·depth^b over the depths with a closed bracket; intervals at :data:`LEVEL`."""

    depths: list[int]  # fitted (closed brackets), ascending
    brackets: dict[int, tuple[float | None, float | None]]  # every depth's (S, D)
    a: float | None = None
    b: float | None = None
    b_interval: Interval | None = None
    replicates: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))  # (log a, b) per replicate
    open_depths: list[int] = field(default_factory=list)  # brackets without both ends: not fitted

    def predict(self, depth: float) -> float | None:
        return None if self.a is None else self.a * depth ** self.b

    def prediction_interval(self, depth: float) -> Interval | None:
        """a·depth^b over the replicates: 2.5–97.5 percentiles (on lr, from the log scale)."""
        if self.a is None or len(self.replicates) == 0:
            return None
        logs = self.replicates[:, 0] + self.replicates[:, 1] * math.log(depth)
        lo, hi = np.percentile(logs, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
        return Interval(self.predict(depth), float(math.exp(lo)), float(math.exp(hi)), "bootstrap-percentile")


def fit(by_depth: Mapping[int, Outcomes], replicates: int = REPLICATES, seed: int = SEED) -> PowerLaw:
    """The power law of one scheme (see the module docstring); no fit below two closed brackets."""
    brackets = {d: bracket(o) for d, o in sorted(by_depth.items())}
    closed = [d for d, (s, f) in brackets.items() if s is not None and f is not None]
    law = PowerLaw(closed, brackets, open_depths=[d for d in brackets if d not in closed])
    if len(closed) < 2:
        return law
    x = np.log(np.array(closed, dtype=float))
    y = np.array([0.5 * math.log(brackets[d][0] * brackets[d][1]) for d in closed])
    log_a, law.b = ols(x, y)
    law.a = math.exp(log_a)
    rng = np.random.default_rng(seed)
    seeds = {d: sorted({s for v in by_depth[d].values() for s in v}, key=lambda s: (s is None, s or 0))
             for d in closed}
    reps = []
    for _ in range(replicates):
        xs, ys = [], []
        for d in closed:
            drawn = [seeds[d][i] for i in rng.integers(0, len(seeds[d]), len(seeds[d]))]
            s, f = bracket(by_depth[d], drawn)
            if s is None or f is None:  # these seeds alone leave the bracket open: no place for this depth
                continue
            xs.append(math.log(d))
            ys.append(rng.uniform(math.log(s), math.log(f)))
        if len(xs) >= 2:
            reps.append(ols(np.array(xs), np.array(ys)))
    law.replicates = np.array(reps) if reps else np.empty((0, 2))
    if reps:
        lo, hi = np.percentile(law.replicates[:, 1], [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
        law.b_interval = Interval(law.b, float(lo), float(hi), "bootstrap-percentile")
    return law


def exponent_difference(first: PowerLaw, second: PowerLaw) -> Interval | None:
    """b₁ − b₂ with the percentile interval of the replicates' differences (None without both fits)."""
    if first.b is None or second.b is None or not len(first.replicates) or not len(second.replicates):
        return None
    n = min(len(first.replicates), len(second.replicates))
    diff = first.replicates[:n, 1] - second.replicates[:n, 1]
    lo, hi = np.percentile(diff, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return Interval(first.b - second.b, float(lo), float(hi), "bootstrap-percentile")
