"""Issue 9 §1: a Ray Train worker process SIGKILLed mid-trial.

A 2-worker gloo DDP ``TorchTrainer`` (what ``normstudy train`` and multi-worker trials run) with
``FailureConfig(max_failures=1)``. Rank 1 records its PID and, a few steps after the first checkpoint
(step 10; killed at the report of step 14), sends itself a real ``SIGKILL`` — no exception, no cleanup,
the process is gone. Ray Train restarts the worker group from the step-10 checkpoint and the trial
finishes. Checked against an uninterrupted run of the same seed:
- the final summary (steps, accuracies, loss) is the same within float tolerance;
- the MLflow run has one continuous history: every step's loss exactly once (the replayed steps 11–14
  are not written twice) and equal, step by step, to the uninterrupted run's;
- the killed PID is dead and both ranks ran again in new processes.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from study import spec as spec_mod
from trainers.loop import train_loop_per_worker
from trainers.session import RayTrainSession

pytestmark = pytest.mark.integration

STEPS, KILL_AT = 30, 14
SPEC = ["training.max_steps=30", "training.report_every=2", "training.eval_every=10", "training.lr=0.05",
        "training.torch_threads=1", "training.batch_size=64", "data.train_size=512", "data.test_size=256",
        "data.train_eval_size=128", "scaling.num_workers=2", "schemes=[bn]"]


class KillSelfOnce(RayTrainSession):
    """The real Ray Train session; rank 1 SIGKILLs its own process at the report of step ``kill_at``
    (once: a marker file stops the restarted worker from doing it again)."""

    kill_at: int | None = None
    folder: Path

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        marker = self.folder / "killed"
        if self.kill_at is not None and self.world_rank == 1 and metrics.get("step") == self.kill_at \
                and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        super().report(metrics, checkpoint_dir=checkpoint_dir)


def killable_worker(config: dict[str, Any]) -> None:
    session = KillSelfOnce()
    session.kill_at, session.folder = config["kill_at"], Path(config["folder"])
    (session.folder / f"pid.rank{session.world_rank}.{time.time_ns()}").write_text(str(os.getpid()))
    train_loop_per_worker(config, session=session)


def fit(folder: Path, kill_at: int | None):
    """One 2-worker trial logging to its own SQLite MLflow run; returns (result, client, run_id)."""
    import ray.train
    from mlflow import MlflowClient
    from ray.train.torch import TorchTrainer

    folder.mkdir()
    uri = f"sqlite:///{folder / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("worker-failure")).info.run_id
    spec = spec_mod.load(None, SPEC)
    result = TorchTrainer(
        killable_worker,
        train_loop_config={"trial": spec.trainer_config("bn"), "session": "train", "tracking_uri": uri,
                           "run_id": run_id, "kill_at": kill_at, "folder": str(folder)},
        scaling_config=ray.train.ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path=str(folder / "ray"), name="trial",
                                       failure_config=ray.train.FailureConfig(max_failures=1)),
    ).fit()
    return result, client, run_id


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigkilled_worker_restores_from_its_checkpoint_with_one_continuous_history(tmp_path, ray_cluster):
    base, base_client, base_run = fit(tmp_path / "uninterrupted", kill_at=None)
    started = time.monotonic()
    result, client, run_id = fit(tmp_path / "killed", kill_at=KILL_AT)
    seconds = time.monotonic() - started
    folder = tmp_path / "killed"

    # the fault happened for real, and the group came back in new processes
    killed_pid = int((folder / "killed").read_text())
    assert not _alive(killed_pid)
    pids = {r: {int(p.read_text()) for p in folder.glob(f"pid.rank{r}.*")} for r in (0, 1)}
    assert len(pids[0]) == 2 and len(pids[1]) == 2 and killed_pid in pids[1], pids
    assert result.error is None
    base_pids = sorted(p.name for p in (tmp_path / "uninterrupted").glob("pid.rank*"))
    assert len(base_pids) == 2, base_pids  # the reference ran once, uninterrupted

    # the same trial as without the kill
    m, m0 = result.metrics, base.metrics
    assert m["steps_done"] == m0["steps_done"] == STEPS and m["diverged"] == m0["diverged"] == 0.0
    for key in ("final_train_top1", "final_test_top1", "final_test_top5"):
        assert m[key] == pytest.approx(m0[key], abs=1e-6), key

    # one continuous MLflow history, equal to the uninterrupted one step by step
    loss, loss0 = _history(client, run_id, "loss"), _history(base_client, base_run, "loss")
    assert [s for s, _ in loss] == list(range(1, STEPS + 1)), [s for s, _ in loss]
    assert [s for s, _ in loss0] == list(range(1, STEPS + 1))
    for (s, v), (_, v0) in zip(loss, loss0, strict=True):
        assert v == pytest.approx(v0, rel=1e-4, abs=1e-6), f"loss at step {s}"
    for key in ("test_top1", "test_loss", "lr"):
        steps = [s for s, _ in _history(client, run_id, key)]
        assert len(steps) == len(set(steps)) and steps == [s for s, _ in _history(base_client, base_run, key)], key
    print(f"killed run: {seconds:.0f} s")


# --------------------------------------------------------------------------------------------------
# the trial process SIGKILLed right after a checkpoint: the curve up to it must already be in MLflow

KILLED_TRIAL = r'''
import os, signal, sys
from pathlib import Path

from study.spec import load
from trainers.loop import train_loop_per_worker
from trainers.session import LocalSession

uri, run_id, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])


class KillAfterCheckpoint(LocalSession):
    def report(self, metrics, checkpoint_dir=None):
        super().report(metrics, checkpoint_dir=checkpoint_dir)
        if checkpoint_dir and "steps_done" not in metrics:  # the checkpoint exists now: die at once
            (out / "checkpoint").write_text(self.checkpoints[-1])
            os.kill(os.getpid(), signal.SIGKILL)


spec = load(None, sys.argv[4:])
train_loop_per_worker({"trial": spec.trainer_config("bn"), "session": "local", "tracking_uri": uri,
                       "run_id": run_id}, session=KillAfterCheckpoint())
'''
LOCAL = ["training.max_steps=20", "training.report_every=2", "training.eval_every=10", "training.torch_threads=1",
         "data.train_size=512", "data.test_size=256", "data.train_eval_size=128"]


def test_trial_killed_right_after_a_checkpoint_has_its_curve_up_to_it_and_resumes_whole(tmp_path):
    """SIGKILL the trial process the moment its step-10 checkpoint is reported: MLflow must already hold
    every step up to 10 (a resume replays only what comes after the checkpoint, so anything up to it that
    was still queued would be lost for good). Then resume from that checkpoint: steps 1..20 exactly once.
    The store is made slow the MLflow way (``MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS=2``: queued writes wait
    2 s), so the race is decided the same way every run."""
    import subprocess
    import sys

    from mlflow import MlflowClient

    from tests.reliability.conftest import cli_env

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    run_id = client.create_run(client.create_experiment("killed-trial")).info.run_id
    script = tmp_path / "trial.py"
    script.write_text(KILLED_TRIAL)
    env = cli_env(TMPDIR=str(tmp_path), MLFLOW_ASYNC_LOGGING_BUFFERING_SECONDS="2")
    proc = subprocess.run([sys.executable, str(script), uri, run_id, str(tmp_path)] + LOCAL, cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps == list(range(1, 11)), steps  # durable up to the checkpoint, nothing after it

    from trainers.session import LocalSession

    session = LocalSession(resume_from=(tmp_path / "checkpoint").read_text())
    train_loop_per_worker({"trial": spec_mod.load(None, LOCAL).trainer_config("bn"), "session": "local",
                           "tracking_uri": uri, "run_id": run_id}, session=session)
    steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
    assert steps == list(range(1, 21)), steps
    assert sorted(m.step for m in client.get_metric_history(run_id, "test_top1")) == [10, 20]
