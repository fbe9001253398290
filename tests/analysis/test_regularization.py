"""Claim 4 (analysis/regularization.py) on synthetic re-runs: a gap tuning closes, one it does not, one too
noisy to say, and a study without re-runs; the fraction closed and its bootstrap interval."""

from __future__ import annotations

import pytest

from analysis.claims import NOT_MEASURED
from analysis.collect import TrialData
from analysis.intervals import CONFIRMED, INCONCLUSIVE, NOT_CONFIRMED
from analysis.regularization import evaluate, fraction_closed
from tests.analysis import synth

BN_UNTUNED, BN_TUNED = [0.80, 0.81, 0.79], [0.82, 0.83, 0.81]


def _arm(scheme: str, arm: str, tests: list[float | None], wd: float, train: float = 0.99) -> list[TrialData]:
    out = []
    for seed, test in enumerate(tests, start=1):
        t = synth.trial(scheme, 0.1, seed, train=train, test=test, diverged=test is None)
        t.hp["weight_decay"], t.rerun = wd, arm
        out.append(t)
    return out


def _study(wn_untuned: list[float | None], wn_tuned: list[float | None], wn_train_tuned: float = 0.99):
    st = synth.study({"bn": [synth.trial("bn", 0.1, 0, train=0.99, test=0.8)],
                      "wn": [synth.trial("wn", 0.1, 0, train=0.99, test=0.7)]})
    reruns = {"bn": _arm("bn", "untuned", BN_UNTUNED, 1e-4) + _arm("bn", "tuned", BN_TUNED, 3e-3),
              "wn": _arm("wn", "untuned", wn_untuned, 1e-4) + _arm("wn", "tuned", wn_tuned, 3e-3, wn_train_tuned)}
    for s in st.schemes:
        s.reruns = reruns[s.name]
    return evaluate(st, {})


def test_a_gap_tuning_closes_is_not_confirmed():
    reg = _study([0.70, 0.71, 0.69], [0.85, 0.86, 0.84], wn_train_tuned=0.9)
    wn = reg.schemes["wn"]
    assert reg.claim.id == 4 and reg.claim.verdict == NOT_CONFIRMED and wn.verdict == NOT_CONFIRMED
    assert wn.gap_before.estimate == pytest.approx(-0.10) and wn.gap_after.estimate == pytest.approx(0.03)
    assert wn.fraction_closed.estimate == pytest.approx(1.3) and wn.fraction_closed.lo > 1
    # Tuning bought test accuracy by giving up train accuracy: the train−test gap shrank.
    assert wn.overfit_change.hi < 0 and wn.overfit_change.estimate == pytest.approx(0.05 - 0.29)


def test_a_gap_tuning_does_not_close_is_confirmed_with_the_fraction_closed():
    reg = _study([0.70, 0.71, 0.69], [0.73, 0.74, 0.72])
    wn = reg.schemes["wn"]
    assert reg.claim.verdict == CONFIRMED and wn.gap_after.hi < 0
    assert wn.fraction_closed.estimate == pytest.approx(1 - (-0.09) / (-0.10))
    assert wn.fraction_closed.lo < 0.1 < wn.fraction_closed.hi < 1
    assert "wn: gap to BN -10.0 pts" in reg.claim.reason and "10% of it closed" in reg.claim.reason
    assert reg.as_dict()["schemes"]["wn"]["verdict"] == CONFIRMED


def test_a_gap_too_noisy_to_say_is_inconclusive():
    reg = _study([0.70, 0.71, 0.69], [0.60, 0.95, 0.78])
    wn = reg.schemes["wn"]
    assert wn.gap_after.lo < 0 < wn.gap_after.hi and reg.claim.verdict == INCONCLUSIVE


def test_failed_reruns_are_counted_not_averaged():
    reg = _study([0.70, 0.71, 0.69], [0.73, None, 0.72])
    tuned = reg.schemes["wn"].tuned
    assert tuned.n_failed == 1 and tuned.test_top1.n == 2 and tuned.test_top1.mean == pytest.approx(0.725)


def test_no_reruns_is_not_measured():
    st = synth.study({"bn": [synth.trial("bn", 0.1, 0, train=0.9, test=0.8)],
                      "wn": [synth.trial("wn", 0.1, 0, train=0.9, test=0.7)]})
    reg = evaluate(st, {})
    assert reg.claim.verdict == NOT_MEASURED and "no seed re-runs" in reg.claim.reason
    assert all(s.importances is None for s in reg.schemes.values())


def test_fraction_closed_needs_a_gap_and_two_seeds():
    assert fraction_closed([0.9, 0.91], [0.8, 0.81], [0.9, 0.9], [0.8, 0.8]) is None  # WN ahead: nothing to close
    assert fraction_closed([0.7], [0.8, 0.81], [0.9, 0.9], [0.8, 0.8]) is None
    a = fraction_closed([0.70, 0.71, 0.69], BN_UNTUNED, [0.75, 0.76, 0.74], BN_TUNED)
    assert a == fraction_closed([0.70, 0.71, 0.69], BN_UNTUNED, [0.75, 0.76, 0.74], BN_TUNED)  # seeded
    assert a.estimate == pytest.approx(0.3) and a.lo < a.estimate < a.hi
