"""The paper's claims judged on hand-made summaries: each verdict follows the data, in both directions;
claim 1 waits for convergence, claim 2 has two bases (failure rates of every kind, lr sensitivity), claim 3
says where it was measured."""

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
)
from analysis.paper import our_setup, paper_comparison
from analysis.summarize import summarize_scheme
from tests.analysis.synth import study, trial

LOSS = {"initial_train_loss": 2.3, "final_train_loss": 0.1}


def summaries(bn_test=0.76, wn_test=0.71, bn_lrs=(0.1, 1.0, 3.0), wn_div_lrs=(1.0,), metrics=None,
              seeds=(0, 1), spread=0.0, bn_train=0.96, wn_train=0.99, tags=None):
    """``spread``: seed s's accuracies are offset by ±spread (alternating), the means stay as given."""
    def off(s: int) -> float:
        return spread * (1 if s % 2 == 0 else -1) if len(seeds) % 2 == 0 else 0.0

    bn = [trial("bn", lr, s, train=bn_train + off(s) / 10, test=bn_test + off(s), metrics=LOSS)
          for lr in bn_lrs for s in seeds]
    wn = [
        trial("wn", lr, s, diverged=True, step=9, metrics=LOSS) if lr in wn_div_lrs
        else trial("wn", lr, s, train=wn_train - off(s) / 10, test=wn_test - off(s), metrics=LOSS)
        for lr in (0.1, 1.0)
        for s in seeds
    ]
    st = study({"bn": bn, "wn": wn}, scheme_metrics=metrics, scheme_tags=tags)
    return {s.name: summarize_scheme(s) for s in st.schemes}


def test_claim1_confirmed_when_wn_trains_higher_and_tests_lower():
    c = claim_generalization(summaries(bn_test=0.76, wn_test=0.71, seeds=(0, 1, 2, 3), spread=0.005))
    assert c.verdict == CONFIRMED
    assert c.evidence["wn"]["test_minus_bn"] == pytest.approx(-0.05)
    assert c.evidence["wn"]["train_minus_bn"] == pytest.approx(0.03)
    assert c.evidence["not_converged"] == [] and c.evidence["wn"]["converged"] is True
    assert "test -5.0 pts" in c.reason


@pytest.mark.parametrize(("bn_train", "wn_train", "unconverged"), [(0.96, 0.90, "wn"), (0.90, 0.99, "bn")])
def test_claim1_is_inconclusive_while_a_compared_scheme_has_not_converged(bn_train, wn_train, unconverged):
    """The same clear differences, but one side below 95% train top-1: the claim waits for convergence."""
    kw = {"bn_test": 0.76, "wn_test": 0.71, "seeds": (0, 1, 2, 3), "spread": 0.005}
    c = claim_generalization(summaries(bn_train=bn_train, wn_train=wn_train, **kw))
    assert c.verdict == INCONCLUSIVE
    assert c.reason.startswith(f"inconclusive: {unconverged} not converged at this budget (")
    assert c.evidence["not_converged"] == [unconverged] and c.evidence[unconverged]["converged"] is False
    assert "train top-1 90.0% < 95%" in c.reason


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
    assert not tight.evidence["not_converged"]
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
    assert few.verdict == INCONCLUSIVE and few.evidence["wn"]["rate_verdict"] == INCONCLUSIVE
    ci = few.evidence["wn"]["rate_minus_bn_ci"]
    assert ci["lo"] < 0 < ci["hi"]
    many = claim_stability(summaries(wn_div_lrs=(1.0,), seeds=tuple(range(8))))  # 8/16 vs 0/24
    assert many.verdict == CONFIRMED and many.evidence["wn"]["rate_minus_bn_ci"]["lo"] > 0


def test_claim2_compares_failures_over_the_common_lr_range():
    c = claim_stability(summaries(wn_div_lrs=(1.0,), seeds=tuple(range(8))))
    assert c.verdict == CONFIRMED
    assert c.evidence["wn"]["lr_range"] == [0.1, 1.0]
    assert c.evidence["wn"]["failure_rate"] == 0.5 and c.evidence["wn"]["bn_failure_rate"] == 0.0
    assert c.evidence["wn"]["largest_stable_lr"] == 0.1 and c.evidence["bn"]["largest_stable_lr"] == 3.0


def test_claim2_not_confirmed_when_nothing_diverges_and_not_measured_without_overlap():
    c = claim_stability(summaries(wn_div_lrs=()))
    assert c.verdict == INCONCLUSIVE and "widen the learning-rate grid" in c.reason
    assert c.evidence["wn"]["lr_sensitivity"] == 0.0  # every rate reaches the best loss: no effect either
    # BN failing where WN trains, with enough trials, contradicts the claim
    flipped = claim_stability(summaries(wn_div_lrs=(), bn_lrs=(0.1, 1.0), seeds=tuple(range(8))))
    assert flipped.verdict == INCONCLUSIVE  # 0 vs 0: no effect either way
    assert claim_stability(summaries(bn_lrs=(10.0,))).verdict == NOT_MEASURED


def test_claim3_says_where_it_was_measured_and_not_recorded_when_the_store_predates_it():
    rep = {"norm_share_std": 0.01, "profile_repeats": 5}
    shares = {"bn": {"norm_share": 0.3, **rep}, "wn": {"norm_share": 0.05, **rep}}
    where = {"normstudy.profile_device": "cuda:0 NVIDIA H100 80GB HBM3", "normstudy.profile_dtype": "bfloat16",
             "normstudy.profile_batch": "64", "normstudy.profile_where": "worker"}
    c = claim_cost(summaries(metrics=shares, tags={"bn": where, "wn": where}))
    assert "Measured on: cuda:0 NVIDIA H100 80GB HBM3, bfloat16, batch 64 per worker, in the worker." in c.reason
    assert c.evidence["measured_on"]["bn"] == {"device": "cuda:0 NVIDIA H100 80GB HBM3", "dtype": "bfloat16",
                                               "batch": "64", "where": "worker"}
    old = claim_cost(summaries(metrics=shares))
    assert old.reason.endswith("Measured on: not recorded.") and old.evidence["measured_on"]["wn"]["device"] is None
    mixed = claim_cost(summaries(metrics=shares, tags={"bn": where, "wn": {"normstudy.profile_where": "driver"}}))
    assert "wn: device not recorded, dtype not recorded, batch not recorded, in the driver" in mixed.reason
    failed = claim_cost(summaries(metrics={"bn": shares["bn"]},
                                  tags={"wn": {"normstudy.profile_error": "no worker free within 600 s"}}))
    assert failed.verdict == NOT_MEASURED and "The profile failed — wn: no worker free within 600 s." in failed.reason


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
    assert rows["Failure rate (all trials: diverged, collapsed, stalled)"]["ours"] == (
        "bn 0.0% (0 diverged, 0 collapsed, 0 stalled); wn 50.0% (8 diverged, 0 collapsed, 0 stalled)")
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


@pytest.mark.parametrize("kind", ["collapsed", "stalled"])
def test_claim2_counts_every_failure_kind_and_an_errored_trial_not_at_all(kind):
    seeds = tuple(range(8))
    bn = [trial("bn", lr, s, train=0.81, test=0.76) for lr in (0.1, 1.0) for s in seeds]
    wn = [trial("wn", 0.1, s, train=0.91, test=0.71) for s in seeds]
    wn += [trial("wn", 1.0, s, **{kind: True}) for s in seeds]  # finite, at chance or not fitting
    raised = dataclasses.replace(trial("wn", 1.0, 99, train=0.9, test=0.7), status="FAILED")  # errored
    st = study({"bn": bn, "wn": [*wn, raised]})
    c = claim_stability({s.name: summarize_scheme(s) for s in st.schemes})
    assert c.verdict == CONFIRMED  # 8/16 failed vs BN's 0/16 (no losses logged: the rate basis alone)
    assert c.evidence["wn"]["failure_rate"] == 0.5 and c.evidence["wn"]["largest_stable_lr"] == 0.1
    assert c.evidence["wn"]["sensitivity_verdict"] == NOT_MEASURED
    assert "8/16 trials failed" in c.reason and "lr sensitivity not measured" in c.reason


def _sweep(scheme: str, finals: dict[float, list[float | None]], initial: float = 2.3):
    """One trial per (lr, seed): ``finals[lr][seed]`` its final train loss, None = diverged."""
    return [trial(scheme, lr, s, diverged=True, step=5, metrics={"initial_train_loss": initial}) if f is None
            else trial(scheme, lr, s, train=0.99, test=0.8, metrics={"initial_train_loss": initial,
                                                                    "final_train_loss": f})
            for lr, fs in finals.items() for s, f in enumerate(fs)]


def test_claim2_sensitivity_basis_confirms_where_failure_rates_alone_cannot():
    """Three seeds and no failure on either side, so the rate basis (0 vs 0) is inconclusive, but WN ends
    far worse away from its best rate: the sensitivity basis confirms. The bases combine by
    intervals.combine: one inconclusive basis keeps the claim inconclusive, one contradicting it wins."""
    bn = _sweep("bn", {0.1: [0.05, 0.06, 0.05], 1.0: [0.04, 0.05, 0.05]})
    wn = _sweep("wn", {0.1: [0.05, 0.06, 0.05], 1.0: [1.9, 2.0, 2.1]})
    c = claim_stability({s.name: summarize_scheme(s) for s in study({"bn": bn, "wn": wn}).schemes})
    e = c.evidence["wn"]
    assert e["rate_verdict"] == INCONCLUSIVE and e["sensitivity_verdict"] == CONFIRMED
    assert e["lr_sensitivity"] == pytest.approx((0.05 + 2.0) / 2 - 0.0533, abs=0.01)
    assert e["sensitivity_minus_bn_ci"]["lo"] > 0 and e["sensitivity_seeds"] == [3, 3]
    assert c.verdict == INCONCLUSIVE and e["verdict"] == INCONCLUSIVE
    # with failures on top (diverged at lr 1: the sensitivity counts them at the initial loss), both confirm
    wn_div = _sweep("wn", {0.1: [0.05, 0.06, 0.05], 1.0: [None] * 3})
    bn8 = _sweep("bn", {0.1: [0.05] * 8, 1.0: [0.05] * 8})
    wn8 = _sweep("wn", {0.1: [0.05, 0.06] * 4, 1.0: [None] * 8})
    for w, b in ((wn_div, bn), (wn8, bn8)):
        c2 = claim_stability({s.name: summarize_scheme(s) for s in study({"bn": b, "wn": w}).schemes})
        assert c2.evidence["wn"]["sensitivity_verdict"] == CONFIRMED
    assert c2.verdict == CONFIRMED and c2.evidence["wn"]["rate_verdict"] == CONFIRMED
    # BN the more sensitive one contradicts the claim on that basis
    flipped = claim_stability({s.name: summarize_scheme(s) for s in study({"bn": wn, "wn": bn}).schemes})
    assert flipped.evidence["wn"]["sensitivity_verdict"] == NOT_CONFIRMED and flipped.verdict == NOT_CONFIRMED
