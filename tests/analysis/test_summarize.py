"""Per-scheme statistics, stability map and representative trials on hand-made trials (no MLflow): every
failure kind counted apart and together, errored trials listed and in no rate."""

from __future__ import annotations

import dataclasses
import math

import pytest

from analysis.stability_map import levels, stability_map
from analysis.summarize import best_config, group_configs, stat, summarize_scheme
from tests.analysis.synth import study, trial


def _wn_trials():
    return [
        trial("wn", 0.1, 0, init_scale=1.0, train=0.90, test=0.70),
        trial("wn", 0.1, 1, init_scale=1.0, train=0.92, test=0.72),
        trial("wn", 1.0, 0, init_scale=1.0, diverged=True, step=20, cause="loss_spike"),
        trial("wn", 1.0, 1, init_scale=1.0, diverged=True, step=30, cause="loss_spike"),
        trial("wn", 0.1, 0, init_scale=2.0, train=0.88, test=0.69),
        trial("wn", 0.1, 1, init_scale=2.0, train=0.88, test=0.69),
        trial("wn", 1.0, 0, init_scale=2.0, diverged=True, step=25, cause="nonfinite_loss"),
        trial("wn", 1.0, 1, init_scale=2.0, train=0.99, test=0.80),
    ]


def test_stat_mean_and_sample_std():
    s = stat([0.70, 0.72, None, math.nan])
    assert s.n == 2 and s.mean == pytest.approx(0.71) and s.std == pytest.approx(math.sqrt(2) * 0.01)
    assert stat([0.5]).std is None and stat([]).mean is None


def test_best_config_skips_groups_where_a_seed_diverged():
    groups = group_configs(_wn_trials())
    assert len(groups) == 4
    best = best_config(groups)
    # (lr 1, init 2) has the highest stable-seed accuracy (0.80) but lost a seed; (0.1, 1) wins.
    assert best.config == {"lr": 0.1, "weight_decay": 1e-4, "init_scale": 1.0}
    assert best.train_top1.mean == pytest.approx(0.91)
    assert best.test_top1.mean == pytest.approx(0.71)
    assert best.gap.mean == pytest.approx(0.20)
    assert best.all_seeds_stable


def test_best_config_falls_back_to_partly_stable_groups():
    ts = [trial("wn", 1.0, 0, diverged=True, step=3), trial("wn", 1.0, 1, train=0.5, test=0.4)]
    best = best_config(group_configs(ts))
    assert best is not None and not best.all_seeds_stable and best.test_top1.mean == pytest.approx(0.4)
    assert best_config(group_configs([trial("wn", 1.0, 0, diverged=True, step=3)])) is None


def test_stability_map_cells_and_largest_stable_lr():
    m = stability_map(_wn_trials())
    assert m.lrs == [0.1, 1.0] and m.init_scales == [1.0, 2.0] and not m.binned
    assert m.cell(1.0, 1.0).status == "diverged" and m.cell(1.0, 2.0).status == "mixed"
    assert m.cell(1.0, 2.0).test_top1 == pytest.approx(0.80)
    assert m.largest_stable_lr == [{"init_scale": 1.0, "lr": 0.1}, {"init_scale": 2.0, "lr": 0.1}]


def test_largest_stable_lr_is_the_largest_tried_lr_without_any_divergence():
    ts = [
        trial("bn", 0.1, 0, train=0.8, test=0.7),
        trial("bn", 1.0, 0, diverged=True, step=5),
        trial("bn", 3.0, 0, train=0.6, test=0.5),  # stable again above a diverged lr: still counts
        trial("bn", 3.0, 1, train=0.6, test=0.5),
    ]
    m = stability_map(ts)
    assert m.init_scales == [None]
    assert m.largest_stable_lr == [{"init_scale": None, "lr": 3.0}]
    assert stability_map([trial("bn", 1.0, 0, diverged=True, step=5)]).largest_stable_lr[0]["lr"] is None


def test_many_distinct_lrs_are_binned_on_a_log_axis():
    lrs = [10 ** (-3 + 3 * i / 39) for i in range(40)]
    mapping = levels(lrs)
    assert len(set(mapping.values()) - {None}) <= 10
    assert all(0.5 < mapping[v] / v < 2.0 for v in lrs)  # a bin's centre is near its members
    m = stability_map([trial("bn", lr, 0, train=0.5, test=0.4) for lr in lrs])
    assert m.binned and len(m.lrs) <= 10 and sum(c.n for c in m.cells) == 40


def test_summarize_scheme_rates_causes_and_representatives():
    st = study({"wn": _wn_trials()}, scheme_metrics={"wn": {"norm_share": 0.05}})
    s = summarize_scheme(st.schemes[0])
    div = s.failures["diverged"]
    assert (s.n_trials, s.n_finished, div.n, s.outcomes["diverged"]) == (8, 8, 3, 3)
    assert div.rate == pytest.approx(3 / 8) and div.rate_ci[0] < 3 / 8 < div.rate_ci[1]
    assert div.causes == {"loss_spike": 2, "nonfinite_loss": 1}
    assert s.norm_share == 0.05 and s.conv_share is None
    assert s.representative_stable == "wn_lr0.1_is1.0_s0"
    assert s.representative_diverged == "wn_lr1_is1.0_s0"  # smallest lr, then earliest divergence
    assert [r["rates"]["diverged"] for r in s.failures_by_lr] == [0.0, 0.75]
    assert {d["step"] for d in s.failed_trials} == {20, 25, 30}


def test_unfinished_trials_are_left_out_of_rates():
    running = trial("bn", 0.1, 2, train=0.1, test=0.1)
    running.metrics.pop("final_test_top1")
    st = study({"bn": [trial("bn", 0.1, 0, train=0.8, test=0.7), running]})
    s = summarize_scheme(st.schemes[0])
    assert (s.n_trials, s.n_finished, s.failure_rate, s.outcomes["unfinished"]) == (2, 1, 0.0, 1)


# --------------------------------------------------------------------------------------------------
# Collapse: finite to the end, at chance — a failure, never stable, never the best


def test_a_collapsed_seed_is_a_failure_in_its_configuration():
    # the collapsed seed is given a high test accuracy on purpose: it is excluded by outcome, not by value
    ts = [
        trial("wn", 0.3, 0, train=0.5, test=0.45),
        trial("wn", 0.3, 1, collapsed=True, train=0.95, test=0.95),
        trial("wn", 0.1, 0, train=0.6, test=0.40),
        trial("wn", 0.1, 1, train=0.6, test=0.40),
    ]
    groups = {g.config["lr"]: g for g in group_configs(ts)}
    g = groups[0.3]
    assert (g.n, g.failures, g.n_failed) == (2, {"diverged": 0, "collapsed": 1, "stalled": 0}, 1)
    assert not g.all_seeds_stable
    assert g.test_top1.mean == pytest.approx(0.45) and g.test_top1.n == 1  # the stable seed only
    best = best_config(list(groups.values()))
    assert best.config["lr"] == 0.1 and best.all_seeds_stable  # lower accuracy, but no seed failed


def test_a_configuration_whose_seeds_all_collapsed_is_never_the_best():
    ts = [trial("wn", 1.0, s, collapsed=True, train=0.99, test=0.99) for s in (0, 1)]
    assert best_config(group_configs(ts)) is None
    ts.append(trial("wn", 0.01, 0, train=0.3, test=0.2))
    assert best_config(group_configs(ts)).config["lr"] == 0.01


def test_stability_map_cells_count_each_failure_kind_and_name_the_status():
    ts = [
        trial("wn", 0.1, 0, train=0.8, test=0.7),
        trial("wn", 0.3, 0, train=0.8, test=0.6),
        trial("wn", 0.3, 1, collapsed=True),  # mixed
        trial("wn", 1.0, 0, collapsed=True),
        trial("wn", 1.0, 1, collapsed=True),  # collapsed
        trial("wn", 3.0, 0, collapsed=True),
        trial("wn", 3.0, 1, diverged=True, step=4),  # failed: every trial, two ways
        trial("wn", 10.0, 0, diverged=True, step=2),  # diverged
        trial("wn", 0.03, 0, stalled=True),
        trial("wn", 0.03, 1, stalled=True),  # stalled: finite, did not fit — its accuracy is no stable cell's
    ]
    m = stability_map(ts)
    status = {c.lr: c.status for c in m.cells}
    assert status == {0.03: "stalled", 0.1: "stable", 0.3: "mixed", 1.0: "collapsed", 3.0: "failed",
                      10.0: "diverged"}
    c = m.cell(0.3, None)
    assert (c.n, c.failures, c.n_failed) == (2, {"diverged": 0, "collapsed": 1, "stalled": 0}, 1)
    assert c.test_top1 == pytest.approx(0.6)  # the collapsed trial's accuracy is not in the cell's mean
    assert m.cell(1.0, None).test_top1 is None and m.cell(0.03, None).test_top1 is None
    # no seed failed: only lr 0.1 (the collapse at 0.3 counts like a divergence, the stall at 0.03 too)
    assert m.largest_stable_lr == [{"init_scale": None, "lr": 0.1}]


def test_summarize_scheme_counts_collapses_apart_from_divergences():
    ts = [
        *_wn_trials(),
        trial("wn", 0.3, 0, init_scale=1.0, collapsed=True, collapse_step=10, collapse_layer="layer2"),
        trial("wn", 0.3, 1, init_scale=1.0, collapsed=True, collapse_cause="chance_accuracy", collapse_step=150,
              collapse_layer="", metrics={"collapse_dead_frac": 0.2}),
    ]
    ts[-2].collapse_cause = None  # untagged: counted as "unknown"
    ts.append(trial("wn", 0.03, 0, init_scale=1.0, stalled=True, metrics={"stall_loss_ratio": 0.93,
                                                                           "steps_done": 300.0}))
    s = summarize_scheme(study({"wn": ts}).schemes[0])
    n = {k: v.n for k, v in s.failures.items()}
    assert (s.n_finished, n, s.n_failed) == (11, {"diverged": 3, "collapsed": 2, "stalled": 1}, 6)
    assert s.failures["diverged"].rate == pytest.approx(3 / 11)
    assert (s.failures["collapsed"].rate, s.failure_rate) == (pytest.approx(2 / 11), pytest.approx(6 / 11))
    assert s.failures["diverged"].causes == {"loss_spike": 2, "nonfinite_loss": 1}
    assert s.failures["collapsed"].causes == {"unknown": 1, "chance_accuracy": 1}
    assert s.failures["stalled"].causes == {}  # a stall has no cause tag: its detail is the loss ratio
    rows = {(r["outcome"], r["seed"]): r for r in s.failed_trials}
    assert [r["outcome"] for r in s.failed_trials].count("diverged") == 3
    c0, c1, st = rows[("collapsed", 0)], rows[("collapsed", 1)], rows[("stalled", 0)]
    assert (c0["cause"], c0["step"], c0["layer"]) == (None, 10, "layer2")
    assert (c1["cause"], c1["step"], c1["dead_frac"]) == ("chance_accuracy", 150, 0.2)
    assert c1["train_top1"] == pytest.approx(0.09) and c0["dead_frac"] is None
    assert (st["cause"], st["step"], st["loss_ratio"], st["train_top1"]) == (None, 300, 0.93, 0.2)
    by_lr = {r["lr"]: r for r in s.failures_by_lr}
    assert by_lr[0.3] == {"lr": 0.3, "n": 2, "failures": {"diverged": 0, "collapsed": 2, "stalled": 0},
                          "rates": {"diverged": 0.0, "collapsed": 1.0, "stalled": 0.0}, "n_failed": 2,
                          "failure_rate": 1.0}
    assert by_lr[1.0]["failure_rate"] == pytest.approx(0.75) and by_lr[0.03]["failures"]["stalled"] == 1
    assert s.representative_stable == "wn_lr0.1_is1.0_s0"


def test_the_representative_stable_trial_is_never_a_collapsed_one():
    ts = [trial("wn", 0.1, 0, collapsed=True, train=0.99, test=0.99), trial("wn", 0.3, 0, train=0.5, test=0.3)]
    s = summarize_scheme(study({"wn": ts}).schemes[0])
    assert s.best.config["lr"] == 0.3 and s.representative_stable == "wn_lr0.3_is-_s0"
    only = summarize_scheme(study({"wn": ts[:1]}).schemes[0])
    assert only.best is None and only.representative_stable is None


def test_an_errored_trial_enters_no_rate_no_mean_and_no_best_configuration():
    # it raised (run FAILED) after a final evaluation: its accuracy says nothing, by the one outcome rule
    errored = dataclasses.replace(trial("wn", 0.3, 0, train=0.99, test=0.99), status="FAILED", error="OSError: x")
    ts = [trial("wn", 0.1, 0, train=0.6, test=0.5), errored, trial("wn", 0.3, 1, train=0.6, test=0.4)]
    s = summarize_scheme(study({"wn": ts}).schemes[0])
    assert (s.n_trials, s.n_finished, s.n_failed, s.failure_rate) == (3, 2, 0, 0.0)
    assert s.n_errored == 1 and s.outcomes["errored"] == 1
    assert s.errored_trials == [{"trial_id": errored.trial_id, "run_id": "", "lr": 0.3, "init_scale": None,
                                 "seed": 0, "error": "OSError: x"}]
    assert s.stability.cell(0.3, None).n == 1 and s.stability.cell(0.3, None).test_top1 == pytest.approx(0.4)
    assert s.best.config["lr"] == 0.1 and s.best.test_top1.mean == pytest.approx(0.5)
    assert errored.trial_id not in {*s.best.trial_ids, s.representative_stable}
