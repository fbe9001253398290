"""A scheme run's comparison metrics are the SchemeSummary's numbers — the ones the report and the CLI's
summary table print — rounded for the runs table, and only those the study measured."""

from __future__ import annotations

import math

import pytest

from analysis.scheme_metrics import KEYS, rounded, scheme_metrics
from analysis.summarize import summarize_scheme
from study.results import StudyResult, scheme_summaries, summary_table
from tests.analysis.synth import study, trial
from tests.study.test_results import _trial


def _summary(trials):
    return summarize_scheme(study({"wn": trials}).schemes[0], num_classes=10)


def test_metrics_are_the_summarys_best_rates_and_stable_lr():
    trials = [trial("wn", 0.1, s, init_scale=1.0, train=0.9 + s / 100, test=0.8 + s / 100,
                    metrics={"initial_train_loss": 2.3, "final_train_loss": 0.3}) for s in (0, 1)]
    trials += [trial("wn", 1.0, 0, init_scale=1.0, diverged=True, step=3, metrics={"initial_train_loss": 2.3}),
               trial("wn", 1.0, 1, init_scale=1.0, collapsed=True, metrics={"initial_train_loss": 2.3,
                                                                             "final_train_loss": 2.3}),
               trial("wn", 0.01, 0, init_scale=1.0, stalled=True, metrics={"initial_train_loss": 2.3,
                                                                            "final_train_loss": 2.2}),
               trial("wn", 0.01, 1, init_scale=1.0, train=0.5, test=0.45,
                     metrics={"initial_train_loss": 2.3, "final_train_loss": 1.0})]
    s = _summary(trials)
    m = scheme_metrics(s)
    assert m["best_test_top1"] == pytest.approx(0.805) == s.best.test_top1.mean
    assert m["best_train_top1"] == pytest.approx(0.905) and m["best_gap"] == pytest.approx(0.1)
    assert m["failure_rate"] == pytest.approx(rounded(3 / 6))
    assert (m["diverged_rate"], m["collapsed_rate"], m["stalled_rate"]) == (rounded(1 / 6),) * 3
    assert m["largest_stable_lr"] == 0.1  # 0.01 lost a seed to a stall, 1.0 both: 0.1 is the largest stable
    assert m["lr_sensitivity"] == rounded(s.sensitivity.mean)
    assert m["step_time_s"] == 0.03
    assert list(m) == [k for k in KEYS if k in m]  # the runs view's order


def test_nothing_measured_is_left_out_not_nan():
    s = _summary([trial("wn", 1.0, 0, diverged=True, step=2)])
    m = scheme_metrics(s)
    assert "best_test_top1" not in m and "largest_stable_lr" not in m and "lr_sensitivity" not in m
    assert m["failure_rate"] == m["diverged_rate"] == 1.0
    assert all(math.isfinite(v) for v in m.values())


def test_rounded_keeps_four_significant_digits():
    assert rounded(0.8115234375) == 0.8115 and rounded(12345.6) == 12350.0 and rounded(0.0) == 0.0


def test_the_cli_summary_and_the_metrics_say_the_same_numbers():
    trials = [_trial(1.0, 0, "stable", 0.90, 0.95), _trial(1.0, 1, "stable", 0.80, 0.93),
              _trial(3.0, 0, "diverged"), _trial(3.0, 1, "stalled", 0.2, 0.22)]
    result = StudyResult("run", "sqlite:///x.db", "normstudy", "/tmp", trials)
    m = scheme_metrics(scheme_summaries(result)["bn"])
    line = next(ln for ln in summary_table(result).splitlines() if ln.startswith("bn"))
    assert f"{m['best_test_top1']:.3f} (1, -, 2 of 2 seeds)" in line
    assert m["diverged_rate"] == m["stalled_rate"] == 0.25 and m["largest_stable_lr"] == 1.0
