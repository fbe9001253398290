"""Model builder: the `bn` ResNet-50/18 are exactly torchvision's; other schemes swap their layers in."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from trainers import norms
from trainers.models import ARCHS, build_model
from trainers.norms.normprop import NormPropConv2d, NormPropReLU
from trainers.norms.wn import WeightNormConv2d, WeightNormLinear
from trainers.norms.wn_trelu import StrictWeightNormConv2d, TranslatedReLU

NON_BN = ("wn", "normprop", "wn_trelu")


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def resnet50_bn():
    torch.manual_seed(0)
    return build_model("resnet50", "bn", 1000)


def test_resnet50_bn_has_torchvisions_parameter_count(resnet50_bn):
    assert n_params(resnet50_bn) == 25_557_032


def test_resnet50_bn_loads_torchvision_state_dict_and_matches_its_outputs(resnet50_bn):
    torch.manual_seed(1)
    ref = torchvision.models.resnet50()
    # non-trivial BN running stats, so eval mode exercises them
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    resnet50_bn.load_state_dict(ref.state_dict(), strict=True)
    resnet50_bn.eval()
    ref.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(resnet50_bn(x), ref(x), rtol=1e-5, atol=1e-5)


def test_resnet18_bn_has_torchvisions_parameter_count_and_keys():
    model = build_model("resnet18", "bn", 1000)
    ref = torchvision.models.resnet18()
    assert n_params(model) == n_params(ref) == 11_689_512
    assert model.state_dict().keys() == ref.state_dict().keys()


@pytest.mark.parametrize("scheme", NON_BN)
@pytest.mark.parametrize("arch", ["resnet50", "resnet_cifar"])
def test_no_batchnorm_outside_bn(arch, scheme):
    model = build_model(arch, scheme, 10)
    assert not any(isinstance(m, nn.modules.batchnorm._NormBase) for m in model.modules())


@pytest.mark.parametrize("arch", ["resnet50", "resnet_cifar"])
def test_every_conv_of_a_wn_model_is_weight_normalized(arch):
    model = build_model(arch, "wn", 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | WeightNormConv2d)]
    assert convs and all(isinstance(m, WeightNormConv2d) for m in convs)
    assert not any(isinstance(m, nn.Conv2d) for m in model.modules())
    assert isinstance(model.fc, WeightNormLinear)
    if arch == "resnet50":
        assert len(convs) == 53  # torchvision's ResNet-50 has 53 convs


def test_wn_trelu_uses_translated_relu_activations():
    model = build_model("resnet_cifar", "wn_trelu", 10)
    acts = [m for m in model.modules() if isinstance(m, TranslatedReLU)]
    assert acts
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    # one per activation site: stem + 2 per basic block
    assert len(acts) == 1 + 2 * 3
    assert all(isinstance(m, StrictWeightNormConv2d) for m in model.modules() if "conv" in type(m).__name__.lower())
    affine = build_model("resnet_cifar", "wn_trelu_affine", 10)
    assert all(isinstance(m, WeightNormConv2d) for m in affine.modules() if "conv" in type(m).__name__.lower())


def test_normprop_uses_its_layers():
    model = build_model("resnet_cifar", "normprop", 10)
    assert all(isinstance(m, NormPropConv2d) for m in model.modules() if isinstance(m, WeightNormConv2d))
    assert any(isinstance(m, NormPropReLU) for m in model.modules())
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())


@pytest.mark.parametrize("scheme", ["bn", *NON_BN])
def test_resnet_cifar_output_shape(scheme):
    model = build_model("resnet_cifar", scheme, 7, cifar_width=4, cifar_blocks=(1, 2))
    assert model.stages == ["layer1", "layer2"]
    assert len(model.layer2) == 2
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 7)
        assert model.forward_features(torch.randn(2, 3, 16, 16)).shape == (2, 8)


def test_scheme_instance_or_name_and_scheme_options():
    scheme = norms.create("wn", init_scale=0.5)
    model = build_model("resnet_cifar", scheme, 10)
    assert model.conv1.init_scale == 0.5
    model = build_model("resnet_cifar", "wn", 10, init_scale=2.0)
    assert model.conv1.init_scale == 2.0
    with pytest.raises(ValueError, match=r"schemes\.wn\.nope"):
        build_model("resnet_cifar", "wn", 10, nope=1)


def test_unknown_arch_raises_keyerror_naming_the_known_ones():
    with pytest.raises(KeyError) as info:
        build_model("resnet9000", "bn", 10)
    msg = str(info.value)
    assert "resnet9000" in msg
    for arch in ARCHS:
        assert arch in msg


def test_dropout_inserts_dropout_without_new_parameters():
    plain = build_model("resnet_cifar", "bn", 10)
    dropped = build_model("resnet_cifar", "bn", 10, dropout=0.3)
    assert not any(isinstance(m, nn.Dropout) for m in plain.modules())
    drops = [m for m in dropped.modules() if isinstance(m, nn.Dropout)]
    assert len(drops) == 1 and drops[0].p == 0.3
    assert n_params(dropped) == n_params(plain)
    assert dropped.state_dict().keys() == plain.state_dict().keys()
