"""Issue 18 §5: a property-based fuzz of the path and name fields through ``normstudy run``.

Whatever ``tracking.study_name``, ``tracking.experiment``, ``tracking.storage_path``, ``tracking.report_dir``,
``data.path``, ``data.train_dir`` or ``data.val_dir`` hold, the real ``study.cli.main(["run", ...])`` either
refuses it with a one-line SpecError (exit 2) or accepts it — and then what the study would do with it
must work: the study's run is replaced by a stand-in that, after the CLI's own checks and lock, repeats
the driver's checks on the resolved spec and does for real what Ray Tune, Ray Train, the report and MLflow
do with those names (the folders of a trial with a 130-character name and its checkpoint, the Train run's
folder, the report's files, an MLflow experiment and a run named ``<study>/<scheme>/<trial id>`` found by
its study tag). Anything else — a traceback — fails the fuzz.

Paths are relative (under a fresh cwd) or absolute under this test's own folder, and carry no ``..``, so
an accepted one never writes outside it (``/``, ``/etc``, ``..`` and the home folder are test_paths.py's).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from study import cli, preflight
from study.tracking import STUDY
from tests.trainers.data.imagefolder import _write

SEGMENTS = ["a", "results", ".", "", " ", "~", "é", "日本", "a b", "a:b", "a%20b", "#", "?", "*", "-", ".hidden",
            "x" * 200, "x" * 256, "\x00", "\n", "\t", "\x7f", "s3:", "proc", "etc", "\\", "'", '"', "report.json"]
segment = st.one_of(st.sampled_from(SEGMENTS), st.text(st.characters(blacklist_characters="/"), max_size=12))
relative = st.lists(segment, min_size=1, max_size=5).map("/".join).filter(lambda p: ".." not in p.split("/"))
name = st.one_of(st.sampled_from(["quick", "a" * 128, "a" * 129, "a.b-c_d", "-x", ".", "a/b", "a'b", "", " ", "é",
                                  "x" * 501, "\x00", "a\tb"]),
                 st.text(max_size=20), st.text(st.sampled_from("ab._-/'\" é\x00\t"), max_size=140))
FIELDS = ["tracking.study_name", "tracking.experiment", "tracking.storage_path", "tracking.report_dir",
          "data.path", "data.train_dir", "data.val_dir"]


class Accepted(Exception):
    """The stand-in study ran: every name and path was accepted and worked."""


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('fuzz_mlflow') / 'm.db'}"
    client = MlflowClient(tracking_uri=uri)
    client.search_experiments()  # creates the tables once
    return client


def _stand_in(client):
    def run_study(spec, *, resume=False, fresh=False, out=None, paths_checked=False, announce=None):
        from study.runner import resolve_paths

        spec = resolve_paths(spec)
        preflight.check_paths(spec)  # what the driver's preflight checks, on the resolved spec
        if spec.data.kind == "folder":
            preflight.check_data(spec)
        tr = spec.tracking
        storage = Path(tr.storage_path)
        trial = storage / tr.study_name / "grid" / f"run_trial_abcde_00000_{'x' * 108}_2026-12-02_13-40-34"
        (trial / "checkpoint_000000").mkdir(parents=True)
        (trial / "checkpoint_000000" / "state.pt").write_bytes(b"weights")
        (trial / "result.json").write_text("{}")
        (storage / "trial-abcde_00000" / "checkpoint_2026-12-02_13-40-34.532749").mkdir(parents=True)
        report = preflight.report_folder(spec)
        report.mkdir(parents=True, exist_ok=True)
        for f in ("report.html", "report.md", "report.json", "stability_map.png"):
            (report / f).write_text("x")
        exp = client.get_experiment_by_name(tr.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(tr.experiment)
        run = client.create_run(exp_id, run_name=f"{tr.study_name}/wn_trelu/abcde_00000",
                                tags={STUDY: tr.study_name})
        found = client.search_runs([exp_id], f"tags.`{STUDY}` = '{tr.study_name}'")
        assert run.info.run_id in {r.info.run_id for r in found}
        raise Accepted

    return run_study


def _run_cli(values: dict[str, str], quoted: bool, folder_data: bool = False) -> tuple[int, str] | None:
    """``normstudy run --set key=value ...`` in a fresh cwd; None when the stand-in study ran (accepted),
    else (exit code, stderr)."""
    base = Path(tempfile.mkdtemp(prefix="nsfuzz-"))
    cwd = base / "cwd"
    cwd.mkdir()
    args = ["run"]
    if folder_data or {"data.path", "data.train_dir", "data.val_dir"} & set(values):
        args += ["--set", "data.kind=folder", "--set", f"data.path={base / 'data'}"]
    if folder_data:  # a real (tiny) folder data set: 3 classes x 2 images a split, batches of 2
        args += ["--set", "training.batch_size=2", "--set", "data.train_eval_size=2"]
        _write(base / "data" / values.get("data.train_dir", "train"), 2, 0)
        _write(base / "data" / values.get("data.val_dir", "val"), 2, 6)
    for key, value in values.items():
        if key in ("tracking.storage_path", "tracking.report_dir", "data.path") and value.startswith("/"):
            value = f"{base}{value}"  # absolute, but inside this example's own folder
        args += ["--set", f"{key}={json.dumps(value) if quoted else value}"]
    err, here = io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(args)
    except Accepted:
        return None
    finally:
        os.chdir(here)
        shutil.rmtree(base, ignore_errors=True)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def stand_in(mlflow_store):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("study.runner.run_study", _stand_in(mlflow_store))
        yield


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.dictionaries(st.sampled_from(FIELDS), st.one_of(relative, relative.map(lambda p: "/" + p), name),
                              min_size=1, max_size=3),
       quoted=st.booleans())
def test_path_and_name_fields_through_normstudy_run_give_spec_errors_or_work(values, quoted, stand_in):
    outcome = _run_cli(values, quoted)
    event("accepted" if outcome is None else "refused")
    if outcome is not None:
        code, msg = outcome
        assert code == 2 and msg.count("\n") == 1 and msg.startswith("normstudy: "), (code, msg)
        assert "Traceback" not in msg


@pytest.mark.parametrize("values, folder_data", [
    ({"tracking.study_name": "a" * 128, "tracking.experiment": "é" * 500}, False),
    ({"tracking.storage_path": "a b/日本/x%20y", "tracking.report_dir": "r#1/?"}, False),
    ({"tracking.storage_path": "/" + "/".join(["d" * 200] * 16)}, False),
    ({"data.train_dir": "imgs/train", "data.val_dir": "imgs/val"}, True),
], ids=["long-names", "odd-characters", "deep-path", "nested-splits"])
def test_values_at_the_edge_are_accepted_and_work(values, folder_data, stand_in):
    assert _run_cli(values, quoted=True, folder_data=folder_data) is None
