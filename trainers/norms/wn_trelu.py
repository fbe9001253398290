"""Weight normalization with a translated ReLU — Xiang & Li (2017), "On the Effects of Batch and
Weight Normalization in Generative Adversarial Networks", arXiv 1704.03971.

``wn_trelu`` follows Xiang & Li's definition (their §3–4). Every hidden layer is a *strict*
weight-normalized layer — direction only, no length and no bias:

    y = (v/‖v‖) ∗ x                                   (per output channel; no g, no b)

followed by the translated ReLU with a learnable per-channel threshold α, which takes over the role
of the bias that a strict layer lacks:

    TReLU_α(x) = max(x, α) = ReLU(x − α) + α          (α initialised at 0, so TReLU_0 = ReLU)

and only the last layer (the classifier) is an *affine* WN layer, y = g·(v/‖v‖)·x + b (Salimans &
Kingma 2016; see ``wn``, including its ``classifier_data_init`` choice). With no g anywhere but in the
classifier there is nothing for an init scale to set, so ``wn_trelu`` has none.

The leak. Xiang & Li's code (github.com/stormraiser/gan-weightnorm-resnet, ``TPReLU``) computes
``prelu(x − α, s) + α`` with the slope s *learned* per channel from 0.25 (clamped to [0, 1]):

    TPReLU_{α,s}(x) = α + max(x − α, 0) + s · min(x − α, 0)      (s = 0: max(x, α), the TReLU above)

``wn_trelu`` follows the code (``slope`` 0.25, ``learn_slope`` on): with the text's s = 0 the strict
net learns slowly — quick model, lr 0.1, 150 steps: 0.51 / 0.49 train (seeds 0 / 1) at s = 0, 0.73 / 0.61
at s = 0.25 fixed (benchmarks/scheme_fidelity.py; docs/design.md §3.3). ``slope: 0, learn_slope: false``
gives the text's TReLU.

``wn_trelu_affine`` is the variant this project first shipped (and how "WN + TReLU" is often read):
affine WN layers with g, b and data-dependent init everywhere, plus TReLU's α — a shift that is
redundant with b (+22,720 parameters on ResNet-50). It is kept, beside the paper's form, so studies
can compare the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.norms.base import SchemeOptions
from trainers.norms.registry import register
from trainers.norms.wn import WeightNorm, WeightNormLinear, WeightNormOptions, weight_norm_data_init


class TranslatedReLU(nn.Module):
    """TReLU_α(x) = ReLU(x − α) + α with α per channel (dim 1), learnable; leaky with ``slope`` > 0, and with
    ``learn_slope`` the leak is a per-channel parameter clamped to [0, 1] (Xiang & Li's TPReLU)."""

    def __init__(self, channels: int, slope: float = 0.0, alpha_init: float = 0.0, learn_slope: bool = False) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((channels,), float(alpha_init)))
        self.slope = slope
        self.slope_weight = nn.Parameter(torch.full((channels,), float(slope))) if learn_slope else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # α and the leak are cast to the activations' dtype: autocast leaves element-wise ops alone, so a
        # float32 α would promote bf16 activations to float32 (every later layer and every saved activation
        # twice the bytes, and casts in between). Their gradients still arrive in float32.
        a = self.alpha.to(x.dtype).view((1, -1) + (1,) * (x.dim() - 2))
        shifted = x - a
        if self.slope_weight is not None:
            out = F.prelu(shifted, self.slope_weight.clamp(0, 1).to(x.dtype))
        else:
            out = F.leaky_relu(shifted, self.slope) if self.slope else torch.relu(shifted)
        return out + a


class StrictWeightNormConv2d(nn.Module):
    """Conv2d with w = v/‖v‖ per output channel and no bias (Xiang & Li's strict WN layer).

    The output is invariant to the scale of v; ∂L/∂v ⟂ v, so plain SGD only grows ‖v‖.
    """

    eps: float = 1e-12

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        self.v = nn.Parameter(torch.empty(out_ch, in_ch, kernel_size, kernel_size))
        nn.init.kaiming_normal_(self.v, mode="fan_out", nonlinearity="relu")

    def weight(self) -> torch.Tensor:
        norm = self.v.flatten(1).norm(dim=1).clamp_min(self.eps)
        return self.v / norm.view(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), None, self.stride, self.padding)


class WeightNormTReLUOptions(SchemeOptions):
    slope: float = Field(0.25, ge=0, lt=1)  # the leak's initial value (the authors' code: 0.25)
    learn_slope: bool = True  # the authors' TPReLU learns it per channel, clamped to [0, 1]
    alpha_init: float = 0.0
    classifier_data_init: bool = False  # as wn's: DDI on the affine classifier (off: see trainers/norms/wn.py)


@register
class WeightNormTReLU(WeightNorm):
    name = "wn_trelu"
    paper = "Xiang & Li 2017, arXiv 1704.03971 (strict WN + TReLU; affine WN classifier)"
    Options = WeightNormTReLUOptions
    search_family = "wn"
    has_init_scale = False

    def conv(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Module:
        return StrictWeightNormConv2d(in_ch, out_ch, kernel_size, stride, padding)

    def linear(self, in_features: int, out_features: int) -> nn.Module:
        return WeightNormLinear(in_features, out_features, data_init=self.options.classifier_data_init)

    def act(self, channels: int) -> nn.Module:
        return TranslatedReLU(channels, self.options.slope, self.options.alpha_init, self.options.learn_slope)

    def data_dependent_init(self, model: nn.Module, images: torch.Tensor) -> None:
        weight_norm_data_init(model, images)  # only the classifier, and only with classifier_data_init


class WeightNormTReLUAffineOptions(WeightNormOptions):
    slope: float = Field(0.0, ge=0, lt=1)
    alpha_init: float = 0.0


@register
class WeightNormTReLUAffine(WeightNorm):
    name = "wn_trelu_affine"
    paper = "Xiang & Li 2017, arXiv 1704.03971, read as affine WN (Salimans & Kingma 2016) + TReLU"
    Options = WeightNormTReLUAffineOptions
    search_family = "wn"
    has_init_scale = True

    def act(self, channels: int) -> nn.Module:
        return TranslatedReLU(channels, self.options.slope, self.options.alpha_init)
