"""Reading trials back from a real MLflow SQLite store (analysis/collect.py): outcomes — stable, diverged,
collapsed, stalled, errored — with their cause, step and layer or error, and the scheme runs' profile tags,
as the loop and study/trial.py record them."""

from __future__ import annotations

import pytest

from analysis.collect import read_study
from analysis.summarize import summarize_scheme
from tests.analysis.synth import study, trial, write_mlflow


def _study():
    return study(
        {
            "wn": [
                trial("wn", 0.1, 0, train=0.8, test=0.7),
                trial("wn", 1.0, 0, diverged=True, step=7, cause="non_finite_loss", layer="layer1.0.conv2.g"),
                trial("wn", 0.3, 0, collapsed=True, collapse_step=5, collapse_layer="layer2",
                      metrics={"collapse_dead_frac": 0.84}),
                trial("wn", 3.0, 0, stalled=True, metrics={"stall_loss_ratio": 0.97}),
            ]
        },
        scheme_tags={"wn": {"normstudy.profile_device": "cpu", "normstudy.profile_where": "driver"}},
    )


@pytest.mark.parametrize("tagged", [True, False])
def test_outcomes_read_back_from_mlflow(store, tagged):
    uri, client = store
    write_mlflow(client, "normstudy", _study(), collapse_tags=tagged)
    (wn,) = read_study(uri, client=client).schemes
    by_outcome = {t.outcome: t for t in wn.trials}
    assert set(by_outcome) == {"stable", "diverged", "collapsed", "stalled"}
    assert by_outcome["stalled"].failed and by_outcome["stalled"].final("stall_loss_ratio") == 0.97
    s = summarize_scheme(wn)
    assert s.profile == {"device": "cpu", "dtype": None, "batch": None, "where": "driver"}
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


def test_a_failed_run_is_errored_whatever_its_metrics_say(store):
    """The one rule (trainers.outcome.outcome_of): a run that raised (status FAILED) is ``errored`` — not
    finished, not failed — even with a final accuracy or a divergence flag; the fields say the same."""
    uri, client = store
    st = study({"wn": [
        trial("wn", 0.1, 0, train=0.8, test=0.7),
        trial("wn", 0.3, 0, train=0.8, test=0.7, trial_id="raised_after_eval"),
        trial("wn", 1.0, 0, diverged=True, step=7, trial_id="raised_after_diverging"),
    ]})
    write_mlflow(client, "normstudy", st)
    exp_id = client.get_experiment_by_name("normstudy").experiment_id
    notes = {"raised_after_eval": {"mlflow.note.content": "errored: RuntimeError: CUDA out of memory"},
             "raised_after_diverging": {"normstudy.failure_reason": "Traceback (most recent call last):\n  ...\n"
                                                                   "OSError: disk full\n"}}
    for tid, tags in notes.items():
        (run,) = client.search_runs([exp_id], f"tags.`normstudy.trial_id` = '{tid}'")
        for k, v in tags.items():
            client.set_tag(run.info.run_id, k, v)
        client.set_terminated(run.info.run_id, status="FAILED")
    (wn,) = read_study(uri, client=client).schemes
    by_id = {t.trial_id: t for t in wn.trials}
    for tid in ("raised_after_eval", "raised_after_diverging"):
        t = by_id[tid]
        assert (t.status, t.outcome, t.finished, t.failed) == ("FAILED", "errored", False, False)
        assert not t.diverged and not t.collapsed and t.divergence_step is None
    assert by_id["raised_after_eval"].error == "RuntimeError: CUDA out of memory"
    assert by_id["raised_after_diverging"].error == "OSError: disk full"  # the reason's last line
    s = summarize_scheme(wn)
    assert (s.n_trials, s.n_finished, s.n_failed, s.n_errored) == (3, 1, 0, 2)
    assert {r["error"] for r in s.errored_trials} == {"RuntimeError: CUDA out of memory", "OSError: disk full"}


def test_the_outcome_is_read_from_tags_and_metrics_merged(store):
    uri, client = store
    write_mlflow(client, "normstudy", _study(), collapse_tags=False)
    exp_id = client.get_experiment_by_name("normstudy").experiment_id
    runs = client.search_runs([exp_id], "tags.`normstudy.role` = 'trial'")
    stable = next(r for r in runs if r.data.tags["diverged"] == "0"
                  and not {"collapsed", "stalled"} & set(r.data.metrics))
    client.set_tag(stable.info.run_id, "collapsed", "1")  # the end tag of study/trial.py, as a string
    (wn,) = read_study(uri, client=client).schemes
    assert sorted(t.outcome for t in wn.trials) == ["collapsed", "collapsed", "diverged", "stalled"]
    assert sum(t.collapsed for t in wn.trials) == 2
