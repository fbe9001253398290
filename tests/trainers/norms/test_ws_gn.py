"""WS + GN (Qiao et al. 2019): standardized weights have per-output-channel mean 0 and variance 1, so a
conv's output is invariant to W_i → a_i·W_i + b_i (a_i > 0) per output channel."""

import pytest
import torch
from torch import nn

from trainers import norms
from trainers.models import build_model
from trainers.norms.ws_gn import StdConv2d, standardize_weight


def test_standardized_weights_have_zero_mean_unit_variance_per_output_channel():
    torch.manual_seed(0)
    model = build_model("resnet18", "ws_gn", 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(m, StdConv2d) for m in convs)
    for conv in convs:
        w = conv.standardized_weight().flatten(1)
        assert w.mean(1).abs().max() < 1e-5
        # Var = σ²/(σ + ε)²: within 1e-3 of 1 while ε = 1e-5 ≪ σ (≥ 0.01 at He init for these widths).
        assert (w.var(1, unbiased=False) - 1).abs().max() < 1e-3


def test_standardization_ignores_per_channel_affine_changes_of_the_raw_weight():
    torch.manual_seed(0)
    w = torch.randn(8, 4, 3, 3) * 0.05
    a = torch.rand(8, 1, 1, 1) * 4 + 0.25
    b = torch.randn(8, 1, 1, 1)
    torch.testing.assert_close(standardize_weight(a * w + b, 1e-5), standardize_weight(w, 1e-5),
                               atol=1e-3, rtol=1e-3)


def test_conv_output_is_invariant_to_per_channel_affine_rescaling_of_the_weight():
    torch.manual_seed(0)
    conv = StdConv2d(16, 32, 3, stride=2, padding=1)
    x = torch.randn(2, 16, 9, 9)
    y = conv(x)
    with torch.no_grad():
        a = torch.rand(32, 1, 1, 1) * 4 + 0.25  # a > 0
        conv.weight.mul_(a).add_(torch.randn(32, 1, 1, 1))
    torch.testing.assert_close(conv(x), y, atol=1e-3, rtol=1e-3)
    # ... while a plain conv with the same (changed) weight is not: the check has teeth.
    plain = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
    with torch.no_grad():
        plain.weight.copy_(conv.weight)
    assert not torch.allclose(plain(x), y, atol=1e-2)


def test_model_output_is_invariant_to_rescaling_every_conv_weight():
    torch.manual_seed(0)
    model = build_model("resnet_cifar", "ws_gn", 10).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        y = model(x)
        for conv in model.modules():
            if isinstance(conv, StdConv2d):
                n = conv.out_channels
                conv.weight.mul_(torch.rand(n, 1, 1, 1) * 4 + 0.25).add_(torch.randn(n, 1, 1, 1))
        torch.testing.assert_close(model(x), y, atol=1e-3, rtol=1e-3)


def test_norms_are_group_norms_and_samples_ignore_their_batch():
    torch.manual_seed(0)
    model = build_model("resnet_cifar", "ws_gn", 10).train()
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    x0 = torch.randn(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x0)[0], model(torch.cat([x0, torch.randn(5, 3, 16, 16) * 4]))[0],
                                   atol=1e-5, rtol=1e-4)


def test_options_are_validated():
    assert norms.create("ws_gn").options.groups == 32
    with pytest.raises(ValueError, match="schemes.ws_gn.ws_eps"):
        norms.create("ws_gn", ws_eps=0)


@pytest.mark.parametrize("arch", ["resnet_cifar", "resnet18"])
def test_forward_backward(arch):
    torch.manual_seed(0)
    model = build_model(arch, "ws_gn", 10)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
