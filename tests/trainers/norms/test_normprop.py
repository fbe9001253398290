"""Normalization propagation (Arpit et al. 2016): unit-norm weight rows and a re-normalized ReLU keep
activations at zero mean, unit variance for a unit-Gaussian input, without any batch statistics."""

from __future__ import annotations

import math

import pytest
import torch

from trainers import norms
from trainers.models import build_model
from trainers.norms.normprop import (
    MAXPOOL9_MEAN,
    MAXPOOL9_STD,
    RELU_MEAN,
    RELU_STD,
    NormPropConv2d,
    NormPropLinear,
    NormPropMaxPool,
    NormPropReLU,
)

# Sampling error of per-channel moments from n independent samples of z = NormPropReLU(u), u ~ N(0, 1):
#   se(mean) = 1/√n;  se(var) = √(Var[z²]/n) = √((E[z⁴] − 1)/n), and for the re-normalized ReLU
#   E[z⁴] = E[(r − m)⁴]/s⁴ with r = max(0, u): (3/2 − 4m·√(2/π) + 6m²·½ − 3m⁴)/s⁴ ≈ 5.41, so Var[z²] ≈ 4.41.
# Tolerances are 5 standard errors: a false failure is < 1e-6 per channel (and the seed is fixed anyway),
# while the mistakes they guard against move the moments by far more (a missing 1/‖W‖ scales the
# variance by ‖v‖² ≈ 0.5 with this layer shape; a missing re-normalization gives var ≈ 0.34, mean ≈ 0.40).
_R4 = 1.5 - 4 * RELU_MEAN * math.sqrt(2 / math.pi) + 3 * RELU_MEAN**2 - 3 * RELU_MEAN**4
VAR_Z2 = _R4 / RELU_STD**4 - 1.0


def _tolerances(n: int) -> tuple[float, float]:
    return 5 / math.sqrt(n), 5 * math.sqrt(VAR_Z2 / n)


def _per_channel_moments(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = [d for d in range(z.dim()) if d != 1]
    return z.mean(dims), z.var(dims, unbiased=False)


def test_constants_are_the_closed_form_relu_moments():
    assert RELU_MEAN == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-12)
    assert RELU_STD == pytest.approx(math.sqrt(0.5 * (1 - 1 / math.pi)), rel=1e-12)
    assert RELU_MEAN == pytest.approx(0.398942, abs=1e-6)
    assert RELU_STD == pytest.approx(0.583819, abs=1e-6)
    # ... and they are the moments of ReLU(u), u ~ N(0, 1), by numerical integration
    u = torch.linspace(-12, 12, 200_001, dtype=torch.float64)
    pdf = torch.exp(-(u**2) / 2) / math.sqrt(2 * math.pi)
    r = torch.relu(u)
    m1 = torch.trapezoid(r * pdf, u).item()
    m2 = torch.trapezoid(r**2 * pdf, u).item()
    assert m1 == pytest.approx(RELU_MEAN, rel=1e-6)
    assert math.sqrt(m2 - m1**2) == pytest.approx(RELU_STD, rel=1e-6)
    # the fourth moment behind the tolerances below
    z4 = torch.trapezoid(((r - RELU_MEAN) / RELU_STD) ** 4 * pdf, u).item()
    assert VAR_Z2 == pytest.approx(z4 - 1, rel=1e-6)
    assert VAR_Z2 == pytest.approx(4.41, abs=0.01)


def test_normprop_relu_formula():
    u = torch.linspace(-3, 3, 13)
    expected = (torch.relu(u) - 0.3989423) / 0.5838190
    torch.testing.assert_close(NormPropReLU()(u), expected, atol=1e-6, rtol=1e-6)


def test_conv_then_act_has_unit_moments_for_unit_gaussian_input():
    torch.manual_seed(0)
    # Kernel 3, stride 3, no padding: the receptive fields do not overlap, so each channel's outputs are
    # n = 256·4·4 = 4096 independent samples (channels see the same inputs, so they are not
    # independent of each other, but each one is checked on its own).
    conv = NormPropConv2d(8, 32, 3, stride=3)
    x = torch.randn(256, 8, 12, 12)
    with torch.no_grad():
        u = conv(x)
        z = NormPropReLU()(u)
    n = z.shape[0] * z.shape[2] * z.shape[3]
    assert n == 4096
    tol_mean, tol_var = _tolerances(n)  # ≈ 0.078, 0.16
    # the pre-activation u = W·x/‖W‖ is itself N(0, 1); its variance has se √(2/n)
    mean_u, var_u = _per_channel_moments(u)
    assert mean_u.abs().max() < tol_mean
    assert (var_u - 1).abs().max() < 5 * math.sqrt(2 / n)
    mean, var = _per_channel_moments(z)
    assert mean.abs().max() < tol_mean, mean
    assert (var - 1).abs().max() < tol_var, var


def test_linear_then_act_has_unit_moments_for_unit_gaussian_input():
    torch.manual_seed(0)
    lin = NormPropLinear(64, 16)
    x = torch.randn(4096, 64)  # n = 4096 independent rows
    with torch.no_grad():
        z = NormPropReLU()(lin(x))
    tol_mean, tol_var = _tolerances(x.shape[0])
    mean, var = _per_channel_moments(z)
    assert mean.abs().max() < tol_mean, mean
    assert (var - 1).abs().max() < tol_var, var


def test_chain_of_three_conv_act_layers_stays_near_unit_moments():
    torch.manual_seed(0)
    # Beyond the first layer the inputs are no longer white: channels share inputs (their correlation is
    # about w_i·w_j ~ 1/√fan_in) and 3×3 stride-1 receptive fields overlap, while NormProp's derivation
    # assumes an identity input covariance. The per-channel variance then deviates by wᵀΣw − 1, a
    # systematic error on top of the sampling noise (≈0.13 per channel at layer 2 here), so per-channel
    # moments get 2× the single-layer tolerance. Averaged over channels those deviations cancel (the
    # paper's approximation), so the pooled moments must still be close to (0, 1).
    layers = [NormPropConv2d(8, 32, 3), NormPropConv2d(32, 32, 3), NormPropConv2d(32, 32, 3)]
    h = torch.randn(256, 8, 20, 20)
    with torch.no_grad():
        for conv in layers:
            h = NormPropReLU()(conv(h))
            mean, var = _per_channel_moments(h)
            assert mean.abs().max() < 0.15, mean
            assert (var - 1).abs().max() < 0.3, var
            assert abs(h.mean().item()) < 0.05
            assert abs(h.var().item() - 1) < 0.1


def test_init_scale_sets_gamma():
    conv = NormPropConv2d(4, 6, 3, init_scale=2.0)
    torch.testing.assert_close(conv.g.detach(), torch.full((6,), 2.0))
    lin = NormPropLinear(4, 6, init_scale=0.5)
    torch.testing.assert_close(lin.g.detach(), torch.full((6,), 0.5))
    torch.testing.assert_close(conv.b.detach(), torch.zeros(6))
    scheme = norms.create("normprop", init_scale=3.0)
    assert torch.all(scheme.conv(4, 6, 3).g == 3.0)


def test_no_batch_statistics_a_sample_ignores_its_batch():
    torch.manual_seed(0)
    model = build_model("resnet_cifar", "normprop", 10, cifar_width=8).train()
    x = torch.randn(4, 3, 16, 16)
    others = torch.cat([x[:1], torch.randn(3, 3, 16, 16) * 4 + 1])
    with torch.no_grad():
        full = model(x)
        torch.testing.assert_close(full[0], model(others)[0], rtol=1e-5, atol=1e-5)
        single = model(x[:1])  # batch size 1 works, in training mode
    assert single.shape == (1, 10)
    torch.testing.assert_close(single[0], full[0], rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_batch_size_one_trains():
    torch.manual_seed(0)
    model = build_model("resnet_cifar", "normprop", 10, cifar_width=8).train()
    loss = torch.nn.functional.cross_entropy(model(torch.randn(1, 3, 16, 16)), torch.tensor([3]))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def _block_stds(arch: str, seed: int = 0, **options) -> tuple[list[float], float]:
    torch.manual_seed(seed)
    model = build_model(arch, norms.create("normprop", **options), 1000)
    stds: list[float] = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: stds.append(out.std().item()))
             for name in model.stages for block in getattr(model, name)]
    try:
        with torch.no_grad():
            logits = model(torch.randn(8, 3, 64, 64))
    finally:
        for h in hooks:
            h.remove()
    return stds, logits.std().item()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_activations_stay_order_one_through_the_whole_resnet_at_init(arch):
    """At ResNet-50 depth every block's output std and the logits' std stay within a small factor of 1 on
    Gaussian input (before the residual re-normalization: block std 3 → 8e5, logits 1e6)."""
    stds, logits = _block_stds(arch)
    assert len(stds) == (8 if arch == "resnet18" else 16)
    assert all(0.5 < s < 10 for s in stds), stds
    assert 0.1 < logits < 10, logits
    if arch == "resnet18":
        assert all(0.5 < s < 2 for s in stds), stds  # 8 blocks: the approximation's drift stays small


def test_each_resnet_correction_is_wired_and_needed_at_resnet50_depth():
    """residual_rescale and center_weights change the function (no option that does nothing), and each
    one is needed: without it the stream blows up through ResNet-50's 16 blocks."""
    on, _ = _block_stds("resnet50")
    no_rescale, _ = _block_stds("resnet50", residual_rescale=False)
    no_center, _ = _block_stds("resnet50", center_weights=False)
    assert max(no_rescale) > 100 * max(on)
    assert max(no_center) > 4 * max(on)


def test_residual_gain_is_one_over_sqrt2_only_with_residual_rescale():
    assert norms.create("normprop").residual_gain() == pytest.approx(1 / math.sqrt(2))
    assert norms.create("normprop", residual_rescale=False).residual_gain() == 1.0
    assert norms.create("bn").residual_gain() == 1.0


def test_centered_rows_are_blind_to_a_shared_input_offset_and_unit_norm():
    torch.manual_seed(0)
    conv = NormPropConv2d(4, 6, 3)
    x = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        # an offset on every input (no padding in reach: check the interior)
        torch.testing.assert_close(conv(x + 5.0)[..., 1:-1, 1:-1], conv(x)[..., 1:-1, 1:-1], rtol=1e-4, atol=1e-4)
        w = conv.weight().flatten(1)
    torch.testing.assert_close(w.sum(dim=1), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(w.norm(dim=1), torch.ones(6), atol=1e-5, rtol=0)
    plain = NormPropConv2d(4, 6, 3, center=False)
    with torch.no_grad():
        assert not torch.allclose(plain(x + 5.0), plain(x), atol=1e-2)


def test_maxpool_constants_are_the_moments_of_the_max_of_nine_normprop_relus():
    u = torch.linspace(-12, 12, 400_001, dtype=torch.float64)
    pdf1 = torch.exp(-(u**2) / 2) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1 + torch.erf(u / math.sqrt(2)))
    pdf9 = 9 * cdf**8 * pdf1  # density of the max of 9 i.i.d. N(0, 1); ReLU and the affine map are monotone
    z = (torch.relu(u) - RELU_MEAN) / RELU_STD
    m1 = torch.trapezoid(z * pdf9, u).item()
    m2 = torch.trapezoid(z * z * pdf9, u).item()
    assert MAXPOOL9_MEAN == pytest.approx(m1, abs=1e-5)
    assert MAXPOOL9_STD == pytest.approx(math.sqrt(m2 - m1 * m1), abs=1e-5)
    # and the stem's pool applies them: unit moments for i.i.d. NormProp activations (no padding in reach)
    torch.manual_seed(0)
    zs = NormPropReLU()(torch.randn(64, 4, 32, 32))
    pooled = NormPropMaxPool()(zs)[..., 1:, 1:]
    # overlapping 3×3/2 windows share samples: the moments of the pooled map are still those of one window
    assert abs(pooled.mean().item()) < 0.02 and abs(pooled.std().item() - 1) < 0.02
