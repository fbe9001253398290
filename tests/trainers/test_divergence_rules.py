"""DivergenceRules and LayerAttribution alone: plain floats in, no model, no torch."""

from __future__ import annotations

import math

import pytest

from study.spec import DivergenceSpec
from trainers.divergence_rules import DivergenceRules, LayerAttribution, LossVerdict, multiplicative

NAN, INF = float("nan"), float("inf")


def causes(rules: DivergenceRules, losses: list[float], start: int = 1) -> dict[int, str]:
    """Feed ``losses`` (steps start, start + 1, ...); the steps at which a rule fired -> its cause."""
    out = {}
    for k, loss in enumerate(losses, start):
        verdict = rules.observe(loss)
        if verdict.cause is not None:
            out[k] = verdict.cause
    return out


# ----------------------------------------------------------------------------------- loss spike
@pytest.mark.parametrize("patience", [1, 2, 4, 5])
def test_a_sustained_spike_fires_at_the_step_the_patience_is_reached(patience):
    rules = DivergenceRules(DivergenceSpec(loss_multiple=100, spike_ratio=3, spike_patience=patience))
    fired = causes(rules, [1.0] * 6 + [5.0] * 6)  # the spike starts at step 7
    assert min(fired) == 6 + patience
    assert set(fired.values()) == {"loss_spike"}
    assert sorted(fired) == list(range(6 + patience, 13))  # and stays fired while it lasts
    assert rules.spike_count == 6


def test_a_blip_shorter_than_the_patience_resets_the_count():
    rules = DivergenceRules(DivergenceSpec(loss_multiple=100, spike_ratio=3, spike_patience=4))
    assert causes(rules, [1.0] * 5 + [5.0] * 3 + [1.0] + [5.0] * 3 + [1.0]) == {}
    assert rules.spike_count == 0


def test_spiking_steps_keep_the_pre_spike_ema():
    rules = DivergenceRules(DivergenceSpec(loss_multiple=100, spike_ratio=3, spike_patience=10, ema_decay=0.5))
    for loss in (2.0, 2.0):
        rules.observe(loss)
    verdicts = [rules.observe(8.0) for _ in range(3)]
    assert [v.loss_ema for v in verdicts] == [2.0, 2.0, 2.0]
    assert [v.spike_ratio for v in verdicts] == [4.0, 4.0, 4.0]
    calm = rules.observe(4.0)  # ratio 2 < 3: not a spike, the EMA moves
    assert calm == LossVerdict(None, 3.0, 2.0)


def test_the_ema_starts_at_the_first_loss_and_decays():
    rules = DivergenceRules(DivergenceSpec(ema_decay=0.5))
    assert rules.observe(2.0) == LossVerdict(None, 2.0, 1.0)
    assert rules.observe(1.0) == LossVerdict(None, 1.5, 0.5)
    v = rules.observe(4.0)
    assert (v.loss_ema, v.spike_ratio) == (2.75, pytest.approx(4.0 / 1.5))


# ----------------------------------------------------------------------------------- explosion
def test_explosion_is_checked_once_the_initial_estimate_is_complete():
    rules = DivergenceRules(DivergenceSpec(initial_steps=3, spike_patience=5))
    # step 2 is 30x step 1 but joins the estimate (32/3); step 5 is above 10x that
    assert causes(rules, [1.0, 30.0, 1.0, 1.0, 200.0]) == {5: "loss_explosion"}
    assert (rules.init_sum, rules.init_count) == (32.0, 3)


def test_explosion_is_strictly_above_the_multiple():
    rules = DivergenceRules(DivergenceSpec(loss_multiple=10, initial_steps=2, spike_ratio=100))
    assert causes(rules, [1.0, 3.0, 20.0, 20.5]) == {4: "loss_explosion"}  # 10 x 2.0 = 20 is not above


def test_explosion_outranks_a_spike_at_the_same_step():
    rules = DivergenceRules(DivergenceSpec(loss_multiple=10, initial_steps=2, spike_ratio=3, spike_patience=1))
    assert causes(rules, [1.0, 1.0, 50.0]) == {3: "loss_explosion"}


# ----------------------------------------------------------------------------------- non-finite
def test_a_non_finite_loss_fires_and_leaves_the_state_alone():
    rules = DivergenceRules(DivergenceSpec(ema_decay=0.5))
    rules.observe(2.0)
    before = rules.state_dict()
    v = rules.observe(NAN)
    assert v.cause == "non_finite_loss" and v.loss_ema == 2.0 and math.isnan(v.spike_ratio)
    assert rules.observe(INF) == LossVerdict("non_finite_loss", 2.0, INF)
    assert rules.state_dict() == before


def test_a_non_finite_loss_before_any_ema():
    v = DivergenceRules(DivergenceSpec()).observe(INF)
    assert v.cause == "non_finite_loss" and math.isnan(v.loss_ema) and math.isnan(v.spike_ratio)


def test_a_non_finite_gradient_outranks_the_loss_rules_only_with_a_finite_loss():
    spec = DivergenceSpec(loss_multiple=10, initial_steps=1)
    rules = DivergenceRules(spec)
    assert rules.observe(1.0, [1.0, 2.0]).cause is None
    assert rules.observe(50.0, [1.0, NAN]).cause == "non_finite_grad"  # an explosion too
    assert rules.observe(50.0, None).cause == "loss_explosion"  # no gradient statistics
    assert rules.observe(NAN, [NAN, NAN]).cause == "non_finite_loss"
    assert rules.observe(1.0, [INF, 0.0]).cause == "non_finite_grad"
    assert rules.observe(1.0, []).cause is None


# ----------------------------------------------------------------------------------- state
def test_state_round_trip_resumes_a_spike_begun_before_the_checkpoint():
    spec = DivergenceSpec(loss_multiple=100, spike_ratio=3, spike_patience=4)
    a = DivergenceRules(spec)
    causes(a, [1.0] * 6 + [5.0] * 2)
    b = DivergenceRules(spec)
    b.load_state_dict(a.state_dict())
    assert causes(a, [5.0] * 3, start=9) == causes(b, [5.0] * 3, start=9) == {10: "loss_spike", 11: "loss_spike"}
    assert causes(DivergenceRules(spec), [5.0] * 3, start=9) == {}  # a fresh one does not


# ----------------------------------------------------------------------------------- layer attribution
NAMES = ["0.weight", "0.bias", "2.weight", "2.bias", "bn.weight", "wn.g", "wn.b"]
NDIMS = [2, 1, 2, 1, 1, 1, 1]
W = [4.0, 0.01, 2.0, 0.01, 1.0, 1.0, 0.01]  # biases near 0: their ratios would be huge


def attribution(start: list[float] | None = W) -> LayerAttribution:
    att = LayerAttribution(NAMES, NDIMS)
    att.begin_interval(start)
    return att


def grads(**by_name: float) -> list[float]:
    g = dict.fromkeys(NAMES, 0.1)
    g.update({k.replace("_", "."): v for k, v in by_name.items()})
    return [g[n] for n in NAMES]


def test_multiplicative_parameters():
    assert multiplicative(NAMES, NDIMS) == [True, False, True, False, True, True, False]
    assert multiplicative(["a.bias", "b.alpha"], [1, 1]) == [True, True]  # none multiplicative: all of them
    assert multiplicative([], []) == []


def test_explosion_names_the_largest_grad_to_weight_ratio_among_multiplicative_parameters():
    att = attribution()
    g = grads(**{"2_weight": 1.0, "0_weight": 1.0, "0_bias": 5.0})  # 0.bias has the largest ratio: additive
    assert att.layer("loss_explosion", g) == "2.weight"
    assert att.layer("loss_spike", g) == "2.weight"


def test_non_finite_grad_names_the_last_non_finite_parameter():
    att = attribution()
    assert att.layer("non_finite_grad", grads(**{"0_weight": NAN, "2_bias": INF})) == "2.bias"


def test_non_finite_loss_uses_the_latest_all_finite_step_of_the_interval():
    att = attribution()
    att.observe_grads(grads(**{"0_weight": 10.0}))
    att.observe_grads(grads(**{"2_weight": 10.0}))
    att.observe_grads(grads(**{"bn_weight": NAN}))  # not all finite: not learned from
    assert att.layer("non_finite_loss", grads(**{"wn_g": 100.0})) == "2.weight"  # this step's grads say nothing
    assert att.layer("loss_explosion", grads(**{"wn_g": NAN})) == "2.weight"  # non-finite: as a NaN loss


def test_the_latest_all_finite_layer_carries_over_to_the_next_interval():
    att = attribution()
    att.observe_grads(grads(**{"bn_weight": 10.0}))
    att.end_interval()
    assert att.last_finite_layer == "bn.weight"
    att.begin_interval(None)
    assert att.layer("non_finite_loss", grads(**{"0_weight": NAN})) == "bn.weight"


def test_the_ratio_uses_the_weight_reference_of_that_step():
    att = attribution()
    g = grads(**{"0_weight": 3.0, "2_weight": 2.0})
    att.observe_grads(g)  # with W: 2.weight (1.0 > 0.75)
    att.observe_weights([1.0, 1, 40.0, 1, 1, 1, 1])  # a later detailed step; with it: 0.weight (3.0 > 0.05)
    assert att.layer("non_finite_loss", g) == "2.weight"  # the earlier step, with the reference it saw
    assert att.layer("loss_spike", g) == "0.weight"  # this step, with the current reference
    att.observe_grads(g)
    assert att.layer("non_finite_loss", g) == "0.weight"


def test_non_finite_weights_do_not_replace_the_reference():
    att = attribution()
    att.observe_weights([NAN, 1, 1, 1, 1, 1, 1])
    assert att.wnorm_ref == W
    att.observe_weights([1.0] * 7)
    assert att.wnorm_ref == [1.0] * 7
    att = attribution(start=[NAN] + W[1:])  # a non-finite first-step snapshot is no reference
    assert att.wnorm_ref is None


@pytest.mark.parametrize(("start", "g", "expected"), [
    ([1.0, 1, 1, 1, INF, 1, 1], grads(**{"0_weight": NAN}), "bn.weight"),  # the first non-finite weights
    (W, grads(**{"2_weight": NAN, "wn_g": INF}), "2.weight"),  # else the first non-finite gradient
    (W, grads(**{"wn_g": 5.0}), "wn.g"),  # else the largest finite ratio
    (None, grads(), "0.weight"),  # else the first multiplicative parameter
])
def test_fallback_layer_with_nothing_learned_yet(start, g, expected):
    att = attribution(start)
    assert att.layer("non_finite_loss", g) == expected


def test_state_round_trip_keeps_the_reference_only_for_the_same_parameters():
    att = attribution()
    att.observe_grads(grads(**{"2_weight": 10.0}))
    att.end_interval()
    again = LayerAttribution(NAMES, NDIMS)
    again.load_state_dict(att.state_dict())
    assert (again.wnorm_ref, again.last_finite_layer) == (W, "2.weight")
    again.begin_interval(None)
    assert again.layer("loss_spike", grads(**{"wn_g": 9.0})) == "wn.g"  # has a reference to compute ratios
    other = LayerAttribution(NAMES[:-1], NDIMS[:-1])
    other.load_state_dict(att.state_dict())
    assert (other.wnorm_ref, other.last_finite_layer) == (None, "2.weight")
