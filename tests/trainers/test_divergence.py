"""DivergenceMonitor: rules, layer attribution, collapse, metrics, activation statistics, no host-device sync,
resume, sharpness."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from study.spec import DivergenceSpec
from trainers.divergence import (
    COLLAPSE_CHANCE_MULTIPLE,
    COLLAPSE_DEAD_FRAC,
    Collapse,
    CollapseRule,
    Divergence,
    DivergenceMonitor,
)
from trainers.models import build_model


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(),
                         nn.Linear(8, 2))


def step(mon: DivergenceMonitor, model: nn.Module, k: int, *, loss_value: float | None = None,
         detailed: bool = False, grad_edit=None, lr: float = 0.1, x: torch.Tensor | None = None) -> None:
    """One optimizer step as the loop drives it; ``loss_value`` replaces the reported loss."""
    mon.start_step(k, detailed)
    if x is None:
        x = torch.randn(16, 4, generator=torch.Generator().manual_seed(k))
    loss = model(x).pow(2).mean()
    model.zero_grad()
    loss.backward()
    if grad_edit is not None:
        grad_edit(model)
    mon.record(loss if loss_value is None else torch.tensor(loss_value))
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    mon.end_step()


def run_losses(losses, spec: DivergenceSpec | None = None, start: int = 1, mon=None, model=None):
    model = model or mlp()
    mon = mon or DivergenceMonitor(model, spec or DivergenceSpec())
    for i, value in enumerate(losses):
        step(mon, model, start + i, loss_value=value, detailed=(start + i) % 4 == 1)
    return mon, mon.flush()


# ----------------------------------------------------------------------------------- divergence rules
def test_no_divergence_on_smooth_losses():
    _, rep = run_losses([2.0 - 0.1 * i for i in range(12)])
    assert rep.divergence is None
    assert sorted(rep.per_step) == list(range(1, 13))


def test_nan_loss_is_non_finite_loss_at_that_step():
    losses = [1.0] * 6 + [float("nan")] + [1.0] * 3
    mon, rep = run_losses(losses)
    assert rep.divergence is not None
    assert (rep.divergence.cause, rep.divergence.step) == ("non_finite_loss", 7)
    # the layer comes from the last finite-gradient step before; it is a real parameter
    assert rep.divergence.layer in mon.param_names
    # later steps are still reported, the first divergence is the one reported
    assert sorted(rep.per_step) == list(range(1, 11))
    assert math.isnan(rep.per_step[7]["loss"])
    assert math.isfinite(rep.per_step[7]["loss_ema"])
    assert mon.divergence == rep.divergence


def test_inf_loss_at_first_step():
    _, rep = run_losses([float("inf"), 1.0])
    assert (rep.divergence.cause, rep.divergence.step) == ("non_finite_loss", 1)


def test_nan_grad_with_finite_loss_is_non_finite_grad():
    model = mlp()
    mon = DivergenceMonitor(model, DivergenceSpec())

    def poison(m):
        m[4].weight.grad[0, 0] = float("nan")

    for k in range(1, 5):
        step(mon, model, k, detailed=k == 1)
    step(mon, model, 5, grad_edit=poison, lr=0.0)
    step(mon, model, 6)
    rep = mon.flush()
    assert rep.divergence == Divergence("non_finite_grad", 5, "4.weight")
    assert math.isnan(rep.per_step[5]["grad_norm"])
    assert math.isfinite(rep.per_step[5]["loss"])


def test_non_finite_grad_names_the_origin_closest_to_the_output():
    model = mlp()
    mon = DivergenceMonitor(model, DivergenceSpec())

    def poison(m):  # a NaN born at layer 4 propagates to every parameter before it
        for i in (0, 2, 4):
            m[i].weight.grad.fill_(float("nan"))
            m[i].bias.grad.fill_(float("nan"))

    step(mon, model, 1, grad_edit=poison, lr=0.0)
    rep = mon.flush()
    assert rep.divergence == Divergence("non_finite_grad", 1, "4.bias")


def test_loss_explosion():
    losses = [1.0] * 6 + [20.0]
    _, rep = run_losses(losses, DivergenceSpec(loss_multiple=10, initial_steps=5))
    assert (rep.divergence.cause, rep.divergence.step) == ("loss_explosion", 7)


def test_explosion_needs_the_initial_estimate():
    # step 2 is 30x step 1 but the initial estimate (3 steps) is not complete yet: it joins the estimate
    # (32/3), and step 5 is above 10x that
    _, rep = run_losses([1.0, 30.0, 1.0, 1.0, 200.0], DivergenceSpec(initial_steps=3, spike_patience=5))
    assert rep.divergence is not None
    assert (rep.divergence.cause, rep.divergence.step) == ("loss_explosion", 5)


def test_sustained_spike_at_the_exact_step():
    spec = DivergenceSpec(loss_multiple=100, spike_ratio=3, spike_patience=4, ema_decay=0.9)
    losses = [1.0] * 6 + [5.0] * 6
    _, rep = run_losses(losses, spec)
    assert (rep.divergence.cause, rep.divergence.step) == ("loss_spike", 10)
    assert rep.per_step[7]["spike_ratio"] == pytest.approx(5.0)
    assert rep.per_step[10]["spike_ratio"] == pytest.approx(5.0)  # the EMA keeps the pre-spike baseline


@pytest.mark.parametrize("blip", [1, 3])
def test_blip_shorter_than_patience_is_not_divergence(blip):
    spec = DivergenceSpec(loss_multiple=100, spike_ratio=3, spike_patience=4)
    losses = [1.0] * 6 + [5.0] * blip + [1.0] * 6 + [5.0] * blip + [1.0]
    _, rep = run_losses(losses, spec)
    assert rep.divergence is None
    assert rep.per_step[7]["spike_ratio"] > 3


def test_ema_and_spike_ratio_by_hand():
    spec = DivergenceSpec(ema_decay=0.5)
    _, rep = run_losses([2.0, 1.0, 4.0], spec)
    assert rep.per_step[1]["spike_ratio"] == pytest.approx(1.0)
    assert rep.per_step[1]["loss_ema"] == pytest.approx(2.0)
    assert rep.per_step[2]["spike_ratio"] == pytest.approx(0.5)
    assert rep.per_step[2]["loss_ema"] == pytest.approx(1.5)
    assert rep.per_step[3]["spike_ratio"] == pytest.approx(4.0 / 1.5)
    assert rep.per_step[3]["loss_ema"] == pytest.approx(2.75)


def test_divergences_split_over_flushes_and_first_one_kept():
    model = mlp()
    mon = DivergenceMonitor(model, DivergenceSpec())
    run_losses([1.0] * 3, mon=mon, model=model)
    _, rep = run_losses([1.0, float("nan")], mon=mon, model=model, start=4)
    assert rep.divergence.step == 5
    _, rep2 = run_losses([float("nan")], mon=mon, model=model, start=6)
    assert rep2.divergence.step == 6  # this interval's first
    assert mon.divergence.step == 5  # the first ever


# ----------------------------------------------------------------------------------- statistics
def test_per_step_metric_names_and_grad_norms():
    model = mlp()
    mon = DivergenceMonitor(model, DivergenceSpec())
    step(mon, model, 1, detailed=True)
    mon.start_step(2, False)
    loss = model(torch.randn(16, 4)).pow(2).mean()
    model.zero_grad()
    loss.backward()
    mon.record(loss)
    norms = [p.grad.norm().item() for p in model.parameters()]
    total = math.sqrt(sum(n * n for n in norms))
    assert mon.last_grad_norm.item() == pytest.approx(total, rel=1e-5)
    mon.end_step()
    rep = mon.flush()
    assert set(rep.per_step[2]) == {"loss", "loss_ema", "spike_ratio", "grad_norm", "grad_norm_max"}
    assert set(rep.per_step[1]) == {"loss", "loss_ema", "spike_ratio", "grad_norm", "grad_norm_max",
                                    "update_ratio", "update_ratio_max", "weight_norm"}
    assert rep.per_step[2]["grad_norm"] == pytest.approx(total, rel=1e-5)
    assert rep.per_step[2]["grad_norm_max"] == pytest.approx(max(norms), rel=1e-5)
    assert rep.per_step[2]["loss"] == pytest.approx(loss.item())
    assert rep.latest["loss"] == rep.per_step[2]["loss"]
    assert rep.latest["update_ratio"] == rep.per_step[1]["update_ratio"]


def test_update_ratio_matches_hand_computation():
    model = mlp()
    mon = DivergenceMonitor(model, DivergenceSpec())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    step(mon, model, 1, detailed=True, lr=0.05)
    after = dict(model.named_parameters())
    ratio = {n: (after[n] - before[n]).norm().item() / before[n].norm().item() for n in before}
    dw = math.sqrt(sum((after[n] - before[n]).norm().item() ** 2 for n in before))
    w = math.sqrt(sum(before[n].norm().item() ** 2 for n in before))
    weights = [n for n in before if n.endswith("weight")]  # biases are additive: not candidates
    m = mon.flush().per_step[1]
    assert m["update_ratio"] == pytest.approx(dw / w, rel=1e-5)
    assert m["weight_norm"] == pytest.approx(w, rel=1e-5)
    assert m["update_ratio_max"] == pytest.approx(max(ratio[n] for n in weights), rel=1e-5)
    assert mon.latest_update_ratio_layer == max(weights, key=ratio.get)


def test_scaled_layer_is_named():
    model = mlp()
    mon = DivergenceMonitor(model, DivergenceSpec(loss_multiple=10, initial_steps=3))

    def boost(m):
        m[2].weight.grad.mul_(1e4)
        m[2].bias.grad.mul_(1e4)

    for k in range(1, 5):
        step(mon, model, k, loss_value=1.0, detailed=k == 1, lr=1e-3)
    mon.start_step(5, True)
    loss = model(torch.randn(16, 4)).pow(2).mean()
    model.zero_grad()
    loss.backward()
    boost(model)
    g2 = max(model[2].weight.grad.norm().item(), model[2].bias.grad.norm().item())
    mon.record(torch.tensor(50.0))
    with torch.no_grad():
        for p in model.parameters():
            p -= 1e-3 * p.grad
    mon.end_step()
    rep = mon.flush()
    assert rep.divergence == Divergence("loss_explosion", 5, "2.weight")
    assert rep.per_step[5]["grad_norm_max"] == pytest.approx(g2, rel=1e-5)
    assert rep.latest_update_ratio_layer == "2.weight"


def test_divergence_layer_before_any_detailed_step_uses_the_first_steps_weights():
    model = mlp()
    mon = DivergenceMonitor(model, DivergenceSpec(initial_steps=1))

    def boost(m):
        m[4].weight.grad.mul_(1e4)

    step(mon, model, 1, loss_value=1.0, lr=0.0)
    step(mon, model, 2, loss_value=100.0, lr=0.0, grad_edit=boost)
    assert mon.flush().divergence == Divergence("loss_explosion", 2, "4.weight")


def _norms(model) -> dict[str, float]:
    return {n: p.detach().norm().item() for n, p in model.named_parameters()}


def test_nan_loss_in_the_first_interval_is_named_from_the_first_steps_weights():
    """No detailed step yet and the weights are NaN by flush time (a NaN loss's update): the ratio uses the
    weight norms taken at the first step, and the gradients of the last finite step."""
    model = mlp()
    mon = DivergenceMonitor(model, DivergenceSpec())
    w0 = _norms(model)
    grads: dict[str, float] = {}

    def keep(m):
        grads.update({n: p.grad.norm().item() for n, p in m.named_parameters()})
        m[2].weight.grad.mul_(50.0)  # make one layer the clear winner
        grads["2.weight"] *= 50.0

    for k in (1, 2):
        step(mon, model, k, lr=1e-3)
    step(mon, model, 3, lr=1e-3, grad_edit=keep)
    step(mon, model, 4, loss_value=float("nan"), lr=1e-3)
    with torch.no_grad():  # what the NaN step's update does to every weight
        for p in model.parameters():
            p.fill_(float("nan"))
    rep = mon.flush()
    weights = [n for n in w0 if n.endswith("weight")]
    assert rep.divergence == Divergence("non_finite_loss", 4, max(weights, key=lambda n: grads[n] / w0[n]))
    assert rep.divergence.layer == "2.weight"


def test_nan_at_the_very_first_step_names_the_first_non_finite_weight():
    model = mlp()
    with torch.no_grad():
        model[4].weight[0, 0] = float("inf")
    mon = DivergenceMonitor(model, DivergenceSpec())
    step(mon, model, 1, loss_value=float("nan"), lr=0.0)
    assert mon.flush().divergence == Divergence("non_finite_loss", 1, "4.weight")


def test_nan_at_the_very_first_step_with_finite_weights_names_the_first_non_finite_gradient():
    model = mlp()
    mon = DivergenceMonitor(model, DivergenceSpec())

    def poison(m):  # a NaN loss's gradients: NaN from layer 2 back to the input
        for i in (0, 2):
            m[i].weight.grad.fill_(float("nan"))
            m[i].bias.grad.fill_(float("nan"))

    step(mon, model, 1, loss_value=float("nan"), lr=0.0, grad_edit=poison)
    assert mon.flush().divergence == Divergence("non_finite_loss", 1, "0.weight")


def test_nan_at_the_very_first_step_with_finite_gradients_names_the_largest_ratio():
    model = mlp()
    mon = DivergenceMonitor(model, DivergenceSpec())

    def boost(m):
        m[6].weight.grad.mul_(1e3)

    step(mon, model, 1, loss_value=float("inf"), lr=0.0, grad_edit=boost)
    assert mon.flush().divergence == Divergence("non_finite_loss", 1, "6.weight")


def test_the_first_step_snapshot_is_replaced_by_detailed_steps_and_kept_across_flushes():
    model = mlp()
    mon = DivergenceMonitor(model, DivergenceSpec())
    step(mon, model, 1, lr=0.0)
    mon.flush()
    assert mon.attribution.wnorm_ref == pytest.approx(list(_norms(model).values()), rel=1e-6)
    assert mon.recorder.wnorm_start is None  # taken once: a reference exists now
    with torch.no_grad():
        model[0].weight.mul_(2.0)
    step(mon, model, 2, lr=0.0, detailed=True)
    mon.flush()
    assert mon.attribution.wnorm_ref[0] == pytest.approx(_norms(model)["0.weight"], rel=1e-6)


def _resnet(scheme: str = "bn"):
    torch.manual_seed(0)
    return build_model("resnet_cifar", scheme, num_classes=10, cifar_width=8)


def _resnet_step(mon, model, k, detailed, x=None):
    mon.start_step(k, detailed)
    if x is None:
        x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(k))
    loss = nn.functional.cross_entropy(model(x), torch.arange(8) % 10)
    model.zero_grad()
    loss.backward()
    mon.record(loss)
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.01 * p.grad
    mon.end_step()


def _hook_count(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_activation_stats_dead_stage():
    model = _resnet("bn")
    with torch.no_grad():  # layer2's convs output 0 -> BN(0) = beta = 0 -> ReLU: every channel constant
        for p in model.layer2.parameters():
            if p.dim() == 4:
                p.zero_()
    mon = DivergenceMonitor(model, DivergenceSpec())
    _resnet_step(mon, model, 1, detailed=False)
    assert _hook_count(model) == 0
    mon.start_step(2, True)
    assert _hook_count(model) > 0
    x = torch.randn(8, 3, 16, 16)
    loss = nn.functional.cross_entropy(model(x), torch.arange(8))
    model.zero_grad()
    loss.backward()
    mon.record(loss)
    mon.end_step()
    assert _hook_count(model) == 0
    rep = mon.flush()
    m = rep.per_step[2]
    assert "dead_frac/stem" not in rep.per_step[1]
    stages = ["stem", "layer1", "layer2", "layer3"]
    for s in stages:
        assert {f"act_mean/{s}", f"act_std/{s}", f"dead_frac/{s}"} <= set(m)
    assert m["dead_frac/layer2"] == 1.0
    assert m["act_std/layer2"] == 0.0
    assert m["dead_frac/stem"] < 1.0
    assert m["dead_frac/layer1"] < 1.0
    assert m["act_std/layer1"] > 0.0
    assert "wn_g_norm" not in m
    # stem stats by hand: the stem's act1 output
    with torch.no_grad():
        stem = model.act1(model.bn1(model.conv1(x)))
    # (the weights moved after the step; the hook saw the pre-step ones -- compare loosely)
    assert m["act_mean/stem"] == pytest.approx(stem.mean().item(), rel=0.2)


def test_dead_fraction_counts_constant_channels():
    model = _resnet("bn")
    with torch.no_grad():  # kill half of the stem's channels: BN beta very negative -> ReLU 0
        model.bn1.bias[: model.bn1.bias.numel() // 2] = -1e3
    mon = DivergenceMonitor(model, DivergenceSpec())
    _resnet_step(mon, model, 1, detailed=True)
    assert mon.flush().per_step[1]["dead_frac/stem"] == pytest.approx(0.5)


# ----------------------------------------------------------------------------------- collapse
CHANCE = 1 / 10


def rule_with(seqs: dict[str, list[float]], every: int = 10) -> CollapseRule:
    """A CollapseRule fed ``dead_frac`` sequences, one value per detailed step (every ``every`` steps)."""
    rule = CollapseRule()
    for i in range(max(map(len, seqs.values()), default=0)):
        for stage, values in seqs.items():  # forward order, as the monitor reports them
            if i < len(values):
                rule.observe((i + 1) * every, stage, values[i])
    return rule


def test_collapse_dead_stage_at_chance_is_dead_relu_at_its_first_crossing():
    # WN at a high lr: layer3 95 % dead by step 30, the run ends finite at chance
    rule = rule_with({"stem": [0.0] * 5, "layer2": [0.1, 0.2, 0.3, 0.3, 0.3], "layer3": [0.2, 0.4, 0.95, 0.96, 0.7]})
    assert rule.verdict(0.09, 2.31, 10, last_step=50) == Collapse("dead_relu", 30, "layer3", 0.96)


def test_collapse_names_the_stage_that_died_first_then_the_deadest_then_forward_order():
    assert rule_with({"layer2": [0.1, 0.6, 0.6], "layer3": [0.1, 0.2, 0.99]}).verdict(0.1, 2.3, 10, 30) == Collapse(
        "dead_relu", 20, "layer2", 0.6)
    tie = rule_with({"layer1": [0.7], "layer2": [0.8]}).verdict(0.1, 2.3, 10, 10)
    assert (tie.layer, tie.step) == ("layer2", 10)
    same = rule_with({"layer1": [0.8], "layer2": [0.8]}).verdict(0.1, 2.3, 10, 10)
    assert same.layer == "layer1"


def test_no_collapse_above_chance_even_with_dead_stages():
    rule = rule_with({"layer3": [0.99, 0.99]})
    limit = COLLAPSE_CHANCE_MULTIPLE * CHANCE
    assert rule.verdict(limit + 0.01, 1.0, 10, 20) is None  # it learned: dead units but not collapsed
    assert rule.verdict(limit, 2.3, 10, 20).cause == "dead_relu"  # "at most 1.5 x chance" includes the bound
    assert rule.verdict(limit, 2.3, 100, 20) is None  # chance depends on the number of classes (0.01 here)


def test_no_dead_stage_at_the_uniform_guess_loss_is_chance_accuracy_at_the_last_step():
    rule = rule_with({"stem": [0.0, 0.0], "layer1": [0.1, 0.3], "layer2": [0.2, 0.1]})
    assert COLLAPSE_DEAD_FRAC > 0.3
    assert rule.verdict(0.1, math.log(10), 10, last_step=150) == Collapse("chance_accuracy", 150, "layer1", 0.3)
    # no activation statistics at all (a model without stages, or a disabled monitor)
    assert CollapseRule().verdict(0.1, 2.31, 10, 40) == Collapse("chance_accuracy", 40, "", None)


def test_a_slow_learner_at_chance_whose_loss_fell_is_not_collapsed():
    rule = rule_with({"layer1": [0.0, 0.0]})
    assert rule.verdict(0.12, 0.9 * math.log(10), 10, 150) is None


def test_collapse_needs_a_measured_finite_ending():
    rule = rule_with({"layer3": [0.99]})
    assert rule.verdict(None, 2.3, 10, 10) is None
    assert rule.verdict(float("nan"), 2.3, 10, 10) is None
    assert CollapseRule().verdict(0.1, float("nan"), 10, 10) is None  # NaN loss: no chance_accuracy
    rule_nan = rule_with({"layer3": [float("nan"), 0.2]})
    assert rule_nan.verdict(0.1, 1.0, 10, 20) is None  # NaN fractions are not observations


def test_collapse_thresholds_are_parameters():
    rule = CollapseRule(chance_multiple=3.0, dead_frac=0.95, loss_frac=0.5)
    for k, v in enumerate((0.9, 0.96)):
        rule.observe(10 * (k + 1), "layer3", v)
    assert rule.verdict(0.25, 1.0, 10, 20) == Collapse("dead_relu", 20, "layer3", 0.96)


def test_collapse_rule_on_the_monitors_real_dead_fractions():
    """A model whose layer2 ReLUs are all dead (its convs zeroed): the monitor's own dead_frac feeds the rule."""
    model = _resnet("bn")
    with torch.no_grad():
        for p in model.layer2.parameters():
            if p.dim() == 4:
                p.zero_()
    mon = DivergenceMonitor(model, DivergenceSpec())
    for k in (1, 2, 3, 4):
        _resnet_step(mon, model, k, detailed=k % 2 == 0)
    rep = mon.flush()
    assert rep.per_step[2]["dead_frac/layer2"] == 1.0
    assert mon.collapse(0.1, 2.3, 10) == Collapse("dead_relu", 2, "layer2", 1.0)
    assert mon.collapse(0.5, 1.2, 10) is None
    # the rule's state survives a checkpoint
    again = DivergenceMonitor(_resnet("bn"), DivergenceSpec())
    again.load_state_dict(mon.state_dict())
    assert again.collapse(0.1, 2.3, 10) == mon.collapse(0.1, 2.3, 10)
    old = {k: v for k, v in mon.state_dict().items() if k != "collapse"}  # a version-1 checkpoint
    again.load_state_dict(old)
    assert again.collapse(0.1, 2.3, 10) == Collapse("chance_accuracy", 4, "", None)


@pytest.mark.parametrize("scheme", ["wn", "wn_trelu", "normprop"])
def test_wn_family_reports_gain_norm_and_stages(scheme):
    model = _resnet(scheme)
    mon = DivergenceMonitor(model, DivergenceSpec())
    _resnet_step(mon, model, 1, detailed=True)
    m = mon.flush().per_step[1]
    gains = [p for n, p in model.named_parameters() if n.endswith(".g")]
    assert gains and math.isfinite(m["wn_g_norm"]) and m["wn_g_norm"] > 0
    assert all(f"dead_frac/{s}" in m for s in ("stem", "layer1", "layer2", "layer3"))
    assert all(0.0 <= m[f"dead_frac/{s}"] <= 1.0 for s in ("stem", "layer1", "layer2", "layer3"))


def test_disabled_monitor_only_loss():
    model = _resnet("bn")
    mon = DivergenceMonitor(model, DivergenceSpec(monitor=False))
    assert not mon.enabled
    mon.start_step(1, True)
    assert _hook_count(model) == 0
    model.zero_grad(set_to_none=True)  # no grads at all: the disabled monitor never reads them
    mon.record(torch.tensor(2.0))
    mon.end_step()
    mon.start_step(2, True)
    mon.record(torch.tensor(float("nan")))
    mon.end_step()
    rep = mon.flush()
    assert set(rep.per_step[1]) == {"loss", "loss_ema", "spike_ratio"}
    assert rep.divergence == Divergence("non_finite_loss", 2, "")
    assert DivergenceMonitor(model, DivergenceSpec(monitor=False), enabled=True).enabled


def test_no_host_device_sync_in_the_step(monkeypatch):
    model = _resnet("wn_trelu")
    mon = DivergenceMonitor(model, DivergenceSpec())
    x = torch.randn(8, 3, 16, 16)

    def forbidden(*_a, **_k):
        raise AssertionError("host-device sync inside the step")

    with monkeypatch.context() as mp:
        for name in ("item", "__bool__", "__float__", "__int__", "cpu", "tolist", "numpy"):
            mp.setattr(torch.Tensor, name, forbidden)
        for k, detailed in ((1, True), (2, False), (3, True)):
            mon.start_step(k, detailed)
            loss = nn.functional.cross_entropy(model(x), torch.arange(8))
            model.zero_grad()
            loss.backward()
            mon.record(loss)
            with torch.no_grad():
                params = list(model.parameters())
                torch._foreach_add_(params, [p.grad for p in params], alpha=-0.01)
            mon.end_step()
        with pytest.raises(AssertionError):  # the patch is live
            bool(torch.tensor(True))
    rep = mon.flush()
    assert sorted(rep.per_step) == [1, 2, 3]
    assert "dead_frac/layer3" in rep.per_step[3]


@pytest.mark.parametrize(("first", "rest", "expected"), [
    # the initial-loss estimate lives in the state: step 11 is > 10x the initial loss
    ([1.0] * 6, [1.0, 2.5, 2.5, 2.5, 12.0], Divergence("loss_explosion", 11, "6.weight")),
    # the spike counter and the EMA live in the state: the spike began before the checkpoint
    ([1.0] * 6 + [5.0, 5.0], [5.0, 5.0], Divergence("loss_spike", 9, "6.weight")),
])
def test_state_dict_round_trip_reproduces_decisions(first, rest, expected):
    spec = DivergenceSpec(loss_multiple=10, spike_ratio=3, spike_patience=3, initial_steps=4)
    start = len(first) + 1
    model = mlp()
    mon, _ = run_losses(first, spec, model=model)
    state = mon.state_dict()
    model_b = mlp()
    model_b.load_state_dict(model.state_dict())
    rep_a = run_losses(rest, start=start, mon=mon, model=model)[1]

    mon_b = DivergenceMonitor(model_b, spec)
    mon_b.load_state_dict(state)
    rep_b = run_losses(rest, start=start, mon=mon_b, model=model_b)[1]
    assert rep_a.divergence == rep_b.divergence
    assert (rep_a.divergence.cause, rep_a.divergence.step) == (expected.cause, expected.step)
    assert rep_a.divergence.layer in mon.param_names
    for k in rep_a.per_step:
        assert rep_a.per_step[k] == pytest.approx(rep_b.per_step[k])
    # a fresh monitor (no state) decides differently
    assert run_losses(rest, spec, start=start)[1].divergence is None


def test_flush_without_steps():
    mon = DivergenceMonitor(mlp(), DivergenceSpec())
    rep = mon.flush()
    assert rep.per_step == {} and rep.latest == {} and rep.divergence is None


# ----------------------------------------------------------------------------------- sharpness
class Quadratic(nn.Module):
    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        n = a.shape[0]
        self.a = a
        z = torch.randn(n, generator=torch.Generator().manual_seed(1), dtype=a.dtype)
        self.x = nn.Parameter(z[: n // 2].clone())  # two parameters: the HVP spans both blocks
        self.y = nn.Parameter(z[n // 2:].clone())

    def forward(self) -> torch.Tensor:
        z = torch.cat([self.x, self.y])
        return 0.5 * z @ self.a @ z


def test_hessian_top_eigenvalue_of_a_quadratic():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    eig = torch.tensor([9.0, 4.0, 2.0, 1.0, 0.5, 0.3, 0.2, 0.1], dtype=torch.float64)
    a = q @ torch.diag(eig) @ q.T
    model = Quadratic(a)
    mon = DivergenceMonitor(model, DivergenceSpec(hessian_iters=30))
    top = mon.hessian_top_eigenvalue(model, 30)
    assert top == pytest.approx(9.0, rel=0.01)
    assert model.x.grad is None  # .grad untouched


def test_hessian_mid_step_keeps_hooks_and_stats():
    model = _resnet("bn")
    mon = DivergenceMonitor(model, DivergenceSpec())
    x = torch.randn(4, 3, 16, 16)
    mon.start_step(1, True)
    loss = nn.functional.cross_entropy(model(x), torch.arange(4))
    n_hooks = _hook_count(model)
    n_stats = {k: len(v) for k, v in mon.recorder.act_stats.items()}
    top = mon.hessian_top_eigenvalue(lambda: nn.functional.cross_entropy(model(x), torch.arange(4)), 3)
    assert math.isfinite(top)
    assert _hook_count(model) == n_hooks  # re-armed, and the sharpness forward left no stats behind
    assert {k: len(v) for k, v in mon.recorder.act_stats.items()} == n_stats
    model.zero_grad()
    loss.backward()
    mon.record(loss)
    mon.end_step()
    assert "act_std/layer3" in mon.flush().per_step[1]
