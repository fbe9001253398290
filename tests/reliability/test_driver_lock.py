"""Issue 18 §4: one study, one driver (``study/driver_lock.py``).

Before the lock, two ``normstudy run`` of one study started at once in one folder both "succeeded" and
merged into one study run with every trial twice. Now the second is refused in one line naming the study
and how to resume it, exit 2, and the first is not touched. The lock is ``fcntl.flock``: the kernel drops
it when its process dies, so a SIGKILLed driver's lock file never blocks the next driver.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from study import driver_lock
from study.driver_lock import StudyLocked
from study.tracking import ROLE, STUDY
from tests.reliability.conftest import TINY, cli_env

HOLDER = r'''
import sys, time
from pathlib import Path
from study.driver_lock import hold

with hold(sys.argv[1], sys.argv[2]):
    Path(sys.argv[3]).write_text("held")
    time.sleep(600)
'''


def test_a_second_holder_is_refused_naming_the_study_the_holder_and_resume(tmp_path):
    storage = tmp_path / "a" / "results"
    with driver_lock.hold(storage, "s1") as path:
        assert path == storage / ".s1.driver.lock" and path.is_file()
        with pytest.raises(StudyLocked) as refused:
            with driver_lock.hold(storage, "s1"):
                pytest.fail("a second holder got the lock")
        msg = str(refused.value)
        assert "\n" not in msg
        assert msg.startswith("tracking.study_name: study 's1' is being run by another driver (pid ")
        assert f"in {storage}; wait until it ends, then `normstudy run --resume` continues it" in msg
        with driver_lock.hold(storage, "s2"):  # another study in the same folder is independent
            pass
        assert path.is_file()  # the refused holder did not remove the holder's lock
    # released: the lock file and the folders it made are gone, nothing is left behind
    assert not (tmp_path / "a").exists()


def test_release_keeps_a_folder_the_study_wrote_into(tmp_path):
    storage = tmp_path / "results"
    with driver_lock.hold(storage, "s"):
        (storage / "s").mkdir()
    assert sorted(p.name for p in storage.iterdir()) == ["s"]


def _holder(tmp_path: Path, storage: Path, study: str) -> subprocess.Popen:
    script, ready = tmp_path / "holder.py", tmp_path / "ready"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), str(storage), study, str(ready)], env=cli_env(), cwd=tmp_path)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the holder never took the lock"
        time.sleep(0.05)
    return proc


def test_a_lock_held_by_another_process_is_refused_and_a_sigkilled_holder_does_not_block(tmp_path):
    storage = tmp_path / "results"
    holder = _holder(tmp_path, storage, "s")
    try:
        with pytest.raises(StudyLocked, match=rf"\(pid {holder.pid} on "):
            with driver_lock.hold(storage, "s"):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert (storage / ".s.driver.lock").is_file()  # what a SIGKILL leaves: the file, but no lock
    with driver_lock.hold(storage, "s"):
        pass


def _trial_runs(uri: str, study: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("normstudy")
    return client.search_runs([exp.experiment_id], f"tags.`{STUDY}` = '{study}'", max_results=1000)


@pytest.mark.integration
def test_two_drivers_of_one_study_started_at_once_one_runs_the_other_is_refused(tmp_path, ray_cluster):
    """Two real ``normstudy run`` processes, same study, same folder, started together: one runs the full
    budget (2 trials, each once), the other exits 2 with one line and writes nothing of its own."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    study = "twice"
    sets = TINY + ["schemes=[bn]", "search.mode=grid", "search.grid_lr=[0.01, 0.1]", "search.grid_init_scale=[1.0]",
                   "search.seeds=[0]", f"tracking.study_name={study}"]
    argv = [sys.executable, "-m", "study.cli", "run", "--no-report", *(a for s in sets for a in ("--set", s))]
    env = cli_env(ray_cluster)
    drivers = [subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(2)]
    outputs = [d.communicate(timeout=400) for d in drivers]
    codes = sorted(d.returncode for d in drivers)
    assert codes == [0, 2], [(d.returncode, o[0][-2000:], o[1][-2000:]) for d, o in zip(drivers, outputs, strict=True)]
    winner, loser = (outputs[0], outputs[1]) if drivers[0].returncode == 0 else (outputs[1], outputs[0])
    assert loser[0] == ""  # not even the banner: it was refused before it started
    line = loser[1].strip()
    assert line.count("\n") == 0 and "Traceback" not in line, line
    assert re.fullmatch(rf"normstudy: tracking.study_name: study '{study}' is being run by another driver "
                        rf"(\(pid \d+ on .+, since .+\) )?in {re.escape(str(cwd / 'normstudy_results'))}; wait until "
                        r"it ends, then `normstudy run --resume` continues it \(or --set tracking.study_name=NEW for "
                        r"a separate study\)", line), line
    assert "2 trials in" in winner[0]

    # the study of the first driver, untouched: one study run, one scheme run, each grid point once
    uri = f"sqlite:///{cwd / 'mlruns.db'}"
    runs = _trial_runs(uri, study)
    roles = sorted(r.data.tags[ROLE] for r in runs)
    assert roles == ["scheme", "study", "trial", "trial"], roles
    trials = [r for r in runs if r.data.tags[ROLE] == "trial"]
    assert sorted(float(t.data.params["hp.lr"]) for t in trials) == [0.01, 0.1]
    assert all(r.info.status == "FINISHED" for r in runs)
    client = MlflowClient(tracking_uri=uri)
    for t in trials:
        assert sorted(m.step for m in client.get_metric_history(t.info.run_id, "loss")) == list(range(1, 13))
    assert not (cwd / "normstudy_results" / f".{study}.driver.lock").exists()  # released at exit
