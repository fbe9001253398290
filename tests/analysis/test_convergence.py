"""Convergence marks (analysis/convergence.py) on synthetic train curves: a fitted flat run, a slow run still
fitting at the end, a run flat below the accuracy bar, a flat-at-chance run, and no curve at all."""

from __future__ import annotations

import math

import numpy as np
import pytest

from analysis.collect import Curve
from analysis.convergence import FIT_TOP1, TAIL_DROP_TOL, convergence_of, tail_drop
from tests.analysis.synth import trial

STEPS = np.arange(1, 301)


def curve(values) -> Curve:
    return Curve(tuple(int(s) for s in STEPS), tuple(float(v) for v in values))


def cosine_fit(tau: float, floor: float = 0.005) -> Curve:
    """A loss falling from ln 10 with time constant ``tau`` steps under a cosine schedule (progress ∝ the
    integral of the lr, so it slows to a stop at the end)."""
    progress = (STEPS - 300 / math.pi * np.sin(math.pi * STEPS / 300)) / 2  # ∫ (1 + cos)/2 dt
    return curve(floor + (math.log(10) - floor) * np.exp(-progress / tau))


def run(train: float, loss: Curve | None, seed: int = 0):
    m = {"initial_train_loss": math.log(10)}
    return trial("wn", 0.1, seed, train=train, test=train - 0.1, metrics=m,
                 curves={"loss": loss} if loss is not None else None)


def test_tail_drop_is_the_last_tenths_fall_over_the_initial_loss():
    falling = curve(np.linspace(2.3, 0.0, 300))  # straight line: the last tenth falls by 0.23 on average
    assert tail_drop(falling, 2.3) == pytest.approx(0.1, abs=1e-3)
    assert tail_drop(curve(np.full(300, 0.01)), 2.3) == pytest.approx(0.0)
    assert tail_drop(None, 2.3) is None and tail_drop(Curve((1, 2), (1.0, 0.5)), 2.3) is None


def test_a_fitted_flat_run_is_converged():
    c = convergence_of([run(1.0, cosine_fit(20)), run(0.99, cosine_fit(25), seed=1)])
    assert c.converged is True and c.n_seeds == 2 and c.n_curves == 2
    assert c.tail_drop < 0.01 and c.train_top1 == pytest.approx(0.995)
    assert "train top-1 99.5% ≥ 95%" in c.reason and "loss flat at the end" in c.reason


def test_a_slow_run_still_fitting_at_the_end_is_not_converged_even_above_the_accuracy_bar():
    slow = cosine_fit(110)  # still falling by > 5% of L0 over the last tenth at a lr near 0
    assert tail_drop(slow, math.log(10)) > TAIL_DROP_TOL
    c = convergence_of([run(0.96, slow)])
    assert c.converged is False and "loss still falling" in c.reason and "≥ 95%" in c.reason


def test_a_flat_run_below_the_accuracy_bar_and_a_flat_at_chance_run_are_not_converged():
    plateau = convergence_of([run(0.90, curve(np.full(300, 0.4)))])
    assert plateau.converged is False and plateau.tail_drop == pytest.approx(0.0)
    assert "train top-1 90.0% < 95%" in plateau.reason and "loss flat" in plateau.reason
    chance = convergence_of([run(0.11, curve(np.full(300, math.log(10))))])
    assert chance.converged is False


def test_the_mean_over_seeds_decides_and_without_a_curve_accuracy_alone_does():
    c = convergence_of([run(1.0, None), run(0.93, None, seed=1)])  # mean 0.965
    assert c.converged is True and c.train_top1_min == pytest.approx(0.93) and c.n_curves == 0
    assert "judged on train top-1 alone" in c.reason
    assert convergence_of([run(FIT_TOP1 - 0.01, None)]).converged is False
    assert convergence_of([]).converged is None


def test_a_mean_just_under_the_bar_is_not_shown_as_the_bar():
    c = convergence_of([run(0.9497, curve(np.full(300, 0.1)))])
    assert c.converged is False and "train top-1 94.97% < 95%" in c.reason  # not "95.0% < 95%"
