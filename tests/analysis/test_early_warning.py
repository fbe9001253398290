"""Early-warning lead times and false alarms on synthetic curves."""

from __future__ import annotations

import dataclasses
import math

import pytest

from analysis.collect import Curve
from analysis.early_warning import THRESHOLDS, Thresholds, evaluate, first_warning, recommend
from tests.analysis.synth import trial


def curve(values, start: int = 1, every: int = 1) -> Curve:
    return Curve(tuple(range(start, start + every * len(values), every)), tuple(float(v) for v in values))


def flat(n: int, v: float = 1.0) -> list[float]:
    return [v] * n


def test_grad_norm_warns_against_its_own_early_median():
    # 100 steps at 0.5, then 6.0 from step 60: 12x the baseline median (0.5) > 10x.
    t = trial("wn", 1.0, 0, diverged=True, step=100, curves={"grad_norm": curve(flat(59, 0.5) + flat(41, 6.0))})
    assert first_warning(t, "grad_norm") == (True, 60)
    # A large but steady gradient norm never warns: the threshold is relative.
    t2 = trial("wn", 1.0, 0, train=0.5, test=0.4, curves={"grad_norm": curve(flat(100, 50.0))})
    assert first_warning(t2, "grad_norm") == (True, None)


def test_grad_norm_baseline_window_is_not_itself_checked():
    # The first 10% (10 points) is the baseline; a big start inside it is not a warning.
    values = [100.0] + flat(99, 1.0)
    t = trial("wn", 0.1, 0, train=0.5, test=0.4, curves={"grad_norm": curve(values)})
    assert first_warning(t, "grad_norm") == (True, None)


def test_absolute_thresholds_and_non_finite_values():
    t = trial(
        "wn",
        1.0,
        0,
        diverged=True,
        step=50,
        curves={
            "update_ratio_max": curve([0.01, 0.02, 0.2, 0.5, 0.9], every=10),  # steps 1, 11, 21, ...
            "spike_ratio": curve(flat(45) + [math.inf] + flat(4)),
        },
    )
    assert first_warning(t, "update_ratio_max") == (True, 21)
    assert first_warning(t, "spike_ratio") == (True, 46)
    assert first_warning(t, "sharpness_lr") == (False, None)  # not measured
    assert first_warning(t, "any") == (True, 21)


def test_sharpness_times_the_steps_lr():
    curves = {
        "sharpness": curve([5.0, 5.0, 5.0, 5.0], start=10, every=10),  # steps 10..40
        "lr": curve(flat(20, 0.1) + flat(30, 0.5)),  # lr rises to 0.5 at step 21: 5 * 0.5 = 2.5 > 2
    }
    t = trial("wn", 0.1, 0, diverged=True, step=50, curves=curves)
    assert first_warning(t, "sharpness_lr") == (True, 30)
    # Without an lr curve the trial's hp.lr is used: 5 * 0.1 = 0.5 never warns.
    t2 = trial("wn", 0.1, 0, train=0.5, test=0.4, curves={"sharpness": curves["sharpness"]})
    assert first_warning(t2, "sharpness_lr") == (True, None)


def test_lead_times_false_alarms_and_recommendation():
    def grad(n, jump_at=None):
        return curve([1.0 if jump_at is None or s < jump_at else 20.0 for s in range(1, n + 1)])

    def spike(n, at=None):
        return curve([3.0 if s == at else 1.0 for s in range(1, n + 1)])

    trials = [
        # diverged at 40: grad_norm warns at 30 (lead 10), spike_ratio at 38 (lead 2)
        trial(
            "wn",
            1.0,
            0,
            diverged=True,
            step=40,
            curves={"grad_norm": grad(40, 30), "spike_ratio": spike(40, 38)},
        ),
        # diverged at 60: grad_norm warns at 56 (lead 4), spike_ratio only at the divergence step (no lead)
        trial(
            "wn",
            1.0,
            1,
            diverged=True,
            step=60,
            curves={"grad_norm": grad(60, 56), "spike_ratio": spike(60, 60)},
        ),
        # stable: one spike (false alarm for spike_ratio), grad_norm quiet
        trial("wn", 0.1, 0, train=0.9, test=0.8, curves={"grad_norm": grad(100), "spike_ratio": spike(100, 70)}),
        trial("bn", 0.1, 0, train=0.9, test=0.8, curves={"grad_norm": grad(100), "spike_ratio": spike(100)}),
    ]
    ew = evaluate(trials)
    g, s = ew.per_signal["grad_norm"], ew.per_signal["spike_ratio"]
    assert (g.n_diverged, g.n_warned, sorted(g.lead_steps)) == (2, 2, [4, 10])
    assert g.detection_rate == 1.0 and g.lead_median == 7 and (g.lead_min, g.lead_max) == (4, 10)
    assert (g.n_stable, g.n_false_alarms, g.false_alarm_rate) == (2, 0, 0.0)
    assert (s.n_warned, s.lead_steps, s.detection_rate) == (1, [2], 0.5)
    assert (s.n_false_alarms, s.false_alarm_rate) == (1, 0.5)
    assert ew.per_signal["update_ratio_max"].n_diverged == 0  # not measured anywhere
    assert ew.per_signal["any"].lead_steps == [10, 4]
    assert ew.per_scheme["wn"]["spike_ratio"].false_alarm_rate == 1.0
    assert ew.per_scheme["bn"]["grad_norm"].detection_rate is None  # no bn trial diverged
    assert ew.recommended["all"] == "grad_norm" and ew.recommended["bn"] is None
    rec = {r["trial_id"]: r["signals"] for r in ew.trials}
    assert rec["wn_lr1_is-_s1"]["spike_ratio"] == {
        "measured": True,
        "first_warning_step": 60,
        "lead_steps": None,
    }
    assert rec["wn_lr1_is-_s0"]["update_ratio_max"]["measured"] is False


def test_thresholds_live_in_one_place_and_are_described():
    assert THRESHOLDS == Thresholds(10.0, 0.1, 0.1, 2.0, 2.0)
    text = THRESHOLDS.describe()
    assert set(text) == {"grad_norm", "update_ratio_max", "spike_ratio", "sharpness_lr", "any"}
    assert "10×" in text["grad_norm"] and "> 2" in text["sharpness_lr"]
    # A stricter threshold changes the verdict of the same curve.
    t = trial("wn", 1.0, 0, diverged=True, step=10, curves={"spike_ratio": curve(flat(5) + flat(5, 2.5))})
    assert first_warning(t, "spike_ratio") == (True, 6)
    assert first_warning(t, "spike_ratio", Thresholds(spike_ratio=3.0)) == (True, None)


def test_recommend_needs_a_diverged_trial():
    assert recommend({}) is None


@pytest.mark.parametrize("signal", ["grad_norm", "update_ratio_max", "spike_ratio", "sharpness_lr", "any"])
def test_signals_without_curves_are_not_measured(signal):
    assert first_warning(trial("bn", 0.1, 0, train=0.5, test=0.4), signal) == (False, None)


def test_rates_and_median_lead_carry_95_percent_intervals():
    from analysis.early_warning import SignalStats, median_interval

    st = SignalStats(n_diverged=10, n_warned=8, lead_steps=[3, 5, 6, 7, 8, 9, 12, 30], n_stable=20,
                     n_false_alarms=2).finish()
    lo, hi = st.detection_rate_ci
    assert lo < st.detection_rate < hi and 0 <= lo and hi <= 1
    flo, fhi = st.false_alarm_rate_ci
    assert flo < 0.1 < fhi
    mlo, mhi = st.lead_median_ci
    assert mlo <= st.lead_median <= mhi and mlo >= 3 and mhi <= 30
    # more trials, same proportions: narrower intervals
    wide = SignalStats(n_diverged=10, n_warned=8, n_stable=20, n_false_alarms=2).finish()
    narrow = SignalStats(n_diverged=100, n_warned=80, n_stable=200, n_false_alarms=20).finish()
    assert (narrow.detection_rate_ci[1] - narrow.detection_rate_ci[0]) < (wide.detection_rate_ci[1]
                                                                          - wide.detection_rate_ci[0])
    assert median_interval([4, 5]) == [4.0, 5.0]  # too few for better than [min, max]
    big = median_interval(list(range(1, 101)))
    assert 35 <= big[0] < 50.5 < big[1] <= 65


def test_collapsed_and_errored_trials_count_neither_way():
    # every trial warns at step 60; only the diverged one is a detection, no trial a false alarm
    def with_spike(**kw):
        return trial("wn", 1.0, kw.pop("seed"), curves={"grad_norm": curve(flat(59, 0.5) + flat(41, 6.0))}, **kw)

    diverged = with_spike(seed=0, diverged=True, step=100)
    collapsed = with_spike(seed=1, collapsed=True)  # a failure: neither a detection nor a false alarm
    errored = [dataclasses.replace(with_spike(seed=2, diverged=True, step=100), status="FAILED"),
               dataclasses.replace(with_spike(seed=3, train=0.5, test=0.4), status="FAILED")]  # no rate at all
    ew = evaluate([diverged, collapsed, *errored])
    g = ew.per_signal["grad_norm"]
    assert (g.n_diverged, g.n_warned, g.n_stable, g.n_false_alarms) == (1, 1, 0, 0)
    assert [r["trial_id"] for r in ew.trials] == [diverged.trial_id]
