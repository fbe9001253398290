"""The seed re-runs after an Optuna search (study/reruns.py): what they run, and a tiny study end to end
through Ray, MLflow and the report's regularization claim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from study import cli, runner
from study import spec as spec_mod
from study.reruns import REGULARIZATION, TUNED, UNTUNED, plan, untuned_config
from study.results import TrialResult
from study.runner import planned_trials, resolve_paths
from study.spec import PAPER_SCHEMES
from study.tracking import PHASE, RERUN, ROLE, STUDY
from study.trial_configs import TrialConfigs

TINY = ["schemes=[bn, wn]", "training.max_steps=20", "training.report_every=5", "training.eval_every=20",
        "training.batch_size=32", "training.lr_reference_batch=32", "data.train_size=256", "data.test_size=128",
        "data.train_eval_size=64", "model.cifar_blocks=[1, 1]", "search.mode=optuna", "search.seeds=[0]",
        # 20 steps end near chance: the stall and chance-collapse rules off (the mechanics are tested here)
        "divergence.stall_loss_frac=1000", "divergence.collapse_loss_frac=1000", "divergence.collapse_dead_frac=1"]


def _configs(*extra: str) -> TrialConfigs:
    return TrialConfigs(resolve_paths(spec_mod.load(None, TINY + ["search.rerun_seeds=[1, 2]", *extra])))


def _result(configs: TrialConfigs, scheme: str, values: dict, test: float | None) -> TrialResult:
    metrics = {"diverged": 0.0, "final_train_top1": 0.9, "final_test_top1": test} if test is not None else {
        "diverged": 1.0}
    return TrialResult(configs.resolve(scheme, {**values, "seed": 0}), "t", metrics)


def test_plan_reruns_each_schemes_best_configuration_tuned_and_at_the_regularization_defaults():
    configs = _configs()
    good = {"lr": 0.3, "weight_decay": 3e-3, "dropout": 0.2, "label_smoothing": 0.1, "warmup_steps": 5}
    trials = [_result(configs, "bn", dict(good, lr=0.05), 0.4), _result(configs, "bn", good, 0.6),
              _result(configs, "bn", dict(good, lr=2.0), None),  # diverged: never the best
              _result(configs, "wn", dict(good, init_scale=2.0), None)]  # every wn trial failed: no re-runs
    planned = plan(configs, trials)
    assert [(t.scheme_name, t.rerun, t.seed) for t in planned] == [
        ("bn", TUNED, 1), ("bn", TUNED, 2), ("bn", UNTUNED, 1), ("bn", UNTUNED, 2)]
    tuned, untuned = planned[0], planned[2]
    assert tuned.training.lr == untuned.training.lr == 0.3 and tuned.training.warmup_steps == 5
    assert (tuned.training.weight_decay, tuned.training.dropout, tuned.training.label_smoothing) == (3e-3, 0.2, 0.1)
    space = configs.space("bn")
    assert (untuned.training.weight_decay, untuned.training.dropout, untuned.training.label_smoothing) == tuple(
        space[k].default for k in REGULARIZATION)
    assert untuned.hp["weight_decay"] == space["weight_decay"].default  # logged as the value it ran at


def test_untuned_keeps_what_the_scheme_space_lacks():
    configs = _configs()
    assert untuned_config({"lr": 0.5}, configs, "bn") == {"lr": 0.5, "weight_decay": 1e-4, "dropout": 0.0,
                                                            "label_smoothing": 0.0}


ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name, trials", [("regularization", 16 * 4 + 24), ("imagenette_regularization", 72)])
def test_the_regularization_presets_give_every_scheme_the_same_budget_and_three_new_seeds(name, trials):
    spec = resolve_paths(spec_mod.load(ROOT / "specs" / f"{name}.yaml"), base=ROOT)
    s = spec.search
    assert [e.name for e in spec.schemes] == list(PAPER_SCHEMES) and s.mode == "optuna"
    assert len(s.rerun_seeds) >= 3 and not set(s.rerun_seeds) & set(s.seeds)  # the winner's seed not re-measured
    budgets = {planned_trials(spec, e.name) for e in spec.schemes}
    assert len(budgets) == 1 and budgets.pop() * 4 + 4 * 2 * len(s.rerun_seeds) == trials  # (gpu_check_report)
    configs = TrialConfigs(spec)
    assert set(configs.space("wn")) == {"lr", "init_scale", *REGULARIZATION}  # the knobs the claim is about
    assert set(configs.space("bn")) == {"lr", *REGULARIZATION}
    assert untuned_config({}, configs, "wn") == {"weight_decay": 1e-4, "dropout": 0.0, "label_smoothing": 0.0}


def test_rerun_seeds_need_an_optuna_search_and_distinct_seeds():
    with pytest.raises(spec_mod.SpecError, match="rerun_seeds: re-runs follow an Optuna search"):
        spec_mod.load(None, ["search.mode=grid", "search.rerun_seeds=[1]"])
    with pytest.raises(spec_mod.SpecError, match="rerun_seeds"):
        spec_mod.load(None, ["search.mode=optuna", "search.rerun_seeds=[1, 1]"])
    assert spec_mod.flatten(spec_mod.load(None, ["search.mode=optuna", "search.rerun_seeds=[4, 5]"]))[
        "search.rerun_seeds"] == "[4, 5]"  # logged with the study run like every value


@pytest.mark.integration
def test_tiny_optuna_study_with_reruns_reads_back_the_regularization_claim(tmp_path, ray_cluster, monkeypatch,
                                                                         capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(runner, "_profile_scheme", lambda *a, **k: None)  # claim 3's profile: not under test here
    uri = f"sqlite:///{tmp_path}/mlruns.db"
    sets = TINY + ["search.num_samples=4", "search.rerun_seeds=[1, 2]", "search.space_dir=spaces",
                   f"tracking.tracking_uri={uri}", "tracking.study_name=reg", f"tracking.report_dir={tmp_path}/rep"]
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "bn.yaml").write_text(
        "lr: {min: 0.05, max: 0.5, scaling: log, default: 0.1, target: training.lr}\n"
        "weight_decay: {min: 1.0e-5, max: 1.0e-2, scaling: log, default: 1.0e-4, target: training.weight_decay}\n"
        "dropout: {min: 0.0, max: 0.5, default: 0.0, target: training.dropout}\n")
    (tmp_path / "spaces" / "wn.yaml").write_text((tmp_path / "spaces" / "bn.yaml").read_text())
    assert cli.main(["run", *(a for s in sets for a in ("--set", s))]) == 0
    out = capsys.readouterr().out
    assert "8 trials and 8 seed re-runs in" in out and "[ 16/16]" in out  # the re-runs count on: one study

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("normstudy")
    runs = client.search_runs([exp.experiment_id], f"tags.`{ROLE}` = 'trial' and tags.`{STUDY}` = 'reg'")
    reruns = [r for r in runs if r.data.tags.get(PHASE) == "rerun"]
    assert len(runs) == 2 * 4 + 2 * 2 * 2 and len(reruns) == 8  # 4 search trials a scheme; 2 arms x 2 seeds
    assert sorted((r.data.tags["normstudy.scheme"], r.data.tags[RERUN], r.data.params["hp.seed"])
                  for r in reruns) == sorted((s, a, str(seed)) for s in ("bn", "wn") for a in (TUNED, UNTUNED)
                                             for seed in (1, 2))
    assert all(r.data.params["hp.dropout"] == "0.0" for r in reruns if r.data.tags[RERUN] == UNTUNED)

    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert [s["n_trials"] for s in report["schemes"].values()] == [4, 4]  # the re-runs are not search trials
    claim = next(c for c in report["claims"] if c["id"] == 4)
    reg = report["regularization"]["schemes"]
    assert sorted(reg["bn"]["tuned"]["seeds"]) == sorted(reg["wn"]["untuned"]["seeds"]) == [1, 2]
    search = [r for r in runs if r.data.tags.get(PHASE) is None and r.data.tags["normstudy.scheme"] == "bn"]
    top = max(r.data.metrics["final_test_top1"] for r in search)
    best = [{k[3:]: float(v) for k, v in r.data.params.items() if k.startswith("hp.") and k != "hp.seed"}
            for r in search if r.data.metrics["final_test_top1"] == top]
    assert reg["bn"]["tuned"]["config"] == reg["bn"]["best_values"] and reg["bn"]["best_values"] in best
    assert claim["verdict"] in ("confirmed", "not confirmed", "inconclusive")
    assert "wn" in claim["evidence"] and reg["wn"]["verdict"] == claim["evidence"]["wn"]["verdict"]
    assert set(reg["wn"]["importances"]) <= {"lr", "weight_decay", "dropout"}
    assert "Regularization: does tuning it close the gap to BN?" in (tmp_path / "rep" / "report.md").read_text()
