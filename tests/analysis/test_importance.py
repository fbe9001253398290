"""Hyperparameter importances from a search read back from MLflow (analysis/importance.py)."""

from __future__ import annotations

import numpy as np

from analysis.importance import importances, plot_importances, rebuild_study
from search_spaces import for_scheme
from tests.analysis import synth


def _trials(n: int = 24):
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):  # test top-1 follows the learning rate only; weight decay is noise
        lr, wd = float(10 ** rng.uniform(-2, 1)), float(10 ** rng.uniform(-6, -3))
        t = synth.trial("bn", lr, 0, train=0.9, test=0.9 - 0.2 * abs(np.log10(lr) + 1), diverged=lr > 5)
        t.hp["weight_decay"], t.trial_id = wd, f"t{i}"
        out.append(t)
    return out


def test_the_knob_that_matters_comes_first(tmp_path):
    trials = _trials()
    study = rebuild_study(trials, for_scheme("bn"))
    assert len(study.trials) == len(trials)
    assert min(t.value for t in study.trials) == 0.0  # a diverged trial at the penalty the search saw
    found, note = importances(trials, for_scheme("bn"))
    assert note == "" and list(found)[0] == "lr" and found["lr"] > 0.5
    assert found == importances(trials, for_scheme("bn"))[0]  # seeded: the same report twice
    assert plot_importances({"bn": found}, tmp_path / "i.png").is_file()


def test_too_few_trials_say_why():
    found, note = importances(_trials(3), for_scheme("bn"))
    assert found is None and "3 finished search trials" in note
