"""Fixup (Zhang, Dauphin & Ma 2019): at init every residual branch outputs exactly zero, so each block
is relu(shortcut(x)) and the logits are zero; the other branch layers are He init × L^(−1/(2m−2))."""

import math

import pytest
import torch
from torch import nn

from trainers import norms
from trainers.models import build_model
from trainers.norms.fixup import FixupBasicBlock, FixupBottleneck, FixupLinear, ScalarBias, branch_scale


def _blocks(model):
    return [block for stage in model.stages for block in getattr(model, stage)]


@pytest.mark.parametrize(("arch", "block_type"), [
    ("resnet_cifar", FixupBasicBlock), ("resnet18", FixupBasicBlock), ("resnet50", FixupBottleneck),
])
def test_every_block_is_relu_of_its_shortcut_and_logits_are_zero_at_init(arch, block_type):
    torch.manual_seed(0)
    model = build_model(arch, "fixup", 10)
    seen = []

    def check(block, inp, out):
        x = inp[0]
        shortcut = x if block.downsample is None else block.downsample(x + block.bias1a)
        assert torch.equal(out, torch.relu(shortcut))
        seen.append(block.downsample is not None)

    blocks = _blocks(model)
    assert blocks and all(type(b) is block_type for b in blocks)
    for block in blocks:
        block.register_forward_hook(check)
    with torch.no_grad():
        logits = model(torch.randn(2, 3, 32, 32))
    assert len(seen) == len(blocks) and any(seen) and not all(seen)
    assert torch.count_nonzero(logits) == 0


def test_every_branch_outputs_exactly_zero_at_init():
    torch.manual_seed(0)
    block = _blocks(build_model("resnet50", "fixup", 10))[1]  # an identity-shortcut bottleneck
    x = torch.randn(2, 256, 8, 8)
    with torch.no_grad():
        out = block.act1(block.conv1(x + block.bias1a) + block.bias1b)
        out = block.act2(block.conv2(out + block.bias2a) + block.bias2b)
        out = block.conv3(out + block.bias3a) * block.scale + block.bias3b
        assert torch.count_nonzero(out) == 0
        # A random input that is not all ≥ 0 shows the block's ReLU after the addition.
        torch.testing.assert_close(block(x), torch.relu(x), atol=0, rtol=0)


def _he_std(conv):
    return math.sqrt(2.0 / (conv.weight.shape[0] * conv.weight[0, 0].numel()))


def _std_ratio(conv):
    return conv.weight.std().item() / _he_std(conv)


@pytest.mark.parametrize(("arch", "kwargs", "num_branches", "m"), [
    ("resnet_cifar", dict(cifar_width=32, cifar_blocks=(3, 3, 3)), 9, 2),  # 9^(−1/2) = 1/3
    ("resnet50", {}, 16, 3),  # 16^(−1/4) = 1/2
])
def test_branch_layers_are_he_init_times_L_to_the_minus_1_over_2m_minus_2(arch, kwargs, num_branches, m):
    torch.manual_seed(0)
    model = build_model(arch, "fixup", 10, **kwargs)
    blocks = _blocks(model)
    assert len(blocks) == num_branches
    factor = num_branches ** (-1.0 / (2 * m - 2))
    assert branch_scale(num_branches, m) == pytest.approx(factor)
    for block in blocks:
        convs = [block.conv1, block.conv2] + ([block.conv3] if m == 3 else [])
        # Each conv has ≥ 4096 weights, so its sample std is within ~1.5% of the true one (1/√(2n));
        # 6% separates the rule from its neighbours (e.g. L^(−1/2) vs L^(−1/4) differ by 2×).
        for conv in convs[:-1]:
            assert _std_ratio(conv) == pytest.approx(factor, rel=0.06)
        assert torch.count_nonzero(convs[-1].weight) == 0
        if block.downsample is not None:
            assert _std_ratio(block.downsample) == pytest.approx(1.0, rel=0.06)
    assert torch.count_nonzero(model.fc.weight) == 0 and torch.count_nonzero(model.fc.bias) == 0


def test_scalar_biases_and_multipliers():
    torch.manual_seed(0)
    model = build_model("resnet18", "fixup", 10)
    assert isinstance(model.bn1, ScalarBias) and isinstance(model.fc, FixupLinear)
    for block in _blocks(model):
        for name in ("bias1a", "bias1b", "bias2a", "bias2b"):
            p = getattr(block, name)
            assert p.shape == (1,) and p.item() == 0
        assert block.scale.shape == (1,) and block.scale.item() == 1
        if block.downsample is not None:
            assert type(block.downsample) is nn.Conv2d and block.downsample.kernel_size == (1, 1)
    assert not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) for m in model.modules())


def test_lr_multipliers_cover_the_scalar_biases_scales_and_classifier_bias():
    model = build_model("resnet18", "fixup", 10)
    mult = norms.create("fixup").lr_multipliers(model)
    scalars = {n for n, p in model.named_parameters() if p.numel() == 1}
    assert set(mult) == scalars | {"fc.bias"} and set(mult.values()) == {0.1}
    assert not any(n.endswith("weight") for n in mult)


def test_ablation_options():
    torch.manual_seed(0)
    model = build_model("resnet_cifar", "fixup", 10, cifar_width=32, cifar_blocks=(3, 3, 3),
                        rescale_branches=False, zero_init=False)
    for block in _blocks(model):
        assert _std_ratio(block.conv1) == pytest.approx(1.0, rel=0.06)
        assert _std_ratio(block.conv2) == pytest.approx(1.0, rel=0.06)
    assert torch.count_nonzero(model.fc.weight) > 0
    with pytest.raises(ValueError, match="unknown option"):
        norms.create("fixup", init_scale=1.0)


@pytest.mark.parametrize("arch", ["resnet_cifar", "resnet18"])
def test_forward_backward_and_a_step_leaves_the_zero_init(arch):
    torch.manual_seed(0)
    model = build_model(arch, "fixup", 10)
    x = torch.randn(4, 3, 32, 32)
    loss = nn.functional.cross_entropy(model(x), torch.arange(4))
    loss.backward()
    assert loss.item() == pytest.approx(math.log(10))
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.count_nonzero(model.fc.weight.grad) > 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    with torch.no_grad():
        assert torch.count_nonzero(model(x)) > 0
