"""The README's first command, `normstudy run` with no arguments, end to end (about 4 minutes here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from study import spec as spec_mod
from study.trial_configs import TrialConfigs

pytestmark = pytest.mark.integration


def test_normstudy_run_default_completes_with_summary_mlflow_runs_and_report(tmp_path):
    done = subprocess.run([sys.executable, "-m", "study.cli", "run"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    expected = len(TrialConfigs(spec_mod.load()).grid())
    progress = [ln for ln in out.splitlines() if ln.startswith("[")]
    assert len(progress) == expected  # one line per finished trial, no Ray status tables
    assert "Trial status" not in out and "Configuration for experiment" not in out
    for scheme in ("bn", "wn", "normprop", "wn_trelu"):
        assert any(ln.startswith(scheme + " ") for ln in out.splitlines())  # the summary table
    report = Path(out.split("Report: ")[1].split()[0])
    assert report.is_file() and (report.parent / "report.json").is_file()

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db")
    exp = client.get_experiment_by_name("normstudy")
    trials = client.search_runs([exp.experiment_id], "tags.`normstudy.role` = 'trial'", max_results=1000)
    assert len(trials) == expected
    assert all(t.info.status == "FINISHED" for t in trials)
    # The grid reaches from stable to divergent learning rates: both kinds of trial exist.
    diverged = [t for t in trials if t.data.tags["diverged"] == "1"]
    assert 0 < len(diverged) < len(trials)
    assert all(t.data.tags.get("divergence_cause") for t in diverged)
