"""Early warning: how long before a divergence did the monitor's statistics say so, and how often did
the same warnings fire on trials that stayed stable?

A signal *warns* at the first logged step where it passes its threshold (a non-finite value always
passes). All thresholds live in :class:`Thresholds` (documented in docs/report.md):

- ``grad_norm``: above ``grad_norm_rel`` × its median over the baseline window — the first
  ``baseline_frac`` of the trial's logged steps (at least one point); only steps after the window count;
- ``update_ratio_max`` (largest layer's ‖Δw‖/‖w‖): above ``update_ratio_max``;
- ``spike_ratio`` (loss / its EMA): above ``spike_ratio``;
- ``sharpness_lr`` (top Hessian eigenvalue × the step's lr; where sharpness was measured): above
  ``sharpness_lr`` (gradient descent's edge of stability is sharpness = 2/lr).

For a diverged trial the *lead time* is divergence step − first warning step, counted only when the
warning came strictly before the divergence step. For a stable trial any warning is a *false alarm*.
Outcomes are the one rule's (``TrialData.outcome``, :mod:`trainers.outcome`): collapsed trials (finite at
chance) are failures, so they count neither way, and errored or unfinished trials enter no rate.
The ``any`` signal is the earliest warning of all signals measured on the trial.

Uncertainty (95%): detection and false-alarm rates carry Wilson score intervals over the trials they
count; the median lead time carries the distribution-free order-statistic interval of a median (ranks
from the Binomial(n, ½) quantiles; [min, max] when n is too small for more).
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from scipy import stats as sps

from analysis.collect import Curve, TrialData
from analysis.intervals import LEVEL, wilson
from trainers.outcome import DIVERGED, STABLE


@dataclass(frozen=True)
class Thresholds:
    grad_norm_rel: float = 10.0  # × the median grad_norm over the baseline window
    baseline_frac: float = 0.1  # the baseline window: this share of the trial's logged steps
    update_ratio_max: float = 0.1
    spike_ratio: float = 2.0
    sharpness_lr: float = 2.0

    def describe(self) -> dict[str, str]:
        return {
            "grad_norm": f"grad_norm > {self.grad_norm_rel:g}× its median over the first "
            f"{self.baseline_frac:.0%} of logged steps",
            "update_ratio_max": f"update_ratio_max > {self.update_ratio_max:g}",
            "spike_ratio": f"spike_ratio > {self.spike_ratio:g}",
            "sharpness_lr": f"sharpness × lr > {self.sharpness_lr:g}",
            "any": "the earliest of the signals above",
        }


THRESHOLDS = Thresholds()
SIGNALS = ("grad_norm", "update_ratio_max", "spike_ratio", "sharpness_lr")
ANY = "any"


def _first_past(steps: Iterable[int], values: Iterable[float], limit: float) -> int | None:
    for s, v in zip(steps, values, strict=True):
        if not math.isfinite(v) or v > limit:
            return s
    return None


def _lr_at(trial: TrialData, step: int) -> float | None:
    lr = trial.curves.get("lr")
    if lr is not None and len(lr):
        i = bisect.bisect_right(lr.steps, step) - 1
        return lr.values[max(i, 0)]
    return trial.lr


def first_warning(trial: TrialData, signal: str, th: Thresholds = THRESHOLDS) -> tuple[bool, int | None]:
    """(measured, step of the first warning or None) of one signal on one trial."""
    if signal == ANY:
        found = [first_warning(trial, s, th) for s in SIGNALS]
        steps = [step for measured, step in found if measured and step is not None]
        return any(m for m, _ in found), (min(steps) if steps else None)
    if signal == "sharpness_lr":
        sharp = trial.curves.get("sharpness")
        if sharp is None or not len(sharp):
            return False, None
        products = [v * (_lr_at(trial, s) or math.nan) for s, v in zip(sharp.steps, sharp.values, strict=True)]
        return True, _first_past(sharp.steps, products, th.sharpness_lr)
    curve: Curve | None = trial.curves.get(signal)
    if curve is None or not len(curve):
        return False, None
    if signal == "grad_norm":
        k = max(1, math.ceil(th.baseline_frac * len(curve)))
        base = [v for v in curve.values[:k] if math.isfinite(v)]
        if not base or statistics.median(base) <= 0:
            return False, None
        return True, _first_past(curve.steps[k:], curve.values[k:], th.grad_norm_rel * statistics.median(base))
    limit = {"update_ratio_max": th.update_ratio_max, "spike_ratio": th.spike_ratio}[signal]
    return True, _first_past(curve.steps, curve.values, limit)


def divergence_step(trial: TrialData) -> int | None:
    """The recorded divergence step, else the last step of the loss curve."""
    if trial.divergence_step is not None:
        return trial.divergence_step
    loss = trial.curves.get("loss")
    return loss.steps[-1] if loss is not None and len(loss) else None


@dataclass
class SignalStats:
    n_diverged: int = 0  # diverged trials where the signal was measured
    n_warned: int = 0  # ... that it warned strictly before the divergence step
    detection_rate: float | None = None
    lead_steps: list[int] = field(default_factory=list)
    lead_median: float | None = None
    lead_min: int | None = None
    lead_max: int | None = None
    n_stable: int = 0  # stable trials where the signal was measured
    n_false_alarms: int = 0
    false_alarm_rate: float | None = None
    detection_rate_ci: list[float] | None = None  # 95% Wilson
    false_alarm_rate_ci: list[float] | None = None  # 95% Wilson
    lead_median_ci: list[float] | None = None  # 95% order-statistic interval of the median

    def finish(self) -> SignalStats:
        if self.n_diverged:
            self.detection_rate = self.n_warned / self.n_diverged
            self.detection_rate_ci = list(wilson(self.n_warned, self.n_diverged))
        if self.lead_steps:
            self.lead_median = statistics.median(self.lead_steps)
            self.lead_min, self.lead_max = min(self.lead_steps), max(self.lead_steps)
            self.lead_median_ci = median_interval(self.lead_steps)
        if self.n_stable:
            self.false_alarm_rate = self.n_false_alarms / self.n_stable
            self.false_alarm_rate_ci = list(wilson(self.n_false_alarms, self.n_stable))
        return self


def median_interval(values: list[int] | list[float]) -> list[float]:
    """95% distribution-free interval for the median: order statistics x_(k) and x_(n−k+1), k from the
    Binomial(n, ½) lower quantile; [min, max] while n is too small for a narrower interval."""
    xs, n = sorted(values), len(values)
    k = int(sps.binom.ppf((1 - LEVEL) / 2, n, 0.5))  # P(X ≤ k−1) ≤ 2.5% for the rank below
    k = max(k, 1)
    return [float(xs[k - 1]), float(xs[n - k])]


@dataclass
class EarlyWarning:
    thresholds: dict[str, float]
    signals: dict[str, str]  # signal -> its rule in words
    per_signal: dict[str, SignalStats]
    per_scheme: dict[str, dict[str, SignalStats]]
    recommended: dict[str, str | None]  # "all" and each scheme -> the signal to watch
    trials: list[dict[str, Any]]  # one record a diverged trial


def recommend(stats: dict[str, SignalStats]) -> str | None:
    """The signal with the best detection rate − false-alarm rate (ties: the longer median lead)."""
    scored = [
        (st.detection_rate - (st.false_alarm_rate or 0.0), st.lead_median or 0.0, name)
        for name, st in stats.items()
        if name != ANY and st.detection_rate is not None
    ]
    return max(scored)[2] if scored else None


def evaluate(trials: Iterable[TrialData], th: Thresholds = THRESHOLDS) -> EarlyWarning:
    signals = (*SIGNALS, ANY)
    per_signal = {s: SignalStats() for s in signals}
    per_scheme: dict[str, dict[str, SignalStats]] = defaultdict(lambda: {s: SignalStats() for s in signals})
    records = []
    for t in trials:
        diverged = t.outcome == DIVERGED
        if not diverged and t.outcome != STABLE:
            continue  # collapsed (a failure): neither a detection nor a false alarm; errored, unfinished: no rate
        div = divergence_step(t) if diverged else None
        if diverged and div is None:
            continue
        rec = {"trial_id": t.trial_id, "scheme": t.scheme, "divergence_step": div, "signals": {}}
        for s in signals:
            measured, step = first_warning(t, s, th)
            if not measured:
                rec["signals"][s] = {"measured": False, "first_warning_step": None, "lead_steps": None}
                continue
            for st in (per_signal[s], per_scheme[t.scheme][s]):
                if diverged:
                    st.n_diverged += 1
                    if step is not None and step < div:
                        st.n_warned += 1
                        st.lead_steps.append(div - step)
                else:
                    st.n_stable += 1
                    st.n_false_alarms += step is not None
            lead = div - step if diverged and step is not None and step < div else None
            rec["signals"][s] = {"measured": True, "first_warning_step": step, "lead_steps": lead}
        if diverged:
            records.append(rec)
    for st in (*per_signal.values(), *(x for d in per_scheme.values() for x in d.values())):
        st.finish()
    recommended = {"all": recommend(per_signal)} | {k: recommend(v) for k, v in per_scheme.items()}
    return EarlyWarning(asdict(th), th.describe(), per_signal, dict(per_scheme), recommended, records)
