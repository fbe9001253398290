"""Batch normalization — Ioffe & Szegedy (2015), "Batch Normalization: Accelerating Deep Network
Training by Reducing Internal Covariate Shift", ICML, arXiv 1502.03167.

    y = γ · (x − μ_B) / √(σ²_B + ε) + β

μ_B, σ²_B are the per-channel mean and (biased) variance over the batch and spatial positions in
training; evaluation uses the running averages instead. Convs carry no bias (β replaces it). This is
the paper's baseline and, with ResNet-50, exactly torchvision's model.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from trainers.norms.base import NormScheme, SchemeOptions
from trainers.norms.registry import register


class BatchNormOptions(SchemeOptions):
    momentum: float = Field(0.1, gt=0, le=1)  # torch/He et al. running-average momentum
    eps: float = Field(1e-5, gt=0)
    zero_init_last_gamma: bool = False  # Goyal et al. 2017; off in the paper's ResNet-50


@register
class BatchNorm(NormScheme):
    name = "bn"
    paper = "Ioffe & Szegedy 2015, arXiv 1502.03167"
    Options = BatchNormOptions
    uses_batch_statistics = True
    search_family = "bn"

    def norm(self, channels: int) -> nn.Module:
        return nn.BatchNorm2d(channels, eps=self.options.eps, momentum=self.options.momentum)

    def finalize(self, model: nn.Module) -> None:
        if self.options.zero_init_last_gamma:
            for block in model.modules():
                last = getattr(block, "last_norm", None)
                if isinstance(last, nn.BatchNorm2d):
                    nn.init.zeros_(last.weight)
