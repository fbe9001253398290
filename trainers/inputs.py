"""What a training step is fed: seeded RNGs, the device set up, an endless stream of batches, batches on the device.

Public because the benchmarks' hand-written loops (benchmarks/throughput.py) use the same pieces as
``trainers.loop``: the same seeds, the same batches in the same order, the same transfer.

Random streams. Every rank seeds its own streams with ``training.seed + rank`` (:func:`seed_everything`:
dropout masks and any other draw during training differ between ranks), while the initial weights are
drawn inside :func:`shared_init_seed` from ``training.seed`` alone, identical on every rank. That context
seeds only the CPU generator the model is built with, and restores it after: a ``torch.manual_seed`` there
would also reseed every CUDA generator, and since ``fork_rng`` restores only the generators it is given,
every rank would then draw the same CUDA random numbers for the whole run.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from trainers.data import ShardedTrain


def seed_everything(seed: int) -> None:
    """Python's, NumPy's and torch's RNGs (the CPU's and every CUDA device's) from one seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def shared_init_seed(seed: int) -> Iterator[None]:
    """Torch's CPU generator seeded with ``seed`` inside, as it was outside; no other generator is touched.

    For draws every rank must make alike (the initial weights: models are built on the CPU, then moved).
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def prepare_device(device: torch.device) -> None:
    """Process-wide settings a training step on ``device`` wants. On CUDA: cuDNN's autotuner
    (``cudnn.benchmark``), which times the convolution algorithms once per input shape and keeps the
    fastest — typically 5–15% of a ResNet-50 step, whose shapes are fixed; the first step of each new
    shape (the first batch, a last partial evaluation batch) pays the search."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def batches(train: ShardedTrain, steps_per_epoch: int, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches continuing exactly where ``start_step`` left off (epoch, position)."""
    epoch, pos = divmod(start_step, steps_per_epoch)
    while True:
        yield from train.epoch_iter(epoch, pos)
        epoch, pos = epoch + 1, 0


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """A batch's tensor onto ``device`` without the host waiting for the copy (NHWC when ``channels_last``).

    The copy is truly asynchronous only from pinned memory: the loaders pin their CPU batches when they
    feed a GPU (DataLoader ``pin_memory``), or hand them over already on the device (generated data, DALI).
    """
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
