"""Issue 23 §2: SIGINT and SIGTERM to the study driver end it honestly (``study/interrupts.py``).

The signals are real, sent to a real ``normstudy run`` process (joined to the session's Ray) at two points:
while trials run (after the first trial's line) and before the first trial ends (as soon as the study has
said it started). Then: exit 128 + signal, every run the driver opened KILLED (none FINISHED, none left
RUNNING), one line with how many trials of the budget finished, no report unless ``--partial-report``
(then marked partial), and ``--resume`` completing the budget with one visible run per trial.
The in-process units of the mechanism (outside and inside Tune, a second signal) are tested first.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from study import interrupts
from study.tracking import FAILURE_REASON, ROLE, STUDY
from tests.reliability.conftest import TINY, cli_env

GRID = TINY + ["schemes=[bn]", "search.mode=grid", "search.grid_lr=[0.1, 0.2, 0.3, 0.4]", "search.seeds=[0]"]
FINISHED_LINE = re.compile(r"^normstudy: interrupted by (SIG\w+): (\d+) of (\d+) trials finished; every run this "
                           r"driver opened is closed KILLED; `normstudy run --resume` completes the study$")


# --------------------------------------------------------------------------------------------------
# the mechanism, in this process


def test_a_signal_outside_tune_raises_at_once_and_the_exit_code_is_the_shells():
    with interrupts.StopOnSignal(), pytest.raises(interrupts.Interrupted) as err:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # never reached: the handler raises at the next bytecode
    assert (err.value.name, err.value.exit_code) == ("SIGTERM", 143)
    assert signal.getsignal(signal.SIGTERM) is not None and interrupts.pending() is None  # handlers restored


def test_inside_tune_a_signal_asks_tune_to_stop_and_a_second_one_raises():
    asked = []
    previous = signal.signal(signal.SIGUSR1, lambda sig, frame: asked.append(sig))  # stands for Tune's handler
    try:
        with interrupts.StopOnSignal() as stop:
            with stop.tune():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)
                assert stop.signum == signal.SIGINT and not asked  # recorded, nothing raised inside Tune
                callback = interrupts.TuneStop()
                callback.on_step_begin(0, [])
                callback.on_step_begin(1, [])
                assert asked == [signal.SIGUSR1]  # Tune's interrupt, once
                with pytest.raises(interrupts.Interrupted):
                    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C again: stop now
                    time.sleep(5)
            with pytest.raises(interrupts.Interrupted) as err:
                stop.raise_if_stopped()  # after fit: never a return as if complete
            assert err.value.exit_code == 130
    finally:
        signal.signal(signal.SIGUSR1, previous)


# --------------------------------------------------------------------------------------------------
# a real driver


def _start(cwd: Path, ray_address: str, extra: list[str], study: str,
           overrides: tuple[str, ...] = ()) -> subprocess.Popen:
    args = [sys.executable, "-m", "study.cli", "run", *extra]
    for item in GRID + [f"tracking.study_name={study}", *overrides]:
        args += ["--set", item]
    return subprocess.Popen(args, cwd=cwd, env=cli_env(ray_address), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _signal_when(proc: subprocess.Popen, starts: str, sig: int, timeout: float = 240) -> list[str]:
    """Send ``sig`` once stdout shows a line starting with ``starts``; return stdout's lines up to then."""
    lines, deadline = [], time.time() + timeout
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(starts) or time.time() > deadline:
            break
    assert lines and lines[-1].startswith(starts), lines
    proc.send_signal(sig)
    return lines


def _runs(cwd: Path, study: str, view: int = ViewType.ACTIVE_ONLY) -> dict[str, list]:
    client = MlflowClient(tracking_uri=f"sqlite:///{cwd}/mlruns.db")
    exp = client.get_experiment_by_name("normstudy")
    if exp is None:  # polled while the study is still creating its store: no run yet
        return {}
    runs = client.search_runs([exp.experiment_id], f"tags.`{STUDY}` = '{study}'", run_view_type=view,
                              max_results=1000)
    by_role: dict[str, list] = {}
    for r in runs:
        by_role.setdefault(r.data.tags[ROLE], []).append(r)
    return by_role


@pytest.mark.integration
def test_sigint_while_trials_run_kills_the_open_runs_and_resume_completes_the_budget(tmp_path, ray_cluster):
    proc = _start(tmp_path, ray_cluster, ["--partial-report"], "intr")
    _signal_when(proc, "[", signal.SIGINT)  # one trial has finished, others run
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, out + err
    line = FINISHED_LINE.match(err.strip().splitlines()[-1])
    assert line and line[1] == "SIGINT" and line[3] == "4", err[-2000:]
    finished = int(line[2])
    assert 1 <= finished < 4
    runs = _runs(tmp_path, "intr")
    assert [r.info.status for r in runs["study"] + runs["scheme"]] == ["KILLED", "KILLED"]
    assert all(f"{finished} of 4 trials finished" in r.data.tags[FAILURE_REASON] for r in runs["study"])
    statuses = sorted(r.info.status for r in runs["trial"])
    assert "RUNNING" not in statuses and statuses.count("FINISHED") >= finished
    partial = json.loads((tmp_path / "normstudy_report" / "report.json").read_text())["partial"]
    assert (partial["signal"], partial["trials_finished"], partial["trial_budget"]) == ("SIGINT", finished, 4)
    assert "Partial report" in (tmp_path / "normstudy_report" / "report.md").read_text().splitlines()[2]

    args = [sys.executable, "-m", "study.cli", "run", "--resume", "--no-report"]
    for item in GRID + ["tracking.study_name=intr"]:
        args += ["--set", item]
    done = subprocess.run(args, cwd=tmp_path, env=cli_env(ray_cluster), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert not [ln for ln in done.stderr.splitlines() if " INFO " in ln]  # no MLflow or Ray INFO lines
    runs = _runs(tmp_path, "intr")
    assert sorted(float(r.data.params["hp.lr"]) for r in runs["trial"]) == [0.1, 0.2, 0.3, 0.4]  # one run each
    assert {r.info.status for r in runs["trial"] + runs["study"] + runs["scheme"]} == {"FINISHED"}
    assert FAILURE_REASON not in runs["study"][0].data.tags
    hidden = _runs(tmp_path, "intr", ViewType.DELETED_ONLY).get("trial", [])
    assert all(r.info.status == "KILLED" for r in hidden)  # a killed attempt re-run from scratch: hidden


def _when_a_trial_runs(cwd: Path, study: str, timeout: float = 240) -> None:
    """Wait until a trial's MLflow run exists (trials have started; none has ended: see the step count)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (cwd / "mlruns.db").exists() and _runs(cwd, study).get("trial"):
            return
        time.sleep(0.2)
    raise AssertionError("no trial started")


@pytest.mark.integration
def test_sigterm_before_the_first_trial_ends_exits_143_with_no_run_left_running_and_no_report(tmp_path,
                                                                                             ray_cluster):
    # trials of 200 steps, so that none ends in the moment between its run appearing and the signal
    proc = _start(tmp_path, ray_cluster, [], "term", ("training.max_steps=200", "training.eval_every=200"))
    _when_a_trial_runs(tmp_path, "term")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 143, out + err
    line = FINISHED_LINE.match(err.strip().splitlines()[-1])
    assert line and line.groups() == ("SIGTERM", "0", "4"), err[-2000:]
    assert not [ln for ln in out.splitlines() if ln.startswith("[")]  # no trial ended
    runs = _runs(tmp_path, "term")
    assert [r.info.status for r in runs["study"] + runs["scheme"]] == ["KILLED", "KILLED"]
    assert runs["trial"] and {r.info.status for r in runs["trial"]} == {"KILLED"}
    assert not (tmp_path / "normstudy_report").exists()  # no report of an interrupted study unless asked
