"""Where the loop runs (trainers/session.py): LocalSession's contract, and — under ``-m integration`` —
the Ray Train and Tune sessions carrying a trial across a failure: the loop's checkpoint goes out with a
report, the retried worker gets it back from ``checkpoint_dir()`` and ends with the weights of a run
that never failed."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

from trainers.loop import CHECKPOINT_FILE, SUMMARY_FILE, train_loop_per_worker
from trainers.session import LocalSession, RayTrainSession, TuneSession, create_session


@pytest.fixture(autouse=True)
def private_tmp(tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))


def test_local_session_defaults():
    s = LocalSession()
    assert (s.world_rank, s.world_size, s.device) == (0, 1, torch.device("cpu"))
    assert s.checkpoint_dir() is None and s.reports == [] and s.checkpoints == []
    assert LocalSession(resume_from="/some/ckpt").checkpoint_dir() == "/some/ckpt"


def test_local_session_keeps_a_copy_of_each_report_and_checkpoint(tmp_path):
    s = LocalSession()
    metrics = {"step": 5, "loss": 2.0}
    s.report(metrics)
    metrics["loss"] = 99.0  # the caller reuses its dict
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "state.pt").write_bytes(b"weights")
    s.report({"step": 10}, checkpoint_dir=str(src))
    (src / "state.pt").unlink()  # the loop deletes its checkpoint right after reporting it
    src.rmdir()
    assert s.reports == [{"step": 5, "loss": 2.0}, {"step": 10}]
    (copy,) = s.checkpoints
    assert Path(copy) != src and (Path(copy) / "state.pt").read_bytes() == b"weights"


def test_local_session_simulated_stop_comes_after_the_report_and_its_checkpoint(tmp_path):
    s = LocalSession(stop_after_reports=2)
    s.report({"step": 5})
    (tmp_path / "c").mkdir()
    with pytest.raises(KeyboardInterrupt):
        s.report({"step": 10}, checkpoint_dir=str(tmp_path / "c"))
    assert [r["step"] for r in s.reports] == [5, 10] and len(s.checkpoints) == 1


def test_create_session():
    s = create_session("local")
    assert isinstance(s, LocalSession) and s.device == torch.device("cpu")
    assert create_session("local", torch.device("meta")).device == torch.device("meta")
    with pytest.raises(ValueError, match="train, tune or local"):
        create_session("ray")


# --------------------------------------------------------------------------------------------------
# integration: a failure after a checkpoint, under Ray Train and under Tune

FAIL = ["training.max_steps=20", "training.report_every=5", "training.eval_every=5",
        "training.checkpoint_every=10", "training.dropout=0.3", "training.lr=0.03", "training.torch_threads=1",
        "data.train_size=512", "data.test_size=256", "data.train_eval_size=128"]


class CrashOnce:
    """Mixin over a real session: logs each report's step (rank 0) and fails once, right after the first
    report that carried a checkpoint (like a worker lost then), marking ``log.failed`` so the retry goes on."""

    log: Path

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        super().report(metrics, checkpoint_dir=checkpoint_dir)
        if self.world_rank == 0:
            with self.log.open("a") as f:
                f.write(f"{metrics.get('step', 'summary')}\n")
        failed = self.log.with_suffix(".failed")
        if checkpoint_dir and "steps_done" not in metrics and not failed.exists():
            failed.touch()
            raise RuntimeError("simulated worker failure")


class CrashOnceTrain(CrashOnce, RayTrainSession):
    pass


class CrashOnceTune(CrashOnce, TuneSession):
    pass


def train_worker(config: dict[str, Any]) -> None:
    session = CrashOnceTrain()
    session.log = Path(config["log"])
    train_loop_per_worker(config, session=session)


def tune_trainable(config: dict[str, Any], loop_config: dict[str, Any], log: str) -> None:
    session = CrashOnceTune()
    session.log = Path(log)
    train_loop_per_worker(loop_config, session=session)


@pytest.fixture(scope="module")
def uninterrupted():
    """The same trial straight through in this process: its summary and final weights."""
    from study.spec import load

    threads = torch.get_num_threads()
    spec = load(None, FAIL)
    session = LocalSession()
    try:
        summary = train_loop_per_worker({"trial": spec.trainer_config("wn"), "session": "local"}, session)
    finally:
        torch.set_num_threads(threads)
    state = torch.load(Path(session.checkpoints[-1]) / CHECKPOINT_FILE, weights_only=False)
    return spec, summary, state["model"]


def check_resumed(log: Path, summary: dict[str, Any], ckpt_dir: str, uninterrupted) -> None:
    _, summary_0, weights_0 = uninterrupted
    # steps 5, 10 (checkpoint, then the failure); the retry restarts at 15, not at 5
    assert log.read_text().split() == ["5", "10", "15", "summary"]
    assert log.with_suffix(".failed").exists()
    for key in ("steps_done", "diverged", "final_train_top1", "final_test_top1"):
        assert summary[key] == pytest.approx(summary_0[key]), key
    state = torch.load(Path(ckpt_dir) / CHECKPOINT_FILE, map_location="cpu", weights_only=False)
    assert state["step"] == 20 and (Path(ckpt_dir) / SUMMARY_FILE).is_file()
    for name, w in weights_0.items():
        torch.testing.assert_close(state["model"][name], w, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.integration
def test_ray_train_worker_failure_resumes_from_the_checkpoint(ray_cluster, tmp_path, uninterrupted):
    import ray.train
    from ray.train.torch import TorchTrainer

    spec = uninterrupted[0]
    log = tmp_path / "train.log"
    result = TorchTrainer(
        train_worker,
        train_loop_config={"trial": spec.trainer_config("wn"), "session": "train", "log": str(log)},
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path=str(tmp_path / "ray"), name="fail-once",
                                       failure_config=ray.train.FailureConfig(max_failures=1)),
    ).fit()
    assert result.error is None
    with result.checkpoint.as_directory() as d:
        check_resumed(log, result.metrics, d, uninterrupted)


@pytest.mark.integration
def test_tune_trial_failure_resumes_from_the_checkpoint(ray_cluster, tmp_path, uninterrupted):
    from ray import tune

    spec = uninterrupted[0]
    log = tmp_path / "tune.log"
    trainable = tune.with_parameters(tune_trainable, log=str(log),
                                     loop_config={"trial": spec.trainer_config("wn"), "session": "tune"})
    results = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "ray"), name="fail-once", verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=1)),
    ).fit()
    (result,) = list(results)
    assert result.error is None
    with result.checkpoint.as_directory() as d:
        check_resumed(log, result.metrics, d, uninterrupted)
