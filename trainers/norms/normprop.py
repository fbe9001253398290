"""Normalization propagation — Arpit, Zhou, Kota & Govindaraju (2016), "Normalization Propagation:
A Parametric Technique for Removing Internal Covariate Shift in Deep Networks", ICML, arXiv 1603.01431.

No batch statistics at all (batch size 1 works). Each layer normalizes its weight rows and rescales:

    u = γ · (W_i · x) / ‖W_i‖ + β                     (γ init ``init_scale`` = 1, β = 0)

If x has zero mean and identity covariance, W_i·x/‖W_i‖ is a unit Gaussian, and so is u at init.
The ReLU output is then re-normalized with its closed-form moments for a standard normal input
(mean 1/√(2π) ≈ 0.398942, variance ½(1 − 1/π) ≈ 0.340845, std ≈ 0.583819):

    z = (ReLU(u) − √(1/(2π))) / √(½ (1 − 1/π))

NormProp in a ResNet (the paper's nets are plain stacks; its derivation treats every layer's input as
zero-mean, unit-variance). Three places of a ResNet break that assumption, and each is re-normalized
the way NormProp re-normalizes the ReLU, with moments for a standard-normal input, never batch
statistics (numbers: ResNet-50 at init, 64 px Gaussian input, batch 8; docs/design.md §3):

1. The residual sum. A unit-variance branch plus a unit-variance identity (nearly uncorrelated at
   init) has variance ≈ 2, and every following layer carries the factor on: block-output std grew
   3.1 → 8.3e5 over the 16 bottlenecks, logits std 9.8e5. We divide the sum by its expected std:

       y = act((F(x) + x) / √2)                      (``residual_rescale``, on by default)

2. The stem's 3×3/2 max-pool of z: its output has mean ≈ 1.86 and std ≈ 1.02 (the max of 9 i.i.d.
   re-normalized ReLUs of N(0, 1), by numerical integration; measured 1.74 / 1.04). We subtract and
   divide by those constants (``NormPropMaxPool``).
3. Input offsets. When a pre-activation's std drifts from 1, the re-normalized ReLU's output gains a
   mean (0.683·(σ − 1)), and a plain W·x/‖W‖ turns that shared offset into output variance: an
   unstable fixed point that compounds over ResNet-50's 49 convs (last-block std 65 with 1 and 2
   alone). Centering each weight row, W̃_i = W_i − mean(W_i), makes every layer blind to a shared
   input offset, which is what the zero-mean assumption promises (``center_weights``, on by
   default; last-block std 8 with 1–3, ≈1 through ResNet-18). On a zero-mean white input a centered
   unit row gives a unit Gaussian exactly as before, so the single-layer property is unchanged.

``residual_rescale: false`` / ``center_weights: false`` give the variants without each correction.
Other choices the paper leaves to the implementer: the per-channel γ, β live in the conv (as in WN)
and the classifier is a normalized linear layer with the same γ, β.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.norms.base import NormScheme, SchemeOptions
from trainers.norms.registry import register
from trainers.norms.wn import WeightNormConv2d, WeightNormLinear

RELU_MEAN = math.sqrt(1.0 / (2.0 * math.pi))  # E[max(0, u)], u ~ N(0, 1)
RELU_STD = math.sqrt(0.5 * (1.0 - 1.0 / math.pi))  # sqrt(Var[max(0, u)])
# Mean and std of max(z_1..z_9), z_i = (ReLU(u_i) − RELU_MEAN)/RELU_STD i.i.d., u_i ~ N(0, 1): the 3×3
# stem max-pool's output for a NormProp input (numerical integration of 9·Φ⁸·φ; tested).
MAXPOOL9_MEAN = 1.860710
MAXPOOL9_STD = 1.022791


class NormPropReLU(nn.Module):
    """z = (ReLU(u) − √(1/(2π))) / √(½(1 − 1/π)): unit moments for a standard normal u."""

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return (torch.relu(u) - RELU_MEAN) / RELU_STD


class NormPropMaxPool(nn.Module):
    """(maxpool₃ₓ₃/₂(z) − m₉) / s₉: the stem's max-pool, re-normalized with its closed-form moments."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (F.max_pool2d(z, 3, 2, 1) - MAXPOOL9_MEAN) / MAXPOOL9_STD


def _direction(v: torch.Tensor, center: bool, eps: float) -> torch.Tensor:
    """W_i/‖W_i‖ per output row (first dim), after removing the row mean when ``center``."""
    flat = v.flatten(1)
    if center:
        flat = flat - flat.mean(dim=1, keepdim=True)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(eps)).view_as(v)


class NormPropConv2d(WeightNormConv2d):
    """u = γ·(W̃∗x)/‖W̃‖ + β, W̃ the (centered) rows; γ a per-channel constant init (no data-dependent init)."""

    def __init__(self, *args, init_scale: float = 1.0, center: bool = True, **kwargs) -> None:
        super().__init__(*args, init_scale=init_scale, **kwargs)
        self.center = center
        with torch.no_grad():
            self.g.fill_(init_scale)

    def weight(self) -> torch.Tensor:
        return _direction(self.v, self.center, self.eps) * self.g.view(-1, 1, 1, 1)


class NormPropLinear(WeightNormLinear):
    """u = γ·W̃x/‖W̃‖ + β for the classifier (same normalization as the convs)."""

    def __init__(self, in_features: int, out_features: int, init_scale: float = 1.0, center: bool = True) -> None:
        super().__init__(in_features, out_features, init_scale=init_scale)
        self.center = center
        with torch.no_grad():
            self.g.fill_(init_scale)

    def weight(self) -> torch.Tensor:
        return _direction(self.v, self.center, self.eps) * self.g.view(-1, 1)


class NormPropOptions(SchemeOptions):
    init_scale: float = Field(1.0, gt=0)  # γ at init (paper: 1)
    residual_rescale: bool = True  # y = act((F(x) + x)/√2): unit variance through residual sums
    center_weights: bool = True  # W̃ = W − mean(W) per row: blind to shared input offsets


@register
class NormProp(NormScheme):
    name = "normprop"
    paper = "Arpit et al. 2016, arXiv 1603.01431"
    Options = NormPropOptions
    search_family = "wn"
    has_init_scale = True

    def conv(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Module:
        return NormPropConv2d(in_ch, out_ch, kernel_size, stride, padding, init_scale=self.options.init_scale,
                              center=self.options.center_weights)

    def linear(self, in_features: int, out_features: int) -> nn.Module:
        return NormPropLinear(in_features, out_features, init_scale=self.options.init_scale,
                              center=self.options.center_weights)

    def act(self, channels: int) -> nn.Module:
        return NormPropReLU()

    def stem_pool(self) -> nn.Module:
        return NormPropMaxPool()

    def residual_gain(self) -> float:
        return 1 / math.sqrt(2.0) if self.options.residual_rescale else 1.0
