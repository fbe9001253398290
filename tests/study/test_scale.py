"""The scale axis (study/scale_spec.py): variants validated once, every search run once per variant, the
variant on every trial, and a tiny two-variant boundary study read back into the report's scale section."""

from __future__ import annotations

import json

import pytest
from ray.tune.search import Searcher

from study import spec as spec_mod
from study.boundary_search import BoundarySearch
from study.runner import _experiments, planned_trials
from study.scale_params import scale_params
from study.trial_configs import TrialConfigs, trial_of
from trainers.config import ModelSpec
from trainers.model_size import model_depth

VARIANTS = "scale.variants=[{name: d8, cifar_blocks: [1, 1, 1]}, {name: d14, cifar_blocks: [2, 2, 2]}]"


def _spec(*overrides: str) -> spec_mod.StudySpec:
    return spec_mod.load(None, ["schemes=[bn, wn]", "search.grid_init_scale=[1.0]", VARIANTS, *overrides])


@pytest.mark.parametrize("arch, blocks, depth", [("resnet_cifar", [1, 1, 1], 8), ("resnet_cifar", [2, 2, 2], 14),
                                                 ("resnet_cifar", [5, 5, 5], 32), ("resnet_cifar", [1, 1], 6),
                                                 ("resnet18", [1], 18), ("resnet34", [1], 34), ("resnet50", [1], 50)])
def test_depth_is_computed_from_the_model_as_he_et_al_count_it(arch, blocks, depth):
    assert model_depth(ModelSpec(arch=arch, cifar_blocks=blocks)) == depth


@pytest.mark.parametrize("variants, field", [
    ("[{name: a, cifar_blocks: [1]}, {name: a, cifar_blocks: [2]}]", "listed twice"),
    ("[{name: a, cifar_blocks: [1, 1, 1]}, {name: b, cifar_blocks: [1, 1, 1]}]", "same model as"),
    ("[{name: a, cifar_blocks: [0]}]", "scale.variants.0: cifar_blocks"),
    ("[{name: a, arch: resnet50, cifar_width: 8}]", "arch resnet_cifar only"),
    ("[{name: 'a b', cifar_blocks: [1]}]", "scale.variants.0.name"),
    ("[{name: a}]", "changes nothing"),
    ("[{name: a, depth: 8}]", "scale.variants.0.depth: unknown key"),
])
def test_a_bad_variant_is_a_one_line_error_naming_it(variants, field):
    with pytest.raises(spec_mod.SpecError, match=field) as err:
        spec_mod.load(None, [f"scale.variants={variants}"])
    assert "\n" not in str(err.value)


def test_no_variants_is_the_single_model_study():
    configs = TrialConfigs(spec_mod.load(None, ["schemes=[bn, wn]", "search.grid_init_scale=[1.0]"]))
    assert configs.variants() == [None] and all("variant" not in t.hp for t in configs.grid())
    assert scale_params(configs.spec) == {}


def test_every_search_runs_once_per_variant_on_that_variants_model():
    spec = _spec("search.grid_lr=[0.1, 1.0]", "search.seeds=[0, 1]")
    configs = TrialConfigs(spec)
    grid = configs.grid()
    assert len(grid) == 2 * 2 * 2 * 2 == planned_trials(spec, "bn") + planned_trials(spec, "wn")
    for t in grid:
        assert t.model.cifar_blocks == {"d8": [1, 1, 1], "d14": [2, 2, 2]}[t.hp["variant"]]
    assert configs.bracket_keys() == [("bn", None, "d8"), ("wn", 1.0, "d8"), ("bn", None, "d14"), ("wn", 1.0, "d14")]
    optuna = _spec("search.mode=optuna")
    assert [e[0] for e in _experiments(optuna)] == ["bn@d8", "wn@d8", "bn@d14", "wn@d14"]
    assert planned_trials(optuna, "bn") == 2 * optuna.search.num_samples
    assert scale_params(spec)["scale.d14.depth"] == "14" and int(scale_params(spec)["scale.d14.params"]) > \
        int(scale_params(spec)["scale.d8.params"])


BOUNDARY = {("bn", "d8"): 0.5, ("wn", "d8"): 0.2, ("bn", "d14"): 0.3, ("wn", "d14"): 0.05}


def _drive(s: BoundarySearch, stop_after: int | None = None, prefix: str = "t") -> dict:
    """Like Tune: take suggestions until none comes, then complete the oldest running trial; until FINISHED
    (or ``stop_after`` completions: the trials still running are returned)."""
    n, live, done = 0, {}, 0
    while (cfg := s.suggest(f"{prefix}{n}")) != Searcher.FINISHED:
        if cfg is not None:
            live[f"{prefix}{n}"] = trial_of(cfg)
            n += 1
            continue
        if stop_after is not None and done >= stop_after:
            return live
        tid = next(iter(live))
        t = live.pop(tid)
        failed = t.hp["lr"] > BOUNDARY[t.scheme_name, t.hp["variant"]]
        s.on_trial_complete(tid, {"diverged": 1.0} if failed else {"diverged": 0.0, "final_test_top1": 0.5})
        done += 1
    return live


def _searcher() -> BoundarySearch:
    return BoundarySearch(TrialConfigs(_spec()), low=0.01, high=1.0, tolerance=2.0, max_points=12, seeds=[0])


def test_the_boundary_searcher_brackets_each_variant_on_its_own_and_restores_an_older_state():
    s = _searcher()
    boundary = BOUNDARY
    _drive(s)
    for row in s.summary():
        true = boundary[row["scheme"], row["variant"]]
        assert row["stable_lr"] <= true < row["diverged_lr"] <= 2.0 * row["stable_lr"] * 1.001
    old = s.get_state()  # a state saved before the scale axis keyed brackets by (scheme, init scale)
    old = {**old, "keys": [k[:2] for k in old["keys"][:2]], "running": {},
           "brackets": {k[:2]: b for k, b in list(old["brackets"].items())[:2]},
           "finished": {t: (k[:2], lr, sd) for t, (k, lr, sd) in old["finished"].items() if k[2] == "d8"}}
    s.set_state(old)
    assert s.keys == [("bn", None, None), ("wn", 1.0, None)]


def test_a_searcher_saved_mid_search_over_variants_resumes_to_the_same_brackets(tmp_path):
    """What `normstudy run --resume` restores (Tune pickles the searcher beside its trials)."""
    whole, part = _searcher(), _searcher()
    _drive(whole)
    running = _drive(part, stop_after=5)
    part.save(str(tmp_path / "searcher.pkl"))
    restored = _searcher()
    restored.restore(str(tmp_path / "searcher.pkl"))
    for tid, t in running.items():  # the trials running at the kill finish under their ids after the restore
        failed = t.hp["lr"] > BOUNDARY[t.scheme_name, t.hp["variant"]]
        restored.on_trial_complete(tid, {"diverged": 1.0} if failed else {"diverged": 0.0, "final_test_top1": 0.5})
    _drive(restored, prefix="r")
    assert restored.summary() == whole.summary()


def test_the_presets_sweep_four_cpu_depths_and_torchvisions_three_on_a_gpu():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "specs"
    cpu = spec_mod.load(root / "scale.yaml")
    assert [e.name for e in cpu.schemes] == list(spec_mod.PAPER_SCHEMES) and len(cpu.search.seeds) >= 2
    assert cpu.search.mode == "boundary" and not cpu.scaling.use_gpu
    assert sorted(int(v) for k, v in scale_params(cpu).items() if k.endswith(".depth")) == [8, 14, 20, 32]
    gpu = spec_mod.load(root / "imagenette_scale.yaml", ["data.path=/data/imagenette2"])
    assert gpu.scaling.use_gpu and gpu.search.mode == "boundary"
    assert sorted(int(v) for k, v in scale_params(gpu).items() if k.endswith(".depth")) == [18, 34, 50]
    assert sum(planned_trials(gpu, e.name) for e in gpu.schemes) == 168  # the cap its header's estimate quotes


# --------------------------------------------------------------------------------------------------
# end to end


@pytest.mark.integration
def test_a_two_variant_boundary_study_runs_through_ray_and_mlflow_into_the_scale_section(tmp_path, ray_cluster,
                                                                                         monkeypatch):
    from analysis.report import write_report
    from study.runner import run_study
    from tests.study.test_runner import BOUNDARY, _runs

    monkeypatch.chdir(tmp_path)
    variants = "scale.variants=[{name: d6, cifar_blocks: [1, 1]}, {name: d10, cifar_blocks: [2, 2]}]"
    # a tolerance of 40 on the [0.1, 100] start: one bisection a bracket (3 rates), enough to close each
    # 12 steps barely move a net off chance (best train top-1 0.125-0.22 here): "at chance" is set to chance
    # itself, so that every depth counts as trained and is fitted (the report reads the bar from the spec)
    spec = spec_mod.load(None, BOUNDARY + ["schemes=[bn, wn]", "search.seeds=[0]", "search.boundary_tolerance=40",
                                           "divergence.collapse_chance_multiple=1", variants,
                                           "tracking.study_name=scale"])
    result = run_study(spec)

    trials = _runs(result.tracking_uri, "scale", "trial")
    schemes = {r.data.tags["normstudy.scheme"]: r.info.run_id for r in _runs(result.tracking_uri, "scale", "scheme")}
    assert {(t.data.tags["normstudy.scheme"], t.data.tags["variant"]) for t in trials} == \
        {(s, v) for s in ("bn", "wn") for v in ("d6", "d10")}
    for t in trials:  # grouped by variant (tag and param) under its scheme's run, on its variant's model
        assert t.data.params["hp.variant"] == t.data.tags["variant"]
        assert t.data.params["model.cifar_blocks"] == {"d6": "[1, 1]", "d10": "[2, 2]"}[t.data.tags["variant"]]
        assert t.data.tags["mlflow.parentRunId"] == schemes[t.data.tags["normstudy.scheme"]]
    study_run = _runs(result.tracking_uri, "scale", "study")[0]
    assert study_run.data.params["scale.d10.depth"] == "10"
    driver = {(b["scheme"], b["variant"]): (b["stable_lr"], b["diverged_lr"]) for b in result.boundary}
    assert len(driver) == 4 and all(b["converged"] for b in result.boundary)

    out = tmp_path / "report"
    write_report(result.tracking_uri, out, study_name="scale")
    data = json.loads((out / "report.json").read_text())
    sc = data["scale"]
    assert {(r["scheme"], r["variant"]): (r["stable_lr"], r["diverged_lr"]) for r in sc["rows"]} == driver
    assert {r["variant"]: r["depth"] for r in sc["rows"]} == {"d6": 6, "d10": 10}
    assert all(r["trained"] for r in sc["rows"]), [(r["scheme"], r["variant"], r["best"]) for r in sc["rows"]]
    for law in sc["power_laws"].values():  # two closed brackets a scheme: a fit, its interval, the extrapolation
        assert law["b"] is not None and law["b_ci"]["lo"] <= law["b"] <= law["b_ci"]["hi"]
        assert law["extrapolated_lr"]["lo"] <= law["extrapolated_lr"]["hi"]
    claim = next(c for c in data["claims"] if c["id"] == sc["claim_id"])
    assert claim["claim"].startswith("the WN family's largest stable learning rate")
    assert claim["verdict"] in ("confirmed", "not confirmed", "inconclusive")
    assert (out / sc["plot"]).is_file() and "How stability moves with depth" in (out / "report.md").read_text()
