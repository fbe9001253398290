"""An ImageNet-layout folder read by torchvision on CPU: the portable path, and the reference for DALI.

Augmentation as in the paper (He et al. 2016 / Gitman & Ginsburg 2017): RandomResizedCrop(image_size)
+ horizontal flip for training; Resize(eval_resize) + CenterCrop(image_size) for evaluation; both
normalized with the ImageNet mean/std.

Resuming is exact, augmentation included: each training sample's random crop and flip are drawn from
its own seed, taken from the ``(seed, epoch)`` generator next to the permutation, so batch ``k`` of an
epoch is the same tensor whether the epoch started at 0 or resumed at ``k`` — and whatever the number
of loader workers. Skipped batches are never decoded: the index list is sliced.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from trainers.config import DataSpec
from trainers.data.base import (
    Batch,
    DataBundle,
    check_steps,
    epoch_generator,
    eval_shard,
    steps_per_epoch,
    train_eval_subset,
    train_shard,
)
from trainers.data.folder import IMAGENET_MEAN, IMAGENET_STD, FolderSplits, describe, open_image, scan_folder


def train_transform(image_size: int, hflip: bool = True,
                    crop_scale: tuple[float, float] = (0.08, 1.0)) -> Callable[[Any], Tensor]:
    return transforms.Compose([
        transforms.RandomResizedCrop(image_size, scale=crop_scale),
        *([transforms.RandomHorizontalFlip()] if hflip else []),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def eval_transform(image_size: int, eval_resize: int) -> Callable[[Any], Tensor]:
    return transforms.Compose([
        transforms.Resize(eval_resize),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


class FileDataset(Dataset):
    """``(path, label)`` samples through a transform, keyed by index or by ``(index, sample_seed)``.

    With a seed, the transform's random draws come from ``torch.manual_seed(sample_seed)`` inside
    ``fork_rng``, so augmentation is reproducible and the caller's global RNG is left untouched
    (it matters with ``num_workers=0``, where this runs in the training process). Eval transforms are
    deterministic and take plain indices.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Any], Tensor]) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Tensor, int]:
        index, sample_seed = key if isinstance(key, tuple) else (key, None)
        path, label = self.samples[index]
        image = open_image(path)  # names the file when it fails to decode
        if sample_seed is None:
            return self.transform(image), label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.transform(image), label


class TorchvisionTrain:
    """:class:`~trainers.data.base.ShardedTrain` over a folder: one DataLoader per ``epoch_iter`` call."""

    def __init__(self, dataset: FileDataset, *, batch_size: int, rank: int, world_size: int, seed: int,
                 num_workers: int, pin_memory: bool) -> None:
        self.dataset = dataset
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.steps_per_epoch = steps_per_epoch(len(dataset), batch_size, world_size)

    def keys(self, epoch: int) -> list[tuple[int, int]]:
        """``(sample index, augmentation seed)`` for every sample of this rank's epoch, in batch order."""
        n = len(self.dataset)
        idx = train_shard(n, batch_size=self.batch_size, rank=self.rank, world_size=self.world_size,
                          seed=self.seed, epoch=epoch)
        # One augmentation seed per position of the global order, from its own stream of (seed, epoch).
        seeds = torch.randint(0, 2**62, (n,), generator=epoch_generator(self.seed, epoch, stream=1))
        seeds = seeds[self.rank::self.world_size][: len(idx)]
        return list(zip(idx.tolist(), seeds.tolist(), strict=True))

    def epoch_iter(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        keys = self.keys(epoch)[max(0, start) * self.batch_size:]
        if not keys:
            return iter(())
        # Its own generator: DataLoader otherwise draws its worker base seed from the global RNG.
        return iter(DataLoader(self.dataset, batch_size=self.batch_size, sampler=keys, drop_last=True,
                               num_workers=self.num_workers, pin_memory=self.pin_memory,
                               generator=epoch_generator(self.seed, epoch, stream=3)))


def build_torchvision(data: DataSpec, *, batch_size: int, rank: int, world_size: int, seed: int,
                      device: torch.device | None = None, splits: FolderSplits | None = None) -> DataBundle:
    splits = splits or scan_folder(data)
    # Batches bound for a GPU come from pinned memory: only then is the loop's non_blocking copy asynchronous.
    pin = device.type == "cuda" if device is not None else torch.cuda.is_available()
    train_ds = FileDataset(splits.train, train_transform(data.image_size, data.hflip,
                                                         (data.crop_scale[0], data.crop_scale[1])))
    train = TorchvisionTrain(train_ds, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed,
                             num_workers=data.loader_workers, pin_memory=pin)
    check_steps(train.steps_per_epoch, len(train_ds), batch_size, world_size,
                f"data.path {splits.train_root}")

    def eval_loader(samples: Sequence[tuple[str, int]], indices: Tensor) -> DataLoader:
        ds = FileDataset(samples, eval_transform(data.image_size, data.eval_resize))
        return DataLoader(ds, batch_size=batch_size, sampler=indices.tolist(), drop_last=False,
                          num_workers=data.loader_workers, pin_memory=pin, generator=torch.Generator())

    subset = train_eval_subset(len(splits.train), data.train_eval_size, data.data_seed)
    return DataBundle(
        num_classes=len(splits.classes),
        steps_per_epoch=train.steps_per_epoch,
        train=train,
        train_eval=eval_loader(splits.train, subset[rank::world_size]),
        test=eval_loader(splits.val, eval_shard(len(splits.val), rank=rank, world_size=world_size)),
        description=describe("torchvision", splits, data),
    )
