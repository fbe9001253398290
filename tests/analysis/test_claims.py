"""The paper's claims judged on hand-made summaries: each verdict follows the data, in both directions."""

from __future__ import annotations

import dataclasses

import pytest

from analysis.claims import (
    CONFIRMED,
    INCONCLUSIVE,
    NOT_CONFIRMED,
    NOT_MEASURED,
    claim_cost,
    claim_generalization,
    claim_stability,
    evaluate_claims,
    our_setup,
    paper_comparison,
)
from analysis.summarize import summarize_scheme
from tests.analysis.synth import study, trial


def summaries(bn_test=0.76, wn_test=0.71, bn_lrs=(0.1, 1.0, 3.0), wn_div_lrs=(1.0,), metrics=None,
              seeds=(0, 1), spread=0.0):
    """``spread``: seed s's accuracies are offset by ±spread (alternating), the means stay as given."""
    def off(s: int) -> float:
        return spread * (1 if s % 2 == 0 else -1) if len(seeds) % 2 == 0 else 0.0

    bn = [trial("bn", lr, s, train=0.81 + off(s), test=bn_test + off(s)) for lr in bn_lrs for s in seeds]
    wn = [
        trial("wn", lr, s, diverged=True, step=9) if lr in wn_div_lrs
        else trial("wn", lr, s, train=0.91 + off(s), test=wn_test - off(s))
        for lr in (0.1, 1.0)
        for s in seeds
    ]
    st = study({"bn": bn, "wn": wn}, scheme_metrics=metrics)
    return {s.name: summarize_scheme(s) for s in st.schemes}


def test_claim1_confirmed_when_wn_trains_higher_and_tests_lower():
    c = claim_generalization(summaries(bn_test=0.76, wn_test=0.71))
    assert c.verdict == CONFIRMED
    assert c.evidence["wn"]["test_minus_bn"] == pytest.approx(-0.05)
    assert c.evidence["wn"]["train_minus_bn"] == pytest.approx(0.10)
    assert "test -5.0 pts" in c.reason


def test_claim1_not_confirmed_when_bn_is_worse_and_says_so():
    c = claim_generalization(summaries(bn_test=0.66, wn_test=0.71))
    assert c.verdict == NOT_CONFIRMED
    assert c.evidence["wn"]["holds"] is False
    assert "BN has the lower test top-1 here" in c.reason


def test_claim1_not_measured_without_bn_or_wn_family():
    s = summaries()
    assert claim_generalization({"wn": s["wn"]}).verdict == NOT_MEASURED
    assert claim_generalization({"bn": s["bn"]}).verdict == NOT_MEASURED


def test_claim1_same_means_with_a_wider_seed_spread_is_inconclusive():
    tight = claim_generalization(summaries(bn_test=0.76, wn_test=0.71, seeds=(0, 1, 2, 3), spread=0.005))
    wide = claim_generalization(summaries(bn_test=0.76, wn_test=0.71, seeds=(0, 1, 2, 3), spread=0.08))
    assert tight.evidence["wn"]["test_minus_bn"] == pytest.approx(wide.evidence["wn"]["test_minus_bn"])
    assert tight.verdict == CONFIRMED
    assert wide.verdict == INCONCLUSIVE
    ci = wide.evidence["wn"]["test_minus_bn_ci"]
    assert ci["lo"] < 0 < ci["hi"] and ci["level"] == 0.95
    assert "95% CI" in wide.reason


def test_claim1_with_one_seed_has_no_interval_and_is_inconclusive():
    c = claim_generalization(summaries(seeds=(0,)))
    assert c.verdict == INCONCLUSIVE and c.evidence["wn"]["test_minus_bn_ci"] is None


def test_claim2_few_trials_are_inconclusive_many_are_confirmed():
    few = claim_stability(summaries(wn_div_lrs=(1.0,)))  # 2/4 vs 0/6: the interval still holds 0
    assert few.verdict == INCONCLUSIVE
    ci = few.evidence["wn"]["rate_minus_bn_ci"]
    assert ci["lo"] < 0 < ci["hi"]
    many = claim_stability(summaries(wn_div_lrs=(1.0,), seeds=tuple(range(8))))  # 8/16 vs 0/24
    assert many.verdict == CONFIRMED and many.evidence["wn"]["rate_minus_bn_ci"]["lo"] > 0


def test_claim2_compares_divergence_over_the_common_lr_range():
    c = claim_stability(summaries(wn_div_lrs=(1.0,), seeds=tuple(range(8))))
    assert c.verdict == CONFIRMED
    assert c.evidence["wn"]["lr_range"] == [0.1, 1.0]
    assert c.evidence["wn"]["divergence_rate"] == 0.5 and c.evidence["wn"]["bn_divergence_rate"] == 0.0
    assert c.evidence["wn"]["largest_stable_lr"] == 0.1 and c.evidence["bn"]["largest_stable_lr"] == 3.0


def test_claim2_not_confirmed_when_nothing_diverges_and_not_measured_without_overlap():
    c = claim_stability(summaries(wn_div_lrs=()))
    assert c.verdict == INCONCLUSIVE and "widen the learning-rate grid" in c.reason
    # BN failing where WN trains, with enough trials, contradicts the claim
    flipped = claim_stability(summaries(wn_div_lrs=(), bn_lrs=(0.1, 1.0), seeds=tuple(range(8))))
    assert flipped.verdict == INCONCLUSIVE  # 0 vs 0: no effect either way
    assert claim_stability(summaries(bn_lrs=(10.0,))).verdict == NOT_MEASURED


def test_claim3_needs_norm_share_for_bn_and_a_wn_family_scheme():
    assert claim_cost(summaries()).verdict == NOT_MEASURED
    assert claim_cost(summaries(metrics={"bn": {"norm_share": 0.3}})).verdict == NOT_MEASURED
    rep = {"norm_share_std": 0.01, "profile_repeats": 5}
    both = {"bn": {"norm_share": 0.3, "conv_share": 0.5, **rep}, "wn": {"norm_share": 0.05, **rep}}
    c = claim_cost(summaries(metrics=both))
    assert c.verdict == CONFIRMED and "BN 30.0%" in c.reason
    assert c.evidence["wn"]["bn_minus_share_ci"]["lo"] > 0
    flipped = {"bn": {"norm_share": 0.05, **rep}, "wn": {"norm_share": 0.3, **rep}}
    assert claim_cost(summaries(metrics=flipped)).verdict == NOT_CONFIRMED
    noisy = {"bn": {"norm_share": 0.3, "norm_share_std": 0.3, "profile_repeats": 3},
             "wn": {"norm_share": 0.25, "norm_share_std": 0.3, "profile_repeats": 3}}
    assert claim_cost(summaries(metrics=noisy)).verdict == INCONCLUSIVE
    one_profile = {"bn": {"norm_share": 0.3}, "wn": {"norm_share": 0.05}}
    assert claim_cost(summaries(metrics=one_profile)).verdict == INCONCLUSIVE


def test_paper_comparison_rows_use_the_studys_numbers():
    s = summaries(metrics={"bn": {"norm_share": 0.3, "conv_share": 0.5}}, seeds=tuple(range(8)))
    claims = evaluate_claims(s)
    rows = {r["quantity"]: r for r in paper_comparison(claims, s, {"model.arch": "resnet_cifar"})}
    assert rows["Test top-1, WN-family − BN"]["paper"] == "≈ −6 pts"
    assert rows["Test top-1, WN-family − BN"]["ours"] == "wn -5.0 pts"
    assert rows["BN's share of step time"]["ours"] == "30.0%"
    assert rows["Setup"]["ours"].startswith("resnet_cifar on unknown data")
    assert rows["Verdicts"]["ours"] == "1: confirmed; 2: confirmed; 3: not measured"


def test_our_setup_describes_the_scale():
    params = {
        "model.arch": "resnet50",
        "data.kind": "folder",
        "data.path": "/data/imagenet",
        "data.image_size": "224",
        "training.batch_size": "256",
        "training.max_steps": "None",
        "training.epochs": "90",
    }
    assert our_setup(params) == "resnet50 on folder /data/imagenet, 224 px, batch 256, 90 epochs"


def test_claim2_counts_a_collapse_as_a_failure_and_an_errored_trial_not_at_all():
    seeds = tuple(range(8))
    bn = [trial("bn", lr, s, train=0.81, test=0.76) for lr in (0.1, 1.0) for s in seeds]
    wn = [trial("wn", 0.1, s, train=0.91, test=0.71) for s in seeds]
    wn += [trial("wn", 1.0, s, train=0.09, test=0.10, collapsed=True) for s in seeds]  # finite, at chance
    raised = dataclasses.replace(trial("wn", 1.0, 99, train=0.9, test=0.7), status="FAILED")  # errored
    st = study({"bn": bn, "wn": [*wn, raised]})
    c = claim_stability({s.name: summarize_scheme(s) for s in st.schemes})
    assert c.verdict == CONFIRMED  # 8/16 failed vs BN's 0/16
    assert c.evidence["wn"]["divergence_rate"] == 0.5 and c.evidence["wn"]["largest_stable_lr"] == 0.1
    assert "8/16 trials failed" in c.reason
