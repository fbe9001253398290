"""What a training step is fed: seeded RNGs, an endless stream of batches, batches on the device.

Public because the benchmarks' hand-written loops (benchmarks/throughput.py) use the same pieces as
``trainers.loop``: the same seeds, the same batches in the same order, the same transfer.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import numpy as np
import torch

from trainers.data import ShardedTrain


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's (CPU) RNGs from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def batches(train: ShardedTrain, steps_per_epoch: int, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches continuing exactly where ``start_step`` left off (epoch, position)."""
    epoch, pos = divmod(start_step, steps_per_epoch)
    while True:
        yield from train.epoch_iter(epoch, pos)
        epoch, pos = epoch + 1, 0


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """Images onto ``device`` without waiting for the copy, NHWC when ``channels_last``."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
