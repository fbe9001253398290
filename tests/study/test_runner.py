"""Studies end to end on a real local Ray, real Optuna and a real SQLite MLflow store."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from study import spec as spec_mod
from study.results import summary_table
from study.runner import run_study
from study.tracking import ROLE, SCHEME, STUDY
from study.trial_configs import TrialConfigs
from trainers.outcome import is_failure

pytestmark = pytest.mark.integration

TINY = [
    "training.max_steps=12", "training.report_every=4", "training.eval_every=12",
    "data.train_size=256", "data.test_size=128", "data.train_eval_size=64", "training.batch_size=32",
    "training.lr_reference_batch=32", "model.cifar_blocks=[1, 1]",
]


def _runs(uri: str, study: str, role: str) -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("normstudy")
    return client.search_runs([exp.experiment_id], f"tags.`{ROLE}` = '{role}' and tags.`{STUDY}` = '{study}'",
                              max_results=1000)


def test_optuna_study_two_schemes_hierarchy_distinct_lrs_and_divergence(tmp_path, ray_cluster, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # bn searches a sane range; wn a range where it always diverges (a forced divergence).
    spaces = tmp_path / "spaces"
    spaces.mkdir()
    (spaces / "bn.yaml").write_text("lr: {min: 0.01, max: 0.3, scaling: log, default: 0.1, target: training.lr}\n")
    (spaces / "wn.yaml").write_text(
        "lr: {min: 1000.0, max: 10000.0, scaling: log, default: 2000.0, target: training.lr}\n"
        "init_scale: {min: 0.5, max: 2.0, scaling: log, default: 1.0, target: scheme.init_scale}\n")
    spec = spec_mod.load(None, TINY + ["schemes=[bn, wn]", "search.mode=optuna", "search.num_samples=3",
                                       f"search.space_dir={spaces}", "tracking.study_name=opt"])
    out = io.StringIO()
    result = run_study(spec, out=out)

    uri = result.tracking_uri
    studies, schemes, trials = _runs(uri, "opt", "study"), _runs(uri, "opt", "scheme"), _runs(uri, "opt", "trial")
    assert len(studies) == 1 and len(schemes) == 2 and len(trials) == 6
    scheme_ids = {r.data.tags[SCHEME]: r.info.run_id for r in schemes}
    assert all(r.data.tags["mlflow.parentRunId"] == studies[0].info.run_id for r in schemes)
    for t in trials:
        assert t.data.tags["mlflow.parentRunId"] == scheme_ids[t.data.tags[SCHEME]]
        assert t.info.status == "FINISHED"
        assert "training.momentum" in t.data.params and "hp.lr" in t.data.params  # every spec value + samples
        assert t.data.tags["optuna_trial_number"].isdigit() and "provenance.torch" in t.data.params
    assert "provenance.git_commit" in studies[0].data.params and "training.lr" in studies[0].data.params

    bn_lrs = {float(t.data.params["hp.lr"]) for t in trials if t.data.tags[SCHEME] == "bn"}
    assert len(bn_lrs) == 3 and all(0.01 <= lr <= 0.3 for lr in bn_lrs)  # Optuna sampled distinct values
    wn = [t for t in trials if t.data.tags[SCHEME] == "wn"]
    assert all(t.data.tags["diverged"] == "1" for t in wn)
    for t in wn:
        assert t.data.tags["divergence_cause"] in {"non_finite_loss", "non_finite_grad", "loss_explosion",
                                                   "loss_spike"}
        assert int(t.data.tags["divergence_step"]) >= 1
        assert t.data.metrics["objective"] == 0.0  # a finite penalty, never NaN
    assert all(t.data.tags["diverged"] == "0" for t in trials if t.data.tags[SCHEME] == "bn")
    # Per-step curves landed in the trial runs.
    client = MlflowClient(tracking_uri=uri)
    hist = client.get_metric_history(trials[0].info.run_id, "loss")
    assert len(hist) >= 1 and len({m.step for m in hist}) == len(hist)
    lines = [ln for ln in out.getvalue().splitlines() if ln.startswith("[")]
    assert len(lines) == 6  # one line per finished trial
    assert "wn" in summary_table(result)


def test_asha_study_closes_every_trial_run(tmp_path, ray_cluster, monkeypatch):
    """ASHA may stop trials early; none of their MLflow runs is left RUNNING."""
    monkeypatch.chdir(tmp_path)
    spec = spec_mod.load(None, TINY + ["schemes=[bn]", "search.mode=grid", "search.grid_lr=[0.001, 0.01, 0.1, 0.3]",
                                       "search.seeds=[0]", "search.scheduler=asha", "training.max_steps=32",
                                       "training.eval_every=8", "tracking.study_name=asha"])
    result = run_study(spec, out=io.StringIO())
    trials = _runs(result.tracking_uri, "asha", "trial")
    assert len(trials) == 4
    assert all(t.info.status in ("FINISHED", "KILLED") for t in trials)
    for t in trials:
        if t.info.status == "KILLED":
            assert "stopped early" in t.data.tags["normstudy.failure_reason"]


def test_grid_points_cover_lr_init_scale_and_seeds_only_where_they_apply():
    spec = spec_mod.load(None)
    trials = TrialConfigs(spec).grid()
    s = spec.search
    by_scheme = {}
    for t in trials:
        assert t.training.lr == t.hp["lr"] and t.training.seed == t.hp["seed"]  # the values are applied
        by_scheme.setdefault(t.scheme_name, []).append(t.hp)
    assert len(by_scheme["bn"]) == len(s.grid_lr) * len(s.seeds)
    assert all("init_scale" not in p for p in by_scheme["bn"])
    assert len(by_scheme["wn"]) == len(s.grid_lr) * len(s.grid_init_scale) * len(s.seeds)
    assert len({(p["lr"], p["init_scale"], p["seed"]) for p in by_scheme["wn"]}) == len(by_scheme["wn"])


def test_existing_study_needs_resume_or_fresh(tmp_path, ray_cluster, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "normstudy_results" / "dup").mkdir(parents=True)
    spec = spec_mod.load(None, TINY + ["tracking.study_name=dup"])
    with pytest.raises(spec_mod.SpecError, match="--resume"):
        run_study(spec)


def test_driver_killed_then_resume_finishes_exact_budget_without_duplicates(tmp_path, ray_cluster):
    """SIGKILL the study driver part-way; `normstudy run --resume` ends with the full budget, once each."""
    overrides = TINY + ["schemes=[bn, wn]", "search.mode=grid", "search.grid_lr=[0.01, 0.03, 0.1, 0.3]",
                        "search.seeds=[0]", "search.grid_init_scale=[1.0]", "tracking.study_name=kill",
                        "training.max_steps=40", "training.eval_every=20"]
    args = [sys.executable, "-m", "study.cli", "run", "--no-report"] + [a for o in overrides for a in ("--set", o)]
    # The driver joins the session's Ray (as under `ray job submit`), so killing it leaves Ray up.
    env = dict(os.environ, RAY_ADDRESS=ray_cluster, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    finished, deadline = 0, time.time() + 240
    for line in proc.stdout:
        finished += line.startswith("[")
        if finished >= 3 or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert finished >= 3, "the driver never finished 3 trials before the kill"

    done = subprocess.run(args + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    trials = _runs(uri, "kill", "trial")
    per_scheme = {}
    for t in trials:
        per_scheme.setdefault(t.data.tags[SCHEME], []).append(t)
    assert {k: len(v) for k, v in per_scheme.items()} == {"bn": 4, "wn": 4}
    for runs in per_scheme.values():
        assert len({float(t.data.params["hp.lr"]) for t in runs}) == 4  # each grid point exactly once
        assert all(t.info.status == "FINISHED" for t in runs)
    assert len(_runs(uri, "kill", "study")) == 1 and len(_runs(uri, "kill", "scheme")) == 2


# 12-step trials end near chance, where the chance-accuracy collapse and the stall rule (failures, like a
# divergence) would fail every rate; these tests are about the bisection, so only divergences and dead-ReLU
# collapses bound it here.
BOUNDARY = TINY + ["search.mode=boundary", "search.boundary_lr=[0.1, 100.0]", "search.boundary_tolerance=6",
                   "search.grid_init_scale=[1.0]", "divergence.collapse_loss_frac=1000",
                   "divergence.stall_loss_frac=1000"]


def _brackets_from_mlflow(trials: list) -> dict[tuple, dict]:
    """Per (scheme, init scale): {lr: {seed: failed?}} (diverged or collapsed, the outcome tag) and the lrs in
    the order they were first started."""
    out: dict[tuple, dict] = {}
    for t in sorted(trials, key=lambda t: t.info.start_time):
        p = t.data.params
        key = (t.data.tags[SCHEME], float(p["hp.init_scale"]) if "hp.init_scale" in p else None)
        entry = out.setdefault(key, {"seeds": {}, "order": []})
        lr, seed = float(p["hp.lr"]), int(p["hp.seed"])
        assert seed not in entry["seeds"].get(lr, {}), f"{key} lr={lr} seed={seed} ran twice"
        entry["seeds"].setdefault(lr, {})[seed] = is_failure(t.data.tags["outcome"])
        if lr not in entry["order"]:
            entry["order"].append(lr)
    return out


def _check_brackets(trials: list, seeds: list[int], tolerance: float) -> dict[tuple, tuple]:
    """Each bracket stopped at the tolerance, no earlier and no later; returns {key: (stable, diverged)}."""
    from study.boundary import within
    from trainers.outcome import bracket_of

    found = {}
    for key, entry in _brackets_from_mlflow(trials).items():
        def status(lrs, e=entry):
            return {lr: "failed" if any(e["seeds"][lr].values()) else "stable" for lr in lrs}

        stable, diverged = bracket_of(status(entry["order"]))
        assert stable is not None and diverged is not None and within(stable, diverged, tolerance), key
        assert sorted(entry["seeds"][stable]) == seeds and not any(entry["seeds"][stable].values())  # every seed
        s0, d0 = bracket_of(status(entry["order"][:-1]))  # without the last rate: not yet within tolerance
        assert s0 is None or d0 is None or not within(s0, d0, tolerance), f"{key} went on past the tolerance"
        found[key] = (stable, diverged)
    return found


def test_boundary_study_bisects_to_tolerance_in_the_grid_hierarchy(tmp_path, ray_cluster, monkeypatch):
    """bn and wn brackets side by side in one experiment; each stops once diverged/stable ≤ tolerance."""
    from analysis.boundary import scheme_boundary
    from analysis.collect import read_study

    monkeypatch.chdir(tmp_path)
    spec = spec_mod.load(None, BOUNDARY + ["schemes=[bn, wn]", "search.seeds=[0, 1]", "tracking.study_name=bnd"])
    out = io.StringIO()
    result = run_study(spec, out=out)

    uri = result.tracking_uri
    studies, schemes, trials = _runs(uri, "bnd", "study"), _runs(uri, "bnd", "scheme"), _runs(uri, "bnd", "trial")
    assert len(studies) == 1 and len(schemes) == 2
    scheme_ids = {r.data.tags[SCHEME]: r.info.run_id for r in schemes}
    assert all(r.data.tags["mlflow.parentRunId"] == studies[0].info.run_id for r in schemes)
    assert all(r.data.params["search.mode"] == "boundary" for r in schemes)
    for t in trials:
        assert t.data.tags["mlflow.parentRunId"] == scheme_ids[t.data.tags[SCHEME]]
        assert t.info.status == "FINISHED" and "training.momentum" in t.data.params
    found = _check_brackets(trials, [0, 1], 6.0)
    assert set(found) == {("bn", None), ("wn", 1.0)}
    # the driver's rows, the report's analysis (read back from MLflow) and the runs agree
    rows = {(b["scheme"], b["init_scale"]): b for b in result.boundary}
    assert {k: (r["stable_lr"], r["diverged_lr"]) for k, r in rows.items()} == found
    assert all(r["converged"] for r in rows.values()) and sum(r["trials"] for r in rows.values()) == len(trials)
    study = read_study(uri, study_name="bnd", curves=())
    for sd in study.schemes:
        for b in scheme_boundary(sd.trials):
            assert (b["stable_lr"], b["diverged_lr"]) == found[(sd.name, b["init_scale"])]
            assert b["trials"] == rows[(sd.name, b["init_scale"])]["trials"]
    assert len([ln for ln in out.getvalue().splitlines() if ln.startswith("[")]) == len(trials)
    assert "smallest diverged lr" in summary_table(result)


def test_boundary_mode_refuses_asha_and_an_inverted_bracket(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for extra, field in ((["search.scheduler=asha"], "search.scheduler"),
                         (["search.boundary_lr=[1.0, 0.1]"], "search.boundary_lr")):
        spec = spec_mod.load(None, BOUNDARY + ["tracking.study_name=refuse"] + extra)
        with pytest.raises(spec_mod.SpecError, match=field):
            run_study(spec)
    assert not (tmp_path / "normstudy_results").exists() and not (tmp_path / "mlruns.db").exists()


def test_boundary_driver_killed_then_resume_finishes_the_bracket_once_each(tmp_path, ray_cluster):
    """SIGKILL the driver mid-search; `--resume` restores the searcher and ends at the tolerance, no (lr, seed)
    trained twice."""
    overrides = BOUNDARY + ["schemes=[bn]", "search.seeds=[0, 1]", "tracking.study_name=bkill"]
    args = [sys.executable, "-m", "study.cli", "run", "--no-report"] + [a for o in overrides for a in ("--set", o)]
    env = dict(os.environ, RAY_ADDRESS=ray_cluster, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    finished, deadline = 0, time.time() + 180
    for line in proc.stdout:
        finished += line.startswith("[")
        if finished >= 3 or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert finished >= 3, "the driver never finished 3 trials before the kill"

    done = subprocess.run(args + ["--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = _runs(f"sqlite:///{tmp_path}/mlruns.db", "bkill", "trial")
    assert all(t.info.status == "FINISHED" for t in trials)
    assert set(_check_brackets(trials, [0, 1], 6.0)) == {("bn", None)}  # also: no (lr, seed) ran twice
    resumed = [ln for ln in done.stdout.splitlines() if ln.startswith("[")]
    assert 0 < len(resumed) < len(trials)  # the restored searcher went on from its state, it did not start over
    assert "smallest diverged lr" in done.stdout


def test_fresh_deletes_every_run_of_the_study_and_only_those(tmp_path, monkeypatch):
    """`--fresh`'s delete (no Ray): the study's runs go, another study's stay, and the results folder goes."""
    from study.runner import _delete_study
    from study.tracking import StudyTracker

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    tracker = StudyTracker(uri, "normstudy")
    for study in ("old", "other"):
        parent = tracker.study_run(study, {})
        scheme = tracker.scheme_run(study, "bn", parent, {})
        for i in range(3):
            tracker.trial_run(study, "bn", f"t{i}", scheme, {}, {"seed": i, "lr": 0.1})
    root = tmp_path / "normstudy_results" / "old"
    root.mkdir(parents=True)
    spec = spec_mod.load(None, [f"tracking.tracking_uri={uri}", "tracking.study_name=old"])
    _delete_study(spec, root)
    alive = MlflowClient(uri).search_runs([tracker.experiment_id], "", max_results=100)
    assert sorted({r.data.tags[STUDY] for r in alive}) == ["other"] and len(alive) == 5
    assert not root.exists()
