"""NF-ResNets (Brock, De & Smith 2021) + AGC (Brock et al. 2021): scaled WS convs, the analytic
signal-propagation scalars β_i = √Var(h_i), and unit-wise adaptive gradient clipping that skips fc."""

import math

import pytest
import torch
from torch import nn

from trainers import norms
from trainers.models import build_model
from trainers.norms.nf import RELU_GAIN, ScaledStdConv2d, adaptive_grad_clip_


def _blocks(model):
    return [block for stage in model.stages for block in getattr(model, stage)]


def test_relu_gain_is_the_inverse_std_of_a_relu_of_a_unit_gaussian():
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0))
    assert RELU_GAIN == pytest.approx(1.7128, abs=1e-4)
    assert (torch.relu(z) * RELU_GAIN).var().item() == pytest.approx(1.0, rel=5e-3)


def test_scaled_ws_rows_have_zero_mean_and_unit_norm_times_the_gain():
    torch.manual_seed(0)
    conv = ScaledStdConv2d(16, 8, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(7).add_(3)  # the raw scale and offset do not matter
        conv.gain.copy_(torch.linspace(0.5, 2, 8))
    w = conv.standardized_weight().flatten(1)
    n = w.shape[1]
    torch.testing.assert_close(w.mean(1), torch.zeros(8), atol=1e-6, rtol=0)
    # Ŵ_i = g_i (W_i − μ_i)/(σ_i √N): ‖Ŵ_i‖ = g_i, i.e. Var = g_i²/N.
    torch.testing.assert_close(w.norm(dim=1), conv.gain.detach(), atol=1e-5, rtol=1e-5)
    assert n == 16 * 9


@pytest.mark.parametrize("alpha", [0.2, 1.0])
def test_residual_stream_variance_follows_the_analytic_recursion(alpha):
    # resnet_cifar, width 64, two blocks a stage: 6 blocks, two of them transitions. With α = 1 the
    # variance grows 1 → 2 → 3, so a missing or wrong β (or γ, or √N) changes it by ≥ 30%.
    torch.manual_seed(0)
    model = build_model("resnet_cifar", "nf", 10, cifar_width=64, cifar_blocks=(2, 2, 2), alpha=alpha)
    # Zero padding lowers the variance at the image border (to ~0.92 for the 3×3 stem on 16 px, ~0.8
    # in the 4×4 last stage): a property of padding, not of the scheme. Circular padding gives every
    # position a full receptive field, so the prediction is the model's and not the border's, and
    # small (8 px) images then suffice: 128 × 64 stem positions a channel, 64–256 channels a stage.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            m.padding_mode = "circular"
    stream, branch = [], []
    model.conv1.register_forward_hook(lambda mod, inp, out: stream.append(out))

    def record(block, inp, out):
        stream.append(out)
        branch.append(block.residual(block.act1(inp[0] / block.beta)))

    blocks = _blocks(model)
    for block in blocks:
        block.register_forward_hook(record)

    # The analytic prediction, recomputed here: Var(h_0) = 1, + α² a block, reset to 1 + α² after a
    # transition (a block with a shortcut conv).
    predicted, var = [1.0], 1.0
    for block in blocks:
        assert block.alpha == alpha
        assert block.beta == pytest.approx(math.sqrt(var))
        var = (1.0 if block.downsample is not None else var) + alpha**2
        predicted.append(var)
        assert block.expected_var == pytest.approx(var)
    assert sum(block.downsample is not None for block in blocks) == 2

    with torch.no_grad():
        model(torch.randn(128, 3, 8, 8))
    # Average per-channel variance (the papers' signal-propagation plots). Over eight seeds (α = 1) the
    # measured / predicted ratio stayed within 0.945–1.055: the finite-width fluctuation of the random
    # weights, not sampling noise. 10% leaves room for that and still catches a wrong β, γ or reset.
    measured = [h.var(dim=(0, 2, 3)).mean().item() for h in stream]
    for i, (m, p) in enumerate(zip(measured, predicted, strict=True)):
        assert m == pytest.approx(p, rel=0.1), f"h_{i}: measured {m:.3f}, predicted {p:.3f}"
    # Each branch f(h/β) sees a unit-variance input and returns a unit-variance output.
    for i, f in enumerate(branch):
        assert f.var(dim=(0, 2, 3)).mean().item() == pytest.approx(1.0, rel=0.1), f"branch {i}"


def test_blocks_are_pre_activation_without_a_relu_after_the_addition():
    torch.manual_seed(0)
    model = build_model("resnet_cifar", "nf", 10)
    assert isinstance(model.act1, nn.Identity)  # nothing after the stem conv
    outs = []
    for block in _blocks(model):
        block.register_forward_hook(lambda mod, inp, out: outs.append(out))
    with torch.no_grad():
        model(torch.randn(8, 3, 16, 16))
    assert all((out < 0).any() for out in outs)
    assert not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) for m in model.modules())


def test_classifier_init():
    torch.manual_seed(0)
    fc = build_model("resnet18", "nf", 100).fc
    assert type(fc) is nn.Linear
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.count_nonzero(fc.bias) == 0
    fc0 = build_model("resnet_cifar", "nf", 10, fc_init_std=0).fc
    assert torch.count_nonzero(fc0.weight) == 0


def test_agc_clips_exactly_the_units_whose_ratio_exceeds_lambda():
    clip = 0.1
    w = nn.Parameter(torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0], [6.0, 8.0]]))  # ‖W_i‖ = 5, 1, 2, 10
    g = torch.tensor([[0.6, 0.8], [0.0, 0.05], [0.3, 0.4], [0.6, 0.8]])  # ‖G_i‖ = 1, .05, .5, 1
    w.grad = g.clone()
    # ratios 0.2 (clip), 0.05 (keep), 0.25 (clip), 0.1 (= λ: keep, the rule is a strict >)
    zero_bias = nn.Parameter(torch.zeros(3))  # ‖W‖ = 0 → floored at eps = 1e-3
    zero_bias.grad = torch.tensor([0.0, 3e-4, 4e-4])  # ‖G‖ = 5e-4 > 0.1 · 1e-3
    small_bias = nn.Parameter(torch.ones(4))  # ‖W‖ = 2, ‖G‖ = 0.1 < 0.2: keep
    small_bias.grad = torch.full((4,), 0.05)
    conv = nn.Parameter(torch.ones(2, 1, 2, 2))  # ‖W_i‖ = 2 for both filters
    conv.grad = torch.stack([torch.full((1, 2, 2), 0.5), torch.full((1, 2, 2), 0.05)])  # ‖G_i‖ = 1, .1
    no_grad = nn.Parameter(torch.ones(2))

    adaptive_grad_clip_([w, zero_bias, small_bias, conv, no_grad], clip=clip)

    expected_w = g.clone()
    expected_w[0] *= clip * 5 / 1.0
    expected_w[2] *= clip * 2 / 0.5
    torch.testing.assert_close(w.grad, expected_w)
    torch.testing.assert_close(w.grad.norm(dim=1)[[0, 2]], torch.tensor([0.5, 0.2]))
    assert torch.equal(w.grad[1], g[1]) and torch.equal(w.grad[3], g[3])
    torch.testing.assert_close(zero_bias.grad, torch.tensor([0.0, 3e-4, 4e-4]) * (clip * 1e-3 / 5e-4))
    assert torch.equal(small_bias.grad, torch.full((4,), 0.05))
    torch.testing.assert_close(conv.grad[0], torch.full((1, 2, 2), 0.5) * (clip * 2 / 1.0))
    assert torch.equal(conv.grad[1], torch.full((1, 2, 2), 0.05))
    assert no_grad.grad is None


def _model_with_large_grads():
    torch.manual_seed(0)
    model = build_model("resnet_cifar", "nf", 10)
    loss = nn.functional.cross_entropy(model(torch.randn(8, 3, 16, 16)), torch.arange(8)) * 1e4
    loss.backward()
    return model


def _max_unit_ratio(p):
    if p.dim() <= 1:
        return (p.grad.norm() / p.detach().norm().clamp_min(1e-3)).item()
    return (p.grad.flatten(1).norm(dim=1) / p.detach().flatten(1).norm(dim=1).clamp_min(1e-3)).max().item()


def test_clip_gradients_applies_agc_to_every_parameter_but_the_classifier():
    scheme = norms.create("nf", agc_clip=0.01)
    model = _model_with_large_grads()
    fc_grads = [p.grad.clone() for p in model.fc.parameters()]
    body = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    assert max(_max_unit_ratio(p) for p in body) > 0.01  # there is something to clip
    scheme.clip_gradients(model)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.fc.parameters(), fc_grads, strict=True))
    assert max(_max_unit_ratio(p) for p in body) <= 0.01 * (1 + 1e-4)


def test_clip_gradients_unwraps_ddp_and_can_be_switched_off():
    model = _model_with_large_grads()
    before = {n: p.grad.clone() for n, p in model.named_parameters()}
    norms.create("nf", agc=False).clip_gradients(model)
    assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())

    class Wrapper(nn.Module):  # DistributedDataParallel keeps the model in `.module`
        def __init__(self, module):
            super().__init__()
            self.module = module

    norms.create("nf").clip_gradients(Wrapper(model))
    assert torch.equal(model.fc.weight.grad, before["fc.weight"])
    assert not torch.equal(model.conv1.weight.grad, before["conv1.weight"])


def test_options_are_validated():
    opts = norms.create("nf").options
    assert (opts.alpha, opts.agc, opts.agc_clip) == (0.2, True, 0.01)
    with pytest.raises(ValueError, match="schemes.nf.alpha"):
        norms.create("nf", alpha=0)
    with pytest.raises(ValueError, match="schemes.nf.agc_clip"):
        norms.create("nf", agc_clip=-1)


@pytest.mark.parametrize("arch", ["resnet_cifar", "resnet18"])
def test_forward_backward(arch):
    torch.manual_seed(0)
    model = build_model(arch, "nf", 10)
    scheme = norms.create("nf")
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    scheme.clip_gradients(model)
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_resnet50_has_bn_parameter_count_plus_skip_gains():
    # Each scaled-WS conv has a gain and a bias per output channel — as many as BN's γ and β — plus
    # one skip gain per block (16); the stem's conv bias stands in for the stem BN's β.
    count = sum(p.numel() for p in build_model("resnet50", "nf", 1000).parameters())
    assert count == 25_557_032 + 16
