"""Learning-rate schedule: linear warmup, then step / cosine / poly / constant decay.

lr(step) = base_lr · warmup(step) · decay(step), with base_lr = training.lr × global_batch /
training.lr_reference_batch (linear scaling, Goyal et al. 2017). ``step`` counts optimizer steps
from 0; milestones of the step schedule are given in epochs (He et al. 2016: ÷10 at 30, 60, 80).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def lr_multiplier(step: int, total_steps: int, *, kind: str, warmup_steps: int = 0,
                  steps_per_epoch: int = 1, step_epochs: Sequence[float] = (), step_gamma: float = 0.1,
                  poly_power: float = 2.0) -> float:
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if kind == "constant":
        decay = 1.0
    elif kind == "step":
        passed = sum(1 for e in step_epochs if step >= e * steps_per_epoch)
        decay = step_gamma**passed
    else:
        span = max(1, total_steps - warmup_steps)
        t = min(1.0, max(0.0, (step - warmup_steps) / span))
        decay = 0.5 * (1 + math.cos(math.pi * t)) if kind == "cosine" else (1 - t) ** poly_power
    return warm * decay


def warmup_length(warmup_steps: int, warmup_fraction: float, total_steps: int) -> int:
    """``warmup_steps`` when given, else ``warmup_fraction`` of the run (rounded)."""
    return warmup_steps if warmup_steps > 0 else int(round(warmup_fraction * total_steps))


def base_lr(lr: float, global_batch: int, reference_batch: int) -> float:
    return lr * global_batch / reference_batch
