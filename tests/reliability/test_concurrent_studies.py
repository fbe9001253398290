"""Issue 23 §1 and issue 22's exit code, end to end: three different studies, a `normstudy report` and an
`mlflow ui`, all started at the same instant on a fresh folder (one new SQLite store), on the session's Ray.

Every study proceeds (none crashes making the store), the report is refused in one line or written, the UI
serves the store, and the store is whole afterwards. One of the studies has a trial that raises (a
``sitecustomize`` on that driver's PYTHONPATH, which its trial processes inherit, makes the trial at lr 0.2
raise inside the loop): that study finishes its other trial, then exits 1 with one line saying how many
trials errored and where to read why.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from study import store
from study.tracking import FAILURE_REASON, ROLE, STUDY
from tests.reliability.conftest import TINY, cli_env

pytestmark = pytest.mark.integration

RAISES = r'''
try:
    import trainers.loop as _loop
except Exception:  # not a normstudy process
    _loop = None
if _loop is not None:
    _train = _loop.train_loop_per_worker

    def train_loop_per_worker(config, *args, **kwargs):
        if config["trial"].hp.get("lr") == 0.2:
            raise RuntimeError("injected: the trial at lr 0.2 raises")
        return _train(config, *args, **kwargs)

    _loop.train_loop_per_worker = train_loop_per_worker
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_args(study: str, lrs: str, *extra: str) -> list[str]:
    args = [sys.executable, "-m", "study.cli", "run", "--no-report"]
    for item in TINY + ["schemes=[bn]", "search.mode=grid", f"search.grid_lr={lrs}", "search.seeds=[0]",
                        f"tracking.study_name={study}", *extra]:
        args += ["--set", item]
    return args


def test_studies_report_and_ui_started_at_once_on_a_fresh_folder(tmp_path, ray_cluster):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(RAISES)
    env = cli_env(ray_cluster)
    raising_env = dict(env, PYTHONPATH=os.pathsep.join([str(hook), env["PYTHONPATH"]]))
    db, port = tmp_path / "mlruns.db", _free_port()
    commands = {
        "s1": (_run_args("s1", "[0.1]"), env),
        "s2": (_run_args("s2", "[0.3]"), env),
        "errs": (_run_args("errs", "[0.1, 0.2]", "scaling.max_failures=0"), raising_env),
        "report": ([sys.executable, "-m", "study.cli", "report", "--out", str(tmp_path / "rep")], env),
    }
    procs = {name: subprocess.Popen(cmd, cwd=tmp_path, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True) for name, (cmd, e) in commands.items()}
    ui = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri",
                           f"sqlite:///{db}", "--port", str(port)], cwd=tmp_path, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        done = {name: (p.wait(timeout=600), *p.communicate()) for name, p in procs.items()}
        for name in ("s1", "s2"):
            assert done[name][0] == 0, done[name][2][-3000:]
        rc, out, err = done["errs"]
        assert rc == 1, err[-3000:]
        assert err.strip().splitlines()[-1] == (
            f"normstudy: 1 of 2 trials errored (raised an exception, counted in no rate); why: each one's MLflow run "
            f"(status FAILED, tag normstudy.failure_reason) in sqlite:///{db}")
        rc, out, err = done["report"]
        assert rc == 0 or (rc == 2 and len(err.strip().splitlines()) == 1), err  # written, or refused in one line
        deadline = time.time() + 120
        while True:  # the UI serves the store it was started on at the same instant
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
                    assert resp.status == 200
                break
            except OSError:
                assert time.time() < deadline, "mlflow ui never answered"
                time.sleep(1)
    finally:
        os.killpg(ui.pid, signal.SIGKILL)
        ui.wait()
    assert store.inspect(db).kind == "ready"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    exp = client.get_experiment_by_name("normstudy")
    runs = client.search_runs([exp.experiment_id], "", max_results=100)
    studies = {r.data.tags[STUDY] for r in runs if r.data.tags.get(ROLE) == "study"}
    assert studies == {"s1", "s2", "errs"}
    trials = {(r.data.tags[STUDY], r.data.params["hp.lr"]): r for r in runs if r.data.tags.get(ROLE) == "trial"}
    assert sorted(trials) == [("errs", "0.1"), ("errs", "0.2"), ("s1", "0.1"), ("s2", "0.3")]
    failed = trials[("errs", "0.2")]
    assert failed.info.status == "FAILED" and "injected" in failed.data.tags[FAILURE_REASON]
    assert {r.info.status for k, r in trials.items() if k != ("errs", "0.2")} == {"FINISHED"}
    assert {r.info.status for r in runs if r.data.tags.get(ROLE) in ("study", "scheme")} == {"FINISHED"}
