"""The paper's regularization claim (claim 4): "tuning regularization does not close the WN family's test
gap to BN" (Gitman & Ginsburg 2017, abstract: BN's regularization effect "we were unable to compensate for
using standard regularization techniques like dropout and weight decay").

Judged on an Optuna study with seed re-runs (``search.rerun_seeds``, study/reruns.py): per scheme, its best
configuration re-run on every seed as found (*tuned*) and with weight decay, dropout and label smoothing at
the search space's defaults (*untuned*). Over each arm's stable seeds (failed ones are counted, never
averaged — trainers/outcome.py's rule, through analysis.summarize.group_configs):

* test top-1 per arm: mean with a 95% t interval (analysis/intervals.py);
* the gap to BN before tuning, G_b = test(s, untuned) − test(bn, untuned), and after, G_a = test(s, tuned)
  − test(bn, tuned): Welch's 95% interval over seeds;
* the fraction of the gap closed, f = (G_a − G_b) / (0 − G_b) = 1 − G_a / G_b (1: closed, 0: unchanged,
  < 0: wider), with a 95% percentile bootstrap interval over seeds (each arm's seeds resampled with
  replacement, B = 4000, seeded); defined only where G_b's interval lies below 0 — a gap there to close;
* the train–test gap of the tuned configuration minus the untuned one (Welch): negative when tuning the
  regularization buys test accuracy by giving up train accuracy, as the paper's explanation implies.

Verdict per WN-family scheme, by analysis.intervals.direction on G_a with the paper's sign (−1): confirmed
when the whole interval lies below 0 (BN still ahead after tuning: the gap is not closed), not confirmed
when it lies above 0 (tuned, the scheme is ahead of BN), inconclusive when it holds 0; the family's
verdict by analysis.intervals.combine. docs/report.md states the rule.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from analysis import intervals
from analysis.claims import NOT_MEASURED, WN_FAMILY, Claim, pts
from analysis.collect import StudyData, TrialData
from analysis.importance import METHOD, importances
from analysis.intervals import CONFIRMED, Interval, iv_dict
from analysis.summarize import ConfigGroup, SchemeSummary, Stat, best_config, group_configs
from search_spaces import for_scheme

TEXT = "tuning regularization does not close the WN family's test gap to BN"
CLAIM_ID = 4
TUNED, UNTUNED = "tuned", "untuned"
DRAWS, BOOT_SEED = 4000, 0


@dataclass
class Arm:
    """One scheme's re-runs of one arm: its configuration, seeds, failures and stable seeds' accuracies."""

    config: dict[str, Any]
    seeds: list[int | None]
    n_failed: int
    test_top1: Stat
    train_top1: Stat
    gap: Stat  # train − test top-1
    test_ci: Interval | None
    test_values: list[float] = field(default_factory=list)  # the stable seeds' test top-1 (for the bootstrap)


@dataclass
class SchemeRegularization:
    name: str
    tuned: Arm | None
    untuned: Arm | None
    gap_before: Interval | None = None  # test(s) − test(bn), untuned arms; None for BN
    gap_after: Interval | None = None  # the same, tuned arms
    fraction_closed: Interval | None = None
    overfit_change: Interval | None = None  # train–test gap, tuned − untuned
    verdict: str | None = None  # WN-family schemes only
    importances: dict[str, float] | None = None
    importance_note: str = ""
    best_values: dict[str, Any] | None = None  # the tuned arm's configuration: the search's best


@dataclass
class Regularization:
    claim: Claim
    schemes: dict[str, SchemeRegularization]
    importance_method: str = METHOD

    def as_dict(self) -> dict[str, Any]:
        """report.json's ``regularization`` block (docs/report.md)."""
        return {"claim_id": CLAIM_ID, "importance_method": self.importance_method,
                "fraction_closed_method": f"percentile bootstrap over seeds, {DRAWS} draws, seed {BOOT_SEED}",
                "schemes": {n: _scheme_dict(s) for n, s in self.schemes.items()}}


def _scheme_dict(s: SchemeRegularization) -> dict[str, Any]:
    def arm(a: Arm | None) -> dict[str, Any] | None:
        if a is None:
            return None
        return {"config": a.config, "seeds": a.seeds, "n_failed": a.n_failed, "test_top1": asdict(a.test_top1),
                "test_top1_ci": iv_dict(a.test_ci), "train_top1": asdict(a.train_top1), "gap": asdict(a.gap)}

    return {"tuned": arm(s.tuned), "untuned": arm(s.untuned), "gap_to_bn_before": iv_dict(s.gap_before),
            "gap_to_bn_after": iv_dict(s.gap_after), "fraction_closed": iv_dict(s.fraction_closed),
            "train_test_gap_tuned_minus_untuned": iv_dict(s.overfit_change), "verdict": s.verdict,
            "importances": s.importances, "importance_note": s.importance_note, "best_values": s.best_values}


def arm_of(trials: Sequence[TrialData]) -> Arm | None:
    """An arm's trials as one configuration (analysis.summarize's grouping; should a resumed study hold two,
    the best by best_config); None without a finished trial."""
    best: ConfigGroup | None = best_config(group_configs(trials))
    if best is None:
        return None
    ok = [t for t in trials if t.finished and not t.failed and t.hp == best.config]
    values = [v for v in (t.final("final_test_top1") for t in ok) if v is not None]
    return Arm(best.config, best.seeds, best.n_failed, best.test_top1, best.train_top1, best.gap,
               intervals.t_mean(values), values)


def _welch(a: Stat, b: Stat) -> Interval | None:
    return intervals.welch(a.mean, a.std, a.n, b.mean, b.std, b.n)


def fraction_closed(untuned: Sequence[float], bn_untuned: Sequence[float], tuned: Sequence[float],
                    bn_tuned: Sequence[float], draws: int = DRAWS, seed: int = BOOT_SEED) -> Interval | None:
    """f = 1 − G_a / G_b with a 95% percentile bootstrap interval (module docstring); None with fewer than
    two seeds in an arm or no gap before tuning (G_b ≥ 0)."""
    arms = [np.asarray(x, dtype=float) for x in (untuned, bn_untuned, tuned, bn_tuned)]
    if any(len(x) < 2 for x in arms):
        return None
    g_b, g_a = arms[0].mean() - arms[1].mean(), arms[2].mean() - arms[3].mean()
    if g_b >= 0:
        return None
    rng = np.random.default_rng(seed)
    m = [x[rng.integers(0, len(x), size=(draws, len(x)))].mean(axis=1) for x in arms]
    gb, ga = m[0] - m[1], m[2] - m[3]
    keep = gb != 0
    f = 1 - ga[keep] / gb[keep]
    lo, hi = np.percentile(f, [100 * (1 - intervals.LEVEL) / 2, 100 * (1 + intervals.LEVEL) / 2])
    return Interval(float(1 - g_a / g_b), float(lo), float(hi), "bootstrap-percentile")


def _space_dir(params: Mapping[str, str]) -> str | None:
    value = params.get("search.space_dir")
    return None if value in (None, "", "None") else value


def _importances(study: StudyData, name: str, trials: Sequence[TrialData]) -> tuple[dict[str, float] | None, str]:
    try:
        space = for_scheme(name, _space_dir(study.params))
    except Exception as err:  # noqa: BLE001 - a missing or changed space folder: no importances, said why
        return None, f"search space not readable ({str(err).splitlines()[0][:200]})"
    return importances(trials, space)


def compare(schemes: dict[str, SchemeRegularization]) -> None:
    """Fill in each WN-family scheme's gaps to BN, fraction closed and verdict (BN's arms are the baseline)."""
    bn = schemes.get("bn")
    for s in schemes.values():
        if s.tuned is not None and s.untuned is not None:
            s.overfit_change = _welch(s.tuned.gap, s.untuned.gap)
        if s.name not in WN_FAMILY or bn is None or None in (bn.tuned, bn.untuned, s.tuned, s.untuned):
            continue
        s.gap_before = _welch(s.untuned.test_top1, bn.untuned.test_top1)
        s.gap_after = _welch(s.tuned.test_top1, bn.tuned.test_top1)
        if s.gap_before is not None and s.gap_before.hi < 0:  # a gap there to close
            s.fraction_closed = fraction_closed(s.untuned.test_values, bn.untuned.test_values,
                                                s.tuned.test_values, bn.tuned.test_values)
        s.verdict = intervals.direction(s.gap_after, -1)


def _gap_text(iv: Interval | None, arm: str, s: SchemeRegularization) -> str:
    if iv is not None:
        return f"{iv.text()} {arm}"
    a = s.tuned if arm == TUNED else s.untuned
    return f"no interval {arm} (stable seeds: {a.test_top1.n if a else 0})"


def _reason(s: SchemeRegularization) -> str:
    f = s.fraction_closed
    closed = ("no gap before tuning to close" if s.gap_before is None or s.gap_before.hi >= 0 else
              "fraction closed: no interval" if f is None else
              f"{f.estimate * 100:.0f}% of it closed [{f.lo * 100:.0f}%, {f.hi * 100:.0f}%]")
    o = s.overfit_change
    overfit = "" if o is None else f"; train–test gap tuned − untuned {o.text()}"
    return (f"{s.name}: gap to BN {_gap_text(s.gap_before, UNTUNED, s)} → {_gap_text(s.gap_after, TUNED, s)}, "
            f"{closed}{overfit} → {s.verdict}")


def evaluate(study: StudyData, summaries: Mapping[str, SchemeSummary]) -> Regularization:
    """Claim 4 and the regularization block of a study read back from MLflow."""
    schemes: dict[str, SchemeRegularization] = {}
    for data in study.schemes:
        tuned = arm_of([t for t in data.reruns if t.rerun == TUNED])
        untuned = arm_of([t for t in data.reruns if t.rerun == UNTUNED])
        s = SchemeRegularization(data.name, tuned, untuned)
        # The tuned values: those the re-runs ran (the search's best when it ran); without re-runs, the best now.
        summary = summaries.get(data.name)
        s.best_values = (tuned.config if tuned is not None else
                         summary.best.config if summary is not None and summary.best is not None else None)
        if data.reruns:  # an Optuna study with re-runs: its search trials say which knob mattered
            s.importances, s.importance_note = _importances(study, data.name, data.trials)
        schemes[data.name] = s
    compare(schemes)
    return Regularization(claim_of(schemes), schemes)


def claim_of(schemes: Mapping[str, SchemeRegularization]) -> Claim:
    if not any(s.tuned or s.untuned for s in schemes.values()):
        return Claim(CLAIM_ID, TEXT, NOT_MEASURED, "This study has no seed re-runs of its best configurations "
                     "(search.rerun_seeds after an Optuna search; specs/regularization.yaml runs one).")
    bn = schemes.get("bn")
    if bn is None or bn.tuned is None or bn.untuned is None:
        return Claim(CLAIM_ID, TEXT, NOT_MEASURED, "BN has no finished re-runs of both arms (tuned, untuned).")
    judged = [s for s in schemes.values() if s.verdict is not None]
    if not judged:
        return Claim(CLAIM_ID, TEXT, NOT_MEASURED, "No WN-family scheme has finished re-runs of both arms.")
    evidence: dict[str, Any] = {s.name: {"gap_to_bn_before": iv_dict(s.gap_before),
                                         "gap_to_bn_after": iv_dict(s.gap_after),
                                         "fraction_closed": iv_dict(s.fraction_closed), "verdict": s.verdict,
                                         "holds": s.verdict == CONFIRMED} for s in judged}
    bn_t, bn_u = bn.tuned.test_top1.mean, bn.untuned.test_top1.mean
    evidence["bn"] = {"test_top1_tuned": bn_t, "test_top1_untuned": bn_u}
    reason = ("Test top-1 gap to BN over re-run seeds, regularization at its defaults → tuned (Welch 95% CI): "
              + "; ".join(_reason(s) for s in judged)
              + f". BN itself {_pct(bn_u)} untuned, {_pct(bn_t)} tuned ({pts((bn_t or 0) - (bn_u or 0))}). "
              "Paper: the WN family stays ≈ 6 pts behind BN whatever the regularization.")
    return Claim(CLAIM_ID, TEXT, intervals.combine([s.verdict for s in judged]), reason, evidence)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x * 100:.1f}%"
