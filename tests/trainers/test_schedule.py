"""The learning-rate schedule (trainers/schedule.py): warmup, step, cosine, poly, constant; linear scaling."""

from __future__ import annotations

import math

import pytest

from trainers.schedule import base_lr, lr_multiplier

TOTAL = 100


def mult(step: int, kind: str, **kw) -> float:
    return lr_multiplier(step, kw.pop("total_steps", TOTAL), kind=kind, **kw)


# --------------------------------------------------------------------------------------------------
# linear warmup


@pytest.mark.parametrize("kind", ["constant", "step", "cosine", "poly"])
def test_warmup_rises_linearly_to_the_full_rate(kind):
    w = 10
    kw = {"warmup_steps": w, "steps_per_epoch": 50, "step_epochs": [1.0]}
    ramp = [mult(s, kind, **kw) for s in range(w)]
    assert ramp[0] == pytest.approx(1 / w)  # step 0 trains at 1/W, never at 0
    assert ramp == pytest.approx([(s + 1) / w for s in range(w)])
    assert ramp[-1] == pytest.approx(1.0)  # the last warmup step reaches the base rate
    assert all(b > a for a, b in zip(ramp, ramp[1:], strict=False))


def test_no_warmup_starts_at_the_full_rate():
    for kind in ("constant", "step", "cosine", "poly"):
        assert mult(0, kind, step_epochs=[0.5], steps_per_epoch=TOTAL) == pytest.approx(1.0)


def test_constant_is_flat_after_warmup():
    assert [mult(s, "constant", warmup_steps=3) for s in range(3, TOTAL + 1)] == [1.0] * (TOTAL - 2)


# --------------------------------------------------------------------------------------------------
# step: milestones in epochs


def test_step_divides_at_each_milestone_epoch():
    spe = 10  # steps per epoch; milestones at epochs 3, 6, 8 (He et al.'s 30/60/80 scaled down)
    kw = {"steps_per_epoch": spe, "step_epochs": [3, 6, 8], "step_gamma": 0.1}
    assert mult(29, "step", **kw) == pytest.approx(1.0)
    assert mult(30, "step", **kw) == pytest.approx(0.1)  # the first step of epoch 3
    assert mult(59, "step", **kw) == pytest.approx(0.1)
    assert mult(60, "step", **kw) == pytest.approx(0.01)
    assert mult(80, "step", **kw) == pytest.approx(0.001)
    assert mult(TOTAL, "step", **kw) == pytest.approx(0.001)  # no decay past the last milestone


def test_step_milestones_may_be_fractional_epochs_and_unsorted():
    kw = {"steps_per_epoch": 10, "step_epochs": [2.5, 0.5], "step_gamma": 0.5}
    assert [mult(s, "step", **kw) for s in (4, 5, 24, 25)] == pytest.approx([1.0, 0.5, 0.5, 0.25])


def test_step_is_non_increasing():
    kw = {"steps_per_epoch": 7, "step_epochs": [3, 6, 8, 11]}
    lrs = [mult(s, "step", **kw) for s in range(TOTAL + 1)]
    assert all(b <= a for a, b in zip(lrs, lrs[1:], strict=False))


# --------------------------------------------------------------------------------------------------
# cosine and poly: full rate right after warmup, zero at total_steps, monotone in between


@pytest.mark.parametrize("kind", ["cosine", "poly"])
@pytest.mark.parametrize("warmup", [0, 10])
def test_decay_endpoints(kind, warmup):
    assert mult(warmup, kind, warmup_steps=warmup) == pytest.approx(1.0)
    assert mult(TOTAL, kind, warmup_steps=warmup) == pytest.approx(0.0, abs=1e-12)
    assert mult(TOTAL + 50, kind, warmup_steps=warmup) == pytest.approx(0.0, abs=1e-12)  # clamped
    # the last optimizer step (step TOTAL - 1) still trains, at a small rate
    assert 0 < mult(TOTAL - 1, kind, warmup_steps=warmup) < 0.01


@pytest.mark.parametrize("kind", ["cosine", "poly"])
def test_decay_is_strictly_decreasing_after_warmup(kind):
    w = 10
    lrs = [mult(s, kind, warmup_steps=w) for s in range(w, TOTAL + 1)]
    assert all(b < a for a, b in zip(lrs, lrs[1:], strict=False))


def test_cosine_midpoint_and_shape():
    assert mult(50, "cosine") == pytest.approx(0.5)
    assert mult(25, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    # with warmup the cosine spans the remaining steps: its midpoint moves to (W + TOTAL) / 2
    assert mult(55, "cosine", warmup_steps=10) == pytest.approx(0.5)


@pytest.mark.parametrize("power", [1.0, 2.0, 0.5])
def test_poly_power(power):
    assert mult(50, "poly", poly_power=power) == pytest.approx(0.5**power)
    assert mult(75, "poly", poly_power=power) == pytest.approx(0.25**power)


def test_total_steps_not_above_warmup_does_not_divide_by_zero():
    assert mult(0, "cosine", total_steps=5, warmup_steps=5) == pytest.approx(0.2)
    assert mult(5, "cosine", total_steps=5, warmup_steps=5) == pytest.approx(1.0)
    assert mult(6, "poly", total_steps=5, warmup_steps=5) == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# linear scaling (Goyal et al. 2017)


def test_base_lr_scales_linearly_with_the_global_batch():
    assert base_lr(0.1, 256, 256) == pytest.approx(0.1)  # the paper's reference point
    assert base_lr(0.1, 1024, 256) == pytest.approx(0.4)
    assert base_lr(0.1, 64, 256) == pytest.approx(0.025)
    assert base_lr(0.3, 64, 64) == pytest.approx(0.3)  # quick spec: lr_reference_batch = batch
    assert base_lr(0.1, 512, 256) == pytest.approx(2 * base_lr(0.1, 256, 256))


def test_warmup_fraction_is_a_share_of_the_run_unless_steps_are_given():
    from trainers.schedule import warmup_length

    assert warmup_length(0, 0.5, 300) == 150
    assert warmup_length(0, 0.5, 20) == 10  # a shortened run keeps its shape
    assert warmup_length(7, 0.5, 300) == 7  # explicit steps win
    assert warmup_length(0, 0.0, 300) == 0
