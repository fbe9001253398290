"""`normstudy run --spec specs/digits.yaml`: real digits through the folder path, the paper's four schemes end to
end, each with a stable configuration. The budget is cut to one lr (0.03, where all four train on digits;
NormProp diverges there at 0.1), one seed and 60 steps."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_digits_preset_runs_the_four_paper_schemes_each_stable(tmp_path):
    args = ["--set", "search.grid_lr=[0.03]", "--set", "search.seeds=[0]", "--set", "training.max_steps=60",
            "--set", "training.eval_every=60", "--set", "training.warmup_steps=10"]
    done = subprocess.run([sys.executable, "-m", "study.cli", "run", "--spec", str(ROOT / "specs/digits.yaml"),
                           "--no-report", *args], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "normstudy_data/digits/digits.json").is_file()  # written once, by the project's code
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlruns.db")
    exp = client.get_experiment_by_name("normstudy")
    trials = client.search_runs([exp.experiment_id], "tags.`normstudy.role` = 'trial'", max_results=100)
    by_scheme = {t.data.tags["normstudy.scheme"]: t for t in trials}
    assert set(by_scheme) == {"bn", "wn", "normprop", "wn_trelu"}
    for scheme, t in by_scheme.items():
        assert t.data.tags["diverged"] == "0", scheme
        assert t.data.metrics["final_train_top1"] > 0.3, (scheme, t.data.metrics["final_train_top1"])  # chance 0.1
