"""The power-law fit of the stability boundary against depth (analysis/power_law.py), on synthetic brackets:
a known exponent comes back inside its interval, narrow brackets give a narrow interval, and wide brackets
turn the exponent comparison's verdict inconclusive."""

from __future__ import annotations

import math

import pytest

from analysis import power_law
from analysis.intervals import CONFIRMED, INCONCLUSIVE, direction

DEPTHS = (8, 14, 20, 32)


def synthetic(a: float, b: float, width: float, seeds=(0, 1), jitter: float = 0.0) -> dict:
    """Each depth's trials: every seed stable at lr*/√width and failed at lr*·√width, lr* = a·depth^b
    (seed s's lr* moved by a factor (1 + jitter)^s)."""
    out = {}
    for d in DEPTHS:
        lrs: dict[float, dict[int, str]] = {}
        for s in seeds:
            star = a * d**b * (1 + jitter) ** s
            lrs.setdefault(round(star / math.sqrt(width), 6), {})[s] = "stable"
            lrs.setdefault(round(star * math.sqrt(width), 6), {})[s] = "diverged"
        out[d] = lrs
    return out


def test_the_fit_recovers_a_known_exponent_and_its_interval_narrows_with_the_brackets():
    narrow = power_law.fit(synthetic(2.0, -0.8, width=1.2), replicates=500)
    assert narrow.b == pytest.approx(-0.8, abs=1e-3) and narrow.a == pytest.approx(2.0, rel=1e-3)
    assert narrow.b_interval.lo < -0.8 < narrow.b_interval.hi
    assert narrow.b_interval.hi - narrow.b_interval.lo < 0.3
    wide = power_law.fit(synthetic(2.0, -0.8, width=8.0), replicates=500)
    assert wide.b == pytest.approx(-0.8, abs=1e-3)
    assert wide.b_interval.hi - wide.b_interval.lo > 2 * (narrow.b_interval.hi - narrow.b_interval.lo)
    # the prediction at depth 50 brackets a·50^b, and is wider for wide brackets
    p, q = narrow.prediction_interval(50), wide.prediction_interval(50)
    assert p.lo < 2.0 * 50**-0.8 < p.hi and q.hi / q.lo > p.hi / p.lo


def test_seed_disagreement_widens_the_interval_through_the_seed_resampling():
    agree = power_law.fit(synthetic(1.0, -0.5, width=1.2), replicates=500)
    disagree = power_law.fit(synthetic(1.0, -0.5, width=1.2, jitter=2.0), replicates=500)
    assert (disagree.b_interval.hi - disagree.b_interval.lo) > (agree.b_interval.hi - agree.b_interval.lo)


def test_the_verdict_on_the_difference_of_exponents_flips_to_inconclusive_when_brackets_are_wide():
    # WN-like falls as depth^-1, BN-like stays flat: WN's exponent minus BN's is negative.
    tight = power_law.exponent_difference(power_law.fit(synthetic(1.0, -1.0, 1.2), seed=1),
                                          power_law.fit(synthetic(1.0, 0.0, 1.2), seed=2))
    assert tight.estimate == pytest.approx(-1.0, abs=1e-3) and direction(tight, -1) == CONFIRMED
    loose = power_law.exponent_difference(power_law.fit(synthetic(1.0, -1.0, 30.0), seed=1),
                                          power_law.fit(synthetic(1.0, 0.0, 30.0), seed=2))
    assert loose.estimate == pytest.approx(-1.0, abs=1e-3)
    assert loose.lo < 0 < loose.hi and direction(loose, -1) == INCONCLUSIVE


def test_open_brackets_are_listed_not_fitted():
    data = synthetic(1.0, -0.5, 1.2)
    data[32] = {0.5: {0: "stable", 1: "stable"}}  # nothing failed at depth 32: no upper end
    law = power_law.fit(data, replicates=100)
    assert law.open_depths == [32] and law.depths == [8, 14, 20]
    assert power_law.fit({8: data[8], 32: data[32]}, replicates=100).b is None  # one closed bracket: no fit
