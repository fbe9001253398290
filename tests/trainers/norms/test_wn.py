"""Weight normalization (Salimans & Kingma 2016): w = g·v/‖v‖ per output channel, data-dependent init."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from trainers import norms
from trainers.models import build_model
from trainers.norms.wn import WeightNormConv2d, WeightNormLinear, weight_norm_data_init

scales = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)


def _randomize(layer, seed: int = 0):
    """Give g and b non-default values so the tests cannot pass by accident of the init."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.g.copy_(torch.rand(layer.g.shape, generator=gen) + 0.5)
        layer.b.copy_(torch.randn(layer.b.shape, generator=gen))
    return layer


@pytest.fixture(scope="module")
def conv():
    torch.manual_seed(0)
    return _randomize(WeightNormConv2d(3, 5, 3, stride=2, padding=1))


@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    return _randomize(WeightNormLinear(7, 4))


@settings(max_examples=25, deadline=None)
@given(c=scales)
def test_conv_output_invariant_to_the_scale_of_v(conv, c):
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = conv(x)
        v = conv.v.clone()
        try:
            conv.v.mul_(c)
            after = conv(x)
        finally:
            conv.v.copy_(v)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


@settings(max_examples=25, deadline=None)
@given(c=scales)
def test_linear_output_invariant_to_the_scale_of_v(linear, c):
    x = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = linear(x)
        v = linear.v.clone()
        try:
            linear.v.mul_(c)
            after = linear(x)
        finally:
            linear.v.copy_(v)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_output_scales_with_g(conv):
    # The invariance above is not vacuous: the length g does set the output scale (w = g·v/‖v‖).
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        y = conv(x) - conv.b.view(1, -1, 1, 1)
        g = conv.g.clone()
        try:
            conv.g.mul_(3.0)
            y3 = conv(x) - conv.b.view(1, -1, 1, 1)
        finally:
            conv.g.copy_(g)
    torch.testing.assert_close(y3, 3 * y, rtol=1e-5, atol=1e-5)


def test_weight_has_norm_g_per_output_channel(conv, linear):
    for layer in (conv, linear):
        w = layer.weight().detach()
        torch.testing.assert_close(w.flatten(1).norm(dim=1), layer.g.detach(), rtol=1e-5, atol=1e-6)


def test_conv_equals_torch_weight_norm_reference(conv):
    ref = nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=True)
    with torch.no_grad():
        ref.weight.copy_(conv.v)
        ref.bias.copy_(conv.b)
    ref = weight_norm(ref, name="weight", dim=0)
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(conv.g.view(-1, 1, 1, 1))  # g
        ref.parametrizations.weight.original1.copy_(conv.v)  # v
    x = torch.randn(4, 3, 9, 9)
    torch.testing.assert_close(conv(x), ref(x), rtol=1e-5, atol=1e-5)


def test_linear_equals_torch_weight_norm_reference(linear):
    ref = nn.Linear(7, 4)
    with torch.no_grad():
        ref.bias.copy_(linear.b)
    ref = weight_norm(ref, name="weight", dim=0)
    with torch.no_grad():
        ref.parametrizations.weight.original0.copy_(linear.g.view(-1, 1))
        ref.parametrizations.weight.original1.copy_(linear.v)
    x = torch.randn(5, 7)
    torch.testing.assert_close(linear(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make", [lambda: WeightNormConv2d(4, 6, 3, padding=1), lambda: WeightNormLinear(8, 6)],
    ids=["conv", "linear"],
)
def test_gradient_wrt_v_is_orthogonal_to_v(make):
    torch.manual_seed(0)
    layer = _randomize(make())
    x = torch.randn(3, 4, 5, 5) if isinstance(layer, WeightNormConv2d) else torch.randn(3, 8)
    (layer(x) ** 2).sum().backward()
    v, gv = layer.v.detach().flatten(1), layer.v.grad.flatten(1)
    assert gv.norm(dim=1).min() > 1e-3  # a real gradient, not zero
    cos = (v * gv).sum(dim=1) / (v.norm(dim=1) * gv.norm(dim=1))
    torch.testing.assert_close(cos, torch.zeros_like(cos), atol=1e-5, rtol=0)


@pytest.mark.parametrize("init_scale", [1.0, 0.3, 2.5])
def test_data_dependent_init_gives_zero_mean_and_init_scale_std_at_every_layer(init_scale):
    torch.manual_seed(0)
    # Salimans & Kingma's all-layer DDI, the classifier included
    scheme = norms.create("wn", init_scale=init_scale, classifier_data_init=True)
    model = build_model("resnet_cifar", scheme, 10, cifar_width=8)
    images = torch.randn(32, 3, 16, 16)
    scheme.data_dependent_init(model, images)

    layers = [m for m in model.modules() if isinstance(m, WeightNormConv2d | WeightNormLinear)]
    assert len(layers) >= 10  # stem, 2 per block, 2 downsamples, classifier
    outputs: dict[nn.Module, torch.Tensor] = {}
    # clone: the ReLU that follows is in-place and would overwrite the captured pre-activation
    hooks = [m.register_forward_hook(lambda mod, _inp, out: outputs.__setitem__(mod, out.clone()))
             for m in layers]
    try:
        with torch.no_grad():
            model(images)
    finally:
        for h in hooks:
            h.remove()
    assert set(outputs) == set(layers)
    names = {m: n for n, m in model.named_modules()}
    for layer, out in outputs.items():
        dims = [d for d in range(out.dim()) if d != 1]
        mean, std = out.mean(dims), out.std(dims, unbiased=False)
        # Exact on the init batch, up to float32 rounding.
        torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4 * init_scale, rtol=0,
                                   msg=lambda m, name=names[layer]: f"{name} mean: {m}")
        torch.testing.assert_close(std, torch.full_like(std, init_scale), atol=0, rtol=1e-3,
                                   msg=lambda m, name=names[layer]: f"{name} std: {m}")


def test_default_ddi_initializes_every_conv_but_leaves_the_classifier_at_w_equal_v():
    torch.manual_seed(0)
    scheme = norms.create("wn")
    model = build_model("resnet_cifar", scheme, 10, cifar_width=8)
    fc_before = {k: t.clone() for k, t in model.fc.state_dict().items()}
    conv_g = model.conv1.g.detach().clone()
    scheme.data_dependent_init(model, torch.randn(32, 3, 16, 16))
    for k, t in model.fc.state_dict().items():
        torch.testing.assert_close(t, fc_before[k], rtol=0, atol=0)
    torch.testing.assert_close(model.fc.weight(), model.fc.v, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(model.conv1.g.detach(), conv_g)  # the convs did get DDI


def test_data_init_option_off_keeps_w_equal_v():
    torch.manual_seed(0)
    scheme = norms.create("wn", data_init=False)
    model = build_model("resnet_cifar", scheme, 10, cifar_width=8)
    before = {k: t.clone() for k, t in model.state_dict().items()}
    scheme.data_dependent_init(model, torch.randn(8, 3, 16, 16))
    for k, t in model.state_dict().items():
        torch.testing.assert_close(t, before[k], rtol=0, atol=0)
    conv = model.conv1
    torch.testing.assert_close(conv.weight(), conv.v, rtol=1e-6, atol=1e-7)  # g = ‖v‖ at construction


def test_data_dependent_init_leaves_batchnorm_running_stats_and_modes_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(WeightNormConv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          WeightNormConv2d(8, 4, 3), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a mixed mode must come back as it was
    bn = model[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    bn.num_batches_tracked.fill_(7)
    before = {k: t.clone() for k, t in bn.state_dict().items()}
    weight_norm_data_init(model, torch.randn(16, 3, 8, 8) * 4 + 2)
    for k, t in bn.state_dict().items():
        torch.testing.assert_close(t, before[k], rtol=0, atol=0, msg=f"BatchNorm {k} changed")
    assert [m.training for m in model] == [True, False, True, True, True]
    assert not any(m._ddi_pending for m in model if isinstance(m, WeightNormConv2d))
    # g, b did move: the init actually ran
    assert not torch.allclose(model[0].b, torch.zeros(8))


def test_wn_model_has_no_batch_statistics():
    torch.manual_seed(0)
    model = build_model("resnet_cifar", "wn", 10, cifar_width=8).train()
    x = torch.randn(4, 3, 16, 16)
    others = torch.cat([x[:1], torch.randn(3, 3, 16, 16) * 3])
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], model(others)[0], rtol=1e-5, atol=1e-5)
