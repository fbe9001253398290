"""Weight normalization — Salimans & Kingma (2016), "Weight Normalization: A Simple
Reparameterization to Accelerate Training of Deep Neural Networks", NeurIPS, arXiv 1602.07868.

Each output channel's weights are reparameterized by a direction v and a length g:

    w = g · v / ‖v‖            (one g and one ‖v‖ per output channel, ‖·‖ over the fan-in)
    y = w ∗ x + b

so y does not change when v is multiplied by any c > 0, and ∂L/∂v ⟂ v. No batch statistics: a
sample's output does not depend on its batch. Data-dependent init (paper §3): on one batch, with
t = (v/‖v‖) ∗ x, set g = s / σ[t] and b = −s · μ[t] / σ[t] per channel, so the initial
pre-activations have zero mean and standard deviation s (``init_scale``, 1 in the paper). Layers are
initialized in forward order in one pass, each seeing the already-initialized layers before it.

The classifier (``classifier_data_init``, off by default; docs/design.md §3). After global average
pooling the features share a large common mean and vary little over the batch (mean/std ≈ 2.4 on the
quick model), so DDI sets the classifier's g ≈ s/σ: g/‖v‖ ≈ 7 where every conv gets ≈ 1, and since a WN
layer's effective step on w scales with (g/‖v‖)², one SGD step at lr 0.3 on the classifier alone moves
the logits 12.9× their norm (a BN model's classifier: 0.9×); WN then trains only at lr ≈ 0.003. With
the classifier left at g = ‖v‖ (w = v, v ~ N(0, 0.05²) as in the paper) and DDI on every conv, the
same step moves the logits 1.1× and WN trains at BN's learning rates, as in Gitman & Ginsburg (2017).
This is width-dependent: ResNet-50's 2,048 pooled features give (g/‖v‖)² ≈ 0.94 under DDI, so the
choice matters little there. ``classifier_data_init: true`` is Salimans & Kingma's all-layer DDI.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from trainers.norms.base import NormScheme, SchemeOptions
from trainers.norms.registry import register


class _WeightNormMixin:
    """Shared by the conv and linear WN layers: the direction ``v``, length ``g`` and bias ``b``."""

    v: nn.Parameter
    g: nn.Parameter
    b: nn.Parameter
    eps: float = 1e-12

    def _init_params(self, out_features: int, v_shape: tuple[int, ...], init_scale: float) -> None:
        self.v = nn.Parameter(torch.empty(v_shape))
        nn.init.kaiming_normal_(self.v, mode="fan_out", nonlinearity="relu")
        # g starts at ‖v‖ so w = v until data-dependent init sets it.
        self.g = nn.Parameter(self.v.detach().flatten(1).norm(dim=1).clone())
        self.b = nn.Parameter(torch.zeros(out_features))
        self.init_scale = init_scale
        self.data_init = True  # take part in weight_norm_data_init
        self._ddi_pending = False

    def weight(self) -> torch.Tensor:
        """w = g · v / ‖v‖ per output channel."""
        norm = self.v.flatten(1).norm(dim=1).clamp_min(self.eps)
        shape = (-1,) + (1,) * (self.v.dim() - 1)
        return self.v * (self.g / norm).view(shape)

    def _ddi(self, t: torch.Tensor) -> torch.Tensor:
        """Set g, b from the statistics of t = (v/‖v‖)·x on this batch; return the initialized output."""
        dims = [d for d in range(t.dim()) if d != 1]
        mean, std = t.mean(dim=dims), t.std(dim=dims, unbiased=False).clamp_min(1e-6)
        scale = self.init_scale / std
        with torch.no_grad():
            self.g.copy_(scale)
            self.b.copy_(-mean * scale)
        self._ddi_pending = False
        shape = (1, -1) + (1,) * (t.dim() - 2)
        return t * scale.view(shape) + self.b.view(shape)


class WeightNormConv2d(_WeightNormMixin, nn.Module):
    """Conv2d with w = g · v/‖v‖ per output channel and a bias b (Salimans & Kingma 2016)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 init_scale: float = 1.0) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        self._init_params(out_ch, (out_ch, in_ch, kernel_size, kernel_size), init_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._ddi_pending:
            norm = self.v.flatten(1).norm(dim=1).clamp_min(self.eps).view(-1, 1, 1, 1)
            return self._ddi(F.conv2d(x, self.v / norm, None, self.stride, self.padding))
        return F.conv2d(x, self.weight(), self.b, self.stride, self.padding)


class WeightNormLinear(_WeightNormMixin, nn.Module):
    """Linear layer with w = g · v/‖v‖ per output unit and a bias b (Salimans & Kingma 2016)."""

    def __init__(self, in_features: int, out_features: int, init_scale: float = 1.0, data_init: bool = True) -> None:
        super().__init__()
        self._init_params(out_features, (out_features, in_features), init_scale)
        nn.init.normal_(self.v, std=0.05)  # the paper's init for v
        with torch.no_grad():
            self.g.copy_(self.v.norm(dim=1))
        self.data_init = data_init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._ddi_pending:
            return self._ddi(F.linear(x, self.v / self.v.norm(dim=1, keepdim=True).clamp_min(self.eps)))
        return F.linear(x, self.weight(), self.b)


@torch.no_grad()
def weight_norm_data_init(model: nn.Module, images: torch.Tensor) -> None:
    """Salimans & Kingma §3 data-dependent init of every WN layer of ``model``, in one forward pass.

    Batch-statistic layers (if any) are put in eval mode for the pass so their state is untouched.
    """
    layers = [m for m in model.modules() if isinstance(m, _WeightNormMixin) and m.data_init]
    modes = {m: m.training for m in model.modules()}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    for layer in layers:
        layer._ddi_pending = True
    try:
        model(images)
    finally:
        for layer in layers:
            layer._ddi_pending = False
        for m, mode in modes.items():
            m.training = mode


class WeightNormOptions(SchemeOptions):
    init_scale: float = Field(1.0, gt=0)  # s: std of pre-activations after data-dependent init (paper: 1)
    data_init: bool = True  # paper §3; False keeps g = ‖v‖ (w = v at init) in every layer
    # DDI on the classifier too (Salimans & Kingma); off: it amplifies SGD steps ~(g/‖v‖)² ≈ 50× on narrow nets
    classifier_data_init: bool = False


@register
class WeightNorm(NormScheme):
    name = "wn"
    paper = "Salimans & Kingma 2016, arXiv 1602.07868"
    Options = WeightNormOptions
    search_family = "wn"
    has_init_scale = True

    def conv(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, padding: int = 0) -> nn.Module:
        return WeightNormConv2d(in_ch, out_ch, kernel_size, stride, padding, init_scale=self.options.init_scale)

    def linear(self, in_features: int, out_features: int) -> nn.Module:
        return WeightNormLinear(in_features, out_features, init_scale=self.options.init_scale,
                                data_init=self.options.classifier_data_init)

    def data_dependent_init(self, model: nn.Module, images: torch.Tensor) -> None:
        if self.options.data_init:
            weight_norm_data_init(model, images)
