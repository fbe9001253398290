"""Evaluation of a model: top-1, top-5 and loss on the fixed train subset and on the test split.

In eval mode, summed over ranks (one ``all_reduce`` per split when a process group is up), under the
training's autocast. The keys are what studies rank and the summary reports: ``train_top1``,
``train_top5``, ``train_loss_eval``, ``test_top1``, ``test_top5``, ``test_loss``.
"""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from trainers.data import DataBundle
from trainers.inputs import to_device


@torch.no_grad()
def evaluate(module: nn.Module, data: DataBundle, device: torch.device, criterion: nn.Module,
             channels_last: bool = False, amp=None, splits: tuple[str, ...] = ("train", "test")) -> dict[str, float]:
    """Top-1/top-5/loss on the fixed train subset and the test split, in eval mode, summed over ranks.

    ``module`` is the unwrapped model (not DDP, not compiled); its training mode is restored after.
    ``criterion`` is unused (the loss reported is plain cross-entropy, no label smoothing); it stays in
    the signature for callers that pass the loop's. ``splits``: ``("train",)`` measures the train subset only
    (the loop's initial evaluation, for the stall rule).
    """
    was_training = module.training
    module.eval()
    out: dict[str, float] = {}
    for prefix, loader in (("train", data.train_eval), ("test", data.test)):
        if prefix not in splits:
            continue
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # top1, top5, loss, count
        for x, y in loader:
            if len(y) == 0:
                continue
            x, y = to_device(x, device, channels_last), y.to(device)
            with amp or contextlib.nullcontext():
                logits = module(x).float()
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hit = top5 == y[:, None]
            sums += torch.stack([hit[:, 0].sum(), hit.any(1).sum(), F.cross_entropy(logits, y, reduction="sum"),
                                 torch.tensor(len(y), device=device)]).to(sums)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        top1, top5, loss, n = sums.tolist()
        n = max(n, 1.0)
        out[f"{prefix}_top1"], out[f"{prefix}_top5"] = top1 / n, top5 / n
        out["train_loss_eval" if prefix == "train" else "test_loss"] = loss / n
    module.train(was_training)
    return out
