"""``none``: the plain ResNet without any normalization — the study's lower bound."""

import pytest
import torch
from torch import nn

from trainers import norms
from trainers.models import build_model

NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm,
              nn.modules.instancenorm._InstanceNorm, nn.LocalResponseNorm)


@pytest.mark.parametrize("arch", ["resnet_cifar", "resnet18", "resnet50"])
def test_no_normalization_anywhere(arch):
    model = build_model(arch, "none", 10)
    assert not any(isinstance(m, NORM_TYPES) for m in model.modules())
    # Every conv is a plain conv (no weight reparameterization) and every norm slot is empty.
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(type(m) is nn.Conv2d and m.bias is None for m in convs)
    assert isinstance(model.bn1, nn.Identity)
    assert type(model.fc) is nn.Linear
    assert not norms.get("none").uses_batch_statistics


def test_resnet50_is_the_bn_model_minus_its_bn_layers():
    bn = build_model("resnet50", "bn", 1000)
    none = build_model("resnet50", "none", 1000)
    bn_params = sum(p.numel() for m in bn.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert sum(p.numel() for p in none.parameters()) == sum(p.numel() for p in bn.parameters()) - bn_params
    bn_names = {n for n, m in bn.named_modules() if isinstance(m, nn.BatchNorm2d)}
    kept = [n for n, _ in bn.named_parameters() if n.rpartition(".")[0] not in bn_names]
    assert [n for n, _ in none.named_parameters()] == kept


@pytest.mark.parametrize("arch", ["resnet_cifar", "resnet18"])
def test_sample_output_is_independent_of_its_batch(arch):
    torch.manual_seed(0)
    model = build_model(arch, "none", 10).train()
    x0 = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        alone = model(x0)[0]
        in_batch = model(torch.cat([x0, torch.randn(7, 3, 32, 32) * 3 + 2]))[0]
    torch.testing.assert_close(alone, in_batch, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["resnet_cifar", "resnet18"])
def test_forward_backward(arch):
    torch.manual_seed(0)
    model = build_model(arch, "none", 10)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
