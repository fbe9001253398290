"""The scale section's numbers (analysis/scale.py) on an in-memory scale study: per scheme × variant the
bracket, sensitivity and best test top-1 with its gap to BN, the power law per scheme and the claim."""

from __future__ import annotations

import math

from analysis.collect import SchemeData, StudyData
from analysis.scale import evaluate, ratio_to_bn
from tests.analysis.synth import trial

DEPTHS = {"d8": 8, "d14": 14, "d20": 20, "d32": 32}
LRS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


def _scheme(name: str, boundary, test: float, seeds=(0, 1)) -> SchemeData:
    """Every lr of LRS at every variant and seed: stable (train loss falling with lr up to the boundary) below
    ``boundary(depth)``, diverged above it."""
    trials = []
    for v, d in DEPTHS.items():
        for lr in LRS:
            for s in seeds:
                failed = lr > boundary(d)
                t = trial(name, lr, s, init_scale=1.0 if name != "bn" else None, train=0.99, test=test + 0.01 * s,
                          diverged=failed, trial_id=f"{name}-{v}-{lr}-{s}",
                          metrics={"initial_train_loss": 2.3, "final_train_loss": 0.5 / (1 + lr)})
                t.hp["variant"] = v
                trials.append(t)
    return SchemeData(name, "", {}, {}, trials)


def _study(*schemes: SchemeData) -> StudyData:
    params = {f"scale.{v}.depth": str(d) for v, d in DEPTHS.items()} | {"data.num_classes": "10"}
    return StudyData("scale", "", "normstudy", "sqlite://", params, list(schemes))


def test_brackets_gaps_power_laws_and_a_confirmed_claim_when_wn_falls_faster():
    bn = _scheme("bn", lambda d: 2.0, test=0.80)  # flat: b = 0
    wn = _scheme("wn", lambda d: 8.0 / d, test=0.70)  # falls as depth^-1
    result = evaluate(_study(bn, wn), claim_id=4)
    rows = {(r.scheme, r.variant): r for r in result.rows}
    assert (rows["bn", "d8"].stable_lr, rows["bn", "d8"].diverged_lr) == (1.28, 2.56)
    assert (rows["wn", "d32"].stable_lr, rows["wn", "d32"].diverged_lr) == (0.16, 0.32)  # 8/32 = 0.25
    assert rows["wn", "d8"].depth == 8 and rows["wn", "d8"].init_scale == 1.0
    gap = rows["wn", "d14"].test_minus_bn
    assert math.isclose(gap.estimate, -0.10, abs_tol=1e-9) and gap.lo <= gap.estimate <= gap.hi
    assert rows["wn", "d14"].sensitivity is not None and rows["wn", "d14"].sensitivity.n_seeds == 2
    assert abs(result.laws["bn"].b) < 0.05 and -1.3 < result.laws["wn"].b < -0.7
    assert result.claim.id == 4 and result.claim.verdict == "confirmed", result.claim.reason
    # at depth 50 WN's extrapolated rate is below BN's
    assert ratio_to_bn(result, "wn").hi < 1 and result.extrapolation["wn"].lo < 8 / 50 < result.extrapolation["wn"].hi


def test_the_claim_is_not_confirmed_when_bn_falls_faster_and_not_measured_without_variants_or_depths():
    bn = _scheme("bn", lambda d: 16.0 / d, test=0.80)
    wn = _scheme("wn", lambda d: 1.0, test=0.70)
    assert evaluate(_study(bn, wn), claim_id=4).claim.verdict == "not confirmed"
    plain = _study(bn, wn)
    for s in plain.schemes:
        for t in s.trials:
            del t.hp["variant"]
    assert evaluate(plain, claim_id=4) is None  # no scale axis: no section
    study = _study(_scheme("bn", lambda d: 16.0 / d, test=0.80), _scheme("wn", lambda d: 1.0, test=0.70))
    study.params["scale.d14.depth"] = "8"  # two variants at one depth (a width sweep): no fit against depth
    assert evaluate(study, claim_id=4).claim.verdict == "not measured"


def test_a_depth_where_no_rate_trained_is_marked_and_left_out_of_the_fit():
    """At depth 32 WN's 'stable' rates end at chance (slow learners, neither collapsed nor stalled): its bracket
    there only says where failing starts, so the fit uses the other depths alone."""
    bn = _scheme("bn", lambda d: 2.0, test=0.80)
    wn = _scheme("wn", lambda d: 8.0 / d if d < 32 else 0.02, test=0.70)
    for t in wn.trials:
        if t.hp["variant"] == "d32":
            t.metrics["final_train_top1"] = 0.11  # ≤ 1.5 × chance (10 classes)
    result = evaluate(_study(bn, wn), claim_id=4)
    rows = {(r.scheme, r.variant): r for r in result.rows}
    assert not rows["wn", "d32"].trained and rows["wn", "d20"].trained and rows["bn", "d32"].trained
    assert result.laws["wn"].depths == [8, 14, 20]  # d32's bracket (0.02) would have steepened b
    assert -1.3 < result.laws["wn"].b < -0.7
    assert "wn at depth 32" in result.claim.reason and result.claim.evidence["untrained"][0]["depth"] == 32
