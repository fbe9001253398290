"""An ImageNet-layout folder decoded and augmented by NVIDIA DALI: the fast path on GPUs.

Same samples, labels, sharding and order as the torchvision loader (both use
:func:`trainers.data.folder.scan_folder` and :mod:`trainers.data.base`), different decoder and resampler:
images agree in shape and content, not bit for bit.

How the order is made, and why it differs from DALI's usual ``random_shuffle=True, shard_id=rank``:
DALI's shuffle is a fixed-seed shuffle of the whole list followed by a local buffer shuffle; it cannot
seek, its shards differ in length by one when the set does not divide evenly (ranks would then disagree
on the number of steps and DDP would hang), and its order is not the torchvision loader's. Instead each
``epoch_iter(epoch, start)`` call hands the reader this rank's files for the epoch *already permuted and
sharded* by :func:`~trainers.data.base.train_shard` (``files=``/``labels=``, ``random_shuffle=False``),
sliced from batch ``start``. So:

- the batches' files are exactly a function of ``(seed, epoch)``, identical to the torchvision loader's;
- resuming mid-epoch decodes no skipped batch (the list is sliced);
- but DALI's random-number generators cannot seek either: the crops and flips of a resumed epoch's
  batches are drawn afresh (seeded by ``(seed, epoch, rank, start)``, so still reproducible), not the
  ones the uninterrupted run would have drawn;
- the price is one pipeline build per epoch (about a second on a GPU), small against an ImageNet epoch.

Without CUDA the same graph runs on DALI's CPU backend (``device_id=None``, ``device="cpu"`` decoding),
which is how the tests exercise it; with a CUDA device decoding is ``"mixed"`` (nvJPEG) and the batches
arrive as CUDA tensors on that device.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trainers.config import DataSpec
from trainers.data.base import (
    DALI_INSTALL_HINT,
    Batch,
    DataBundle,
    check_steps,
    eval_shard,
    steps_per_epoch,
    train_eval_subset,
    train_shard,
)
from trainers.data.folder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    FolderSplits,
    describe,
    first_undecodable,
    scan_folder,
)

READER_NAME = "Reader"
MEAN_255 = [255.0 * m for m in IMAGENET_MEAN]
STD_255 = [255.0 * s for s in IMAGENET_STD]


def _dali() -> Any:
    """Import DALI on first use, with the one-line install hint when it is missing."""
    try:
        from nvidia import dali
        from nvidia.dali.plugin import pytorch as dali_torch
    except ImportError:
        raise ImportError(DALI_INSTALL_HINT) from None
    return dali, dali_torch


def dali_device(device: torch.device | None) -> tuple[int | None, str]:
    """``(device_id, decoder device)``: a CUDA device → its index and ``"mixed"``; otherwise CPU-only.

    ``device=None`` means "the current CUDA device if there is one". A CPU-only host must get
    ``device_id=None``: DALI refuses to build GPU/mixed operators without CUDA.
    """
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if device.type != "cuda":
        return None, "cpu"
    return (device.index if device.index is not None else torch.cuda.current_device()), "mixed"


@dataclass(frozen=True)
class PipelinePlan:
    """Everything a pipeline is built from: plain data, so tests can check it without running DALI."""

    files: tuple[str, ...]
    labels: tuple[int, ...]
    training: bool
    batch_size: int
    image_size: int
    eval_resize: int
    device_id: int | None
    decoder: str  # "mixed" (GPU) or "cpu"
    num_threads: int
    seed: int
    hflip: bool = True  # training: random horizontal flips (data.hflip)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # training: random-resized-crop area range (data.crop_scale)

    def reader_args(self) -> dict[str, Any]:
        # Order and sharding are already in `files`; DALI only reads them in sequence. pad_last_batch makes
        # every pass start at the first file (otherwise the reader wraps around into the next pass and a
        # reused eval pipeline sees a rotated order); the iterator trims the padding (PARTIAL policy).
        return dict(files=list(self.files), labels=list(self.labels), random_shuffle=False,
                    shard_id=0, num_shards=1, pad_last_batch=True, name=READER_NAME)

    def pipeline_args(self) -> dict[str, Any]:
        return dict(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                    seed=self.seed)


def build_pipeline(plan: PipelinePlan) -> Any:
    """The DALI pipeline of ``plan``: read → decode → (random-resized-crop + flip | resize + centre crop)."""
    dali, _ = _dali()
    fn, types = dali.fn, dali.types

    @dali.pipeline_def
    def graph() -> tuple[Any, Any]:
        jpegs, labels = fn.readers.file(**plan.reader_args())
        images = fn.decoders.image(jpegs, device=plan.decoder, output_type=types.RGB)
        if plan.training:
            images = fn.random_resized_crop(images, size=(plan.image_size, plan.image_size),
                                            random_area=list(plan.crop_scale))
            mirror = fn.random.coin_flip() if plan.hflip else 0
            images = fn.crop_mirror_normalize(images, mirror=mirror, mean=MEAN_255,
                                              std=STD_255, output_layout="CHW", dtype=types.FLOAT)
        else:
            images = fn.resize(images, resize_shorter=plan.eval_resize)
            images = fn.crop_mirror_normalize(images, crop=(plan.image_size, plan.image_size), mean=MEAN_255,
                                              std=STD_255, output_layout="CHW", dtype=types.FLOAT)
        return images, labels

    return graph(**plan.pipeline_args())


def iterate(plan: PipelinePlan) -> Iterator[Any]:
    """A DALIGenericIterator over ``plan``: DROP for training (full batches), PARTIAL for evaluation."""
    _, dali_torch = _dali()
    policy = dali_torch.LastBatchPolicy.DROP if plan.training else dali_torch.LastBatchPolicy.PARTIAL
    return dali_torch.DALIGenericIterator([build_pipeline(plan)], ["images", "labels"],
                                          reader_name=READER_NAME, last_batch_policy=policy, auto_reset=True)


def to_batch(out: Sequence[dict[str, Tensor]]) -> Batch:
    """DALI's ``[{"images", "labels"}]`` → ``(images, int64 labels [N])`` on the images' device."""
    images, labels = out[0]["images"], out[0]["labels"]
    # DALI's labels are int32 [N, 1] on the CPU.
    return images, labels.reshape(-1).to(device=images.device, dtype=torch.int64)


def derive_seed(*parts: int) -> int:
    """A DALI pipeline seed (non-negative, < 2**31) from integers."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] >> 1)


class DaliTrain:
    """:class:`~trainers.data.base.ShardedTrain` on DALI: one pipeline per ``epoch_iter`` (see module doc)."""

    def __init__(self, samples: Sequence[tuple[str, int]], *, data: DataSpec, batch_size: int, rank: int,
                 world_size: int, seed: int, device: torch.device | None) -> None:
        self.samples, self.data = samples, data
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.device_id, self.decoder = dali_device(device)
        self.steps_per_epoch = steps_per_epoch(len(samples), batch_size, world_size)

    def plan(self, epoch: int, start: int = 0) -> PipelinePlan:
        idx = train_shard(len(self.samples), batch_size=self.batch_size, rank=self.rank,
                          world_size=self.world_size, seed=self.seed, epoch=epoch)
        chosen = [self.samples[i] for i in idx[max(0, start) * self.batch_size:].tolist()]
        return PipelinePlan(
            files=tuple(p for p, _ in chosen), labels=tuple(lab for _, lab in chosen), training=True,
            batch_size=self.batch_size, image_size=self.data.image_size, eval_resize=self.data.eval_resize,
            device_id=self.device_id, decoder=self.decoder, num_threads=max(1, self.data.loader_workers),
            seed=derive_seed(self.seed, epoch, self.rank, start),
            hflip=self.data.hflip, crop_scale=(self.data.crop_scale[0], self.data.crop_scale[1]),
        )

    def epoch_iter(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start..steps_per_epoch-1``: the files are exact, the augmentation is redrawn on resume.

        DALI's reader shuffle and its random operators cannot seek; this loader never uses the former
        (the file list arrives permuted and sliced at ``start``), so no batch is decoded and skipped, but
        the crops/flips of a resumed epoch come from a pipeline seeded by ``(seed, epoch, rank, start)``.
        """
        plan = self.plan(epoch, start)
        if not plan.files:
            return
        iterator = iterate(plan)
        done = 0
        try:
            try:
                for out in iterator:
                    yield to_batch(out)
                    done += 1
            except RuntimeError as err:
                # DALI says only "nvImageCodec failure": find the file among the batches in flight.
                window = plan.files[done * plan.batch_size:(done + 4) * plan.batch_size]
                bad = first_undecodable(window)
                if bad is None:
                    raise
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ValueError(f"data: cannot decode '{bad}' (DALI: {reason}); remove or replace the file") from err
        finally:
            del iterator  # free the pipeline's (GPU) buffers before the next epoch builds its own


class DaliEval:
    """A re-iterable evaluation split: PARTIAL last batch, empty batches skipped, pipeline reused."""

    def __init__(self, plan: PipelinePlan) -> None:
        self.plan = plan
        self._iterator: Any = None
        self._finished = False

    def __iter__(self) -> Iterator[Batch]:
        if not self.plan.files:
            return
        if self._iterator is None or not self._finished:  # an abandoned pass leaves DALI mid-epoch: rebuild
            self._iterator = None
            self._iterator = iterate(self.plan)
        self._finished = False
        for out in self._iterator:  # auto_reset: the next pass starts from the top
            images, labels = to_batch(out)
            if len(labels):
                yield images, labels
        self._finished = True


def build_dali(data: DataSpec, *, batch_size: int, rank: int, world_size: int, seed: int,
               device: torch.device | None = None, splits: FolderSplits | None = None) -> DataBundle:
    _dali()  # fail early, with the install hint
    splits = splits or scan_folder(data)
    train = DaliTrain(splits.train, data=data, batch_size=batch_size, rank=rank, world_size=world_size,
                      seed=seed, device=device)
    check_steps(train.steps_per_epoch, len(splits.train), batch_size, world_size,
                f"data.path {splits.train_root}")

    def eval_plan(samples: Sequence[tuple[str, int]], indices: Tensor) -> PipelinePlan:
        chosen = [samples[i] for i in indices.tolist()]
        return PipelinePlan(
            files=tuple(p for p, _ in chosen), labels=tuple(lab for _, lab in chosen), training=False,
            batch_size=batch_size, image_size=data.image_size, eval_resize=data.eval_resize,
            device_id=train.device_id, decoder=train.decoder, num_threads=max(1, data.loader_workers),
            seed=derive_seed(seed, rank, 0xE7A1),
        )

    subset = train_eval_subset(len(splits.train), data.train_eval_size, data.data_seed)
    return DataBundle(
        num_classes=len(splits.classes),
        steps_per_epoch=train.steps_per_epoch,
        train=train,
        train_eval=DaliEval(eval_plan(splits.train, subset[rank::world_size])),
        test=DaliEval(eval_plan(splits.val, eval_shard(len(splits.val), rank=rank, world_size=world_size))),
        description=describe(f"dali, {train.decoder} decoding", splits, data),
    )
