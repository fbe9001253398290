"""The `normstudy` command line: help, the registry listing, one-line spec errors, submit's command."""

from __future__ import annotations

import subprocess
import sys

import pytest

from study import cli
from trainers import norms


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for command in ("run", "train", "report", "schemes", "submit"):
        assert command in out


def test_schemes_lists_the_registry_one_line_each_with_its_paper(capsys):
    assert cli.main(["schemes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == norms.names()
    for line, name in zip(lines, norms.names(), strict=True):
        assert norms.get(name).paper in line


@pytest.mark.parametrize("override, field", [
    ("training.lr=-1", "training.lr: must be > 0"),
    ("training.lrr=0.1", "training.lrr: unknown key"),
    ("model.arch=resnet9000", "model.arch: must be one of"),
    ("schemes=[bn, nope]", "unknown scheme 'nope'"),
])
def test_spec_error_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys, override, field):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "--set", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and field in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_spec_error_through_the_installed_entry_point_has_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "study.cli", "run", "--spec", str(tmp_path / "missing.yaml")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == f"normstudy: --spec: file '{tmp_path / 'missing.yaml'}' not found; " \
                                  "give the path of a YAML spec"
    assert list(tmp_path.iterdir()) == []


def test_schemes_all_expands_to_every_registered_scheme():
    args = cli.build_parser().parse_args(["run", "--schemes", "all"])
    assert [e.name for e in cli._load(args).schemes] == norms.names()


def test_submit_prints_the_ray_job_submit_command(capsys):
    assert cli.main(["submit", "--address", "http://127.0.0.1:8265", "--spec", "specs/quick.yaml",
                     "--set", "training.lr=0.2", "--dry-run"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("ray job submit --address http://127.0.0.1:8265 --working-dir . -- ")
    assert out.endswith("python -m study.cli run --spec specs/quick.yaml --set training.lr=0.2")


def test_run_has_force_for_a_report_folder_of_other_files():
    args = cli.build_parser().parse_args(["run", "--force"])
    assert args.force is True and cli.build_parser().parse_args(["run"]).force is False


def test_run_of_a_study_whose_driver_lock_is_held_is_refused_in_one_line(tmp_path, monkeypatch, capsys):
    """Another driver holds the study (here: this test, through study.driver_lock): `normstudy run` exits 2
    before it starts anything, and leaves the holder's lock in place."""
    from study import driver_lock

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("study.runner.run_study", lambda *a, **k: pytest.fail("the study ran"))
    with driver_lock.hold(tmp_path / "normstudy_results", "quick") as lock:
        assert cli.main(["run", "--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("normstudy: tracking.study_name: study 'quick' is being run "
                                                       "by another driver (pid ")
        assert "`normstudy run --resume` continues it" in err and lock.is_file()
    assert list(tmp_path.iterdir()) == []


def test_the_study_says_it_started_only_once_its_preflight_passed(capsys):
    """`_announce` is what run_study calls after the preflight (a refused study prints nothing on stdout:
    tests/reliability/test_bad_specs.py); it prints the preflight's notes under the study's line."""
    spec = cli._load(cli.build_parser().parse_args(["run", "--set", "schemes=[bn, wn]"]))
    cli._announce(spec, ["data: 3 classes, 12 train / 6 val images"])
    out = capsys.readouterr().out.splitlines()
    assert out == [f"normstudy: study 'quick': bn, wn (grid search), MLflow {spec.tracking.tracking_uri}",
                   "normstudy: data: 3 classes, 12 train / 6 val images"]
    args = cli.build_parser().parse_args(["run", "--partial-report"])
    assert args.partial_report is True and cli.build_parser().parse_args(["run"]).partial_report is False
