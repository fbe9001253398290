"""The stall rule and the outcome it gives, on synthetic runs: a flat-at-chance run, a slow-but-fitting
run, a crash, a late divergence (trainers/stall.py, trainers/summary.py, trainers/outcome.py)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from study.spec import load
from trainers.collapse import Collapse
from trainers.outcome import FAILURE_KINDS, is_failure, outcome_of
from trainers.stall import STALL_LOSS_FRAC, stall_verdict
from trainers.summary import summary_of

CHANCE = math.log(10)
CONFIG = load(None, []).trainer_config("bn")


def run(final_loss: float | None, initial_loss: float | None = CHANCE, collapse=None, divergence=None,
        train_top1: float = 0.5) -> dict:
    """The summary of a synthetic run that ended with this train loss (None: never evaluated)."""
    last = {} if final_loss is None else {"train_top1": train_top1, "test_top1": train_top1 - 0.1,
                                          "test_top5": 0.9, "train_loss_eval": final_loss}
    initial = {} if initial_loss is None else {"initial_train_loss": initial_loss, "initial_train_top1": 0.1}
    stall = None if divergence else stall_verdict(initial_loss, final_loss, 10, CONFIG.divergence.stall_loss_frac)
    return summary_of(last, divergence, collapse, 300, [0.1], CONFIG, initial_eval=initial, stall=stall)


def test_the_default_threshold_is_the_specs():
    assert CONFIG.divergence.stall_loss_frac == STALL_LOSS_FRAC


@pytest.mark.parametrize(("final", "stalled"), [
    (CHANCE, True),  # flat at chance: the loss never moved
    (0.96 * CHANCE, True),  # BN at lr 10 in the quick default: 0.18-0.23 train top-1, loss 2.13-2.22
    (0.83 * CHANCE, True),  # WN at lr 1: 0.30 train top-1
    (0.66 * CHANCE, True),
    (0.64 * CHANCE, False),  # just past the threshold: it removed a bit over a third of the loss
    (0.51 * CHANCE, False),  # slow but fitting: WN at lr 0.1, 0.60 train top-1
    (0.01, False),  # fitted
    (1.5 * CHANCE, True),  # finite, but worse than where it started
])
def test_stall_verdict_and_outcome(final, stalled):
    verdict = stall_verdict(CHANCE, final, 10)
    assert (verdict is not None) is stalled
    s = run(final)
    assert s["outcome"] == ("stalled" if stalled else "stable")
    assert s["stalled"] == float(stalled) and s["final_train_loss"] == final
    assert is_failure(s["outcome"]) is stalled
    if stalled:
        assert s["stall_loss_ratio"] == pytest.approx(final / CHANCE)
        assert "final_test_top1" in s  # a stalled run's accuracies are measured, and kept


def test_the_threshold_and_the_chance_cap():
    assert stall_verdict(CHANCE, 0.9 * CHANCE, 10, 0.65) is not None
    assert stall_verdict(CHANCE, 0.9 * CHANCE, 10, 0.99) is None  # the spec's threshold decides
    # a large init scale starts far above a uniform guess: falling to that guess is not fitting
    assert stall_verdict(5.0, 0.9 * CHANCE, 10).ratio == pytest.approx(0.9)
    assert stall_verdict(5.0, 0.9 * CHANCE, None) is None  # without the cap it would pass for fitting
    assert stall_verdict(1.0, 0.9, 10).reference_loss == 1.0  # below ln C, L_0 itself is the reference


def test_unmeasured_ends_never_stall():
    assert stall_verdict(None, 2.0, 10) is None and stall_verdict(2.0, None, 10) is None
    assert stall_verdict(float("nan"), 2.0, 10) is None and stall_verdict(2.0, float("inf"), 10) is None
    assert run(CHANCE, initial_loss=None)["outcome"] == "stable"  # no L_0 (an older checkpoint): no verdict


def test_a_run_at_chance_with_a_cause_is_collapsed_not_stalled():
    s = run(CHANCE, collapse=Collapse("dead_relu", 40, "layer2", 0.9), train_top1=0.1)
    assert s["outcome"] == "collapsed" and s["stalled"] == 1.0  # both hold; collapse is the narrower name


def test_a_late_divergence_is_diverged_whatever_its_losses():
    late = SimpleNamespace(step=290, cause="loss_spike", layer="layer3")
    s = run(CHANCE, divergence=late)
    assert s["outcome"] == "diverged" and s["stalled"] == 0.0 and "final_train_loss" not in s


def test_a_crash_is_errored_never_a_failure():
    assert outcome_of(run(CHANCE), errored=True) == "errored"
    assert outcome_of(None, errored=True) == "errored" and not is_failure("errored")


def test_a_run_never_evaluated_is_unfinished_not_stable():
    s = run(None)
    assert s["outcome"] == "unfinished" and "final_test_top1" not in s


def test_every_failure_kind_is_counted_in_order():
    assert FAILURE_KINDS == ("diverged", "collapsed", "stalled")
    assert outcome_of({"stalled": "1", "final_test_top1": "0.2"}) == "stalled"  # as MLflow tags read back
