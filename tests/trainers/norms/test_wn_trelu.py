"""WN + translated ReLU (Xiang & Li 2017): TReLU_α(x) = max(x, α) = ReLU(x − α) + α, α learnable."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from trainers import norms
from trainers.models import build_model
from trainers.norms.wn import WeightNormConv2d, WeightNormLinear
from trainers.norms.wn_trelu import StrictWeightNormConv2d, TranslatedReLU

finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False, width=32)


def _with_alpha(alpha: list[float], slope: float = 0.0) -> TranslatedReLU:
    act = TranslatedReLU(len(alpha), slope=slope)
    with torch.no_grad():
        act.alpha.copy_(torch.tensor(alpha))
    return act


@settings(max_examples=60, deadline=None)
@given(data=st.data(), channels=st.integers(1, 4), rank=st.sampled_from([2, 4]))
def test_trelu_is_max_of_x_and_alpha(data, channels, rank):
    alpha = data.draw(st.lists(finite, min_size=channels, max_size=channels))
    shape = (2, channels) + (3, 2)[: rank - 2]
    n = 2 * channels * (6 if rank == 4 else 1)
    x = torch.tensor(data.draw(st.lists(finite, min_size=n, max_size=n))).view(shape)
    act = _with_alpha(alpha)
    a = torch.tensor(alpha).view((1, -1) + (1,) * (rank - 2))
    with torch.no_grad():
        y = act(x)
    # relu(x − α) + α is max(x, α) up to one float32 rounding of the subtraction and addition
    torch.testing.assert_close(y, torch.maximum(x, a.expand_as(x)), rtol=1e-6, atol=1e-4)


def test_trelu_at_alpha_zero_is_relu_and_alpha_starts_at_zero():
    act = TranslatedReLU(3)
    torch.testing.assert_close(act.alpha.detach(), torch.zeros(3))
    x = torch.randn(4, 3, 5, 5)
    torch.testing.assert_close(act(x), torch.relu(x), rtol=0, atol=0)


def test_alpha_gets_the_gradient_of_max_x_alpha():
    # d/dα max(x, α) = 1 where x < α, 0 where x > α: the gradient counts the clipped entries per channel.
    act = _with_alpha([0.0, 0.5, -0.5])
    x = torch.randn(8, 3, 4, 4)
    act(x).sum().backward()
    expected = (x < act.alpha.detach().view(1, -1, 1, 1)).sum(dim=(0, 2, 3)).float()
    assert (act.alpha.grad != 0).all()
    torch.testing.assert_close(act.alpha.grad, expected)


def test_alpha_is_learned_in_a_model():
    torch.manual_seed(0)
    model = build_model("resnet_cifar", "wn_trelu", 10, cifar_width=8)
    acts = [m for m in model.modules() if isinstance(m, TranslatedReLU)]
    assert acts
    F.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    for act in acts:
        assert act.alpha.grad is not None and act.alpha.grad.abs().sum() > 0
    param_ids = {id(p) for p in model.parameters()}
    assert all(id(a.alpha) in param_ids for a in acts)


@settings(max_examples=25, deadline=None)
@given(slope=st.floats(0.0, 0.99), alpha=finite)
def test_slope_option_is_prelu_of_shifted_input_plus_alpha(slope, alpha):
    act = _with_alpha([alpha, -alpha], slope=slope)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0)) * 5 + alpha
    a = act.alpha.detach().view(1, -1, 1, 1)
    expected = F.prelu(x - a, torch.tensor([slope])) + a
    with torch.no_grad():
        torch.testing.assert_close(act(x), expected, rtol=1e-6, atol=1e-4)


def test_learned_leak_is_the_authors_tprelu_clamped_to_unit_interval():
    """prelu(x − α, s) + α with s learned per channel from 0.25, clamped to [0, 1] (Xiang & Li's code)."""
    act = norms.create("wn_trelu").act(2)
    assert act.slope_weight is not None
    torch.testing.assert_close(act.slope_weight.detach(), torch.full((2,), 0.25))
    with torch.no_grad():
        act.alpha.copy_(torch.tensor([0.5, -1.0]))
        act.slope_weight.copy_(torch.tensor([0.25, 3.0]))  # 3 acts as 1 (the clamp)
    x = torch.linspace(-3, 3, 13).view(1, 1, -1).repeat(1, 2, 1)
    a = act.alpha.detach().view(1, -1, 1)
    s = torch.tensor([0.25, 1.0]).view(1, -1, 1)
    expected = a + torch.relu(x - a) + s * torch.clamp(x - a, max=0)
    torch.testing.assert_close(act(x), expected, rtol=1e-6, atol=1e-6)
    act(x).sum().backward()
    assert act.slope_weight.grad is not None and act.slope_weight.grad[0] != 0
    text = norms.create("wn_trelu", slope=0.0, learn_slope=False).act(2)
    assert text.slope_weight is None  # the text's TReLU: max(x, α)
    torch.testing.assert_close(text(x), torch.maximum(x, torch.zeros_like(x)))


def test_affine_variant_options_reach_the_activation_and_convs_are_affine_weight_normalized():
    scheme = norms.create("wn_trelu_affine", slope=0.2, alpha_init=0.3, init_scale=2.0)
    act = scheme.act(5)
    assert isinstance(act, TranslatedReLU) and act.slope == 0.2
    torch.testing.assert_close(act.alpha.detach(), torch.full((5,), 0.3))
    conv = scheme.conv(3, 5, 3)
    assert isinstance(conv, WeightNormConv2d) and conv.init_scale == 2.0


def test_paper_form_hidden_layers_are_strict_wn_with_no_length_and_no_bias():
    """Xiang & Li: hidden layers y = (v/‖v‖)∗x (no g, no b) + TReLU; only the classifier is affine WN."""
    torch.manual_seed(0)
    model = build_model("resnet_cifar", "wn_trelu", 10, cifar_width=8)
    convs = [m for m in model.modules() if isinstance(m, StrictWeightNormConv2d)]
    assert len(convs) == 1 + 2 * 3 + 2  # stem, 2 per block, 2 downsamples
    assert not any(isinstance(m, WeightNormConv2d | nn.Conv2d) for m in model.modules())
    for conv in convs:
        assert {n for n, _ in conv.named_parameters()} == {"v"}
    assert isinstance(model.fc, WeightNormLinear)  # the one affine layer: g and b
    assert {n for n, _ in model.fc.named_parameters()} == {"v", "g", "b"}
    # every parameter outside the classifier is a direction v, a threshold α or a leak s (the authors' TPReLU)
    for name, _ in model.named_parameters():
        assert name.startswith("fc.") or name.endswith((".v", ".alpha", ".slope_weight")), name
    assert not norms.get("wn_trelu").has_init_scale  # no g to scale: nothing for the grid to sweep


@settings(max_examples=25, deadline=None)
@given(c=st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False))
def test_strict_layer_output_is_invariant_to_the_scale_of_v(c):
    torch.manual_seed(0)
    conv = StrictWeightNormConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        before = conv(x)
        conv.v.mul_(c)
        after = conv(x)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    w = conv.weight().detach().flatten(1)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(4), rtol=1e-5, atol=1e-6)


def test_strict_model_gradient_on_v_is_orthogonal_to_v():
    torch.manual_seed(0)
    model = build_model("resnet_cifar", "wn_trelu", 10, cifar_width=8)
    F.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    for conv in (m for m in model.modules() if isinstance(m, StrictWeightNormConv2d)):
        v, gv = conv.v.detach().flatten(1), conv.v.grad.flatten(1)
        cos = (v * gv).sum(1) / (v.norm(dim=1) * gv.norm(dim=1)).clamp_min(1e-12)
        assert cos.abs().max() < 1e-4
