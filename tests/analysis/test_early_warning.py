"""Early warning on synthetic trials: scores, thresholds fitted on training folds only, the detection /
lead / false-alarm arithmetic, ROC AUC, and what the report says with too few trials."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter, defaultdict

import numpy as np
import pytest

from analysis.collect import Curve
from analysis.early_warning import (
    ANY,
    TARGET_FALSE_ALARM_RATE,
    assign_folds,
    auc_interval,
    config_key,
    evaluate,
    median_interval,
    roc_auc,
    threshold_for,
)
from analysis.failure_sections import early_warning_section
from analysis.render import to_markdown
from analysis.report import _clean
from analysis.warning_signals import first_past, raw_score, scores
from tests.analysis.synth import trial


def curve(values, start: int = 1, every: int = 1) -> Curve:
    return Curve(tuple(range(start, start + every * len(values), every)), tuple(float(v) for v in values))


def spike_at(n: int, at: int | None, height: float = 3.0) -> Curve:
    """spike_ratio 1.0 for n steps, ``height`` at step ``at``."""
    return curve([height if s == at else 1.0 for s in range(1, n + 1)])


def stable(lr: float, seed: int = 0, peak: float = 1.5, scheme: str = "wn", n: int = 100):
    return trial(scheme, lr, seed, train=0.9, test=0.8, curves={"spike_ratio": spike_at(n, 50, peak)})


def diverged(lr: float, step: int, warn_at: int | None, seed: int = 0, scheme: str = "wn", height: float = 3.0):
    return trial(scheme, lr, seed, diverged=True, step=step, curves={"spike_ratio": spike_at(step, warn_at, height)})


def folds_of(trials) -> dict:
    """config key -> fold, as evaluate deals them (collapsed and stalled trials count as "other")."""
    groups: dict = defaultdict(Counter)
    for t in trials:
        if t.outcome in ("diverged", "stable"):
            groups[config_key(t)][t.outcome] += 1
        elif t.failed:
            groups[config_key(t)]["other"] += 1
    return assign_folds(groups, 5)[0]


# ----------------------------------------------------------------------------------------------- scores


def test_grad_norm_scores_against_its_own_early_median():
    # 100 steps at 0.5, then 6.0 from step 60: 12x the baseline median; the first 10 points are the baseline
    t = trial("wn", 1.0, 0, diverged=True, step=100, curves={"grad_norm": curve([0.5] * 59 + [6.0] * 41)})
    sc = raw_score(t, "grad_norm")
    assert sc.steps[0] == 11 and sc.values[0] == 1.0 and sc.values[-1] == 12.0
    assert first_past(sc, 10.0) == 60 and first_past(sc, 12.0) is None


def test_a_diverged_trials_scores_stop_before_its_divergence_step_and_non_finite_scores_inf():
    t = trial("wn", 1.0, 0, diverged=True, step=6, curves={"spike_ratio": curve([1, 1, math.nan, 1, 1, math.inf, 9])})
    sc = scores(t, "spike_ratio")
    assert sc.steps == (1, 2, 3, 4, 5) and sc.values[2] == math.inf
    assert first_past(sc, 1e9) == 3
    # a stable trial keeps every step; a signal the trial did not log has no score
    assert scores(stable(0.1), "spike_ratio").steps[-1] == 100 and scores(stable(0.1), "grad_norm") is None


def test_act_std_scores_the_stage_that_moved_most_either_way():
    curves = {"act_std/layer1": curve([1.0] * 10 + [0.1] * 5, every=10),  # vanishes: |ln 0.1| = 2.30
              "act_std/layer3": curve([2.0] * 10 + [2.0, 4.0, 8.0, 2.0, 2.0], every=10)}  # blows up: ln 4 = 1.39
    sc = raw_score(trial("wn", 1.0, 0, train=0.5, test=0.4, curves=curves), "act_std")
    assert sc.steps == (21, 31, 41, 51, 61, 71, 81, 91, 101, 111, 121, 131, 141)
    # 15 points: the first 2 are the baseline; the 11th (step 101) is layer1's first vanished one
    assert sc.values[:8] == (0.0,) * 8 and sc.values[8] == pytest.approx(math.log(10))
    assert sc.values[10] == pytest.approx(math.log(10))  # layer3's ln 2 at step 111 is the smaller


def test_sharpness_is_scored_as_the_logged_edge_ratio():
    t = trial("wn", 1.0, 0, diverged=True, step=60, curves={"sharpness_lr": curve([0.3, 0.8, 1.2], 10, 20)})
    assert scores(t, "sharpness_lr").values == (0.3, 0.8, 1.2)
    assert first_past(scores(t, "sharpness_lr"), 1.0) == 50


# ---------------------------------------------------------------------------------- thresholds and folds


def test_threshold_is_the_lowest_that_at_most_the_target_share_of_stable_peaks_pass():
    peaks = list(range(1, 11))
    assert threshold_for(peaks, 0.1) == 9  # 1 of 10 above
    assert threshold_for(peaks, 0.25) == 8  # 2 of 10 above
    assert threshold_for(peaks[:5], 0.1) == 5  # ⌊0.5⌋ = 0 above: the largest
    assert threshold_for([], 0.1) is None


def test_folds_keep_a_configurations_seeds_together_and_balance_the_diverged():
    ts = [diverged(lr, 30, 20, seed=s) for lr in (1.0, 3.0, 10.0) for s in (0, 1)]
    ts += [stable(lr, seed=s) for lr in (0.01, 0.03, 0.1, 0.3) for s in (0, 1, 2)]
    fold_of = folds_of(ts)
    assert len(fold_of) == 7
    div_folds = [fold_of[config_key(t)] for t in ts if t.outcome == "diverged"]
    assert len(set(div_folds)) == 3  # three diverged configurations, three different folds
    assert len({fold_of[g] for g in fold_of}) == 5


def test_thresholds_are_fitted_on_the_training_folds_only():
    """A fold's threshold does not move when its own trials change; a threshold fitted on every trial would."""
    def study(scale: float, fold_to_move: int | None = None, folds=None):
        ts = [stable(0.01 * (i + 1), peak=1.0 + 0.1 * i) for i in range(20)]
        ts += [diverged(1.0 + i, 40, 30, height=1.5 + 0.2 * i) for i in range(8)]
        if fold_to_move is not None:  # every trial of that fold peaks far higher
            ts = [dataclasses.replace(t, curves={"spike_ratio": Curve(t.curves["spike_ratio"].steps, tuple(
                v * scale for v in t.curves["spike_ratio"].values))})
                  if folds[config_key(t)] == fold_to_move else t for t in ts]
        return ts

    base = study(1.0)
    folds = folds_of(base)
    k = len(set(folds.values()))
    before = evaluate(base).per_signal["spike_ratio"]
    moved = evaluate(study(100.0, 2, folds)).per_signal["spike_ratio"]
    assert moved.fold_thresholds[2] == before.fold_thresholds[2]  # fitted without fold 2
    others = [f for f in range(k) if f != 2]
    assert all(moved.fold_thresholds[f] > before.fold_thresholds[f] for f in others)  # fold 2 trains them
    assert moved.threshold > before.threshold  # the all-trials threshold sees every trial
    # and each held-out stable trial is judged by its training folds' threshold
    for t in base:
        if t.outcome == "stable":
            f = folds[config_key(t)]
            train = [max(u.curves["spike_ratio"].values) for u in base
                     if u.outcome == "stable" and folds[config_key(u)] != f]
            assert threshold_for(train, TARGET_FALSE_ALARM_RATE) == before.fold_thresholds[f]


# ------------------------------------------------------------------------------------------ the arithmetic


def test_detection_lead_and_false_alarms_on_held_out_trials():
    trials = [stable(0.01 * (i + 1)) for i in range(10)]  # stable peaks at 1.5 ...
    # ... and two seeds of one configuration at 2: one fold, whose threshold (from the others) is 1.5 → 2 false
    # alarms; folds that train on both 2s may allow one above the threshold, and take 2
    trials += [stable(0.5, seed=s, peak=2.0) for s in (0, 1)]
    trials += [diverged(1.0, 40, 30), diverged(2.0, 60, 56), diverged(3.0, 50, 43), diverged(4.0, 80, 60),
               diverged(5.0, 70, 70)]  # the last spikes only at its divergence step: no warning
    trials += [trial("wn", 9.0, 0, collapsed=True, curves={"spike_ratio": spike_at(100, 20)}),
               dataclasses.replace(stable(0.7, peak=3.0), stalled=True),
               dataclasses.replace(stable(0.8, peak=9.0), status="FAILED")]  # errored: left out
    ew = evaluate(trials)
    st = ew.per_signal["spike_ratio"]
    assert ew.counts == {"diverged": 5, "stable": 12, "other_failures": 2, "excluded": 1}
    pair_fold = folds_of(trials)[config_key(trials[10])]
    assert st.fold_thresholds[pair_fold] == 1.5 and set(st.fold_thresholds) <= {1.5, 2.0}
    assert st.threshold == 2.0  # fitted on all 12: one may pass, so the second largest
    assert (st.n_diverged, st.n_warned, sorted(st.lead_steps)) == (5, 4, [4, 7, 10, 20])
    assert st.detection_rate == 0.8 and st.lead_median == 8.5 and (st.lead_min, st.lead_max) == (4, 20)
    assert (st.n_stable, st.n_false_alarms) == (12, 2) and st.false_alarm_rate == pytest.approx(2 / 12)
    assert (st.n_other_failures, st.n_other_warned) == (2, 2)  # neither a detection nor a false alarm
    lo, hi = st.detection_rate_ci
    assert lo < 0.8 < hi and st.false_alarm_rate_ci[0] < 2 / 12 < st.false_alarm_rate_ci[1]
    assert st.lead_median_ci == [4.0, 20.0]  # four leads: [min, max]
    rec = {r["trial_id"]: r["signals"]["spike_ratio"] for r in ew.trials}
    fold5 = folds_of(trials)[config_key(trials[16])]
    assert rec["wn_lr5_is-_s0"] == {"measured": True, "threshold": st.fold_thresholds[fold5],
                                    "first_warning_step": None, "lead_steps": None}
    assert rec["wn_lr4_is-_s0"]["lead_steps"] == 20
    assert ew.per_signal["grad_norm"].n_diverged == 0 and ew.per_signal["grad_norm"].too_few
    assert ew.recommended["all"] == "spike_ratio"


def test_rates_and_median_lead_carry_95_percent_intervals():
    assert median_interval([4, 5]) == [4.0, 5.0]  # too few for better than [min, max]
    big = median_interval(list(range(1, 101)))
    assert 35 <= big[0] < 50.5 < big[1] <= 65


# ------------------------------------------------------------------------------------------------- AUC


def test_auc_of_a_perfectly_separating_and_of_a_random_signal():
    assert roc_auc([2.0, 3.0, 4.0], [0.0, 1.0]) == 1.0 and auc_interval([2.0, 3.0, 4.0], [0.0, 1.0]) == [1.0, 1.0]
    assert roc_auc([0.0, 1.0], [2.0, 3.0]) == 0.0 and roc_auc([1.0, 1.0], [1.0]) == 0.5
    assert roc_auc([], [1.0]) is None
    rng = np.random.default_rng(1)
    pos, neg = list(rng.normal(size=250)), list(rng.normal(size=250))
    auc, (lo, hi) = roc_auc(pos, neg), auc_interval(pos, neg)
    assert abs(auc - 0.5) < 0.05 and lo < 0.5 < hi and hi - lo < 0.15
    assert roc_auc([1.0, 3.0], [2.0, 0.0]) == 0.75


def test_the_study_auc_of_a_separating_signal_is_one():
    trials = [stable(0.01 * (i + 1), peak=1.2) for i in range(12)]
    trials += [diverged(1.0 + i, 40, 30, height=5.0) for i in range(6)]
    st = evaluate(trials).per_signal["spike_ratio"]
    assert st.auc == 1.0 and st.auc_ci == [1.0, 1.0] and st.detection_rate == 1.0 and st.false_alarm_rate == 0.0


# -------------------------------------------------------------------------------------------- too few


def test_too_few_trials_give_counts_and_a_sentence_not_rates():
    trials = [stable(0.01 * (i + 1)) for i in range(12)] + [diverged(1.0 + i, 40, 30) for i in range(3)]
    ew = evaluate(trials)
    st = ew.per_signal["spike_ratio"]
    assert st.too_few == "too few trials: 3 diverged and 12 stable trials scored (at least 5 and 10 needed)"
    assert (st.n_diverged, st.n_stable) == (3, 12)
    assert st.detection_rate is st.false_alarm_rate is st.auc is st.threshold is None and st.lead_steps == []
    assert ew.per_scheme["wn"]["spike_ratio"].too_few == st.too_few
    assert ew.recommended["all"] is None
    md = to_markdown("r", [early_warning_section(_clean({"early_warning": dataclasses.asdict(ew)}))])
    row = next(r for r in md.splitlines() if r.startswith("| spike_ratio |"))
    assert "3 diverged, 12 stable scored: too few" in row and "%" not in row
    assert "Target false-alarm rate: 10% of stable trials" in md
    assert "Not measured in this study: grad_norm, update_ratio_max, act_std, sharpness_lr." in md


def test_one_configuration_cannot_be_cross_validated():
    ew = evaluate([stable(0.1, seed=s) for s in range(12)])
    assert ew.folds == 1 and ew.per_signal[ANY].too_few == "fewer than two configurations to cross-validate over"


def test_any_leaves_out_a_signal_that_does_not_separate_on_the_training_folds():
    """grad_norm peaks higher on stable trials than on diverged ones: in ``any`` it could only false-alarm."""
    def grad(n: int, jump: float) -> Curve:
        return curve([1.0] * 20 + [jump] * (n - 20))

    trials = [trial("wn", 0.01 * (i + 1), 0, train=0.9, test=0.8,
                    curves={"spike_ratio": spike_at(100, 50, 1.5), "grad_norm": grad(100, 20.0 + 5 * i)})
              for i in range(12)]
    trials += [trial("wn", 1.0 + i, 0, diverged=True, step=40,
                     curves={"spike_ratio": spike_at(40, 30), "grad_norm": grad(40, 2.0)}) for i in range(6)]
    ew = evaluate(trials)
    assert ew.per_signal["grad_norm"].auc == 0.0 and ew.per_signal["grad_norm"].n_false_alarms >= 1
    a, s = ew.per_signal[ANY], ew.per_signal["spike_ratio"]
    assert (a.n_warned, a.n_false_alarms, a.lead_steps) == (s.n_warned, s.n_false_alarms, s.lead_steps)
    assert (a.n_warned, a.n_false_alarms, a.lead_steps) == (6, 0, [10] * 6)
