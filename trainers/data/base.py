"""What every data source hands the training loop, and the index arithmetic they all share.

Every loader (generated, torchvision, DALI) shards and orders samples with the same functions here, so
the three agree on which samples a rank sees in which order, and a resumed run can recompute exactly the
batches it missed. The order is a pure function of ``(seed, epoch)``: no sampler state to checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

DALI_INSTALL_HINT = (
    "data.loader 'dali' needs NVIDIA DALI: pip install nvidia-dali-cuda130 (CUDA 13 drivers, the default) "
    "or nvidia-dali-cuda120 (CUDA 12), or set data.loader: torchvision"
)

Batch = tuple[Tensor, Tensor]


@runtime_checkable
class ShardedTrain(Protocol):
    """The training split of one rank: full batches, in an order fixed by ``(seed, epoch)``."""

    def epoch_iter(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start .. steps_per_epoch - 1`` of ``epoch`` for this rank.

        The order is a deterministic function of (seed, epoch), so a resumed run sees exactly the same
        batches; shards of different ranks are disjoint.
        """
        ...


@dataclass
class DataBundle:
    """The data of one training worker (one rank)."""

    num_classes: int
    steps_per_epoch: int  # batches per epoch for this rank (drop-last; identical on every rank)
    train: ShardedTrain
    # A fixed subset of the TRAIN set, eval transforms, this rank's shard: train accuracy, no augmentation.
    train_eval: Iterable[Batch]
    test: Iterable[Batch]  # the held-out split, eval transforms, this rank's shard
    description: str  # one line, for logs and MLflow


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A torch generator for ``(seed, epoch, stream)``, mixed by SeedSequence so nearby seeds stay unrelated.

    ``stream`` separates independent uses of one ``(seed, epoch)``: 0 orders the samples, 1 seeds the
    augmentation, 2 picks the train-eval subset, 3 seeds DataLoader workers.
    """
    words = [int(v) & 0xFFFFFFFF for v in (seed, epoch, stream)]
    state = np.random.SeedSequence([*words, 0x5EED]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def steps_per_epoch(num_samples: int, batch_size: int, world_size: int) -> int:
    """Full batches every rank gets: the same on all ranks, so DDP's collectives stay in step."""
    return (num_samples // world_size) // batch_size


def train_shard(num_samples: int, *, batch_size: int, rank: int, world_size: int, seed: int,
                epoch: int) -> Tensor:
    """This rank's sample indices for ``epoch``, in batch order (length ``steps * batch_size``).

    Like ``DistributedSampler(shuffle=True, drop_last=True)``: one permutation of the whole set shared by
    all ranks (same generator), then every ``world_size``-th index from ``rank``, so shards are disjoint.
    """
    check_rank(rank, world_size)
    perm = torch.randperm(num_samples, generator=epoch_generator(seed, epoch))
    steps = steps_per_epoch(num_samples, batch_size, world_size)
    return perm[rank::world_size][: steps * batch_size]


def eval_shard(num_samples: int, *, rank: int, world_size: int) -> Tensor:
    """This rank's share of an evaluation set: no padding, no duplicates; the loop sums counts over ranks."""
    check_rank(rank, world_size)
    return torch.arange(num_samples)[rank::world_size]


def train_eval_subset(num_samples: int, size: int, seed: int) -> Tensor:
    """A fixed subset of the training set (the first ``size`` of a seeded permutation), sorted for locality.

    Seeded by the data seed, not the training seed, so every trial of a study measures train accuracy on
    the same images.
    """
    perm = torch.randperm(num_samples, generator=epoch_generator(seed, 0, stream=2))
    return perm[: min(size, num_samples)].sort().values


def check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} / world_size {world_size}: need world_size >= 1 and "
                         "0 <= rank < world_size")


def check_steps(steps: int, num_samples: int, batch_size: int, world_size: int, what: str) -> None:
    """Refuse a split too small for one full batch per rank: an epoch of zero steps would never train."""
    if steps < 1:
        raise ValueError(
            f"{what}: {num_samples} training samples give no full batch of {batch_size} per rank on "
            f"{world_size} rank(s); lower training.batch_size or add data"
        )
