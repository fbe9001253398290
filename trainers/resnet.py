"""ResNet built from a normalization scheme's conv, norm and activation factories.

Mirrors torchvision's ``resnet.py`` (He et al. 2016, "Deep Residual Learning for Image Recognition";
v1.5: the stride sits on the 3×3 conv) module for module, so the ``bn`` ResNet-50 has torchvision's
parameter names and count (25,557,032) and loads its state dicts. The one change: each activation is
its own module (``act1``, ``act2``, …) instead of one shared ``relu``, because some schemes'
activations have per-channel parameters (TReLU's α).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # the scheme builds these blocks (trainers.norms.base imports this module)
    from trainers.norms.base import NormScheme


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, scheme: NormScheme, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = scheme.conv(inplanes, planes, 3, stride, 1)
        self.bn1 = scheme.norm(planes)
        self.act1 = scheme.act(planes)
        self.conv2 = scheme.conv(planes, planes, 3, 1, 1)
        self.bn2 = scheme.norm(planes)
        self.downsample = _downsample(scheme, inplanes, planes, stride)
        self.act2 = scheme.act(planes)
        self.residual_gain = scheme.residual_gain()

    @property
    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(_merge(out, identity, self.residual_gain))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, scheme: NormScheme, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        width = planes
        self.conv1 = scheme.conv(inplanes, width, 1)
        self.bn1 = scheme.norm(width)
        self.act1 = scheme.act(width)
        self.conv2 = scheme.conv(width, width, 3, stride, 1)
        self.bn2 = scheme.norm(width)
        self.act2 = scheme.act(width)
        self.conv3 = scheme.conv(width, planes * self.expansion, 1)
        self.bn3 = scheme.norm(planes * self.expansion)
        self.downsample = _downsample(scheme, inplanes, planes * self.expansion, stride)
        self.act3 = scheme.act(planes * self.expansion)
        self.residual_gain = scheme.residual_gain()

    @property
    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(_merge(out, identity, self.residual_gain))


def _merge(branch: torch.Tensor, identity: torch.Tensor, gain: float) -> torch.Tensor:
    """The residual sum, times the scheme's gain (1 for every scheme but NormProp's 1/√2)."""
    out = branch + identity
    return out if gain == 1.0 else out * gain


def _downsample(scheme: NormScheme, inplanes: int, outplanes: int, stride: int) -> nn.Module | None:
    if stride == 1 and inplanes == outplanes:
        return None
    return nn.Sequential(scheme.conv(inplanes, outplanes, 1, stride), scheme.norm(outplanes))


class ResNet(nn.Module):
    """A ResNet whose stages are ``layer1..layerN``; ``stem='imagenet'`` (7×7/2 + max-pool) or 'cifar' (3×3)."""

    def __init__(self, scheme: NormScheme, block: str, layers: Sequence[int], widths: Sequence[int],
                 num_classes: int, stem: str = "imagenet", dropout: float = 0.0) -> None:
        super().__init__()
        make_block = scheme.bottleneck if block == "bottleneck" else scheme.basic_block
        expansion = 4 if block == "bottleneck" else 1
        self.inplanes = widths[0]
        if stem == "imagenet":
            self.conv1 = scheme.conv(3, self.inplanes, 7, 2, 3)
            self.maxpool: nn.Module = scheme.stem_pool()
        else:
            self.conv1 = scheme.conv(3, self.inplanes, 3, 1, 1)
            self.maxpool = nn.Identity()
        self.bn1 = scheme.norm(self.inplanes)
        self.act1 = scheme.act(self.inplanes)
        self.stages: list[str] = []
        for i, (n, width) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(make_block(self.inplanes, width, stride if j == 0 else 1))
                self.inplanes = width * expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.stages.append(f"layer{i + 1}")
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = scheme.linear(self.inplanes, num_classes)
        self._init_weights()
        scheme.finalize(self)

    def _init_weights(self) -> None:
        # torchvision's init for plain convs and BN; WN-family layers initialize themselves.
        for m in self.modules():
            if type(m) is nn.Conv2d:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif type(m) in (nn.BatchNorm2d, nn.GroupNorm):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for name in self.stages:
            x = getattr(self, name)(x)
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.forward_features(x)))
