"""An ImageNet-layout folder decoded and augmented by NVIDIA DALI: the fast path on GPUs.

Same samples, labels, sharding and order as the torchvision loader (both use
:func:`trainers.data.folder.scan_folder` and :mod:`trainers.data.base`), different decoder and resampler:
images agree in shape and content, not bit for bit.

How the order is made, and why it differs from DALI's usual ``fn.readers.file(random_shuffle=True,
shard_id=rank)``: DALI's shuffle is a fixed-seed shuffle of the whole list followed by a local buffer
shuffle; it cannot seek, its shards differ in length by one when the set does not divide evenly (ranks
would then disagree on the number of steps and DDP would hang), and its order is not the torchvision
loader's. Instead the training pipeline reads through :class:`EpochFiles`, an ``external_source`` that
hands DALI this rank's files for each epoch *already permuted and sharded* by
:func:`~trainers.data.base.train_shard`. So:

- the batches' files are exactly a function of ``(seed, epoch)``, identical to the torchvision loader's;
- the pipeline is built **once per trial** and reset at the end of every epoch (DALI's epoch counter
  picks the next epoch's files); a build costs ~0.5–2 s on a GPU, 80 of them an Imagenette trial when it
  was rebuilt every epoch, all inside the step time. Only a pass asked for out of sequence (a resume, a
  test) builds a new one;
- resuming mid-epoch decodes no skipped batch (the first epoch's list is sliced at the resumed batch);
- but DALI's random-number generators cannot seek: the crops and flips after a resume are drawn afresh
  (the pipeline is seeded by ``(seed, epoch, rank, start)`` of its first pass, so still reproducible), not
  the ones the uninterrupted run would have drawn.

The files are read by ``data.loader_workers`` Python worker processes (DALI's parallel external source;
``fork`` on a CPU-only process, ``spawn`` once CUDA is in use, which ``fork`` cannot survive), or by the
training thread itself with ``loader_workers: 0``. Evaluation reads its fixed file list with DALI's own
reader, one pipeline a split, reused.

Without CUDA the same graph runs on DALI's CPU backend (``device_id=None``, ``device="cpu"`` decoding),
which is how the tests exercise it; with a CUDA device decoding is ``"mixed"`` (nvJPEG), and images and
labels arrive as CUDA tensors on that device: the labels are moved inside the pipeline, so the training
step issues no blocking host-to-device copy for them.
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


class EpochFiles:
    """The training pipeline's source: ``(encoded bytes, [label])`` of sample ``idx_in_epoch`` of the
    pipeline's ``epoch_idx``-th pass, in :func:`~trainers.data.base.train_shard`'s order for this rank.

    Pass 0 is epoch ``first_epoch`` from batch ``first_start`` (a resumed run's), pass k > 0 epoch
    ``first_epoch + k`` from its first batch. Raises StopIteration past the pass's last sample, which ends
    DALI's epoch. Plain data and a callable: DALI pickles it into its worker processes.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], *, batch_size: int, rank: int, world_size: int,
                 seed: int, first_epoch: int, first_start: int = 0) -> None:
        self.paths = tuple(p for p, _ in samples)
        self.labels = tuple(int(lab) for _, lab in samples)
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.first_epoch, self.first_start = first_epoch, max(0, first_start)
        self._order: tuple[int, list[int]] | None = None  # (pass, its sample indices): one permutation a pass

    def epoch_of(self, epoch_idx: int) -> tuple[int, int]:
        """``(epoch, first batch)`` of the pipeline's ``epoch_idx``-th pass."""
        return self.first_epoch + epoch_idx, (self.first_start if epoch_idx == 0 else 0)

    def indices(self, epoch_idx: int) -> list[int]:
        if self._order is None or self._order[0] != epoch_idx:
            epoch, start = self.epoch_of(epoch_idx)
            idx = train_shard(len(self.paths), batch_size=self.batch_size, rank=self.rank,
                              world_size=self.world_size, seed=self.seed, epoch=epoch)
            self._order = (epoch_idx, idx[start * self.batch_size:].tolist())
        return self._order[1]

    def files(self, epoch_idx: int) -> tuple[str, ...]:
        return tuple(self.paths[i] for i in self.indices(epoch_idx))

    def __call__(self, info: Any) -> tuple[np.ndarray, np.ndarray]:
        idx = self.indices(info.epoch_idx)
        if info.idx_in_epoch >= len(idx):
            raise StopIteration
        i = idx[info.idx_in_epoch]
        with open(self.paths[i], "rb") as f:
            encoded = np.frombuffer(f.read(), dtype=np.uint8)
        return encoded, np.array([self.labels[i]], dtype=np.int32)


@dataclass(frozen=True)
class PipelinePlan:
    """Everything a pipeline is built from: plain data, so tests can check it without running DALI."""

    files: tuple[str, ...]  # evaluation: read in this order by DALI's reader; training: () (``source`` reads)
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
    source: EpochFiles | None = None  # training: every epoch's files, through an external source
    py_workers: int = 0  # processes reading the source's files (0: the thread that runs the pipeline)

    @property
    def labels_on_device(self) -> bool:
        """Labels go to the GPU inside the pipeline with the images (no copy left for the training step)."""
        return self.decoder == "mixed"

    @property
    def py_start_method(self) -> str:
        """``fork`` is cheap but cannot carry a CUDA context into the workers: ``spawn`` once CUDA is in use."""
        return "fork" if self.decoder == "cpu" and not torch.cuda.is_initialized() else "spawn"

    def reader_args(self) -> dict[str, Any]:
        # Order and sharding are already in `files`; DALI only reads them in sequence. pad_last_batch makes
        # every pass start at the first file (otherwise the reader wraps around into the next pass and a
        # reused eval pipeline sees a rotated order); the iterator trims the padding (PARTIAL policy).
        return dict(files=list(self.files), labels=list(self.labels), random_shuffle=False,
                    shard_id=0, num_shards=1, pad_last_batch=True, name=READER_NAME)

    def pipeline_args(self) -> dict[str, Any]:
        return dict(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                    seed=self.seed, py_num_workers=self.py_workers, py_start_method=self.py_start_method)


def build_pipeline(plan: PipelinePlan) -> Any:
    """The DALI pipeline of ``plan``: read → decode → (random-resized-crop + flip | resize + centre crop)."""
    dali, _ = _dali()
    fn, types = dali.fn, dali.types

    @dali.pipeline_def
    def graph() -> tuple[Any, Any]:
        if plan.source is not None:
            jpegs, labels = fn.external_source(source=plan.source, num_outputs=2, batch=False,
                                               parallel=plan.py_workers > 0, dtype=[types.UINT8, types.INT32])
        else:
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
        return images, (labels.gpu() if plan.labels_on_device else labels)

    return graph(**plan.pipeline_args())


def iterate(plan: PipelinePlan) -> Any:
    """A DALIGenericIterator over ``plan``: DROP for training (full batches), PARTIAL for evaluation; an
    epoch ends where the reader's files end (evaluation) or where the source raises StopIteration
    (training); ``auto_reset`` starts the next pass."""
    _, dali_torch = _dali()
    policy = dali_torch.LastBatchPolicy.DROP if plan.training else dali_torch.LastBatchPolicy.PARTIAL
    return dali_torch.DALIGenericIterator([build_pipeline(plan)], ["images", "labels"],
                                          reader_name=READER_NAME if plan.source is None else None,
                                          last_batch_policy=policy, auto_reset=True)


def to_batch(out: Sequence[dict[str, Tensor]]) -> Batch:
    """DALI's ``[{"images", "labels"}]`` → ``(images, int64 labels [N])`` on the images' device.

    DALI's labels are int32 [N, 1]; on a GPU the pipeline has already moved them there, so the cast is a
    device op. Labels left on the host are copied from pinned memory without the host waiting.
    """
    images, labels = out[0]["images"], out[0]["labels"].reshape(-1)
    if labels.device != images.device:
        labels = labels.pin_memory().to(images.device, non_blocking=True)
    return images, labels.to(torch.int64)


def derive_seed(*parts: int) -> int:
    """A DALI pipeline seed (non-negative, < 2**31) from integers."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0] >> 1)


@dataclass
class _LivePipeline:
    """The training pipeline of a trial, and where it stands."""

    source: EpochFiles
    iterator: Any
    passes: int = 0  # epochs it has finished (its source's epoch_idx)
    next: tuple[int, int] | None = None  # the (epoch, start) it yields next; None while mid-epoch


class DaliTrain:
    """:class:`~trainers.data.base.ShardedTrain` on DALI: one pipeline a trial, reset every epoch (module doc)."""

    def __init__(self, samples: Sequence[tuple[str, int]], *, data: DataSpec, batch_size: int, rank: int,
                 world_size: int, seed: int, device: torch.device | None) -> None:
        self.samples, self.data = samples, data
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.device_id, self.decoder = dali_device(device)
        self.steps_per_epoch = steps_per_epoch(len(samples), batch_size, world_size)
        self.builds = 0  # pipelines built: one a trial, unless epochs are asked for out of sequence
        self._live: _LivePipeline | None = None

    def plan(self, epoch: int, start: int = 0) -> PipelinePlan:
        """The plan of a pipeline whose first pass is ``epoch`` from batch ``start``."""
        source = EpochFiles(self.samples, batch_size=self.batch_size, rank=self.rank, world_size=self.world_size,
                            seed=self.seed, first_epoch=epoch, first_start=start)
        return PipelinePlan(
            files=(), labels=(), training=True, batch_size=self.batch_size, image_size=self.data.image_size,
            eval_resize=self.data.eval_resize, device_id=self.device_id, decoder=self.decoder,
            num_threads=max(1, self.data.loader_workers), seed=derive_seed(self.seed, epoch, self.rank, start),
            hflip=self.data.hflip, crop_scale=(self.data.crop_scale[0], self.data.crop_scale[1]),
            source=source, py_workers=self.data.loader_workers,
        )

    def epoch_iter(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start..steps_per_epoch-1``: the files are exact, the augmentation is redrawn on resume.

        The trial's pipeline continues into ``epoch`` when its last pass ended just before it (the loop's
        order); any other request — the first, a resume, a pass abandoned mid-epoch — builds a new one.
        """
        start = max(0, start)
        if start >= self.steps_per_epoch:
            return
        live = self._live
        if live is None or live.next != (epoch, start):
            self._live = live = None  # the old pipeline's (GPU) buffers go before the new one takes its own
            plan = self.plan(epoch, start)
            assert plan.source is not None  # a training plan always has one
            live = self._live = _LivePipeline(plan.source, iterate(plan))
            self.builds += 1
        live.next = None  # mid-epoch from here: DALI cannot resume an abandoned pass
        done = 0
        try:
            for out in live.iterator:  # auto_reset: at the pass's end the pipeline resets and prefetches the next
                yield to_batch(out)
                done += 1
        except RuntimeError as err:
            # DALI says only "nvImageCodec failure": find the file among the batches in flight.
            window = live.source.files(live.passes)[done * self.batch_size:(done + 4) * self.batch_size]
            bad = first_undecodable(window)
            if bad is None:
                raise
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(f"data: cannot decode '{bad}' (DALI: {reason}); remove or replace the file") from err
        live.passes += 1
        live.next = (epoch + 1, 0)


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
