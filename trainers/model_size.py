"""How big a model of a spec is: its depth in weight layers and its parameter count, computed, never typed.

Depth counts the weight layers on the main path, as He et al. (2016) name their ResNets: the stem conv, the
convolutions of every residual block (2 in a basic block, 3 in a bottleneck) and the classifier; the 1×1
projection shortcuts are not counted. So ``resnet_cifar`` with ``cifar_blocks`` ``[n, n, n]`` has 6n + 2
layers (8, 14, 20, 32 for n = 1, 2, 3, 5; He et al. §4.2), and torchvision's resnet18/34/50 have 18, 34
and 50. The parameter count is the built model's (the ``bn`` scheme; other schemes differ by their norm
gains and shifts only).
"""

from __future__ import annotations

from trainers.config import ModelSpec
from trainers.models import ARCHS

CONVS_PER_BLOCK = {"basic": 2, "bottleneck": 3}


def model_depth(model: ModelSpec) -> int:
    """Weight layers on the main path: 1 (stem) + convs per block × blocks + 1 (classifier)."""
    cfg = ARCHS[model.arch](width=model.cifar_width, blocks=model.cifar_blocks)
    return 2 + CONVS_PER_BLOCK[cfg["block"]] * sum(cfg["layers"])


def model_params(model: ModelSpec, num_classes: int) -> int:
    """The parameter count of ``model`` built with BN for ``num_classes`` classes."""
    from trainers.models import build_model  # builds torch modules: only where a count is asked for

    net = build_model(model.arch, "bn", num_classes, cifar_width=model.cifar_width, cifar_blocks=model.cifar_blocks)
    return sum(p.numel() for p in net.parameters())
