"""Group normalization — Wu & He (2018), "Group Normalization", ECCV, arXiv 1803.08494.

The C channels of each sample are split into G groups of C/G channels; each group is normalized with
its own mean and variance over its channels and all spatial positions, then a per-channel affine:

    y = γ · (x − μ_{n,g}) / √(σ²_{n,g} + ε) + β        μ, σ² over (c ∈ group g) × H × W of sample n

No batch statistics: a sample's output does not depend on the rest of its batch, and training and
evaluation compute the same function. Convs carry no bias (β replaces it). G = 32 as in the paper.

Width-aware groups (the paper fixes G = 32 for ResNet-50, whose narrowest layer has 64 channels, and
its Table 3 shows that 1 channel per group — instance norm — is the worst setting). On a narrow model
a fixed G = 32 degenerates: the quick model's 16- and 32-channel stages would get 16 and 32 groups of
one channel, i.e. instance norm. So a layer gets at most C / ``min_group_channels`` groups (2 by
default, the paper's own smallest group at ResNet-50 width), and the largest divisor of C below both
bounds (``num_groups``): ResNet-50 keeps exactly the paper's G = 32 everywhere, while 16 channels get
8 groups of 2. ``min_group_channels: 1`` gives the plain fixed-G rule.
Wu & He initialize γ = 0 in each residual block's last norm (Goyal et al. 2017); that is
``zero_init_last_gamma``, off by default as for ``bn`` so the two start from the same function class.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from trainers.norms.base import NormScheme, SchemeOptions
from trainers.norms.registry import register


def num_groups(channels: int, groups: int, min_group_channels: int = 1) -> int:
    """The largest divisor of ``channels`` that is ≤ ``groups`` and leaves ≥ ``min_group_channels`` channels
    in every group (``groups`` itself when it divides and the groups are wide enough)."""
    cap = max(1, min(groups, channels // min_group_channels))
    return max(d for d in range(1, cap + 1) if channels % d == 0)


class GroupNormOptions(SchemeOptions):
    groups: int = Field(32, ge=1)  # G, paper default
    min_group_channels: int = Field(2, ge=1)  # width-aware: never fewer channels per group (1 = fixed G)
    eps: float = Field(1e-5, gt=0)
    zero_init_last_gamma: bool = False  # Wu & He §4 use it (after Goyal et al. 2017); off like bn's


@register
class GroupNorm(NormScheme):
    name = "gn"
    paper = "Wu & He 2018, arXiv 1803.08494"
    Options = GroupNormOptions
    search_family = "default"  # search_spaces/default.yaml: BN's nuisance space

    def norm(self, channels: int) -> nn.Module:
        groups = num_groups(channels, self.options.groups, self.options.min_group_channels)
        return nn.GroupNorm(groups, channels, eps=self.options.eps)

    def finalize(self, model: nn.Module) -> None:
        if self.options.zero_init_last_gamma:
            for block in model.modules():
                last = getattr(block, "last_norm", None)
                if isinstance(last, nn.GroupNorm):
                    nn.init.zeros_(last.weight)
