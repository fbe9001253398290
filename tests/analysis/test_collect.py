"""Reading trials back from a real MLflow SQLite store (analysis/collect.py): outcomes — stable, diverged,
collapsed — with their cause, step and layer, as the loop and study/trial.py record them."""

from __future__ import annotations

import pytest

from analysis.collect import read_study
from tests.analysis.synth import study, trial, write_mlflow


def _study():
    return study(
        {
            "wn": [
                trial("wn", 0.1, 0, train=0.8, test=0.7),
                trial("wn", 1.0, 0, diverged=True, step=7, cause="non_finite_loss", layer="layer1.0.conv2.g"),
                trial("wn", 0.3, 0, collapsed=True, collapse_step=5, collapse_layer="layer2",
                      metrics={"collapse_dead_frac": 0.84}),
            ]
        }
    )


@pytest.mark.parametrize("tagged", [True, False])
def test_outcomes_read_back_from_mlflow(store, tagged):
    uri, client = store
    write_mlflow(client, "normstudy", _study(), collapse_tags=tagged)
    (wn,) = read_study(uri, client=client).schemes
    by_outcome = {t.outcome: t for t in wn.trials}
    assert set(by_outcome) == {"stable", "diverged", "collapsed"}
    stable, div, col = by_outcome["stable"], by_outcome["diverged"], by_outcome["collapsed"]
    assert not stable.failed and not stable.collapsed and stable.collapse_step is None
    assert div.failed and not div.collapsed
    assert (div.divergence_cause, div.divergence_step, div.divergence_layer) == ("non_finite_loss", 7,
                                                                                 "layer1.0.conv2.g")
    assert col.failed and col.finished and not col.diverged
    assert col.collapse_step == 5  # the tag, else the loop's metric collapse_step
    assert col.final("final_train_top1") == pytest.approx(0.09) and col.final("collapse_dead_frac") == 0.84
    if tagged:
        assert (col.collapse_cause, col.collapse_layer) == ("dead_relu", "layer2")
    else:  # strings reach MLflow only as tags: without them the outcome and step still come from metrics
        assert (col.collapse_cause, col.collapse_layer) == (None, None)


def test_outcome_of_an_unfinished_trial():
    t = trial("bn", 0.1, 0, train=0.5, test=0.4)
    t.metrics.pop("final_test_top1")
    assert t.outcome == "unfinished" and not t.failed
