"""The scale section's numbers: how each scheme's stability boundary moves with depth (docs/design.md §13).

A study with a scale axis (``scale.variants``, study/scale_spec.py) ran every scheme's search on each model
variant; its trials carry ``hp.variant`` and its study run ``scale.<variant>.depth`` / ``.params``
(study/scale_params.py). Per scheme × variant, by the rules the rest of the report uses:

- the bracket (S, D) of the largest stable learning rate (:func:`trainers.outcome.bracket_of`), over every
  init scale the scheme was searched at (a scheme with several is bracketed at the one where it trained
  best: the best configuration's);
- the learning-rate sensitivity (:mod:`analysis.sensitivity`, Wortsman et al. 2023) over the rates that
  every seed of that (scheme, variant) was trained at — in boundary mode each bracket tries its own rates,
  so a sensitivity measures the rates its search visited, and two schemes' values are not a comparison
  over the same rates;
- the best configuration (:func:`analysis.summarize.best_config`), its test top-1 over seeds and its gap
  to BN's at the same variant (Welch's interval, :func:`analysis.intervals.welch`);
- whether any rate *trained*: a (scheme, variant) whose best configuration ends at chance (mean final train
  top-1 ≤ the collapse rule's ``collapse_chance_multiple`` × chance, trainers/collapse.py) has a bracket
  that only says where failing starts, not where training stops: its "stable" end learned nothing either
  (a slow learner at a tiny rate is neither collapsed nor stalled). Such a depth is shown, marked, and left
  out of the fit, never fitted as if it were a stability boundary.

Per scheme, the power law lr* = a·depth^b (:mod:`analysis.power_law`) with its bootstrap interval on b,
and its extrapolation to ResNet-50's depth (:data:`TARGET_DEPTH`) as a prediction interval. The claim
"the WN family's largest stable learning rate falls faster with depth than BN's" is judged per WN-family
scheme on b_scheme − b_BN (:func:`analysis.intervals.direction`, expected negative) and combined
(:func:`analysis.intervals.combine`).
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis import intervals, power_law
from analysis.claims import NOT_MEASURED, PAPER, WN_FAMILY, Claim
from analysis.collect import StudyData, TrialData, num_classes, scheme_order
from analysis.intervals import LEVEL, Interval, iv_dict
from analysis.power_law import PowerLaw
from analysis.sensitivity import Sensitivity, loss_points, sensitivity
from analysis.summarize import ConfigGroup, best_config, group_configs
from trainers.collapse import COLLAPSE_CHANCE_MULTIPLE

TARGET_DEPTH = 50  # ResNet-50, the paper's model
CLAIM = "the WN family's largest stable learning rate falls faster with depth than BN's"


@dataclass
class VariantRow:
    """One scheme on one model variant."""

    scheme: str
    variant: str
    depth: int | None
    params: int | None
    stable_lr: float | None
    diverged_lr: float | None
    init_scale: float | None
    trials: int
    sensitivity: Sensitivity | None
    best: ConfigGroup | None
    test_minus_bn: Interval | None = None
    trained: bool = True  # some rate learned more than chance (module docstring)


@dataclass
class ScaleResult:
    rows: list[VariantRow]
    laws: dict[str, PowerLaw]
    claim: Claim
    extrapolation: dict[str, Interval | None] = field(default_factory=dict)  # scheme -> lr* at TARGET_DEPTH


def _param(params: Mapping[str, str], variant: str, what: str) -> int | None:
    try:
        return int(params[f"scale.{variant}.{what}"])
    except (KeyError, ValueError):
        return None


def _outcomes(trials: Sequence[TrialData], init_scale: float | None) -> dict[float, dict[int | None, str]]:
    """lr -> seed -> outcome of the finished or errored trials at one init scale (unfinished ones say nothing)."""
    out: dict[float, dict[int | None, str]] = defaultdict(dict)
    for t in trials:
        if t.lr is not None and t.init_scale == init_scale and t.outcome != "unfinished":
            out[t.lr][t.seed] = t.outcome
    return dict(out)


def _common_rates_sensitivity(trials: Sequence[TrialData], classes: int | None) -> Sensitivity | None:
    """The sensitivity over the rates every seed was trained at (a seed a boundary search did not start at
    a rate that had already failed would otherwise drop out of every sweep)."""
    points = loss_points(trials, classes)
    seeds = {p.seed for p in points}
    by_lr: dict[float, set] = defaultdict(set)
    for p in points:
        by_lr[p.lr].add(p.seed)
    common = {lr for lr, s in by_lr.items() if s == seeds}
    if len(common) < 2:
        return None
    sens = sensitivity([p for p in points if p.lr in common])
    return sens if sens.mean is not None else None


def _at_chance(best: ConfigGroup | None, params: Mapping[str, str], classes: int | None) -> bool:
    """The best configuration ends at chance: the collapse rule's "at chance" bar, from the study's own spec."""
    if best is None or best.train_top1.mean is None or not classes:
        return best is None
    try:
        multiple = float(params.get("divergence.collapse_chance_multiple", COLLAPSE_CHANCE_MULTIPLE))
    except ValueError:
        multiple = COLLAPSE_CHANCE_MULTIPLE
    return best.train_top1.mean <= multiple / classes


def _row(scheme: str, variant: str, trials: Sequence[TrialData], params: Mapping[str, str],
         classes: int | None) -> VariantRow:
    best = best_config(group_configs(trials))
    scales = sorted({t.init_scale for t in trials}, key=lambda s: (s is not None, s or 0.0))
    scale = best.config.get("init_scale") if best is not None and len(scales) > 1 else (scales[0] if scales else None)
    s, d = power_law.bracket(_outcomes(trials, scale))
    return VariantRow(scheme, variant, _param(params, variant, "depth"), _param(params, variant, "params"), s, d,
                      scale, len(trials), _common_rates_sensitivity(trials, classes), best,
                      trained=not _at_chance(best, params, classes))


def _untrained_text(rows: Sequence[VariantRow]) -> str:
    untrained = [f"{r.scheme} at depth {r.depth}" for r in rows if not r.trained]
    if not untrained:
        return ""
    return (" Left out of the fits, no rate trained (best configuration at chance): " + ", ".join(untrained)
            + ".")


def _family_verdict(laws: Mapping[str, PowerLaw]) -> tuple[str, str, dict[str, Any]]:
    bn = laws.get("bn")
    family = [n for n in WN_FAMILY if n in laws]
    if bn is None or bn.b is None:
        return NOT_MEASURED, "BN's boundary has no power-law fit (fewer than two depths with a closed bracket).", {}
    fitted = [n for n in family if laws[n].b is not None]
    if not fitted:
        return NOT_MEASURED, "No WN-family scheme's boundary has a power-law fit.", {}
    parts, verdicts, evidence = [], [], {"bn": {"b": bn.b, "b_ci": iv_dict(bn.b_interval)}}
    for n in fitted:
        diff = power_law.exponent_difference(laws[n], bn)
        v = intervals.direction(diff, -1)
        verdicts.append(v)
        evidence[n] = {"b": laws[n].b, "b_ci": iv_dict(laws[n].b_interval), "b_minus_bn_ci": iv_dict(diff),
                       "verdict": v}
        iv = "no interval" if diff is None else f"{diff.estimate:+.2f} [{diff.lo:+.2f}, {diff.hi:+.2f}]"
        parts.append(f"{n}: b = {laws[n].b:+.2f} vs BN {bn.b:+.2f}, difference {iv} → {v}")
    reason = ("; ".join(parts) + ". lr* = a·depth^b per scheme; 95% bootstrap intervals over seeds and bracket ends "
              "(docs/report.md).")
    return intervals.combine(verdicts), reason, evidence


def evaluate(study: StudyData, claim_id: int) -> ScaleResult | None:
    """The scale section of a study (None without a scale axis: no trial carries ``hp.variant``)."""
    classes = num_classes(study.params)
    by: dict[tuple[str, str], list[TrialData]] = defaultdict(list)
    for s in study.schemes:
        for t in s.trials:
            if isinstance(t.hp.get("variant"), str | int | float):
                by[s.name, str(t.hp["variant"])].append(t)
    if not by:
        return None
    rows = [_row(scheme, variant, trials, study.params, classes) for (scheme, variant), trials in by.items()]
    rows.sort(key=lambda r: (scheme_order(r.scheme), r.depth or 0, r.variant))
    bn_best = {r.variant: r.best for r in rows if r.scheme == "bn"}
    for r in rows:
        b = bn_best.get(r.variant)
        if r.scheme != "bn" and b is not None and r.best is not None:
            mine, base = r.best.test_top1, b.test_top1
            r.test_minus_bn = intervals.welch(mine.mean, mine.std, mine.n, base.mean, base.std, base.n)
    depths = {r.variant: r.depth for r in rows}
    if len(set(depths.values())) < len(depths):  # a width sweep: several variants at one depth
        claim = Claim(claim_id, CLAIM, NOT_MEASURED, "Variants share a depth (" + ", ".join(
            f"{v}: {d}" for v, d in depths.items()) + "); the power law is fitted against depth only, so it needs "
            "one variant a depth.")
        return ScaleResult(rows, {}, claim)
    laws = {}
    for scheme in sorted({r.scheme for r in rows}, key=scheme_order):
        depth_outcomes = {}
        for r in rows:
            if r.scheme == scheme and r.depth is not None and r.trained:
                depth_outcomes[r.depth] = _outcomes(by[scheme, r.variant], r.init_scale)
        # each scheme its own bootstrap stream: two schemes' replicates are independent
        laws[scheme] = power_law.fit(depth_outcomes, seed=zlib.crc32(scheme.encode()))
    verdict, reason, evidence = _family_verdict(laws)
    reason += _untrained_text(rows)
    evidence["untrained"] = [{"scheme": r.scheme, "variant": r.variant, "depth": r.depth}
                             for r in rows if not r.trained]
    extrapolation = {n: law.prediction_interval(TARGET_DEPTH) for n, law in laws.items()}
    evidence["extrapolation_depth"] = TARGET_DEPTH
    evidence["paper"] = PAPER["stability"]
    return ScaleResult(rows, laws, Claim(claim_id, CLAIM, verdict, reason, evidence), extrapolation)


def ratio_to_bn(result: ScaleResult, scheme: str, depth: float = TARGET_DEPTH) -> Interval | None:
    """lr*_scheme(depth) / lr*_BN(depth), replicate by replicate: <1 says the scheme tolerates less than BN."""
    a, b = result.laws.get(scheme), result.laws.get("bn")
    if a is None or b is None or a.a is None or b.a is None or not len(a.replicates) or not len(b.replicates):
        return None
    n = min(len(a.replicates), len(b.replicates))
    log_d = math.log(depth)
    logs = (a.replicates[:n, 0] + a.replicates[:n, 1] * log_d) - (b.replicates[:n, 0] + b.replicates[:n, 1] * log_d)
    lo, hi = np.percentile(logs, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
    return Interval(a.predict(depth) / b.predict(depth), float(math.exp(lo)), float(math.exp(hi)),
                    "bootstrap-percentile")
