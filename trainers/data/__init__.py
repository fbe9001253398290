"""Data for a training worker: ``build_data(spec.data, batch_size=..., rank=..., world_size=...)``.

Three sources behind one interface (:class:`DataBundle`):

- ``generated`` (default): an in-memory procedurally generated set (:mod:`trainers.data.generated`);
- ``folder`` + torchvision: an ImageNet-layout folder read on CPU (:mod:`trainers.data.folder_torchvision`);
- ``folder`` + DALI: the same folder decoded and augmented by NVIDIA DALI, on the GPU when there is one
  (:mod:`trainers.data.folder_dali`).

All three shard and order samples with the same functions (:mod:`trainers.data.base`), so a rank's
batches of an epoch are a pure function of ``(seed, epoch)`` and resuming mid-epoch is exact.
NVIDIA DALI itself is imported only when a DALI pipeline is built (trainers/data/folder_dali.py):
the generated default and torchvision never pay for it.
"""

from __future__ import annotations

import torch

from trainers.config import DataSpec
from trainers.data.base import DALI_INSTALL_HINT, Batch, DataBundle, ShardedTrain
from trainers.data.digits import DEFAULT_PATH, write_digits_folder
from trainers.data.folder_dali import build_dali
from trainers.data.folder_torchvision import build_torchvision
from trainers.data.generated import build_generated

__all__ = ["DALI_INSTALL_HINT", "Batch", "DataBundle", "ShardedTrain", "build_data", "resolve_loader"]



def resolve_loader(loader: str, cuda_available: bool | None = None) -> str:
    """``'auto'`` → ``'dali'`` iff CUDA is available, else ``'torchvision'``; explicit choices pass through.

    The one place the choice is made. An explicit ``'dali'`` without an importable ``nvidia.dali`` raises
    ImportError with a one-line install hint (``'auto'`` never picks DALI it cannot import).
    """
    if loader not in ("auto", "torchvision", "dali"):
        raise ValueError(f"data.loader: must be one of auto, torchvision, dali, got {loader!r}")
    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if loader == "auto":
        loader = "dali" if cuda_available and dali_available() else "torchvision"
    if loader == "dali" and not dali_available():
        raise ImportError(DALI_INSTALL_HINT)
    return loader


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.plugin.pytorch  # noqa: F401
    except ImportError:
        return False
    return True


def build_data(data: DataSpec, *, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
               device: torch.device | None = None) -> DataBundle:
    """The data of rank ``rank`` of ``world_size``. ``batch_size`` is PER WORKER.

    Images are float32 NCHW normalized tensors, labels int64 of shape ``[N]``. CPU loaders yield CPU
    tensors (the loop moves them); DALI on a CUDA ``device`` yields tensors already on that device.
    ``seed`` (the training seed) orders the training batches; ``data.data_seed`` fixes the generated
    images and the train-eval subset, so they are the same for every trial.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1 per worker, got {batch_size}")
    if data.kind == "generated":
        return build_generated(data, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed,
                               device=device)
    if data.kind == "digits":  # written once as an ImageNet-layout folder, then read like any folder
        root = write_digits_folder(data.path or DEFAULT_PATH, image_size=data.digits_image_size)
        data = data.model_copy(update={"kind": "folder", "path": str(root)})
    if data.kind == "folder":
        use_cuda = None if device is None else device.type == "cuda"
        loader = resolve_loader(data.loader, cuda_available=use_cuda)
        if loader == "dali":
            return build_dali(data, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed,
                              device=device)
        return build_torchvision(data, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed,
                                 device=device)
    raise ValueError(f"data.kind: must be 'generated', 'folder' or 'digits', got {data.kind!r}")
