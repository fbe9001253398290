"""WN + translated ReLU (Xiang & Li 2017): TReLU_α(x) = max(x, α) = ReLU(x − α) + α, α learnable."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from trainers import norms
from trainers.models import build_model
from trainers.norms.wn import WeightNormConv2d
from trainers.norms.wn_trelu import TranslatedReLU

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


def test_scheme_options_reach_the_activation_and_convs_are_weight_normalized():
    scheme = norms.create("wn_trelu", slope=0.2, alpha_init=0.3, init_scale=2.0)
    act = scheme.act(5)
    assert isinstance(act, TranslatedReLU) and act.slope == 0.2
    torch.testing.assert_close(act.alpha.detach(), torch.full((5,), 0.3))
    conv = scheme.conv(3, 5, 3)
    assert isinstance(conv, WeightNormConv2d) and conv.init_scale == 2.0
