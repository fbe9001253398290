"""The memory one training worker of a trial needs, estimated on the driver before a study starts.

A study that cannot fit one trial's worker in a node's memory would only show it as trials killed by the
OS (or CUDA out-of-memory errors) once it runs. The estimate, in bytes, of one worker training with SGD:

    M = 3·P + F·A + D + B

- ``P``: the parameters' bytes (fp32): the weights, their gradients and SGD's momentum buffer (2·P
  without momentum);
- ``A``: the bytes autograd saves for the backward pass over one per-worker batch, counted exactly by a
  forward pass of the real model on PyTorch's ``meta`` device (no memory, no compute) under
  ``torch.autograd.graph.saved_tensors_hooks``; ``F = 2``: the backward pass holds the gradients of those
  activations beside them (measured on the small CIFAR ResNet, one CPU step at batch 128 and 256: the peak
  resident memory grows by 0.97–1.03 times the estimate's 2·A + 2·P, ``tests/reliability/test_resources.py``);
- ``D``: the data the worker holds: its batch and, for folder data, the batches its loader workers prefetch
  (``2 · data.loader_workers``); generated data keeps both splits in memory (12 bytes a pixel, twice while
  they are generated);
- ``B``: :data:`BASE_BYTES` for the process itself (Python, torch, Ray's worker, MLflow's client).

Mixed precision (``amp: bf16``) keeps fp32 weights; its smaller activations are not counted (the estimate
stays an upper bound). On a GPU the CUDA context and cuDNN workspaces come on top of ``M - B``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainers import norms
from trainers.config import TrainerConfig
from trainers.models import build_model

BACKWARD_FACTOR = 2.0  # activations plus their gradients at the peak of the backward pass (measured ~2.1)
BASE_BYTES = 512 * 2**20  # a worker process before its model and data (Python + torch + Ray + MLflow client)
PREFETCH_FACTOR = 2  # torch DataLoader's default batches in flight per loader worker
GIB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    params: int  # weights, gradients and momentum
    activations: int  # saved for backward, times BACKWARD_FACTOR
    data: int  # the batch, prefetched batches, a generated data set
    batch: int  # the one batch a GPU holds
    base: int = BASE_BYTES

    @property
    def total(self) -> int:
        """Host memory of a CPU worker."""
        return self.params + self.activations + self.data + self.base

    @property
    def device(self) -> int:
        """What a GPU worker's GPU holds (its data and the process stay on the host)."""
        return self.params + self.activations + self.batch

    def text(self) -> str:
        return (f"{self.total / GIB:.1f} GiB (parameters {self.params / GIB:.2f}, activations "
                f"{self.activations / GIB:.2f}, data {self.data / GIB:.2f}, process {self.base / GIB:.1f})")


def saved_activation_bytes(model: torch.nn.Module, images: torch.Tensor) -> int:
    """Bytes autograd saves for backward in one forward pass of ``model`` on ``images`` (each tensor once; the
    parameters it saves are not activations)."""
    saved: dict[int, tuple[torch.Tensor, int]] = {}
    params = {id(p) for p in model.parameters()}  # weights saved for backward are counted as parameters

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in params:
            saved[id(t)] = (t, t.numel() * t.element_size())  # the tensor is kept, so its id is not reused
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(images)
    return sum(size for _, size in saved.values())


def worker_memory(config: TrainerConfig, per_worker_batch: int, classes: int | None = None) -> MemoryEstimate:
    """The estimate for one worker of a trial of ``config`` (see the module docstring). ``classes``: of a
    folder data set (its scan counts them); ImageNet's 1000 when not given."""
    m, d, t = config.model, config.data, config.training
    if d.kind == "generated":
        classes = d.num_classes
    classes = classes or 1000
    with torch.device("meta"):
        model = build_model(m.arch, norms.create(config.scheme.name, **config.scheme.options), classes,
                            dropout=t.dropout, cifar_width=m.cifar_width, cifar_blocks=m.cifar_blocks)
        model.train()
        activations = saved_activation_bytes(model, torch.empty(per_worker_batch, 3, d.image_size, d.image_size))
    params = sum(p.numel() * 4 for p in model.parameters()) * (3 if t.momentum > 0 else 2)
    batch = per_worker_batch * 3 * d.image_size**2 * 4
    if d.kind == "generated":
        data = batch + 2 * 12 * d.image_size**2 * (d.train_size + d.test_size)
    else:
        data = batch * (1 + PREFETCH_FACTOR * d.loader_workers)
    return MemoryEstimate(params, int(BACKWARD_FACTOR * activations), data, batch)
