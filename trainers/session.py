"""Where a training loop runs: a Ray Train worker, a Ray Tune trial process, or plain Python.

The loop talks to one small interface (rank, world size, device, report, checkpoint) so the same
``train_loop_per_worker`` serves multi-worker ``TorchTrainer`` trials and single-worker CPU trials run
inside the Tune trial process (no worker-group start-up; docs/design.md §2). Inside a Tune function
trainable ``ray.train.*`` raises, so the Tune flavour uses ``ray.tune.report``/``get_checkpoint``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch


class Session(Protocol):
    world_rank: int
    world_size: int
    device: torch.device

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None: ...

    def checkpoint_dir(self) -> str | None:
        """A local directory holding the checkpoint to resume from, or None for a fresh start."""


class RayTrainSession:
    """A worker of a ``ray.train.torch.TorchTrainer`` (DDP process group already set up by Ray)."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.world_rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self._ckpt = ray.train.get_checkpoint()
        self._ckpt_ctx = None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        import ray.train

        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)

    def checkpoint_dir(self) -> str | None:
        if self._ckpt is None:
            return None
        self._ckpt_ctx = self._ckpt.as_directory()
        return self._ckpt_ctx.__enter__()


class TuneSession:
    """The Tune trial process itself (single worker, CPU): reports go straight to Tune."""

    world_rank, world_size = 0, 1

    def __init__(self, device: torch.device | None = None) -> None:
        import ray.tune

        self.device = device or torch.device("cpu")
        self._ckpt = ray.tune.get_checkpoint()
        self._ckpt_ctx = None

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        import ray.tune

        ckpt = ray.tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.tune.report(metrics, checkpoint=ckpt)

    def checkpoint_dir(self) -> str | None:
        if self._ckpt is None:
            return None
        self._ckpt_ctx = self._ckpt.as_directory()
        return self._ckpt_ctx.__enter__()


@dataclass
class LocalSession:
    """No Ray: for benchmarks and unit tests. Keeps every report; checkpoints are copied to a temp dir."""

    world_rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    resume_from: str | None = None
    stop_after_reports: int | None = None  # simulate a crash: raise after this many reports
    reports: list[dict[str, Any]] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint_dir:
            import shutil

            dst = Path(tempfile.mkdtemp(prefix="normstudy-ckpt-"))
            shutil.copytree(checkpoint_dir, dst, dirs_exist_ok=True)
            self.checkpoints.append(str(dst))
        if self.stop_after_reports is not None and len(self.reports) >= self.stop_after_reports:
            raise KeyboardInterrupt("LocalSession: simulated stop")

    def checkpoint_dir(self) -> str | None:
        return self.resume_from


def create_session(kind: str, device: torch.device | None = None) -> Session:
    """``kind``: 'train' (Ray Train worker), 'tune' (inside a Tune trial) or 'local'."""
    if kind == "train":
        return RayTrainSession()
    if kind == "tune":
        return TuneSession(device)
    if kind == "local":
        return LocalSession(device=device or torch.device("cpu"))
    raise ValueError(f"session kind must be train, tune or local, got {kind!r}")
