"""The early-warning signals as scores: one number per trial and logged step, larger = more alarming.
Thresholds on these scores are chosen elsewhere (:mod:`analysis.early_warning`, by cross-validation).

Each signal reads the monitor's curves (trainers/divergence.py; names in docs/mlflow_layout.md):

- ``grad_norm``: the global gradient norm over its median in the trial's *baseline window*, the first
  ``BASELINE_FRAC`` of its logged steps (at least one point); only steps after the window are scored, so
  the score says "how many times larger than this run's own start" whatever the scheme's scale;
- ``update_ratio_max``: the largest layer's ‖Δw‖/‖w‖ as logged (already scale-free);
- ``spike_ratio``: loss / its EMA as logged;
- ``act_std``: the activation std of every ResNet stage against its own baseline-window median, as
  |ln(std / median)|, the largest over stages (a stage's signal blowing up or vanishing, both ways);
- ``sharpness_lr``: the logged edge-of-stability ratio η·λ_max / 2(1 + β) (trainers/sharpness.py:
  1 = SGD-with-momentum's edge), on the steps the sharpness probe ran.

A non-finite value scores +inf: it passes every threshold. A trial that did not log a signal has no score
for it ("not measured"). For a diverged trial only the steps strictly before its divergence step count (a
warning at that step is the divergence itself); :func:`scores` does that cut.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from analysis.collect import ACT_STD_PREFIX, Curve, TrialData
from trainers.outcome import DIVERGED

BASELINE_FRAC = 0.1
SIGNALS = ("grad_norm", "update_ratio_max", "spike_ratio", "act_std", "sharpness_lr")
DESCRIPTIONS = {
    "grad_norm": f"gradient norm / its median over the first {BASELINE_FRAC:.0%} of the trial's logged steps",
    "update_ratio_max": "largest layer's ‖Δw‖/‖w‖",
    "spike_ratio": "loss / its EMA",
    "act_std": "largest |ln(activation std / its early median)| over the ResNet stages",
    "sharpness_lr": "η·λ_max / 2(1 + β): 1 = SGD-with-momentum's edge of stability",
}


def _finite_or_inf(v: float) -> float:
    return v if math.isfinite(v) else math.inf


def _baseline(values: Sequence[float]) -> tuple[int, float | None]:
    """(points in the baseline window, the median of its finite values or None)."""
    k = max(1, math.ceil(BASELINE_FRAC * len(values)))
    base = [v for v in values[:k] if math.isfinite(v)]
    return k, (statistics.median(base) if base else None)


def _relative(curve: Curve) -> Curve | None:
    k, med = _baseline(curve.values)
    if med is None or med <= 0:
        return None
    return Curve(curve.steps[k:], tuple(_finite_or_inf(v / med) for v in curve.values[k:]))


def _log_deviation(curve: Curve) -> dict[int, float]:
    k, med = _baseline(curve.values)
    if med is None or med <= 0:
        return {}
    return {s: (abs(math.log(v / med)) if math.isfinite(v) and v > 0 else math.inf)
            for s, v in zip(curve.steps[k:], curve.values[k:], strict=True)}


def _act_std(trial: TrialData) -> Curve | None:
    stages = [c for k, c in trial.curves.items() if k.startswith(ACT_STD_PREFIX) and len(c)]
    if not stages:
        return None
    worst: dict[int, float] = {}
    for c in stages:
        for s, v in _log_deviation(c).items():
            worst[s] = max(worst.get(s, -math.inf), v)
    steps = sorted(worst)
    return Curve(tuple(steps), tuple(worst[s] for s in steps))


def raw_score(trial: TrialData, signal: str) -> Curve | None:
    """The signal's score at every logged step of the trial (not cut at a divergence); None: not logged."""
    if signal == "act_std":
        return _act_std(trial)
    curve = trial.curves.get(signal)
    if curve is None or not len(curve):
        return None
    if signal == "grad_norm":
        return _relative(curve)
    if signal in ("update_ratio_max", "spike_ratio", "sharpness_lr"):
        return Curve(curve.steps, tuple(_finite_or_inf(v) for v in curve.values))
    raise ValueError(f"unknown early-warning signal '{signal}'; known: {', '.join(SIGNALS)}")


def divergence_step(trial: TrialData) -> int | None:
    """The recorded divergence step, else the last step of the loss curve."""
    if trial.divergence_step is not None:
        return trial.divergence_step
    loss = trial.curves.get("loss")
    return loss.steps[-1] if loss is not None and len(loss) else None


def scores(trial: TrialData, signal: str) -> Curve | None:
    """The steps that can warn: a diverged trial's scores strictly before its divergence step, any other
    trial's all. None when the signal has no such step on the trial."""
    curve = raw_score(trial, signal)
    if curve is None:
        return None
    if trial.outcome == DIVERGED:
        div = divergence_step(trial)
        if div is None:
            return None
        n = sum(s < div for s in curve.steps)
        curve = Curve(curve.steps[:n], curve.values[:n])
    return curve if len(curve) else None


def first_past(curve: Curve, threshold: float) -> int | None:
    """The first step whose score is above ``threshold`` (+inf always is, unless the threshold is +inf)."""
    for s, v in zip(curve.steps, curve.values, strict=True):
        if v > threshold:
            return s
    return None
