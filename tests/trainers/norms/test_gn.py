"""GN (Wu & He 2018): per-sample, per-group standardization; a sample's output ignores its batch."""

import pytest
import torch
from torch import nn

from trainers import norms
from trainers.models import build_model
from trainers.norms.gn import num_groups


@pytest.mark.parametrize(("channels", "groups", "expected"), [
    (64, 32, 32), (256, 32, 32), (16, 32, 16), (48, 32, 24), (100, 32, 25), (3, 32, 3), (64, 1, 1), (7, 4, 1),
])
def test_num_groups_is_largest_divisor_not_above_groups(channels, groups, expected):
    assert num_groups(channels, groups) == expected


@pytest.mark.parametrize(("channels", "min_group_channels", "expected"), [
    (16, 2, 8), (32, 2, 16), (64, 2, 32), (2048, 2, 32), (16, 4, 4), (16, 1, 16), (12, 2, 6), (3, 2, 1),
])
def test_width_aware_groups_never_fall_below_min_group_channels(channels, min_group_channels, expected):
    g = num_groups(channels, 32, min_group_channels)
    assert g == expected
    assert channels % g == 0 and (channels // g >= min_group_channels or g == 1)


def test_quick_model_gets_groups_not_instance_norm_and_resnet50_keeps_the_papers_g32():
    quick = build_model("resnet_cifar", "gn", 10, cifar_width=16)
    assert {m.num_channels // m.num_groups for m in quick.modules() if isinstance(m, nn.GroupNorm)} == {2}
    r50 = build_model("resnet50", "gn", 1000)
    assert {m.num_groups for m in r50.modules() if isinstance(m, nn.GroupNorm)} == {32}
    # the plain fixed-G rule: the 16- and 32-channel stages degenerate to instance norm (1 channel a group)
    fixed = build_model("resnet_cifar", norms.create("gn", min_group_channels=1), 10, cifar_width=16)
    per_group = {m.num_channels: m.num_channels // m.num_groups for m in fixed.modules()
                 if isinstance(m, nn.GroupNorm)}
    assert per_group == {16: 1, 32: 1, 64: 2}


def test_norm_layer_standardizes_each_sample_and_group_before_the_affine():
    torch.manual_seed(0)
    layer = norms.create("gn").norm(64)
    assert isinstance(layer, nn.GroupNorm) and layer.num_groups == 32
    with torch.no_grad():  # a non-trivial affine, undone below: the moments are those before it
        layer.weight.uniform_(0.5, 2.0)
        layer.bias.normal_()
    # Channels with very different offsets and scales, so a per-channel or per-batch norm would not pass.
    scale, offset = torch.linspace(0.1, 10, 64).view(1, -1, 1, 1), torch.randn(1, 64, 1, 1) * 5
    x = torch.randn(4, 64, 5, 5) * scale + offset
    y = layer(x)
    z = (y - layer.bias.view(1, -1, 1, 1)) / layer.weight.view(1, -1, 1, 1)
    z = z.reshape(4, 32, -1)  # (sample, group, channels-of-the-group × H × W)
    torch.testing.assert_close(z.mean(-1), torch.zeros(4, 32), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.var(-1, unbiased=False), torch.ones(4, 32), atol=1e-3, rtol=0)


def _sample0_alone_and_in_batch(scheme: str, arch: str) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(arch, scheme, 10).train()
    x0 = torch.randn(1, 3, 32, 32)
    others = torch.randn(7, 3, 32, 32) * 3 + 2  # a batch with very different statistics
    with torch.no_grad():
        return model(x0)[0], model(torch.cat([x0, others]))[0]


@pytest.mark.parametrize("arch", ["resnet_cifar", "resnet18"])
def test_sample_output_is_independent_of_its_batch_in_train_mode(arch):
    alone, in_batch = _sample0_alone_and_in_batch("gn", arch)
    torch.testing.assert_close(alone, in_batch, atol=1e-5, rtol=1e-4)


def test_the_batch_independence_check_catches_batch_statistics():
    alone, in_batch = _sample0_alone_and_in_batch("bn", "resnet_cifar")
    assert not torch.allclose(alone, in_batch, atol=1e-3)


def test_zero_init_last_gamma_zeroes_only_each_blocks_last_norm():
    model = build_model("resnet18", "gn", 10, zero_init_last_gamma=True)
    for stage in model.stages:
        for block in getattr(model, stage):
            assert torch.count_nonzero(block.bn2.weight) == 0
            assert torch.all(block.bn1.weight == 1)
    assert torch.all(model.bn1.weight == 1)


def test_options_are_validated():
    with pytest.raises(ValueError, match="schemes.gn.groups"):
        norms.create("gn", groups=0)
    with pytest.raises(ValueError, match="unknown option"):
        norms.create("gn", group=8)


@pytest.mark.parametrize("arch", ["resnet_cifar", "resnet18"])
def test_forward_backward(arch):
    torch.manual_seed(0)
    model = build_model(arch, "gn", 10)
    assert norms.get("gn").uses_batch_statistics is False
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
