"""Model registry: architecture name -> ResNet built with a normalization scheme.

``resnet50``, ``resnet34`` and ``resnet18`` are torchvision's architectures (He et al. 2016); ``resnet_cifar`` is the
small CIFAR-style ResNet (He et al. 2016 §4.2: 3×3 stem, stages of width w, 2w, 4w) for CPU runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from trainers import norms
from trainers.resnet import ResNet

ARCHS: dict[str, Callable[..., dict[str, Any]]] = {
    "resnet50": lambda **_: dict(block="bottleneck", layers=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
    "resnet34": lambda **_: dict(block="basic", layers=(3, 4, 6, 3), widths=(64, 128, 256, 512)),
    "resnet18": lambda **_: dict(block="basic", layers=(2, 2, 2, 2), widths=(64, 128, 256, 512)),
    "resnet_cifar": lambda width=16, blocks=(1, 1, 1), **_: dict(
        block="basic", layers=tuple(blocks), widths=tuple(width * 2**i for i in range(len(blocks))), stem="cifar"
    ),
}


def build_model(arch: str, scheme: str | norms.NormScheme, num_classes: int, *, dropout: float = 0.0,
                cifar_width: int = 16, cifar_blocks: Sequence[int] = (1, 1, 1), **scheme_options: Any) -> ResNet:
    """Build ``arch`` with every conv, norm and activation made by ``scheme`` (a name or an instance)."""
    if arch not in ARCHS:
        raise KeyError(f"model.arch: unknown architecture '{arch}'; known: {', '.join(ARCHS)}")
    sch = norms.create(scheme, **scheme_options) if isinstance(scheme, str) else scheme
    cfg = ARCHS[arch](width=cifar_width, blocks=cifar_blocks)
    return ResNet(sch, num_classes=num_classes, dropout=dropout, **cfg)


def data_dependent_init(model: nn.Module, scheme: norms.NormScheme, images: torch.Tensor) -> None:
    """The one call the trainer makes before training: the scheme's init on the first batch."""
    scheme.data_dependent_init(model, images)
