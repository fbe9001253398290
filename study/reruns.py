"""The seed re-runs after an Optuna search (``search.rerun_seeds``): each scheme's best configuration on
every re-run seed, tuned and untuned — the report's regularization claim (analysis/regularization.py).

* **tuned**: the scheme's best configuration of its search — the one definition of best,
  :func:`analysis.summarize.best_config` (highest mean final test top-1 among configurations where no seed
  failed) — with every value it was found at;
* **untuned**: the same configuration with the regularization dimensions (:data:`REGULARIZATION`: weight
  decay, dropout, label smoothing) reset to the search space's defaults (the paper's values), its learning
  rate and init scale kept — "before tuning the regularization", at the operating point the search found
  (docs/design.md §14 argues the choice).

Both arms run on the same seeds in one Ray Tune experiment (``<study>/reruns``, restored on ``--resume``),
into the same MLflow hierarchy as the search's trials, tagged ``normstudy.phase=rerun`` and
``normstudy.rerun=tuned|untuned`` (study/trial.py), so the report keeps them apart from the search. The
re-runs are a second draw: the tuned arm's mean is measured on seeds, not the lucky trial that won.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ray import tune

from analysis.summarize import best_config, group_configs
from study.results import TrialResult, trial_data
from study.trial_configs import TRIAL, TrialConfigs
from trainers.config import TrialConfig

REGULARIZATION = ("weight_decay", "dropout", "label_smoothing")
TUNED, UNTUNED = "tuned", "untuned"
EXPERIMENT = "reruns"  # the re-run experiment's name under the study's storage folder


def tuned_config(trials: Sequence[TrialResult]) -> dict[str, Any] | None:
    """The best configuration (hyperparameters without the seed) among one scheme's search trials, by
    :func:`analysis.summarize.best_config`; None when no configuration has a stable seed."""
    best = best_config(group_configs([trial_data(r) for r in trials]))
    return None if best is None else dict(best.config)


def untuned_config(config: dict[str, Any], configs: TrialConfigs, scheme: str) -> dict[str, Any]:
    """``config`` with every regularization dimension of the scheme's space at that space's default."""
    space = configs.space(scheme)
    return {**config, **{k: space[k].default for k in REGULARIZATION if k in space}}


def plan(configs: TrialConfigs, trials: Sequence[TrialResult]) -> list[TrialConfig]:
    """Every re-run: per scheme with a best configuration, both arms on every ``search.rerun_seeds`` seed
    (scheme-major, tuned first). A scheme whose every search trial failed gets none (the report says so)."""
    out: list[TrialConfig] = []
    for entry in configs.spec.schemes:
        tuned = tuned_config([r for r in trials if r.scheme == entry.name])
        if tuned is None:
            continue
        arms = {TUNED: tuned, UNTUNED: untuned_config(tuned, configs, entry.name)}
        for arm, values in arms.items():
            for seed in configs.spec.search.rerun_seeds:
                trial = configs.resolve(entry.name, {**values, "seed": seed})
                out.append(trial.model_copy(update={"rerun": arm}))
    return out


def tuner(trials: list[TrialConfig], trainable: Any, root: Path, *, resume: bool, max_concurrent: int,
          max_failures: int, callbacks: list[Any]) -> tune.Tuner:
    """The re-run experiment: a grid over the planned trials (no scheduler: every re-run trains to the end).
    On ``--resume`` an experiment already stored is restored as planned then (its unfinished trials rerun)."""
    path = root / EXPERIMENT
    if resume and tune.Tuner.can_restore(str(path)):
        return tune.Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space={TRIAL: tune.grid_search([t.to_dict() for t in trials])},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=EXPERIMENT, storage_path=str(root), callbacks=callbacks, verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
