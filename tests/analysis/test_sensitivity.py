"""Learning-rate sensitivity (analysis/sensitivity.py, Wortsman et al. 2023 §2) on synthetic sweeps with known
answers: diverged runs at their initial loss, runs above it clipped to it, seeds left out when a rate is
missing, the t interval over seeds, init scales averaged per seed, and the older-store fallbacks."""

from __future__ import annotations

import dataclasses
import math
import statistics

import pytest
from scipy import stats

from analysis.sensitivity import describe_sources, loss_points, sensitivity
from tests.analysis.synth import trial


def sweep(finals: dict[float, list[float | None]], *, initial: float | None = 2.3, init_scale=None,
          key: str = "final_train_loss"):
    """One trial per (lr, seed): ``finals[lr][seed]`` its final train loss, None = diverged."""
    out = []
    for lr, fs in finals.items():
        for seed, f in enumerate(fs):
            m = {} if initial is None else {"initial_train_loss": initial}
            if f is None:
                out.append(trial("wn", lr, seed, init_scale=init_scale, diverged=True, step=3, metrics=m))
            else:
                out.append(trial("wn", lr, seed, init_scale=init_scale, train=0.9, test=0.8, metrics=m | {key: f}))
    return out


def test_known_answer_with_a_diverged_run_at_its_initial_loss():
    s = sensitivity(loss_points(sweep({0.1: [0.1], 1.0: [0.2], 10.0: [None]}), 10))
    # mean(0.1, 0.2, 2.3) − 0.1
    assert s.per_seed == {0: pytest.approx((0.1 + 0.2 + 2.3) / 3 - 0.1)}
    assert s.mean == pytest.approx(0.7666667) and s.interval is None  # one seed: no interval
    (w,) = s.sweeps
    assert w.lrs == [0.1, 1.0, 10.0] and w.best_loss == {0: 0.1}
    assert [r["mean"] for r in w.loss_by_lr] == [0.1, 0.2, 2.3]


def test_a_finite_run_above_its_initial_loss_counts_at_the_initial_loss():
    s = sensitivity(loss_points(sweep({0.1: [0.5], 1.0: [3.7]}), 10))  # lr 1 ended worse than it started
    assert s.mean == pytest.approx((0.5 + 2.3) / 2 - 0.5)


def test_every_rate_reaching_the_best_loss_is_zero_and_one_rate_that_trains_is_near_the_initial_loss():
    flat = sensitivity(loss_points(sweep({lr: [0.05] for lr in (0.1, 0.3, 1.0)}), 10))
    assert flat.mean == pytest.approx(0.0)
    one = sensitivity(loss_points(sweep({0.1: [0.0], 1.0: [None], 3.0: [None], 10.0: [None]}), 10))
    assert one.mean == pytest.approx(0.75 * 2.3)


def test_the_mean_over_seeds_carries_a_95pct_t_interval():
    finals = {0.1: [0.1, 0.1, 0.1], 1.0: [0.5, 0.9, 1.6]}
    s = sensitivity(loss_points(sweep(finals), 10))
    per = [(0.1 + f) / 2 - 0.1 for f in finals[1.0]]
    assert list(s.per_seed.values()) == pytest.approx(per)
    half = stats.t.ppf(0.975, 2) * statistics.stdev(per) / math.sqrt(3)
    assert (s.interval.lo, s.interval.hi) == pytest.approx((statistics.fmean(per) - half, statistics.fmean(per) + half))
    assert s.interval.method == "t" and s.n_seeds == 3


def test_a_seed_missing_a_rate_is_left_out_and_a_seed_that_never_fitted_is_counted_apart():
    ts = sweep({0.1: [0.1, 0.1, 2.4], 1.0: [0.3, 0.5, None]})
    ts[1] = dataclasses.replace(ts[1], status="FAILED")  # seed 1 at lr 0.1 errored: seed 1 lacks a rate
    s = sensitivity(loss_points(ts, 10))
    (w,) = s.sweeps
    assert w.incomplete_seeds == [1] and w.unfit_seeds == [2]  # seed 2: 2.4 > L0 and a divergence
    assert s.per_seed == {0: pytest.approx(0.1)}


def test_a_scheme_averages_its_init_scales_seed_by_seed_and_a_range_restricts_the_rates():
    ts = sweep({0.1: [0.1, 0.2], 1.0: [None, None]}, init_scale=1.0)
    ts += sweep({0.1: [0.1, 0.1], 1.0: [0.1, 0.1]}, init_scale=2.0)
    s = sensitivity(loss_points(ts, 10))
    by_scale = {w.init_scale: w for w in s.sweeps}
    assert by_scale[1.0].per_seed == {0: pytest.approx(1.1), 1: pytest.approx(1.05)}
    assert by_scale[2.0].per_seed == {0: pytest.approx(0.0), 1: pytest.approx(0.0)}
    assert s.per_seed == {0: pytest.approx(0.55), 1: pytest.approx(0.525)}
    low = sensitivity(loss_points(ts, 10), lr_range=(0.05, 0.5))
    assert low.mean == pytest.approx(0.0) and low.lr_range == (0.05, 0.5)


def test_an_older_store_falls_back_to_train_loss_eval_and_ln_c_and_says_so():
    old = sensitivity(loss_points(sweep({0.1: [0.1], 1.0: [None]}, initial=None, key="train_loss_eval"), 10))
    assert old.mean == pytest.approx((0.1 + math.log(10)) / 2 - 0.1)
    assert (old.final_loss, old.initial_loss) == ("train_loss_eval", "ln(num_classes)")
    words = describe_sources([old])
    assert "predates the metric initial_train_loss" in words["initial_loss"]
    assert "predates the metric final_train_loss" in words["final_loss"]
    new = sensitivity(loss_points(sweep({0.1: [0.1], 1.0: [None]}), 10))
    assert describe_sources([new]) == {"final_loss": "final_train_loss", "initial_loss": "initial_train_loss"}
    assert describe_sources([old, new])["initial_loss"].startswith("mixed: ")
    # without the metric and without a class count, a trial cannot be valued at all
    assert loss_points(sweep({0.1: [0.1]}, initial=None), None) == []
