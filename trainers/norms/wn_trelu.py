"""Weight normalization with a translated ReLU — Xiang & Li (2017), "On the Effects of Batch and
Weight Normalization in Generative Adversarial Networks", arXiv 1704.03971.

Convs and the classifier are WN layers (Salimans & Kingma 2016, see ``wn``), with the same
data-dependent init. The activation is the translated ReLU with a learnable per-channel threshold α:

    TReLU_α(x) = max(x, α) = ReLU(x − α) + α          (α initialised at 0, so TReLU_0 = ReLU)

Xiang & Li's code writes it as ``prelu(x − α, slope) + α``; ``slope`` is that leak (0 = their TReLU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.norms.registry import register
from trainers.norms.wn import WeightNorm, WeightNormOptions


class TranslatedReLU(nn.Module):
    """TReLU_α(x) = ReLU(x − α) + α with α per channel (dim 1), learnable; leaky with ``slope`` > 0."""

    def __init__(self, channels: int, slope: float = 0.0, alpha_init: float = 0.0) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.full((channels,), float(alpha_init)))
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.alpha.view((1, -1) + (1,) * (x.dim() - 2))
        shifted = x - a
        out = F.leaky_relu(shifted, self.slope) if self.slope else torch.relu(shifted)
        return out + a


class WeightNormTReLUOptions(WeightNormOptions):
    slope: float = Field(0.0, ge=0, lt=1)
    alpha_init: float = 0.0


@register
class WeightNormTReLU(WeightNorm):
    name = "wn_trelu"
    paper = "Xiang & Li 2017, arXiv 1704.03971 (WN: Salimans & Kingma 2016)"
    Options = WeightNormTReLUOptions
    search_family = "wn"

    def act(self, channels: int) -> nn.Module:
        return TranslatedReLU(channels, self.options.slope, self.options.alpha_init)
