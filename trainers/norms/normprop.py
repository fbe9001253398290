"""Normalization propagation — Arpit, Zhou, Kota & Govindaraju (2016), "Normalization Propagation:
A Parametric Technique for Removing Internal Covariate Shift in Deep Networks", ICML, arXiv 1603.01431.

No batch statistics at all (batch size 1 works). Each layer normalizes its weight rows and rescales:

    u = γ · (W_i · x) / ‖W_i‖ + β                     (γ init ``init_scale`` = 1, β = 0)

If x has zero mean and identity covariance, W_i·x/‖W_i‖ is a unit Gaussian, and so is u at init.
The ReLU output is then re-normalized with its closed-form moments for a standard normal input
(mean 1/√(2π) ≈ 0.398942, variance ½(1 − 1/π) ≈ 0.340845, std ≈ 0.583819):

    z = (ReLU(u) − √(1/(2π))) / √(½ (1 − 1/π))

Choices the paper leaves to the implementer: the per-channel γ, β live in the conv (as in WN), the
classifier is a plain normalized linear layer, and the residual sum is not re-scaled (a sum of two
unit-variance branches has variance ≈ 2; set ``residual_rescale`` to divide it by √2).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from trainers.norms.base import NormScheme, SchemeOptions
from trainers.norms.registry import register
from trainers.norms.wn import WeightNormConv2d, WeightNormLinear

RELU_MEAN = math.sqrt(1.0 / (2.0 * math.pi))  # E[max(0, u)], u ~ N(0, 1)
RELU_STD = math.sqrt(0.5 * (1.0 - 1.0 / math.pi))  # sqrt(Var[max(0, u)])


class NormPropReLU(nn.Module):
    """z = (ReLU(u) − √(1/(2π))) / √(½(1 − 1/π)): unit moments for a standard normal u."""

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return (torch.relu(u) - RELU_MEAN) / RELU_STD


class NormPropConv2d(WeightNormConv2d):
    """u = γ·(W∗x)/‖W‖ + β with γ a per-channel constant init (no data-dependent init)."""

    def __init__(self, *args, init_scale: float = 1.0, **kwargs) -> None:
        super().__init__(*args, init_scale=init_scale, **kwargs)
        with torch.no_grad():
            self.g.fill_(init_scale)


class NormPropLinear(WeightNormLinear):
    def __init__(self, in_features: int, out_features: int, init_scale: float = 1.0) -> None:
        super().__init__(in_features, out_features, init_scale=init_scale)
        with torch.no_grad():
            self.g.fill_(init_scale)


class NormPropOptions(SchemeOptions):
    init_scale: float = Field(1.0, gt=0)  # γ at init (paper: 1)
    residual_rescale: bool = False


@register
class NormProp(NormScheme):
    name = "normprop"
    paper = "Arpit et al. 2016, arXiv 1603.01431"
    Options = NormPropOptions
    search_family = "wn"
    has_init_scale = True

    def conv(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Module:
        return NormPropConv2d(in_ch, out_ch, kernel_size, stride, padding, init_scale=self.options.init_scale)

    def linear(self, in_features: int, out_features: int) -> nn.Module:
        return NormPropLinear(in_features, out_features, init_scale=self.options.init_scale)

    def act(self, channels: int) -> nn.Module:
        return NormPropReLU()
