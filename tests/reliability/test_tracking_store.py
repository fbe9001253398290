"""Issue 9 §5: the tracking store fails — nothing is lost.

- a real ``mlflow server`` (127.0.0.1) that is down when a study starts → one line, exit 2, before any
  training and before anything is written;
- the same server killed mid-study and started again (same port, same backend) → the trials' writes
  wait in MLflow's HTTP retries (7 retries, exponential backoff: ~4 minutes of budget) and land when it
  returns: every run FINISHED with its whole curve;
- SQLite shared by concurrent trials (``max_concurrent_trials=2``, a report every step) → no run lost,
  no step lost or doubled; and four processes hammering one SQLite file through ``with_retries``.
"""

from __future__ import annotations

import io
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from study import spec as spec_mod
from study.cli import main
from study.preflight import check_tracking
from study.tracking import ROLE, STUDY
from tests.reliability.conftest import TINY, cli_env, closed_port, written

pytestmark = pytest.mark.integration


class MlflowServer:
    """``mlflow server`` on 127.0.0.1 in its own process group (killed as a group: uvicorn and the job
    runner are its children)."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, closed_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.db = f"sqlite:///{root / 'server.db'}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> None:
        exe = Path(sys.executable).parent / "mlflow"
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen(
            [str(exe), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", self.db, "--default-artifact-root", str(self.root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.root)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {(self.root / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        """SIGKILL the server's process group (a crash, not a clean shutdown), and return only once every
        process of the group is gone: a uvicorn child still dying holds the listening socket, so a client
        would meet "connection reset" rather than "refused" (the case under test is a server that is down)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            deadline = time.time() + 30
            while time.time() < deadline:
                try:
                    os.killpg(self.proc.pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        self.proc = None


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "server"
    root.mkdir()
    srv = MlflowServer(root)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def _trials(uri: str, study: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("normstudy")
    return client.search_runs([exp.experiment_id], f"tags.`{ROLE}` = 'trial' and tags.`{STUDY}` = '{study}'",
                              max_results=1000)


def _assert_complete(uri: str, study: str, trials: int, steps: int) -> None:
    """Every trial run FINISHED, with exactly one loss value for every step 1..steps."""
    client = MlflowClient(tracking_uri=uri)
    runs = _trials(uri, study)
    assert len(runs) == trials, [r.info.run_name for r in runs]
    for run in runs:
        assert run.info.status == "FINISHED", (run.info.run_name, run.data.tags.get("normstudy.failure_reason"))
        loss_steps = [m.step for m in client.get_metric_history(run.info.run_id, "loss")]
        assert sorted(loss_steps) == list(range(1, steps + 1)), (run.info.run_name, loss_steps)
        assert "final_test_top1" in run.data.metrics and "objective" in run.data.metrics


# --------------------------------------------------------------------------------------------------
# server down at start


@pytest.mark.parametrize("command", ["run", "train"])
def test_server_down_at_start_is_refused_before_anything(command, server, tmp_path, capsys, monkeypatch,
                                                         ray_cluster):
    """The server answers → preflight passes; SIGKILL it → the CLI refuses in seconds, writes nothing, and
    the server's store (restarted) holds no run."""
    check_tracking(spec_mod.load(None, [f"tracking.tracking_uri={server.uri}"]))  # up: accepted
    server.stop()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    args = [command] + (["--no-report"] if command == "run" else ["--scheme", "bn"])
    for item in TINY + [f"tracking.tracking_uri={server.uri}", "schemes=[bn]"]:
        args += ["--set", item]
    started = time.monotonic()
    rc = main(args)
    seconds = time.monotonic() - started
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"normstudy: tracking.tracking_uri: cannot reach {server.uri}")
    assert seconds < 10, seconds
    assert written(cwd) == []
    server.start()
    client = MlflowClient(tracking_uri=server.uri)
    exp = client.get_experiment_by_name("normstudy")
    assert exp is None or client.search_runs([exp.experiment_id]) == []


# --------------------------------------------------------------------------------------------------
# server down mid-study


def test_server_killed_mid_study_and_restarted_loses_nothing(server, tmp_path, ray_cluster):
    """A grid study on the server; once the first trial finished, SIGKILL the server, keep it down ~10 s,
    start it again (same port and store). The study finishes, every run whole."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    steps = 40
    overrides = TINY + [f"tracking.tracking_uri={server.uri}", "schemes=[bn]", "search.mode=grid",
                        "search.grid_lr=[0.01, 0.03, 0.1, 0.3]", "search.seeds=[0]", "tracking.study_name=outage",
                        f"training.max_steps={steps}", "training.eval_every=20", "search.max_concurrent_trials=2"]
    args = [sys.executable, "-m", "study.cli", "run", "--no-report"] + [a for o in overrides for a in ("--set", o)]
    proc = subprocess.Popen(args, cwd=cwd, env=cli_env(ray_cluster), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, deadline = [], time.time() + 300
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[") or time.time() > deadline:
                break
        assert any(ln.startswith("[") for ln in lines), "".join(lines)[-3000:]
        server.stop()
        down_at = time.time()
        time.sleep(10)
        server.start()
        outage = time.time() - down_at
        rest, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, ("".join(lines) + rest)[-4000:]
    print(f"outage {outage:.0f} s")
    _assert_complete(server.uri, "outage", trials=4, steps=steps)


# --------------------------------------------------------------------------------------------------
# SQLite under concurrent trials


def test_sqlite_with_concurrent_trials_loses_no_run_and_no_step(tmp_path, ray_cluster, monkeypatch):
    """Two trials at a time write to one SQLite file, a batch every step (report_every=1): the most
    contention a study makes. Every run FINISHED, every step's loss exactly once."""
    from study.runner import run_study

    monkeypatch.chdir(tmp_path)
    steps = 24
    spec = spec_mod.load(None, TINY + ["schemes=[bn, wn]", "search.mode=grid", "search.grid_lr=[0.01, 0.05, 0.1]",
                                       "search.grid_init_scale=[1.0]", "search.seeds=[0]",
                                       "search.max_concurrent_trials=2", "training.report_every=1",
                                       f"training.max_steps={steps}", "training.eval_every=12",
                                       "tracking.study_name=concurrent"])
    result = run_study(spec, out=io.StringIO())
    assert len(result.trials) == 6 and all(o.error is None for o in result.trials)
    _assert_complete(result.tracking_uri, "concurrent", trials=6, steps=steps)


def _hammer(uri: str, run_id: str, worker: int, batches: int) -> None:
    from trainers.run_logger import MlflowRunLogger

    log = MlflowRunLogger(uri, run_id)
    for b in range(batches):
        for s in range(1, 11):  # steps start at 1, as the loop's (the logger skips steps already in the run)
            log.log_metrics({f"w{worker}": float(b * 10 + s)}, b * 10 + s)
        log.flush()
    log.close()  # as the loop does at the end of a trial: every queued write has reached the store


def test_four_processes_hammering_one_sqlite_file_lose_nothing(tmp_path):
    """Beyond what a study does: 4 processes, 40 batches each, no pause, one SQLite file."""
    uri = f"sqlite:///{tmp_path / 'hammer.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("hammer")
    run_id = client.create_run(exp).info.run_id
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_hammer, args=(uri, run_id, w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    for w in range(4):
        steps = [m.step for m in client.get_metric_history(run_id, f"w{w}")]
        assert sorted(steps) == list(range(1, 401)), (w, len(steps))


# --------------------------------------------------------------------------------------------------
# a SQLite file locked by another writer for longer than the busy timeout MLflow sets (20 s)


LOCK_S = 25.0  # longer than MLflow's PRAGMA busy_timeout (20 s): its writes fail with "database is locked"


def _hold_exclusive_lock(db: Path, seconds: float, locked) -> None:
    import sqlite3

    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    locked.set()
    time.sleep(seconds)
    con.execute("ROLLBACK")
    con.close()


@pytest.mark.parametrize("writer", ["tracker", "queued-curve"])
def test_a_store_locked_longer_than_the_busy_timeout_loses_nothing(writer, tmp_path):
    """Another connection holds an exclusive lock on the SQLite file for 25 s: the tracker's synchronous write
    (``with_retries``) and the loop logger's queued writes (retried at ``close``) both land."""
    import threading

    from study.tracking import StudyTracker
    from trainers.run_logger import MlflowRunLogger

    db = tmp_path / "locked.db"
    uri = f"sqlite:///{db}"
    tracker = StudyTracker(uri, "locked")
    run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
    logger = MlflowRunLogger(uri, run_id)
    locked = threading.Event()
    holder = threading.Thread(target=_hold_exclusive_lock, args=(db, LOCK_S, locked))
    holder.start()
    locked.wait(10)
    assert locked.is_set()
    started = time.monotonic()
    if writer == "tracker":
        tracker.log_metrics(run_id, {"m": 1.0}, step=1)
    else:
        for s in range(1, 21):
            logger.log_metrics({"loss": float(s)}, s)
            if s % 5 == 0:
                logger.flush()
        logger.close()
    seconds = time.monotonic() - started
    holder.join()
    assert seconds >= LOCK_S - 1, f"the lock was not in the way ({seconds:.1f} s)"
    key, n = ("m", 1) if writer == "tracker" else ("loss", 20)
    assert sorted(m.step for m in tracker.client.get_metric_history(run_id, key)) == list(range(1, n + 1))
