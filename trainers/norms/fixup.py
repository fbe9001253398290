"""Fixup initialization — Zhang, Dauphin & Ma (2019), "Fixup Initialization: Residual Learning Without
Normalization", ICLR, arXiv 1901.09321.

No normalization and no batch statistics. With L residual branches of m layers each (m = 2 in a basic
block, 3 in a bottleneck), Fixup (paper §3, "Fixup initialization"):

1. initializes the classifier and the last layer of every residual branch at 0;
2. initializes the other branch layers with He's init (std √(2/fan-out), torchvision's) scaled by

       L^(−1/(2m−2))        (basic: L^(−1/2); bottleneck: L^(−1/4));

3. adds a scalar bias (init 0) before each conv, each activation and the classifier, and a scalar
   multiplier ``scale`` (init 1) at the end of each branch. A block, as in the authors' code:

       out = conv1(x + bias1a);  out = relu(out + bias1b)
       out = conv2(out + bias2a); out = out · scale + bias2b          (basic; bottleneck: one more stage)
       return relu(out + shortcut),   shortcut = x, or downsample(x + bias1a) (a plain 1×1 conv, He init)

So at init every branch outputs exactly 0, each block is relu(shortcut), and the logits are 0.
The stem is conv → scalar bias → ReLU (the stem's "norm" slot holds the scalar bias), the classifier
fc(x + bias). L is known only once the whole model is built, so steps 1–2 run in ``finalize``.
``rescale_branches`` / ``zero_init`` switch steps 2 / 1 off, for the paper's ablations.

Training recipe the trainer must apply: the authors' scripts train every parameter named ``bias*`` or
``scale`` at 1/10 of the base learning rate (``Fixup.lr_multipliers``). A scalar's gradient sums over
every channel and position, so at the full rate (SGD, lr 0.1, momentum 0.9) ``resnet_cifar`` diverged
here within 50 steps where the 1/10 rate trained.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from trainers.norms.base import NormScheme, SchemeOptions
from trainers.norms.registry import register


def _like(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar parameter in the activations' dtype: autocast leaves element-wise ops alone, so an fp32
    scalar would silently turn bf16 activations (and everything saved for backward) fp32. Its gradient
    stays fp32 (the cast is differentiable)."""
    return p.to(x.dtype)

class ScalarBias(nn.Module):
    """x + b with one learnable scalar b, init 0 (Fixup's bias1a, bias1b, …)."""

    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + _like(self.bias, x)


class FixupLinear(nn.Linear):
    """The classifier fc(x + b) with a scalar input bias b (the authors' ``bias2``)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.bias_in = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x + _like(self.bias_in, x), self.weight, self.bias)


class _FixupBlock(nn.Module):
    """Common parts: ``branch_convs`` in order (the last one is zero-initialized), ``downsample``."""

    expansion = 1
    downsample: nn.Module | None

    @property
    def branch_convs(self) -> list[nn.Conv2d]:
        raise NotImplementedError

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.downsample is None else self.downsample(x + _like(self.bias1a, x))


class FixupBasicBlock(_FixupBlock):
    expansion = 1

    def __init__(self, scheme: NormScheme, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bias1a = nn.Parameter(torch.zeros(1))
        self.conv1 = scheme.conv(inplanes, planes, 3, stride, 1)
        self.bias1b = nn.Parameter(torch.zeros(1))
        self.act1 = scheme.act(planes)
        self.bias2a = nn.Parameter(torch.zeros(1))
        self.conv2 = scheme.conv(planes, planes, 3, 1, 1)
        self.scale = nn.Parameter(torch.ones(1))
        self.bias2b = nn.Parameter(torch.zeros(1))
        self.downsample = _downsample(scheme, inplanes, planes, stride)
        self.act2 = scheme.act(planes)

    @property
    def branch_convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x + _like(self.bias1a, x))
        out = self.act1(out + _like(self.bias1b, out))
        out = self.conv2(out + _like(self.bias2a, out))
        out = out * _like(self.scale, out) + _like(self.bias2b, out)
        return self.act2(out + self._shortcut(x))


class FixupBottleneck(_FixupBlock):
    expansion = 4

    def __init__(self, scheme: NormScheme, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bias1a = nn.Parameter(torch.zeros(1))
        self.conv1 = scheme.conv(inplanes, planes, 1)
        self.bias1b = nn.Parameter(torch.zeros(1))
        self.act1 = scheme.act(planes)
        self.bias2a = nn.Parameter(torch.zeros(1))
        self.conv2 = scheme.conv(planes, planes, 3, stride, 1)
        self.bias2b = nn.Parameter(torch.zeros(1))
        self.act2 = scheme.act(planes)
        self.bias3a = nn.Parameter(torch.zeros(1))
        self.conv3 = scheme.conv(planes, planes * self.expansion, 1)
        self.scale = nn.Parameter(torch.ones(1))
        self.bias3b = nn.Parameter(torch.zeros(1))
        self.downsample = _downsample(scheme, inplanes, planes * self.expansion, stride)
        self.act3 = scheme.act(planes * self.expansion)

    @property
    def branch_convs(self) -> list[nn.Conv2d]:
        return [self.conv1, self.conv2, self.conv3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x + _like(self.bias1a, x))
        out = self.act1(out + _like(self.bias1b, out))
        out = self.conv2(out + _like(self.bias2a, out))
        out = self.act2(out + _like(self.bias2b, out))
        out = self.conv3(out + _like(self.bias3a, out))
        out = out * _like(self.scale, out) + _like(self.bias3b, out)
        return self.act3(out + self._shortcut(x))


def _downsample(scheme: NormScheme, inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return scheme.conv(inplanes, outplanes, 1, stride)


def _he_std(conv: nn.Conv2d) -> float:
    """He et al.'s std √(2/fan-out), as torchvision's ``kaiming_normal_(mode='fan_out')``."""
    return math.sqrt(2.0 / (conv.weight.shape[0] * conv.weight[0, 0].numel()))


def branch_scale(num_branches: int, layers_per_branch: int) -> float:
    """Fixup's rescaling of the non-final branch layers: L^(−1/(2m−2))."""
    return num_branches ** (-1.0 / (2 * layers_per_branch - 2))


class FixupOptions(SchemeOptions):
    rescale_branches: bool = True  # step 2: scale branch layers by L^(-1/(2m-2))
    zero_init: bool = True  # step 1: zero the last branch layer and the classifier


@register
class Fixup(NormScheme):
    name = "fixup"
    paper = "Zhang, Dauphin & Ma 2019, arXiv 1901.09321"
    Options = FixupOptions
    search_family = "default"  # search_spaces/default.yaml: BN's nuisance space

    def norm(self, channels: int) -> nn.Module:
        return ScalarBias()  # only the stem asks for a norm: conv → bias → ReLU

    def linear(self, in_features: int, out_features: int) -> nn.Module:
        return FixupLinear(in_features, out_features)

    def basic_block(self, inplanes: int, planes: int, stride: int) -> nn.Module:
        return FixupBasicBlock(self, inplanes, planes, stride)

    def bottleneck(self, inplanes: int, planes: int, stride: int) -> nn.Module:
        return FixupBottleneck(self, inplanes, planes, stride)

    def lr_multipliers(self, model: nn.Module) -> dict[str, float]:
        """Parameter name -> learning-rate multiplier: 0.1 for biases and scales (the authors' scripts)."""
        return {n: 0.1 for n, _ in model.named_parameters() if "bias" in n or "scale" in n}

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> None:
        blocks = [m for m in model.modules() if isinstance(m, _FixupBlock)]
        for block in blocks:
            convs = block.branch_convs
            factor = branch_scale(len(blocks), len(convs)) if self.options.rescale_branches else 1.0
            for conv in convs[:-1]:
                nn.init.normal_(conv.weight, std=_he_std(conv) * factor)
            last = convs[-1]
            if self.options.zero_init:
                nn.init.zeros_(last.weight)
            else:  # without step 1 every branch layer gets step 2's scaling
                nn.init.normal_(last.weight, std=_he_std(last) * factor)
            if block.downsample is not None:
                nn.init.normal_(block.downsample.weight, std=_he_std(block.downsample))
        if self.options.zero_init:
            nn.init.zeros_(model.fc.weight)
            nn.init.zeros_(model.fc.bias)
