"""The optimizer of a training run: SGD over parameter groups keyed by weight decay and lr multiplier.

Each group carries ``lr_mult`` (the scheme's per-parameter learning-rate multiplier); the loop sets a
group's ``lr`` every step to the schedule's rate times it (``trainers.loop.train_step``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trainers import norms
from trainers.config import TrainingSpec
from trainers.schedule import base_lr


def build_optimizer(module: nn.Module, scheme: norms.NormScheme, t: TrainingSpec) -> torch.optim.SGD:
    """SGD (momentum, Nesterov as configured) at the batch-scaled base rate (Goyal et al. 2017)."""
    groups = param_groups(module, t.weight_decay, t.wd_exclude_norm_and_bias, scheme.lr_multipliers(module))
    return torch.optim.SGD(groups, lr=base_lr(t.lr, t.batch_size, t.lr_reference_batch), momentum=t.momentum,
                           nesterov=t.nesterov)


def param_groups(module: nn.Module, weight_decay: float, exclude_1d: bool,
                 lr_mult: dict[str, float]) -> list[dict[str, Any]]:
    """SGD groups keyed by (weight decay, lr multiplier). Excluded from decay when asked: every 1-d
    parameter (biases, norm gains/shifts, WN's g, TReLU's α). ``lr_mult`` comes from the scheme."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            wd = 0.0 if exclude_1d and p.ndim <= 1 else weight_decay
            groups.setdefault((wd, lr_mult.get(name, 1.0)), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr_mult": m} for (wd, m), ps in groups.items()]
