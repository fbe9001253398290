"""StepRecorder alone: what it buffers per step, the one device→host copy per flush, the activation hooks."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from trainers.monitor_recorder import StepRecorder, find_stages


class Tiny(nn.Module):
    """Two stages as trainers.resnet names them: the stem (``act1``) and ``layer1`` (an ``act1`` inside)."""

    stages = ("layer1",)

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 1)
        self.act1 = nn.ReLU()
        self.layer1 = nn.Sequential(OrderedDict(conv=nn.Conv2d(4, 2, 1), act1=nn.ReLU()))
        self.fc = nn.Linear(2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer1(self.act1(self.conv1(x))).mean((2, 3))).mean()


def xs(k: int) -> torch.Tensor:
    return torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(k))


def sgd_step(rec: StepRecorder, model: nn.Module, k: int, detailed: bool, *, weight_norms: bool = False,
             forwards: int = 1) -> torch.Tensor:
    rec.start_step(k, detailed, weight_norms=weight_norms)
    model.zero_grad()
    loss = sum(model(xs(10 * k + i)) for i in range(forwards)) / forwards
    loss.backward()
    rec.record(loss)
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    rec.end_step()
    return loss


def hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_find_stages():
    model = Tiny()
    stages = find_stages(model)
    assert [(s.name, s.out) for s in stages] == [("stem", model.act1), ("layer1", model.layer1)]
    assert stages[1].acts == [model.layer1.act1]
    assert find_stages(nn.Linear(2, 2)) == []


def test_losses_and_gradient_norms_per_step():
    model = Tiny()
    rec = StepRecorder(model)
    expected = []
    for k in (1, 2, 3):
        rec.start_step(k, False)
        model.zero_grad()
        loss = model(xs(k))
        loss.backward()
        expected.append((loss.item(), [p.grad.norm().item() for p in model.parameters()]))
        rec.record(loss)
        assert rec.last_grad_norm.item() == pytest.approx(math.hypot(*expected[-1][1]), rel=1e-6)
        rec.end_step()
    host = rec.flush()
    assert host.steps == [1, 2, 3]
    assert host.losses == pytest.approx([e[0] for e in expected])
    for got, (_, norms) in zip(host.grad_norms, expected, strict=True):
        assert got == pytest.approx(norms, rel=1e-6)
    assert host.detail == {} and host.start_wnorm is None
    assert rec.param_names == [n for n, _ in model.named_parameters()]
    assert rec.flush() is None  # the buffers were cleared


def test_a_missing_gradient_has_norm_zero():
    model = Tiny()
    rec = StepRecorder(model)
    rec.start_step(1, False)
    model.zero_grad(set_to_none=True)
    model.fc.weight.grad = torch.full_like(model.fc.weight, 2.0)
    rec.record(torch.tensor(1.0))
    rec.end_step()
    norms = dict(zip(rec.param_names, rec.flush().grad_norms[0], strict=True))
    assert norms.pop("fc.weight") == pytest.approx(2.0 * math.sqrt(2))
    assert set(norms.values()) == {0.0}


def test_detailed_steps_measure_the_weights_before_and_the_update():
    model = Tiny()
    before = [p.detach().clone() for p in model.parameters()]
    sgd_step(rec := StepRecorder(model), model, 1, True)
    after = [p.detach().clone() for p in model.parameters()]
    sgd_step(rec, model, 2, False)
    host = rec.flush()
    assert list(host.detail) == [1]
    d = host.detail[1]
    assert d.wnorm == pytest.approx([w.norm().item() for w in before], rel=1e-6)
    assert d.dnorm == pytest.approx([(a - b).norm().item() for a, b in zip(after, before, strict=True)], rel=1e-5)
    assert len(d.acts) == 2 and all(math.isfinite(v) for v in d.acts[0])


def test_activation_statistics_pool_several_forwards():
    model = Tiny()
    outs: list[torch.Tensor] = []
    model.layer1.register_forward_hook(lambda _m, _i, out: outs.append(out.detach()))
    rec = StepRecorder(model)
    assert hooks(model) == 1
    rec.start_step(1, True)
    assert hooks(model) == 1 + 4  # moments and dead fraction of act1 (stem), of layer1 and layer1.act1
    model.zero_grad()
    loss = model(xs(1)) + model(xs(2))
    loss.backward()
    rec.record(loss)
    rec.end_step()
    assert hooks(model) == 1
    mean, rms, dead = rec.flush().detail[1].acts[1]
    assert mean == pytest.approx(torch.stack([o.mean() for o in outs]).mean().item(), rel=1e-5)
    assert rms == pytest.approx(torch.stack([o.square().mean() for o in outs]).mean().sqrt().item(), rel=1e-5)
    fractions = [(o.amax((0, 2, 3)) == o.amin((0, 2, 3))).float().mean() for o in outs]
    assert dead == pytest.approx(torch.stack(fractions).mean().item())


def test_a_stage_not_seen_at_a_detailed_step_is_nan():
    model = Tiny()
    rec = StepRecorder(model)
    rec.start_step(1, True)
    rec.record(torch.tensor(1.0))  # no forward, no backward: no activations, zero gradients
    rec.end_step()
    acts = rec.flush().detail[1].acts
    assert all(math.isnan(v) for stage in acts for v in stage)


def test_hooks_paused_disarms_and_rearms():
    model = Tiny()
    rec = StepRecorder(model)
    with rec.hooks_paused():  # not armed: stays so
        assert hooks(model) == 0
    assert hooks(model) == 0
    rec.start_step(1, True)
    with rec.hooks_paused():
        assert hooks(model) == 0
        model(xs(1))
    assert hooks(model) == 4 and rec.act_stats == {}


def test_first_step_weight_norms_are_taken_once_until_the_flush():
    model = Tiny()
    rec = StepRecorder(model)
    w0 = [p.norm().item() for p in model.parameters()]
    sgd_step(rec, model, 1, False, weight_norms=True)
    sgd_step(rec, model, 2, False, weight_norms=True)  # pending already: not retaken
    assert rec.flush().start_wnorm == pytest.approx(w0, rel=1e-6)
    assert rec.wnorm_start is None
    sgd_step(rec, model, 3, False)
    assert rec.flush().start_wnorm is None
    rec.start_step(4, False, weight_norms=True)
    assert rec.flush() is None and rec.wnorm_start is None  # an empty flush drops it too


def test_discard_pending():
    model = Tiny()
    rec = StepRecorder(model)
    sgd_step(rec, model, 1, True, weight_norms=True)
    rec.discard_pending()
    assert rec.flush() is None


def test_disabled_records_the_loss_only():
    model = Tiny()
    rec = StepRecorder(model, enabled=False)
    rec.start_step(1, True, weight_norms=True)
    assert hooks(model) == 0
    model.zero_grad(set_to_none=True)  # never read
    rec.record(torch.tensor(2.5))
    rec.end_step()
    host = rec.flush()
    assert (host.losses, host.grad_norms, host.detail, host.start_wnorm) == ([2.5], [[]], {}, None)
    assert rec.last_grad_norm is None


def test_one_device_to_host_copy_per_flush_and_none_in_the_steps(monkeypatch):
    model = Tiny()
    rec = StepRecorder(model)
    calls: dict[str, int] = {}
    for name in ("item", "__bool__", "__float__", "__int__", "cpu", "tolist", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(*a, _name=name, _orig=original, **k):
            calls[_name] = calls.get(_name, 0) + 1
            return _orig(*a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    for k, detailed in ((1, True), (2, False), (3, True)):
        sgd_step(rec, model, k, detailed, weight_norms=True)
    assert calls == {}
    host = rec.flush()
    assert calls == {"cpu": 1, "tolist": 1}  # one transfer, then plain Python
    assert sorted(host.detail) == [1, 3] and host.start_wnorm is not None
