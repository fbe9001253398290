"""Issue 9 §2: the study driver SIGKILLed during an MLflow write or during a checkpoint write; then
``normstudy run --resume`` ends with the full budget and no half-written run (every run FINISHED, or
FAILED/KILLED with a reason; the study and scheme runs hold their params).

The driver is the real ``study.cli.main`` in a subprocess (joined to the session's Ray, as under
``ray job submit``), started through a small launcher that wraps one function of the driver and, on its
N-th call, SIGKILLs its own process at that exact point:

- ``study-params``: ``StudyTracker.log_params``, 1st call — the study run exists, its params do not;
- ``scheme-run``: ``StudyTracker.scheme_run``, 2nd call — one scheme run made, the other not;
- ``finish``: ``StudyTracker.finish``, 1st call — every trial done, scheme and study runs still RUNNING;
- ``tune-state``: Ray Tune's ``TuneController.save_to_dir`` (the experiment checkpoint ``--resume``
  restores from), 4th call — half of ``experiment_state-*.json`` written, then the kill;
- ``trial-checkpoint``: a trial's own checkpoint (``trainers.loop.save_checkpoint`` in the Tune trial
  process, hooked through a ``sitecustomize`` on the job's PYTHONPATH): the first checkpoint of the study
  is cut to half its bytes, then the trial SIGKILLs the driver (the trial dies with it).
The kill of the driver mid-trials (between trial results) is tests/study/test_runner.py's.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow import MlflowClient

from study.tracking import ROLE, SCHEME, STUDY
from tests.reliability.conftest import TINY, cli_env

pytestmark = pytest.mark.integration

LAUNCHER = r'''
import os, signal, sys
from pathlib import Path

hook, nth, mark = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
calls = {"n": 0}


def kill_inside(owner, name, partial=None):
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            if partial is not None:
                partial(*args, **kwargs)
            mark.write_text(f"{name} call {nth}")
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(owner, name, wrapped)


from study.tracking import StudyTracker  # noqa: E402

if hook == "study-params":
    kill_inside(StudyTracker, "log_params")
elif hook == "scheme-run":
    kill_inside(StudyTracker, "scheme_run")
elif hook == "finish":
    kill_inside(StudyTracker, "finish")
elif hook == "tune-state":
    import json

    from ray.tune.execution.tune_controller import TuneController

    def half_written(self):
        # what a kill in the middle of save_to_dir's json.dump leaves: the start of the file
        path = Path(self._storage.experiment_driver_staging_path, self.experiment_state_file_name)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"trial_data": [], "runner_data": {}, "stats": {}}) * 3
        path.write_text(text[: len(text) // 2])

    kill_inside(TuneController, "save_to_dir", partial=half_written)

elif hook == "trial-checkpoint":  # sys.argv[2] is unused; the hook lives in the trial (SITECUSTOMIZE)
    Path(mark.parent, "driver.pid").write_text(str(os.getpid()))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(mark.parent / "hook"),
                                                             os.environ.get("PYTHONPATH")]))

from study.cli import main  # noqa: E402

sys.exit(main(sys.argv[4:]))
'''

SITECUSTOMIZE = r'''
import os, signal, time
from pathlib import Path

MARK, DRIVER = Path({mark!r}), Path({driver!r})
try:
    import trainers.loop as _loop
except Exception:  # not a normstudy process
    _loop = None
if _loop is not None:
    _save = _loop.save_checkpoint

    def save_checkpoint(*args, **kwargs):
        d = _save(*args, **kwargs)
        if d is None or MARK.exists():
            return d
        f = Path(d) / _loop.CHECKPOINT_FILE
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2])  # the write the kill interrupted
        MARK.write_text(f"trial checkpoint {{f}}")
        os.kill(int(DRIVER.read_text()), signal.SIGKILL)
        time.sleep(600)  # the driver's death takes this trial down with it
        return d

    _loop.save_checkpoint = save_checkpoint
'''

CASES = [("study-params", 1), ("scheme-run", 2), ("finish", 1), ("tune-state", 4), ("trial-checkpoint", 0)]


def _runs(uri: str, study: str, role: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("normstudy")
    return client.search_runs([exp.experiment_id], f"tags.`{ROLE}` = '{role}' and tags.`{STUDY}` = '{study}'",
                              max_results=1000, run_view_type=1)  # active runs only (deleted ones are gone)


@pytest.mark.parametrize("hook, nth", CASES, ids=[c[0] for c in CASES])
def test_driver_killed_mid_write_then_resume_finishes_whole(hook, nth, tmp_path, ray_cluster):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER)
    mark = tmp_path / "killed"
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(
        SITECUSTOMIZE.format(mark=str(mark), driver=str(tmp_path / "driver.pid")))
    study = "drv"
    overrides = TINY + ["schemes=[bn, wn]", "search.mode=grid", "search.grid_lr=[0.01, 0.1]", "search.seeds=[0]",
                        "search.grid_init_scale=[1.0]", f"tracking.study_name={study}"]
    cli_args = ["run", "--no-report"] + [a for o in overrides for a in ("--set", o)]
    env = cli_env(ray_cluster)
    first = subprocess.run([sys.executable, str(launcher), hook, str(nth), str(mark)] + cli_args, cwd=cwd, env=env,
                           capture_output=True, text=True, timeout=400)
    assert first.returncode == -9 and mark.exists(), (first.returncode, first.stdout[-2000:], first.stderr[-3000:])

    done = subprocess.run([sys.executable, "-m", "study.cli"] + cli_args + ["--resume"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    uri = f"sqlite:///{cwd / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri)
    studies, schemes, trials = (_runs(uri, study, r) for r in ("study", "scheme", "trial"))
    # the full budget, once each: 2 lrs per scheme, one study run, one run per scheme
    assert len(studies) == 1 and sorted(r.data.tags[SCHEME] for r in schemes) == ["bn", "wn"]
    per_scheme: dict[str, list] = {}
    for t in trials:
        per_scheme.setdefault(t.data.tags[SCHEME], []).append(t)
    assert {k: sorted(float(t.data.params["hp.lr"]) for t in v) for k, v in per_scheme.items()} == \
        {"bn": [0.01, 0.1], "wn": [0.01, 0.1]}
    # nothing half-written: finished (or closed with a reason), params and curves present
    for run in studies + schemes + trials:
        status = run.info.status
        assert status == "FINISHED" or (status in ("FAILED", "KILLED")
                                        and run.data.tags.get("normstudy.failure_reason")), (run.info.run_name,
                                                                                             status)
    assert "training.lr" in studies[0].data.params and "provenance.git_commit" in studies[0].data.params
    assert [a.path for a in client.list_artifacts(studies[0].info.run_id)] == ["spec.yaml"]
    for run in schemes:
        assert run.data.params.get("scheme") == run.data.tags[SCHEME]
    for t in trials:
        assert t.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(t.info.run_id, "loss")]
        assert sorted(steps) == list(range(1, 13)), (t.info.run_name, steps)
        assert "training.momentum" in t.data.params
