"""Which knob mattered: each scheme's hyperparameter importances from its Optuna search, by Optuna's own
tools, and their plot.

The search's trials are read back from MLflow (analysis/collect.py), so the Optuna study is rebuilt in
memory: one ``optuna.trial.create_trial`` per finished trial, with its sampled values (``hp.*``) under the
distributions of the scheme's search space (search_spaces/, the folder the study used) and its final test
top-1 as the value. A trial that failed without a final accuracy (diverged) enters at 0 — the penalty the
search itself saw (``trainers.config.TrainerConfig.penalty``) — since where a scheme fails is part of which
knob matters; errored and unfinished trials stay out.

The evaluator is fANOVA (Hutter et al. 2014, ICML: the share of the objective's variance, over a random
forest fitted to the trials, each parameter explains on its own), seeded so a report is reproducible; its
forest is scikit-learn's, a dependency already. Optuna's default, PED-ANOVA (Watanabe et al. 2023), compares
the top ``target_quantile`` (10%) of trials with the rest: at the 16–24 trials a scheme gets here that is two
trials, too few to say anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import optuna

from analysis.collect import TrialData
from analysis.plots import new_figure, save_figure, scheme_color
from search_spaces import SearchSpace

METHOD = "fANOVA (optuna.importance.FanovaImportanceEvaluator, 64 trees, seed 0)"
MIN_TRIALS = 4  # fewer finished trials than this: no importances (a forest over three points says nothing)


def _distributions(space: SearchSpace, names: Sequence[str]) -> dict[str, optuna.distributions.BaseDistribution]:
    out: dict[str, optuna.distributions.BaseDistribution] = {}
    for name in names:
        d = space[name]
        if d.type == "int":
            out[name] = optuna.distributions.IntDistribution(int(d.min), int(d.max), log=d.scaling == "log")
        else:
            out[name] = optuna.distributions.FloatDistribution(d.min, d.max, log=d.scaling == "log")
    return out


def _value(t: TrialData) -> float:
    test = t.final("final_test_top1")
    return test if test is not None else 0.0


def rebuild_study(trials: Sequence[TrialData], space: SearchSpace) -> optuna.Study:
    """An in-memory Optuna study of the search's finished trials (values: final test top-1, maximized)."""
    names = [n for n in space if all(n in t.hp for t in trials)]
    dists = _distributions(space, names)
    study = optuna.create_study(direction="maximize")
    for t in trials:
        if not t.finished or t.rerun is not None:
            continue
        params = {n: t.hp[n] for n in names if isinstance(t.hp[n], int | float) and math.isfinite(t.hp[n])}
        if len(params) != len(names):
            continue
        params = {n: int(v) if isinstance(dists[n], optuna.distributions.IntDistribution) else float(v)
                  for n, v in params.items()}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=_value(t)))
    return study


def importances(trials: Sequence[TrialData], space: SearchSpace) -> tuple[dict[str, float] | None, str]:
    """({parameter: importance, summing to 1, largest first}, "") or (None, why there are none)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = rebuild_study(trials, space)
    except (ValueError, KeyError) as err:  # a value outside the space: the space changed since the study ran
        return None, f"the search's trials do not fit the search space ({err})"
    done = study.get_trials(deepcopy=False)
    if len(done) < MIN_TRIALS:
        return None, f"{len(done)} finished search trials (need {MIN_TRIALS})"
    varied = [n for n in study.trials[0].params if len({t.params[n] for t in done}) > 1]
    if not varied:
        return None, "no sampled value varied"
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    found = optuna.importance.get_param_importances(study, evaluator=evaluator, params=varied)
    return {k: float(v) for k, v in found.items()}, ""


def plot_importances(by_scheme: Mapping[str, Mapping[str, float]], path: Path) -> Path | None:
    """One panel per scheme: each hyperparameter's importance as a horizontal bar, largest on top."""
    rows = {n: v for n, v in by_scheme.items() if v}
    if not rows:
        return None
    fig, axes = new_figure(3.6 * len(rows), 3.2, ncols=len(rows))
    for ax, (name, values) in zip(axes[0], rows.items(), strict=True):
        names = list(values)[::-1]
        ax.barh(names, [values[n] for n in names], color=scheme_color(name), edgecolor="black", linewidth=0.6)
        ax.set_xlim(0, 1)
        ax.set_title(name)
        ax.set_xlabel("importance (fANOVA)")
    fig.suptitle("Which hyperparameter mattered for test top-1 (share of variance, per scheme)")
    return save_figure(fig, path)
