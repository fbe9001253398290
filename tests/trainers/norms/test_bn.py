"""Batch normalization (Ioffe & Szegedy 2015): y = γ (x − μ_B)/√(σ²_B+ε) + β, running stats in eval."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainers import norms
from trainers.models import build_model

C = 6


def _bn(**options) -> nn.BatchNorm2d:
    torch.manual_seed(0)
    layer = norms.create("bn", **options).norm(C)
    assert isinstance(layer, nn.BatchNorm2d)
    with torch.no_grad():  # non-trivial affine so the test can undo it
        layer.weight.copy_(torch.linspace(0.5, 2.0, C))
        layer.bias.copy_(torch.linspace(-1.0, 1.0, C))
    return layer


def test_train_mode_standardizes_each_channel_before_the_affine():
    layer = _bn().train()
    x = torch.randn(16, C, 5, 5) * torch.linspace(0.1, 10, C).view(1, -1, 1, 1) + 3.0
    y = layer(x)
    gamma, beta = layer.weight.view(1, -1, 1, 1), layer.bias.view(1, -1, 1, 1)
    z = (y - beta) / gamma  # the normalized activations, before γ, β
    dims = [0, 2, 3]
    torch.testing.assert_close(z.mean(dims), torch.zeros(C), atol=1e-5, rtol=0)
    # Biased variance over batch and space, as in the paper; ≈1 up to ε/σ² (ε = 1e-5, σ² ≥ 0.01).
    torch.testing.assert_close(z.var(dims, unbiased=False), torch.ones(C), atol=2e-3, rtol=0)


def test_train_mode_output_matches_the_formula_with_batch_statistics():
    layer = _bn(eps=1e-3).train()
    x = torch.randn(8, C, 4, 4) * 2 + 1
    mu = x.mean([0, 2, 3], keepdim=True)
    var = x.var([0, 2, 3], unbiased=False, keepdim=True)
    gamma, beta = layer.weight.view(1, -1, 1, 1), layer.bias.view(1, -1, 1, 1)
    expected = gamma * (x - mu) / torch.sqrt(var + 1e-3) + beta
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_eval_mode_uses_running_statistics():
    layer = _bn(momentum=0.5, eps=1e-3).train()
    for _ in range(3):  # move the running averages away from their (0, 1) start
        layer(torch.randn(8, C, 4, 4) * 3 + 2)
    assert not torch.allclose(layer.running_mean, torch.zeros(C))
    layer.eval()
    x = torch.randn(4, C, 4, 4)
    rm, rv = layer.running_mean.view(1, -1, 1, 1), layer.running_var.view(1, -1, 1, 1)
    gamma, beta = layer.weight.view(1, -1, 1, 1), layer.bias.view(1, -1, 1, 1)
    expected = (x - rm) / torch.sqrt(rv + 1e-3) * gamma + beta
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    # ... and not the batch's own statistics
    batch_norm = (x - x.mean([0, 2, 3], keepdim=True)) / x.std([0, 2, 3], unbiased=False, keepdim=True)
    assert not torch.allclose(layer(x), batch_norm * gamma + beta, atol=1e-2)


def test_eval_mode_output_of_a_sample_does_not_depend_on_its_batch():
    layer = _bn().eval()
    x = torch.randn(4, C, 3, 3)
    others = torch.cat([x[:1], torch.randn(3, C, 3, 3) * 5])
    torch.testing.assert_close(layer(x)[0], layer(others)[0])


def test_train_mode_output_of_a_sample_depends_on_its_batch():
    layer = _bn().train()
    x = torch.randn(4, C, 3, 3)
    others = torch.cat([x[:1], torch.randn(3, C, 3, 3) * 5 + 3])
    assert (layer(x)[0] - layer(others)[0]).abs().max() > 0.1


def test_options_reach_the_layer():
    layer = norms.create("bn", momentum=0.25, eps=1e-3).norm(C)
    assert layer.momentum == 0.25 and layer.eps == 1e-3


@pytest.mark.parametrize("zero", [False, True])
def test_zero_init_last_gamma_zeroes_only_each_blocks_last_norm(zero):
    model = build_model("resnet_cifar", "bn", 10, zero_init_last_gamma=zero)
    last = {id(b.last_norm) for b in model.modules() if hasattr(b, "last_norm")}
    assert last
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            expect_zero = zero and id(m) in last
            assert bool((m.weight == 0).all()) == expect_zero
