"""A trial's config is resolved and validated once, on the driver, in one shape for every search mode."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import pytest
from ray.tune.search import Searcher

from study import spec as spec_mod
from study.boundary_search import BoundarySearch
from study.optuna_search import TrialConfigSearch
from study.spec import SpecError, StudySpec
from study.trial_configs import TRIAL, TrialConfigs, trial_of, tune_config
from trainers.config import SchemeEntry, TrainerConfig, TrialConfig
from trainers.norms.base import SchemeOptions

LOCAL = ["schemes=[bn, wn]", "search.grid_lr=[0.1, 1.0]", "search.grid_init_scale=[1.0, 2.0]", "search.seeds=[0, 1]"]


class ValidationCounter:
    """Counts pydantic validations of the config classes (their core validator, whatever the entry point; a
    nested section validates inside its parent's) and of a scheme's options."""

    CLASSES = (StudySpec, TrainerConfig, TrialConfig, SchemeEntry)

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.counts: Counter[str] = Counter()
        for cls in self.CLASSES:
            monkeypatch.setattr(cls, "__pydantic_validator__", self._proxy(cls.__name__, cls.__pydantic_validator__))
        original = SchemeOptions.__init__

        def counted_init(obj, **kw):
            self.counts["scheme options"] += 1
            original(obj, **kw)

        monkeypatch.setattr(SchemeOptions, "__init__", counted_init)

    def _proxy(self, name: str, validator):
        counts = self.counts

        class Proxy:
            def __getattr__(self, attr):
                value = getattr(validator, attr)
                if attr.startswith("validate"):
                    def counted(*a, **kw):
                        counts[name] += 1
                        return value(*a, **kw)
                    return counted
                return value

        return Proxy()


def test_every_mode_gives_the_same_shape_with_the_values_applied():
    configs = TrialConfigs(spec_mod.load(None, LOCAL))
    grid = configs.grid()
    assert len(grid) == 2 * 2 + 2 * 2 * 2  # bn: lr × seed; wn: lr × init scale × seed
    wn = next(t for t in grid if t.scheme_name == "wn" and t.hp == {"lr": 1.0, "seed": 1, "init_scale": 2.0})
    assert wn.training.lr == 1.0 and wn.training.seed == 1 and wn.scheme.options == {"init_scale": 2.0}
    boundary = BoundarySearch.from_configs(configs).suggest("t0")
    assert set(boundary) == {TRIAL} and isinstance(trial_of(boundary), TrialConfig)


class FakeOptuna(Searcher):
    """Stands in for OptunaSearch's suggestions (sampled values plus the constants OptunaSpace adds)."""

    def __init__(self) -> None:
        super().__init__(metric="objective", mode="max")
        self.completed: list[str] = []

    def suggest(self, trial_id: str):
        return {"lr": 0.25, "weight_decay": 3e-4, "seed": 0, "optuna_trial_number": 4} if trial_id != "end" \
            else Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self.completed.append(trial_id)


def test_optuna_suggestions_become_trial_configs_with_the_number_apart():
    configs = TrialConfigs(spec_mod.load(None, LOCAL))
    inner = FakeOptuna()
    search = TrialConfigSearch(inner, configs, "bn")
    trial = trial_of(search.suggest("t0"))
    assert trial.hp == {"lr": 0.25, "weight_decay": 3e-4, "seed": 0} and trial.optuna_trial_number == 4
    assert trial.training.lr == 0.25 and trial.training.weight_decay == 3e-4
    assert search.suggest("end") == Searcher.FINISHED
    search.on_trial_complete("t0", {"objective": 0.5})
    assert inner.completed == ["t0"]


def test_a_sampled_value_its_field_refuses_is_a_one_line_spec_error_on_the_driver():
    configs = TrialConfigs(spec_mod.load(None, LOCAL))
    with pytest.raises(SpecError) as err:
        configs.resolve("bn", {"lr": 0.1, "label_smoothing": 1.5, "seed": 0})
    assert "training.label_smoothing" in str(err.value) and "\n" not in str(err.value)


def test_a_trial_config_is_validated_once_on_the_driver_and_never_after(monkeypatch):
    """The driver resolves (one validation), Ray pickles it across (none), the loop trusts it (none; the
    scheme object the loop builds checks its own options once)."""
    from trainers.loop import train_loop_per_worker

    spec = spec_mod.load(None, LOCAL + ["training.max_steps=2", "training.report_every=1", "data.train_size=64",
                                        "data.test_size=32", "data.train_eval_size=32", "training.batch_size=16"])
    configs = TrialConfigs(spec)
    counter = ValidationCounter(monkeypatch)
    trial = configs.point("wn", 0.1, 0, 1.0)
    # one validation (its nested sections validate inside it) and one check of the scheme's options
    assert counter.counts == {"TrialConfig": 1, "scheme options": 1}
    counter.counts.clear()
    # what Tune does to it: its JSON form in the trial's config and stored state, pickled to the trial actor
    crossed = pickle.loads(pickle.dumps(json.loads(json.dumps(tune_config(trial)))))
    assert counter.counts == {} and trial_of(crossed) == trial
    summary = train_loop_per_worker({TRIAL: trial_of(crossed), "session": "local"})
    assert summary["steps_done"] == 2.0
    assert counter.counts == {"scheme options": 1}  # the scheme object (trainers.norms) the loop builds


def _proposals(optuna_seed: int, n: int = 12) -> list[dict]:
    """The first ``n`` trials TPE proposes for wn (10 random, then TPE's own), each told a score."""
    configs = TrialConfigs(spec_mod.load(None, LOCAL + ["search.mode=optuna", f"search.optuna_seed={optuna_seed}"]))
    search = TrialConfigSearch.optuna(configs, "wn", metric="objective", mode="max")
    out = []
    for i in range(n):
        trial = trial_of(search.suggest(f"t{i}"))
        out.append(trial.hp)
        search.on_trial_complete(f"t{i}", {"objective": -abs(trial.hp["lr"] - 0.3), "training_iteration": 1})
    return out


def test_a_seeded_optuna_search_proposes_the_same_trials_again():
    first = _proposals(0)
    assert first == _proposals(0) and len({t["lr"] for t in first}) == len(first)
    assert first != _proposals(1)
