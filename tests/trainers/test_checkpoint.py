"""A trial's checkpoint (trainers/checkpoint.py): a save → load round trip restores the model, the optimizer,
the DivergenceMonitor's rule state and every generator exactly (torch's CPU one, each CUDA device's — on a
mocked CUDA here —, NumPy's, Python's; each rank its own); only rank 0 writes one; a summary-only
checkpoint (a diverged run's) is no state to resume from."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import trainers.checkpoint as checkpoint
from study.spec import load
from trainers.checkpoint import (
    CHECKPOINT_FILE,
    SUMMARY_FILE,
    load_checkpoint,
    remove_checkpoint,
    resume_file,
    save_checkpoint,
    summary_only_checkpoint,
    write_summary,
)
from trainers.loop import TrainingRun, setup, train_step
from trainers.session import LocalSession

TINY = ["training.max_steps=20", "training.report_every=5", "training.dropout=0.3", "data.train_size=256",
        "data.test_size=64", "data.train_eval_size=64"]


@pytest.fixture(autouse=True)
def _one_thread(one_thread_and_private_tmp):
    """1 torch thread and private checkpoint temp dirs (tests/trainers/conftest.py)."""


def trained_run(seed: int, steps: int) -> TrainingRun:
    """A run set up by the loop's own ``setup`` and advanced ``steps`` steps, its monitor flushed."""
    spec = load(None, [*TINY, f"training.seed={seed}"])
    run = setup({"trial": spec.trainer_config("wn"), "session": "local"}, LocalSession())
    for _ in range(steps):
        train_step(run, *run.next_batch())
    run.monitor.flush()  # a checkpoint is taken right after a flush
    return run


def rng_states() -> tuple[torch.Tensor, tuple, object]:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def assert_same_tensors(a, b, where: str = "") -> None:
    """Nested dicts/lists/tuples of tensors and plain values, equal exactly."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_tensors(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tensors(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        assert np.array_equal(a, b), where
    else:
        assert a == b, where


def test_save_then_load_restores_model_optimizer_monitor_and_rngs_exactly():
    saved = trained_run(seed=0, steps=7)
    assert saved.monitor.last_step == 7 and saved.optimizer.state  # momentum buffers and rule state exist
    rngs = rng_states()
    d = save_checkpoint(7, saved.module, saved.optimizer, saved.monitor, rank=0)
    expected = {"model": {k: v.clone() for k, v in saved.module.state_dict().items()},
                "optimizer": saved.optimizer.state_dict(), "monitor": saved.monitor.state_dict()}

    other = trained_run(seed=1, steps=3)  # other weights, momentum, rule state and RNG draws
    assert not torch.equal(next(iter(other.module.state_dict().values())), next(iter(expected["model"].values())))
    torch.rand(5), np.random.rand(5), random.random()  # move every RNG on
    step, _ = load_checkpoint(Path(d) / CHECKPOINT_FILE, other.module, other.optimizer, other.monitor)

    assert step == 7
    assert_same_tensors(other.module.state_dict(), expected["model"], "model")
    assert_same_tensors(other.optimizer.state_dict(), expected["optimizer"], "optimizer")
    assert json.dumps(other.monitor.state_dict(), sort_keys=True) == json.dumps(expected["monitor"], sort_keys=True)
    assert other.monitor.last_step == 7
    torch_rng, numpy_rng, python_rng = rng_states()
    assert torch.equal(torch_rng, rngs[0]) and python_rng == rngs[2]
    assert_same_tensors(numpy_rng, rngs[1], "numpy_rng")
    remove_checkpoint(d)
    assert not Path(d).exists()


def test_only_rank_0_writes_a_checkpoint():
    run = trained_run(seed=0, steps=1)
    assert save_checkpoint(1, run.module, run.optimizer, run.monitor, rank=1) is None


def test_resume_file_is_the_state_or_none():
    run = trained_run(seed=0, steps=1)
    d = save_checkpoint(1, run.module, run.optimizer, run.monitor, rank=0)
    assert resume_file(d) == Path(d) / CHECKPOINT_FILE
    assert resume_file(None) is None and resume_file("") is None
    summary_only = summary_only_checkpoint()  # a diverged run's: its summary, no weights
    write_summary(summary_only, {"diverged": 1.0, "outcome": "diverged"})
    assert json.loads((Path(summary_only) / SUMMARY_FILE).read_text()) == {"diverged": 1.0, "outcome": "diverged"}
    assert resume_file(summary_only) is None  # resuming from it starts afresh


class FakeCuda:
    """Two CUDA devices' generator states, as torch.cuda's functions would get and set them."""

    def __init__(self, monkeypatch) -> None:
        self.states = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: len(self.states))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in self.states])

        def set_state(state, device):
            self.states[device] = state.clone()

        monkeypatch.setattr(torch.cuda, "set_rng_state", set_state)

    def draw(self) -> None:
        self.states = [s + 7 for s in self.states]


def test_a_checkpoint_restores_every_cuda_devices_generator(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    run = trained_run(seed=0, steps=1)
    saved = [s.clone() for s in cuda.states]
    d = save_checkpoint(1, run.module, run.optimizer, run.monitor, rank=0)
    cuda.draw()
    load_checkpoint(Path(d) / CHECKPOINT_FILE, run.module, run.optimizer, run.monitor)
    assert all(torch.equal(a, b) for a, b in zip(cuda.states, saved, strict=True))


def test_each_rank_resumes_its_own_generators():
    """With several ranks the checkpoint holds every rank's states (the loop gathers them); rank r restores
    its own, so the ranks' streams stay distinct after a resume."""
    run = trained_run(seed=0, steps=1)
    per_rank = []
    for seed in (10, 11):  # what ranks 0 and 1 held at the checkpoint
        torch.manual_seed(seed), np.random.seed(seed), random.seed(seed)
        per_rank.append(checkpoint.rng_states())
    d = save_checkpoint(1, run.module, run.optimizer, run.monitor, rank=0, rank_rngs=per_rank)
    path = Path(d) / CHECKPOINT_FILE
    draws = {}
    for rank in (0, 1):
        load_checkpoint(path, run.module, run.optimizer, run.monitor, rank=rank)
        draws[rank] = (torch.rand(3), np.random.rand(), random.random())
        torch.manual_seed(10 + rank), np.random.seed(10 + rank), random.seed(10 + rank)
        expected = (torch.rand(3), np.random.rand(), random.random())
        assert torch.equal(draws[rank][0], expected[0]) and draws[rank][1:] == expected[1:]
    assert not torch.equal(draws[0][0], draws[1][0])

