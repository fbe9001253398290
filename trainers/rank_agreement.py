"""Every rank of a DDP trial reaches the same verdict (one collective each), so all stop or end together."""

from __future__ import annotations

from typing import Any

import torch.distributed as dist


def agree_on_divergence(local, world: int):
    """All ranks stop together: gather every rank's verdict and keep the earliest (one collective)."""
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return local
    verdicts: list[Any] = [None] * world
    dist.all_gather_object(verdicts, local)
    found = [v for v in verdicts if v is not None]
    return min(found, key=lambda v: v.step) if found else None


def agree_on_collapse(local, world: int):
    """Rank 0's collapse verdict on every rank (the dead fractions are per-rank batches; one collective)."""
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return local
    box = [local]
    dist.broadcast_object_list(box, src=0)
    return box[0]
