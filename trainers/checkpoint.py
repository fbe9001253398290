"""A trial's checkpoint: what resuming needs to continue exactly where the trial stopped.

One file, :data:`CHECKPOINT_FILE`, in a fresh temporary directory that the loop reports to its session
and then removes (the session copies or uploads it): the step, the unwrapped module's weights, the
optimizer, the DivergenceMonitor's rule state and every random generator's state (:func:`rng_states`:
torch's CPU generator, each CUDA device's, NumPy's, Python's), so a resumed run draws the same dropout
masks and ends with the uninterrupted run's weights. Only rank 0 writes one (every rank holds the same
weights under DDP); with several ranks it also holds every rank's generator states (``rank_rngs``,
gathered by the loop), and each rank resumes its own streams.

The checkpoint that goes out with a trial's summary also holds :data:`SUMMARY_FILE` (the summary as
JSON); a diverged run's holds only that file — no diverged weights, so resuming from it starts afresh.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from trainers.divergence import DivergenceMonitor

CHECKPOINT_FILE = "state.pt"
SUMMARY_FILE = "summary.json"  # in the checkpoint reported with the summary
PREFIX = "normstudy-ckpt-"


def save_checkpoint(step: int, module: nn.Module, optimizer: torch.optim.Optimizer, monitor: DivergenceMonitor,
                    rank: int, extra: dict[str, Any] | None = None,
                    rank_rngs: list[dict[str, Any]] | None = None) -> str | None:
    """Rank 0: a new directory holding the state after ``step``; other ranks: None. Take it right after
    the monitor's ``flush`` (its state holds flushed steps only). ``extra``: the run's own small state
    (its initial evaluation), handed back by :func:`load_checkpoint`. ``rank_rngs``: every rank's
    :func:`rng_states`, in rank order (None with one rank: this process's own are saved)."""
    if rank != 0:
        return None
    d = tempfile.mkdtemp(prefix=PREFIX)
    torch.save({"step": step, "model": module.state_dict(), "optimizer": optimizer.state_dict(),
                "monitor": monitor.state_dict(), **rng_states(), "rank_rngs": list(rank_rngs or []),
                "extra": dict(extra or {})},
               os.path.join(d, CHECKPOINT_FILE))
    return d


def rng_states() -> dict[str, Any]:
    """Every generator a step draws from: ``torch_rng`` (CPU), ``cuda_rng`` (one state per visible CUDA
    device; empty while this process has not initialized CUDA, so nothing on a GPU has drawn yet),
    ``numpy_rng``, ``python_rng``."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"torch_rng": torch.get_rng_state(), "cuda_rng": [s.cpu() for s in cuda],
            "numpy_rng": np.random.get_state(), "python_rng": random.getstate()}


def gather_rng_states(world: int) -> list[dict[str, Any]] | None:
    """Every rank's :func:`rng_states`, in rank order, on every rank (a collective: all ranks call it);
    None with one rank or no process group."""
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return None
    states: list[Any] = [None] * world
    dist.all_gather_object(states, rng_states())
    return states


def restore_rng_states(state: dict[str, Any]) -> None:
    """Set every generator :func:`rng_states` saved. CUDA states go to the devices of the same index (a
    resumed worker sees as many as the one that saved, one GPU under Ray Train); a checkpoint from before
    CUDA states were saved, or from a CPU run, leaves the CUDA generators as they are."""
    torch.set_rng_state(state["torch_rng"])
    cuda = list(state.get("cuda_rng") or [])
    if cuda and torch.cuda.is_available():
        for index, s in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, index)
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])


def load_checkpoint(path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, monitor: DivergenceMonitor,
                    rank: int = 0) -> tuple[int, dict[str, Any]]:
    """Restore what :func:`save_checkpoint` wrote into these objects and ``rank``'s generators (its own
    saved states, or the saving rank's where the checkpoint holds no per-rank ones); returns the step and
    the ``extra`` it was saved with."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    monitor.load_state_dict(state["monitor"])
    ranks = state.get("rank_rngs") or []
    restore_rng_states(ranks[rank] if rank < len(ranks) else state)
    return int(state["step"]), dict(state.get("extra") or {})


def resume_file(checkpoint_dir: str | None) -> Path | None:
    """The state file inside a session's checkpoint directory, or None for a fresh start (no directory,
    or a diverged run's checkpoint holding only its summary)."""
    if not checkpoint_dir:
        return None
    path = Path(checkpoint_dir) / CHECKPOINT_FILE
    return path if path.is_file() else None


def summary_only_checkpoint() -> str:
    """An empty checkpoint directory, for a summary that must not carry weights (a diverged run)."""
    return tempfile.mkdtemp(prefix=PREFIX)


def write_summary(checkpoint_dir: str, summary: dict[str, Any]) -> None:
    Path(checkpoint_dir, SUMMARY_FILE).write_text(json.dumps(summary))


def remove_checkpoint(checkpoint_dir: str) -> None:
    """Delete a checkpoint directory once its session has it."""
    shutil.rmtree(checkpoint_dir, ignore_errors=True)
