"""The CLI's summary of a study follows the report's rules (trainers.outcome, analysis.summarize): the former
disagreements — a collapsed trial counted as stable, an errored one as diverged, the best single seed
instead of the best mean over seeds — are gone."""

from __future__ import annotations

import pytest

from analysis.summarize import best_config, group_configs
from study import spec as spec_mod
from study.results import StudyResult, TrialResult, boundary_rows, scheme_summaries, summary_table, trial_data
from study.trial_configs import TrialConfigs

CONFIGS = TrialConfigs(spec_mod.load(None, ["schemes=[bn]", "search.mode=boundary", "search.boundary_tolerance=4"]))


def _trial(lr: float, seed: int, outcome: str, test: float = 0.5, train: float = 0.6) -> TrialResult:
    metrics = {"diverged": float(outcome == "diverged"), "collapsed": float(outcome == "collapsed"),
               "stalled": float(outcome == "stalled")}
    if outcome in ("stable", "collapsed", "stalled"):
        metrics.update(final_test_top1=test, final_train_top1=train, final_gap=train - test)
    return TrialResult(CONFIGS.point("bn", lr, seed, None), f"t{lr}-{seed}", metrics,
                       "RuntimeError('out of memory')" if outcome == "errored" else None)


@pytest.fixture
def result() -> StudyResult:
    trials = [
        _trial(1.0, 0, "stable", 0.90, 0.95), _trial(1.0, 1, "stable", 0.80, 0.93), _trial(1.0, 2, "stable", 0.85, 0.9),
        # the best single seed (0.97) sits in a configuration where another seed collapsed: never the best
        _trial(3.0, 0, "stable", 0.97, 0.99), _trial(3.0, 1, "collapsed", 0.10, 0.11), _trial(3.0, 2, "stable", 0.96),
        _trial(10.0, 0, "diverged"), _trial(10.0, 1, "errored"), _trial(10.0, 2, "diverged"),
        _trial(0.3, 0, "stalled", 0.2, 0.22),  # finite, did not fit: a failure of its own kind
    ]
    return StudyResult("run", "sqlite:///x.db", "normstudy", "/tmp", trials)


def test_outcomes_count_by_the_one_rule(result):
    assert [r.outcome for r in result.trials].count("errored") == 1
    line = next(ln for ln in summary_table(result).splitlines() if ln.startswith("bn"))
    assert summary_table(result).splitlines()[0].split()[:7] == ["scheme", "trials", "stable", "diverged",
                                                                  "collapsed", "stalled", "errored"]
    trials, stable, diverged, collapsed, stalled, errored = (int(x) for x in line.split()[1:7])
    assert (trials, stable, diverged, collapsed, stalled, errored) == (10, 5, 2, 1, 1, 1)  # errored: not diverged


def test_best_configuration_is_the_reports_highest_mean_over_all_stable_seeds(result):
    summary = scheme_summaries(result)["bn"]
    assert summary.best.config == {"lr": 1.0} and summary.best.test_top1.mean == pytest.approx(0.85)
    same = best_config(group_configs([trial_data(r) for r in result.trials]))  # the report's function
    assert same.config == summary.best.config
    line = next(ln for ln in summary_table(result).splitlines() if ln.startswith("bn"))
    assert "0.850 (1, -, 3 of 3 seeds)" in line


def test_mean_of_stable_trials_leaves_collapsed_ones_out(result):
    line = next(ln for ln in summary_table(result).splitlines() if ln.startswith("bn"))
    stable_test = [0.90, 0.80, 0.85, 0.97, 0.96]
    assert line.rstrip().endswith(f"/ {sum(stable_test) / len(stable_test):.3f}")


def test_a_collapse_bounds_the_boundary_like_a_divergence():
    trials = [_trial(0.1, 0, "stable"), _trial(1.0, 0, "collapsed"), _trial(10.0, 0, "diverged")]
    row = boundary_rows(CONFIGS, trials)[0]
    assert (row["stable_lr"], row["diverged_lr"]) == (0.1, 1.0)  # the collapse at 1.0 is the first failure


def test_boundary_table_columns_line_up_for_long_scheme_at_variant_names():
    from study.results import _boundary_table

    row = {"init_scale": None, "stable_lr": 0.1, "diverged_lr": 0.178, "ratio": 1.78, "converged": True,
           "points": 4, "trials": 8}
    text = _boundary_table([{**row, "scheme": "bn", "variant": None},
                            {**row, "scheme": "wn_trelu", "variant": "d32"}])
    lines = text.splitlines()
    assert lines[2].startswith("wn_trelu@d32  ")
    # every column starts where the header's does
    assert len({ln.index("0.1") for ln in lines[1:]}) == 1 and lines[0].index("largest") == lines[1].index("0.1")
