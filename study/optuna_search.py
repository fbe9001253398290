"""``search.mode: optuna``: Optuna's TPE (through Ray Tune's ``OptunaSearch``, seeded) over a scheme's
search space, its suggestions resolved into trial configs on the driver.

:class:`OptunaSpace` is the define-by-run space (one ``suggest_*`` a dimension of ``search_spaces/``);
:class:`TrialConfigSearch` wraps the searcher (like Tune's ``ConcurrencyLimiter``) and hands Tune
``{"trial": TrialConfig}`` — the same shape as grid and boundary trials — with Optuna's trial number as a
field of its own, not a hyperparameter.
"""

from __future__ import annotations

from typing import Any

from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from search_spaces import SearchSpace
from study.trial_configs import TrialConfigs, tune_config

NUMBER = "optuna_trial_number"


class OptunaSpace:
    """Optuna define-by-run space from a search_spaces file (a class, so Tune can pickle the searcher)."""

    def __init__(self, dims: SearchSpace, seed: int) -> None:
        self.dims, self.seed = dims, seed

    def __call__(self, trial) -> dict[str, Any]:
        for name, d in self.dims.items():
            if d.type == "int":
                trial.suggest_int(name, int(d.min), int(d.max), log=d.scaling == "log")
            else:
                trial.suggest_float(name, d.min, d.max, log=d.scaling == "log")
        # Constants ride along in the suggestion; TrialConfigSearch moves them into the trial config.
        return {"seed": self.seed, NUMBER: trial.number}


class TrialConfigSearch(Searcher):
    """A searcher whose suggestions are sampled values, handing Tune each one as a resolved trial config."""

    def __init__(self, searcher: Searcher, configs: TrialConfigs, scheme: str, variant: str | None = None) -> None:
        self.searcher, self.configs, self.scheme, self.variant = searcher, configs, scheme, variant
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    @classmethod
    def optuna(cls, configs: TrialConfigs, scheme: str, *, metric: str, mode: str,
               variant: str | None = None) -> TrialConfigSearch:
        """TPE over ``scheme``'s space on ``variant``'s model (one searcher per scheme and variant)."""
        s = configs.spec.search
        # metric/mode on the searcher itself: it ignores TuneConfig's with a define-by-run space.
        inner = OptunaSearch(space=OptunaSpace(configs.space(scheme), s.seeds[0]), metric=metric, mode=mode,
                             seed=s.optuna_seed)
        return cls(inner, configs, scheme, variant)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        values = self.searcher.suggest(trial_id)
        if values is None or values == Searcher.FINISHED:
            return values
        values = dict(values)
        number = values.pop(NUMBER, None)
        return tune_config(self.configs.resolve(self.scheme, values, number, self.variant))

    # --- everything else is the wrapped searcher's ---------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        return self.searcher.set_max_concurrency(max_concurrent)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    # Tune saves a wrapper's own state beside its wrapped searcher's (SearchGenerator.save_to_dir): this one
    # keeps none (its trial configs are rebuilt from the study spec).
    def get_state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        pass

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

    def on_pause(self, trial_id: str) -> None:
        self.searcher.on_pause(trial_id)

    def on_unpause(self, trial_id: str) -> None:
        self.searcher.on_unpause(trial_id)
