"""Weight standardization + group normalization — Qiao, Wang, Liu, Shen & Yuille (2019), "Micro-Batch
Training with Batch-Channel Normalization and Weight Standardization", arXiv 1903.10520.

Every conv standardizes its weight per output channel i before use (I = C_in · k · k fan-in):

    Ŵ_i = (W_i − μ_i) / (σ_i + ε)       μ_i = (1/I) Σ_j W_ij,   σ_i = √((1/I) Σ_j (W_ij − μ_i)²)
    y = Ŵ ∗ x,   then GroupNorm (see ``gn``) on y

so Ŵ has zero mean and unit variance per output channel, and y does not change under W_i → a·W_i + b
(a > 0) for each channel. No batch statistics anywhere: a sample's output is independent of its batch.

Choices where paper and code differ: the paper writes σ with ε inside the root; the authors' code uses
the unbiased std plus ε = 1e-5. We use the biased std (so the moments are exactly 0 and 1 up to ε) plus
``ws_eps`` = 1e-5 outside the root, as in their code. Raw weights start at He's fan-out init, as in
their (torchvision-based) ResNet; the init scale matters because ∂L/∂W scales as 1/σ. The classifier is
a plain linear layer, as in the paper.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from trainers.norms.gn import GroupNorm, GroupNormOptions
from trainers.norms.registry import register


def standardize_weight(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """(W − μ)/(σ + ε) per output channel (dim 0), moments over the fan-in; σ the biased std."""
    flat = weight.flatten(1)
    var, mean = torch.var_mean(flat, dim=1, unbiased=False, keepdim=True)
    return ((flat - mean) / (var.sqrt() + eps)).view_as(weight)


class StdConv2d(nn.Conv2d):
    """Conv2d whose weight is standardized per output channel on every forward (Qiao et al. 2019)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = False, eps: float = 1e-5) -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=bias)
        self.eps = eps
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")

    def standardized_weight(self) -> torch.Tensor:
        return standardize_weight(self.weight, self.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.standardized_weight(), self.bias)


class WSGroupNormOptions(GroupNormOptions):
    ws_eps: float = Field(1e-5, gt=0)  # ε added to σ (the authors' code)


@register
class WeightStandardizedGroupNorm(GroupNorm):
    name = "ws_gn"
    paper = "Qiao et al. 2019, arXiv 1903.10520 (GN: Wu & He 2018)"
    Options = WSGroupNormOptions
    search_family = "default"  # search_spaces/default.yaml: BN's nuisance space

    def conv(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Module:
        return StdConv2d(in_ch, out_ch, kernel_size, stride, padding, eps=self.options.ws_eps)
