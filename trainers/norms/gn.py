"""Group normalization — Wu & He (2018), "Group Normalization", ECCV, arXiv 1803.08494.

The C channels of each sample are split into G groups of C/G channels; each group is normalized with
its own mean and variance over its channels and all spatial positions, then a per-channel affine:

    y = γ · (x − μ_{n,g}) / √(σ²_{n,g} + ε) + β        μ, σ² over (c ∈ group g) × H × W of sample n

No batch statistics: a sample's output does not depend on the rest of its batch, and training and
evaluation compute the same function. Convs carry no bias (β replaces it). G = 32 as in the paper.

Choice where the paper is silent: when C < G or G does not divide C (e.g. the 16-channel stages of
``resnet_cifar``), we use the largest divisor of C that is ≤ G (``num_groups``), so 16 channels with
G = 32 give 16 groups of one channel each (instance norm). Set ``groups`` lower for narrow models.
Wu & He initialize γ = 0 in each residual block's last norm (Goyal et al. 2017); that is
``zero_init_last_gamma``, off by default as for ``bn`` so the two start from the same function class.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from trainers.norms.base import NormScheme, SchemeOptions
from trainers.norms.registry import register


def num_groups(channels: int, groups: int) -> int:
    """The largest divisor of ``channels`` that is ≤ ``groups`` (``groups`` itself when it divides)."""
    return max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)


class GroupNormOptions(SchemeOptions):
    groups: int = Field(32, ge=1)  # G, paper default
    eps: float = Field(1e-5, gt=0)
    zero_init_last_gamma: bool = False  # Wu & He §4 use it (after Goyal et al. 2017); off like bn's


@register
class GroupNorm(NormScheme):
    name = "gn"
    paper = "Wu & He 2018, arXiv 1803.08494"
    Options = GroupNormOptions
    search_family = "default"  # search_spaces/default.yaml: BN's nuisance space

    def norm(self, channels: int) -> nn.Module:
        return nn.GroupNorm(num_groups(channels, self.options.groups), channels, eps=self.options.eps)

    def finalize(self, model: nn.Module) -> None:
        if self.options.zero_init_last_gamma:
            for block in model.modules():
                last = getattr(block, "last_norm", None)
                if isinstance(last, nn.GroupNorm):
                    nn.init.zeros_(last.weight)
