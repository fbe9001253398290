"""No normalization — the plain ResNet (He et al. 2016, "Deep Residual Learning for Image Recognition",
CVPR, arXiv 1512.03385) with every norm layer removed: the lower bound of the study.

    y = ReLU(W ∗ x)          (no norm, no bias: the convs are exactly those of the ``bn`` model)

Weights keep torchvision's He init (std √(2/fan-out)), the classifier PyTorch's default linear init.
Nothing depends on batch statistics, so a sample's output is independent of its batch. Without
normalization the residual stream's variance grows with depth at init (each block adds its branch's
variance), which is what Fixup and NF correct; this scheme keeps it, as the baseline they improve on.
"""

from __future__ import annotations

from trainers.norms.base import NormScheme, SchemeOptions
from trainers.norms.registry import register


@register
class NoNorm(NormScheme):
    name = "none"
    paper = "He et al. 2016, arXiv 1512.03385, without normalization (lower bound)"
    Options = SchemeOptions
    search_family = "default"  # search_spaces/default.yaml: BN's nuisance space
