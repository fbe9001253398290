"""Early warning: which monitor signal says a trial will diverge, how long before, at what false-alarm
rate — with thresholds that were never fitted on the trials they are scored on.

**Trials** (the one outcome rule, :mod:`trainers.outcome`): *positives* are the diverged trials (they have
a divergence step to warn before); *negatives* the stable ones. The other failures (collapsed, stalled:
finite to the end) have no divergence step, so no lead time, and are not stable, so a warning on them is
no false alarm: they enter neither rate (how many of them a signal fired on is reported beside). Errored
and unfinished trials enter nothing.

**Scores** per trial and step: :mod:`analysis.warning_signals` (a diverged trial's steps strictly before
its divergence step). A trial's *peak* is its largest score. ``any`` puts the signals on one scale — a
score's rank among the training folds' stable peaks of that signal (the share of them strictly below it)
— and takes the largest over the signals logged at that step, among the signals whose peaks separate the
training folds' diverged from stable trials better than chance (AUC > ½: one that does not only adds
false alarms). Several signals each compared with a few dozen stable peaks: a held-out stable trial above
any one of them warns, so ``any``'s held-out false-alarm rate can exceed the target (the report shows it).

**Thresholds by cross-validation over trials.** The trials are split into ``FOLDS`` folds *by
configuration* (scheme and every hyperparameter but the seed), so the seeds of one configuration are
always on the same side; configurations are dealt to folds greedily to balance diverged and stable trials.
For each fold the threshold of a signal is fitted on the other folds alone: the lowest value that at most
``TARGET_FALSE_ALARM_RATE`` of their stable trials' peaks exceed (the ⌈(1 − α)n⌉-th smallest of n peaks;
lowest, so the most sensitive rule that meets the target). The held-out fold is then scored with it: a
trial *warns* at its first step whose score is above the threshold. ``threshold`` in the output is the
same rule fitted on all stable trials: the one to use on new runs (the cross-validated rates estimate how
it does).

**Per signal**, pooled over the held-out folds:

- detection rate = diverged trials warned before their divergence step / diverged trials with a score
  (95% Wilson interval); diverged trials without a score before their divergence step (e.g. diverged
  before the first sharpness probe) are counted apart as ``n_diverged_unmeasured``;
- lead time = divergence step − first warning step over the warned trials: median, its 95%
  distribution-free order-statistic interval (ranks from the Binomial(n, ½) quantiles; [min, max] when n
  is too small for more), min and max;
- false-alarm rate = held-out stable trials warned at all / stable trials with a score (Wilson);
- ROC AUC of the peaks, diverged vs stable (Mann–Whitney: the chance that a diverged trial peaks higher
  than a stable one, ties ½), with a 95% percentile bootstrap interval (``BOOTSTRAP`` resamples of the
  trials within each class). Stable trials run to the end and diverged ones stop, so a stable trial has
  more steps to peak on: the AUC leans against the signal, never for it.

**Too few.** With fewer than ``MIN_DIVERGED`` diverged or ``MIN_STABLE`` stable trials scored on a signal
(or fewer than two configurations to fold), the signal gets counts and a ``too_few`` sentence, no rate.
Per scheme, the same held-out verdicts are counted over the scheme's trials (no AUC).
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as sps

from analysis.collect import Curve, TrialData
from analysis.intervals import LEVEL, wilson
from analysis.warning_signals import DESCRIPTIONS, SIGNALS, divergence_step, first_past, scores
from trainers.outcome import DIVERGED, STABLE, is_failure

TARGET_FALSE_ALARM_RATE = 0.10  # of stable trials, per signal
FOLDS = 5
MIN_DIVERGED, MIN_STABLE = 5, 10
BOOTSTRAP, BOOTSTRAP_SEED = 2000, 0
ANY = "any"
ALL_SIGNALS = (*SIGNALS, ANY)
GROUPING = "configuration: scheme and every hyperparameter but the seed"

__all__ = ["ALL_SIGNALS", "ANY", "FOLDS", "SIGNALS", "TARGET_FALSE_ALARM_RATE", "EarlyWarning", "SignalStats",
           "assign_folds", "divergence_step", "evaluate", "median_interval", "roc_auc", "threshold_for"]


@dataclass
class SignalStats:
    n_diverged: int = 0  # diverged trials with a score before their divergence step
    n_warned: int = 0  # ... warned strictly before it
    detection_rate: float | None = None
    detection_rate_ci: list[float] | None = None  # 95% Wilson
    lead_steps: list[int] = field(default_factory=list)
    lead_median: float | None = None
    lead_median_ci: list[float] | None = None  # 95% order-statistic interval of the median
    lead_min: int | None = None
    lead_max: int | None = None
    n_stable: int = 0  # stable trials with a score
    n_false_alarms: int = 0
    false_alarm_rate: float | None = None
    false_alarm_rate_ci: list[float] | None = None  # 95% Wilson
    n_other_failures: int = 0  # collapsed or stalled trials with a score: neither rate
    n_other_warned: int = 0
    n_diverged_unmeasured: int = 0  # diverged with no score before the divergence step
    auc: float | None = None
    auc_ci: list[float] | None = None  # 95% percentile bootstrap
    threshold: float | None = None  # fitted on every stable trial: for new runs
    fold_thresholds: list[float | None] = field(default_factory=list)  # fitted on each fold's training folds
    too_few: str | None = None

    def finish(self) -> SignalStats:
        """Rates and intervals from the counts; none when the signal has too few trials."""
        if self.too_few:
            self.lead_steps = []
            return self
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


@dataclass
class EarlyWarning:
    target_false_alarm_rate: float
    folds: int  # folds actually used (≤ FOLDS: at most one a configuration)
    grouping: str
    min_diverged: int
    min_stable: int
    counts: dict[str, int]  # diverged, stable, other_failures (collapsed, stalled), excluded (errored, unfinished)
    signals: dict[str, str]  # signal -> its score in words
    per_signal: dict[str, SignalStats]
    per_scheme: dict[str, dict[str, SignalStats]]
    recommended: dict[str, str | None]  # "all" and each scheme -> the signal to watch
    trials: list[dict[str, Any]]  # one record a diverged trial


# --------------------------------------------------------------------------------------------------
# building blocks


def median_interval(values: list[int] | list[float]) -> list[float]:
    """95% distribution-free interval for the median: order statistics x_(k) and x_(n−k+1), k from the
    Binomial(n, ½) lower quantile; [min, max] while n is too small for a narrower interval."""
    xs, n = sorted(values), len(values)
    k = max(int(sps.binom.ppf((1 - LEVEL) / 2, n, 0.5)), 1)  # P(X ≤ k−1) ≤ 2.5% for the rank below
    return [float(xs[k - 1]), float(xs[n - k])]


def threshold_for(stable_peaks: Iterable[float], target: float = TARGET_FALSE_ALARM_RATE) -> float | None:
    """The lowest threshold that at most ``target`` of these peaks exceed: of n peaks sorted ascending, the
    (n − ⌊target·n⌋)-th. None without a peak."""
    xs = sorted(stable_peaks)
    if not xs:
        return None
    allowed = math.floor(target * len(xs) + 1e-9)
    return xs[len(xs) - allowed - 1]


def roc_auc(pos: list[float], neg: list[float]) -> float | None:
    """P(a positive's score > a negative's) + ½ P(tie) (Mann–Whitney); None without both classes."""
    if not pos or not neg:
        return None
    return float(_wins(pos, neg).mean())


def _wins(pos: list[float], neg: list[float]) -> np.ndarray:
    p, q = np.asarray(pos, dtype=float)[:, None], np.asarray(neg, dtype=float)[None, :]
    return (p > q) + 0.5 * (p == q)


def auc_interval(pos: list[float], neg: list[float], reps: int = BOOTSTRAP) -> list[float] | None:
    """95% percentile bootstrap interval of :func:`roc_auc`, resampling trials within each class."""
    if not pos or not neg:
        return None
    wins = _wins(pos, neg)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    cp = rng.multinomial(len(pos), np.full(len(pos), 1 / len(pos)), size=reps)  # counts of each positive
    cn = rng.multinomial(len(neg), np.full(len(neg), 1 / len(neg)), size=reps)
    aucs = np.einsum("bi,ij,bj->b", cp, wins, cn) / (len(pos) * len(neg))
    lo, hi = np.quantile(aucs, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return [float(lo), float(hi)]


def config_key(t: TrialData) -> tuple:
    """The configuration a trial is a seed of: its scheme and every sampled hyperparameter but the seed."""
    return (t.scheme, tuple(sorted((k, repr(v)) for k, v in t.hp.items())))


def assign_folds(groups: dict[Any, Counter], k: int = FOLDS) -> tuple[dict[Any, int], int]:
    """Deal configurations to ``min(k, len(groups))`` folds: those with diverged trials first, each to the fold
    with the fewest diverged (then stable) trials so far; the rest by stable count. ``groups``: key ->
    Counter of its trials' kinds. Deterministic. Returns (key -> fold, number of folds)."""
    k = min(k, len(groups))
    load = [Counter() for _ in range(k)]
    order = sorted(groups, key=lambda g: (-groups[g]["diverged"], -groups[g]["stable"], repr(g)))
    fold_of = {}
    for g in order:
        first, second = ("diverged", "stable") if groups[g]["diverged"] else ("stable", "diverged")
        f = min(range(k), key=lambda i: (load[i][first], load[i][second], sum(load[i].values()), i))
        fold_of[g] = f
        load[f].update(groups[g])
    return fold_of, k


# --------------------------------------------------------------------------------------------------
# the trials, scored


@dataclass
class _Trial:
    data: TrialData
    kind: str  # "diverged" | "stable" | "other" (collapsed, stalled)
    fold: int
    div: int | None
    curves: dict[str, Curve]  # signal -> the scores that can warn
    peaks: dict[str, float]


class _AnyRule:
    """``any`` for one fold: each signal's score as its rank among the training stable peaks, over the
    signals that separate the training folds' diverged from stable peaks better than chance (AUC > ½)."""

    def __init__(self, train: list[_Trial]) -> None:
        stable = [t for t in train if t.kind == "stable"]
        diverged = [t for t in train if t.kind == "diverged"]
        self.ranked = {}
        for s in SIGNALS:
            neg = sorted(t.peaks[s] for t in stable if s in t.peaks)
            auc = roc_auc([t.peaks[s] for t in diverged if s in t.peaks], neg)
            if auc is not None and auc > 0.5:  # a signal no better than chance would only add false alarms
                self.ranked[s] = neg

    def level(self, signal: str, x: float) -> float:
        """The share of training stable peaks strictly below ``x``: 1 only above all of them (a stable trial's
        own peak does not count against itself, so the threshold below 1 stays reachable)."""
        xs = self.ranked[signal]
        return bisect.bisect_left(xs, x) / len(xs)

    def curve(self, t: _Trial) -> Curve | None:
        worst: dict[int, float] = {}
        for s, c in t.curves.items():
            if s in self.ranked:
                for step, v in zip(c.steps, c.values, strict=True):
                    worst[step] = max(worst.get(step, 0.0), self.level(s, v))
        steps = sorted(worst)
        return Curve(tuple(steps), tuple(worst[s] for s in steps)) if steps else None

    def peak(self, t: _Trial) -> float | None:
        levels = [self.level(s, p) for s, p in t.peaks.items() if s in self.ranked]
        return max(levels) if levels else None


@dataclass
class _Verdict:
    threshold: float | None
    first: int | None  # first warning step (None: no warning)
    peak: float


def _cross_validate(pool: list[_Trial], k: int, signal: str, target: float) -> tuple[dict[int, _Verdict],
                                                                                       list[float | None]]:
    """Held-out verdicts (pool index -> verdict; trials without a score are absent) and each fold's threshold."""
    verdicts, thresholds = {}, []
    for f in range(k):
        train = [t for t in pool if t.fold != f]
        curve_of, peak_of = _scorer(signal, train)
        tau = threshold_for(p for t in train if t.kind == "stable" and (p := peak_of(t)) is not None)
        thresholds.append(tau)
        for i, t in enumerate(pool):
            if t.fold != f or tau is None:
                continue
            c = curve_of(t)
            if c is not None:
                verdicts[i] = _Verdict(tau, first_past(c, tau), peak_of(t))
    return verdicts, thresholds


def _scorer(signal: str, train: list[_Trial]) -> tuple[Callable[[_Trial], Curve | None],
                                                       Callable[[_Trial], float | None]]:
    """(scores, peak) of a trial for ``signal``; ``train``: the training folds' trials (``any`` ranks on them)."""
    if signal == ANY:
        rule = _AnyRule(train)
        return rule.curve, rule.peak
    return (lambda t: t.curves.get(signal)), (lambda t: t.peaks.get(signal))


def _pool(trials: Iterable[TrialData], folds: int) -> tuple[list[_Trial], int, Counter]:
    counts: Counter = Counter(diverged=0, stable=0, other_failures=0, excluded=0)
    kept = []
    for t in trials:
        o = t.outcome
        kind = "diverged" if o == DIVERGED else "stable" if o == STABLE else "other" if is_failure(o) else None
        div = divergence_step(t) if kind == "diverged" else None
        if kind is None or (kind == "diverged" and div is None):
            counts["excluded"] += 1
            continue
        counts["other_failures" if kind == "other" else kind] += 1
        curves = {s: c for s in SIGNALS if (c := scores(t, s)) is not None}
        kept.append((t, kind, div, curves))
    groups: dict[Any, Counter] = defaultdict(Counter)
    for t, kind, _, _ in kept:
        groups[config_key(t)][kind] += 1
    fold_of, k = assign_folds(groups, folds)
    pool = [_Trial(t, kind, fold_of[config_key(t)], div, curves, {s: max(c.values) for s, c in curves.items()})
            for t, kind, div, curves in kept]
    return pool, k, counts


# --------------------------------------------------------------------------------------------------
# evaluation


def _tally(st: SignalStats, t: _Trial, v: _Verdict | None) -> None:
    if v is None:
        st.n_diverged_unmeasured += t.kind == "diverged"
        return
    if t.kind == "diverged":
        st.n_diverged += 1
        if v.first is not None:
            st.n_warned += 1
            st.lead_steps.append(t.div - v.first)
    elif t.kind == "stable":
        st.n_stable += 1
        st.n_false_alarms += v.first is not None
    else:
        st.n_other_failures += 1
        st.n_other_warned += v.first is not None


def _too_few(st: SignalStats, k: int) -> str | None:
    if k < 2:
        return "fewer than two configurations to cross-validate over"
    if st.n_diverged < MIN_DIVERGED or st.n_stable < MIN_STABLE:
        return (f"too few trials: {st.n_diverged} diverged and {st.n_stable} stable trials scored "
                f"(at least {MIN_DIVERGED} and {MIN_STABLE} needed)")
    return None


def evaluate(trials: Iterable[TrialData], target: float = TARGET_FALSE_ALARM_RATE,
             folds: int = FOLDS) -> EarlyWarning:
    """Every signal's cross-validated detection rate, lead time, false-alarm rate and AUC (module docstring)."""
    pool, k, counts = _pool(trials, folds)
    per_signal = {s: SignalStats() for s in ALL_SIGNALS}
    per_scheme: dict[str, dict[str, SignalStats]] = defaultdict(lambda: {s: SignalStats() for s in ALL_SIGNALS})
    records = {i: {"trial_id": t.data.trial_id, "scheme": t.data.scheme, "divergence_step": t.div, "fold": t.fold,
                   "signals": {}} for i, t in enumerate(pool) if t.kind == "diverged"}
    for s in ALL_SIGNALS:
        verdicts, fold_thresholds = _cross_validate(pool, k, s, target)
        st = per_signal[s]
        for i, t in enumerate(pool):
            v = verdicts.get(i)
            _tally(st, t, v)
            _tally(per_scheme[t.data.scheme][s], t, v)
            if i in records:
                records[i]["signals"][s] = {
                    "measured": v is not None, "threshold": v.threshold if v else None,
                    "first_warning_step": v.first if v else None,
                    "lead_steps": t.div - v.first if v and v.first is not None else None}
        st.too_few = _too_few(st, k)
        if not st.too_few:
            pos = [v.peak for i, v in verdicts.items() if pool[i].kind == "diverged"]
            neg = [v.peak for i, v in verdicts.items() if pool[i].kind == "stable"]
            st.auc, st.auc_ci = roc_auc(pos, neg), auc_interval(pos, neg)
            st.fold_thresholds = fold_thresholds
            _, peak_of = _scorer(s, pool)
            st.threshold = threshold_for(p for t in pool if t.kind == "stable" and (p := peak_of(t)) is not None)
        for scheme_stats in per_scheme.values():
            scheme_stats[s].too_few = st.too_few
    for st in (*per_signal.values(), *(x for d in per_scheme.values() for x in d.values())):
        st.finish()
    recommended = {"all": recommend(per_signal)} | {k_: recommend(v) for k_, v in per_scheme.items()}
    return EarlyWarning(target, k, GROUPING, MIN_DIVERGED, MIN_STABLE, dict(counts),
                        {**DESCRIPTIONS, ANY: "the largest of the signals' ranks among the training folds' "
                                              "stable peaks (signals with training AUC > ½)"},
                        per_signal, dict(per_scheme), recommended, list(records.values()))


def recommend(stats: dict[str, SignalStats]) -> str | None:
    """The single signal to watch: the best detection rate − false-alarm rate on held-out trials (ties: the
    higher AUC, then the longer median lead); None while no signal has rates."""
    scored = [
        (st.detection_rate - (st.false_alarm_rate or 0.0), st.auc or 0.0, st.lead_median or 0.0, name)
        for name, st in stats.items()
        if name != ANY and st.detection_rate is not None
    ]
    return max(scored)[3] if scored else None
