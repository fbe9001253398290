"""The paper's three claims, each judged on the study's own numbers, and a side-by-side with the paper.

Gitman & Ginsburg 2017 (arXiv:1709.08145), ResNet-50 on ImageNet, as summarized in docs/design.md §1:
1. the WN family (wn, normprop, wn_trelu) reaches higher train and lower test top-1 than BN;
2. the WN family diverges at learning rates / init scales where BN trains;
3. BN costs a large share of each step (~24% of ResNet compute time vs ~60% for convolutions, Pascal).

Verdicts are ``confirmed``, ``not confirmed``, ``inconclusive`` or ``not measured``; docs/report.md states
each rule. Every comparison carries a 95% interval (analysis/intervals.py): over seeds for accuracies,
over the tried trials for failure rates, over profiler repeats for step shares. A verdict is confirmed or
not confirmed only when its interval excludes "no effect"; otherwise it is inconclusive. Nothing here
assumes BN wins: a study where BN is worse gets "not confirmed" and the numbers that say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from analysis import intervals
from analysis.intervals import CONFIRMED, INCONCLUSIVE, NOT_CONFIRMED, Interval
from analysis.summarize import SchemeSummary

WN_FAMILY = ("wn", "normprop", "wn_trelu", "wn_trelu_affine")
NOT_MEASURED = "not measured"
__all__ = ["CONFIRMED", "INCONCLUSIVE", "NOT_CONFIRMED", "NOT_MEASURED", "Claim", "evaluate_claims"]

PAPER = {
    "setup": "ResNet-50 on ImageNet, 224 px crops (paper defaults: SGD, batch 256, 90 epochs), 8 Pascal GPUs",
    "test_top1_wn_minus_bn": -0.06,  # WN about 6% lower test top-1 than BN
    "train_top1": "WN-family higher than BN",
    "stability": "WN-family diverges at learning rates and init scales where BN trains",
    "bn_share": 0.24,  # BN's share of ResNet compute time
    "conv_share": 0.60,  # convolutions' share, same profile
}
SCALE_NOTE = (
    "The paper's ordering depends on scale (docs/design.md §1): on CIFAR-10 with a shallow net every scheme reached "
    "100% train accuracy and WN beat BN by 1–2% test; only on ImageNet/ResNet-50 did BN win. A small study "
    "may therefore rightly find WN ≥ BN; the verdicts describe this study's setup, not ImageNet."
)


@dataclass
class Claim:
    id: int
    claim: str
    verdict: str
    reason: str  # one or two sentences with the numbers behind the verdict
    evidence: dict[str, Any] = field(default_factory=dict)


def pts(x: float) -> str:
    """A difference of fractions as signed percentage points."""
    return f"{x * 100:+.1f} pts"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.1f}%"


def _present(summaries: Mapping[str, SchemeSummary]) -> tuple[SchemeSummary | None, list[SchemeSummary]]:
    return summaries.get("bn"), [summaries[n] for n in WN_FAMILY if n in summaries]


def _iv(iv: Interval | None) -> dict[str, Any] | None:
    return None if iv is None else iv.as_dict()


def _both(a: str, b: str) -> str:
    """A scheme's verdict when two effects must both hold (claim 1: train higher and test lower)."""
    if NOT_CONFIRMED in (a, b):
        return NOT_CONFIRMED
    return CONFIRMED if a == b == CONFIRMED else INCONCLUSIVE


def _ci(iv: Interval | None) -> str:
    return "no interval (fewer than 2 stable seeds)" if iv is None else f"95% CI {iv.text()}"


def claim_generalization(summaries: Mapping[str, SchemeSummary]) -> Claim:
    text = "WN-family reaches higher train and lower test top-1 than BN"
    bn, family = _present(summaries)
    if bn is None or bn.best is None or bn.best.train_top1.mean is None:
        return Claim(1, text, NOT_MEASURED, "BN has no stable trial with final accuracies in this study.")
    measured = [s for s in family if s.best is not None and s.best.train_top1.mean is not None]
    if not measured:
        return Claim(1, text, NOT_MEASURED, "No WN-family scheme has a stable trial with final accuracies.")
    b = bn.best
    evidence: dict[str, Any] = {"bn": {"train_top1": b.train_top1.mean, "test_top1": b.test_top1.mean,
                                       "seeds": b.test_top1.n}}
    parts, verdicts = [], []
    for s in measured:
        d_train, d_test = s.best.train_top1.mean - b.train_top1.mean, s.best.test_top1.mean - b.test_top1.mean
        iv_train = intervals.welch(s.best.train_top1.mean, s.best.train_top1.std, s.best.train_top1.n,
                                   b.train_top1.mean, b.train_top1.std, b.train_top1.n)
        iv_test = intervals.welch(s.best.test_top1.mean, s.best.test_top1.std, s.best.test_top1.n,
                                  b.test_top1.mean, b.test_top1.std, b.test_top1.n)
        verdict = _both(intervals.direction(iv_train, +1), intervals.direction(iv_test, -1))
        verdicts.append(verdict)
        evidence[s.name] = {
            "train_top1": s.best.train_top1.mean,
            "test_top1": s.best.test_top1.mean,
            "train_minus_bn": d_train,
            "test_minus_bn": d_test,
            "train_minus_bn_ci": _iv(iv_train),
            "test_minus_bn_ci": _iv(iv_test),
            "seeds": s.best.test_top1.n,
            "verdict": verdict,
            "holds": verdict == CONFIRMED,
        }
        parts.append(f"{s.name}: train {pts(d_train)} ({_ci(iv_train)}), test {pts(d_test)} ({_ci(iv_test)}) "
                     f"→ {verdict}")
    reason = "Best configurations vs BN — " + "; ".join(parts) + ". Paper: test ≈ −6 pts, train higher."
    better = [n for n, e in evidence.items() if n != "bn" and e["test_minus_bn"] > 0]
    if better:
        reason += f" BN has the lower test top-1 here (vs {', '.join(better)})."
    return Claim(1, text, intervals.combine(verdicts), reason, evidence)


def _rate_in(rows: list[dict], lo: float, hi: float) -> tuple[int, int]:
    """(tried, failed) trials with lr in [lo, hi]: ``divergence_by_lr``'s counts, whose failures are the one
    rule's (:data:`trainers.outcome.FAILURES`: diverged or collapsed)."""
    tol = 1e-9
    sel = [r for r in rows if lo * (1 - tol) <= r["lr"] <= hi * (1 + tol)]
    return sum(r["n"] for r in sel), sum(r["n_failed"] for r in sel)


def _largest_stable(s: SchemeSummary) -> float | None:
    lrs = [x["lr"] for x in s.stability.largest_stable_lr if x["lr"] is not None]
    return max(lrs) if lrs else None


def _lr(x: float | None) -> str:
    return "none" if x is None else f"{x:g}"


def claim_stability(summaries: Mapping[str, SchemeSummary]) -> Claim:
    text = "WN-family diverges over a wider range of learning rates / init scales than BN"
    bn, family = _present(summaries)
    if bn is None or not bn.divergence_by_lr:
        return Claim(2, text, NOT_MEASURED, "BN has no finished trials in this study.")
    evidence: dict[str, Any] = {"bn": {"largest_stable_lr": _largest_stable(bn)}}
    parts, verdicts, any_div = [], [], False
    for s in family:
        if not s.divergence_by_lr:
            continue
        lo = max(bn.divergence_by_lr[0]["lr"], s.divergence_by_lr[0]["lr"])
        hi = min(bn.divergence_by_lr[-1]["lr"], s.divergence_by_lr[-1]["lr"])
        if lo > hi:
            continue
        (n_b, d_b), (n_s, d_s) = _rate_in(bn.divergence_by_lr, lo, hi), _rate_in(s.divergence_by_lr, lo, hi)
        rate_b, rate_s = d_b / n_b, d_s / n_s
        any_div = any_div or d_b > 0 or d_s > 0
        iv = intervals.rate_difference(d_s, n_s, d_b, n_b)
        verdict = intervals.direction(iv, +1)
        verdicts.append(verdict)
        evidence[s.name] = {
            "lr_range": [lo, hi],
            "divergence_rate": rate_s,
            "bn_divergence_rate": rate_b,
            "rate_minus_bn_ci": _iv(iv),
            "largest_stable_lr": _largest_stable(s),
            "verdict": verdict,
            "holds": verdict == CONFIRMED,
        }
        parts.append(
            f"{s.name}: {d_s}/{n_s} trials failed ({_pct(rate_s)}) vs BN {d_b}/{n_b} ({_pct(rate_b)}) "
            f"for lr in [{lo:g}, {hi:g}], difference {_ci(iv)}; largest stable lr {_lr(_largest_stable(s))} "
            f"vs BN's {_lr(_largest_stable(bn))} → {verdict}"
        )
    if not verdicts:
        return Claim(2, text, NOT_MEASURED, "No WN-family scheme was tried at learning rates BN was tried at.")
    reason = "; ".join(parts) + "."
    if not any_div:
        reason += " No trial diverged in the common range: widen the learning-rate grid to probe stability."
    return Claim(2, text, intervals.combine(verdicts), reason, evidence)


def claim_cost(summaries: Mapping[str, SchemeSummary]) -> Claim:
    text = "BN costs a larger share of step time than the WN family's normalization"
    bn, family = _present(summaries)
    measured = [s for s in family if s.norm_share is not None]
    if bn is None or bn.norm_share is None or not measured:
        missing = "BN" if bn is None or bn.norm_share is None else "any WN-family scheme"
        return Claim(
            3,
            text,
            NOT_MEASURED,
            f"No normalization share (scheme metric norm_share) was profiled for {missing}.",
        )
    evidence: dict[str, Any] = {"bn": {"norm_share": bn.norm_share, "conv_share": bn.conv_share}}
    verdicts, parts = [], []
    for s in measured:
        iv = intervals.welch(bn.norm_share, bn.norm_share_std, bn.profile_repeats,
                             s.norm_share, s.norm_share_std, s.profile_repeats)
        verdict = intervals.direction(iv, +1)
        verdicts.append(verdict)
        evidence[s.name] = {"norm_share": s.norm_share, "conv_share": s.conv_share,
                            "bn_minus_share_ci": _iv(iv), "verdict": verdict, "holds": verdict == CONFIRMED}
        ci = "no interval (one profile)" if iv is None else f"BN − it {iv.text()}"
        parts.append(f"{s.name} {_pct(s.norm_share)} ({ci})")
    reason = (
        f"Normalization's share of a profiled step: BN {_pct(bn.norm_share)} vs "
        + ", ".join(parts)
        + f". Paper: BN ~{_pct(PAPER['bn_share'])}, convolutions ~{_pct(PAPER['conv_share'])}."
    )
    return Claim(3, text, intervals.combine(verdicts), reason, evidence)


def evaluate_claims(summaries: Mapping[str, SchemeSummary]) -> list[Claim]:
    return [claim_generalization(summaries), claim_stability(summaries), claim_cost(summaries)]


# --------------------------------------------------------------------------------------------------
# Side-by-side with the paper


def our_setup(params: Mapping[str, str]) -> str:
    """One line describing the study's scale from its flattened spec (unknown parts left out)."""
    get = params.get
    data = get("data.kind") or "unknown data"
    if data == "folder":
        data = f"folder {get('data.path', '?')}"
    elif data == "generated":
        detail = ", ".join(
            f"{get(k)} {what}"
            for k, what in (("data.num_classes", "classes"), ("data.train_size", "train images"))
            if get(k)
        )
        data = f"generated data ({detail})" if detail else "generated data"
    parts = [f"{get('model.arch') or 'unknown model'} on {data}"]
    if get("data.image_size"):
        parts.append(f"{get('data.image_size')} px")
    if get("training.batch_size"):
        parts.append(f"batch {get('training.batch_size')}")
    if get("training.max_steps") not in (None, "", "None"):
        parts.append(f"{get('training.max_steps')} steps")
    elif get("training.epochs"):
        parts.append(f"{get('training.epochs')} epochs")
    if get("provenance.hardware"):
        parts.append(get("provenance.hardware"))
    workers = get("scaling.num_workers")
    if workers:
        parts.append(f"{workers} DDP worker{'' if workers == '1' else 's'} a trial")
    return ", ".join(parts)


def paper_comparison(
    claims: list[Claim], summaries: Mapping[str, SchemeSummary], params: Mapping[str, str]
) -> list[dict]:
    """Rows of (quantity, paper, ours) for the report's side-by-side table."""
    c1, c2, c3 = claims
    fam = [n for n in WN_FAMILY if n in c1.evidence]
    test = "; ".join(f"{n} {pts(c1.evidence[n]['test_minus_bn'])}" for n in fam) or "not measured"
    train = "; ".join(f"{n} {pts(c1.evidence[n]['train_minus_bn'])}" for n in fam) or "not measured"
    div = (
        "; ".join(f"{n} {_pct(s.divergence_rate)}" for n, s in summaries.items() if s.divergence_rate is not None)
        or "not measured"
    )
    bn = summaries.get("bn")
    return [
        {"quantity": "Setup", "paper": PAPER["setup"], "ours": our_setup(params)},
        {"quantity": "Test top-1, WN-family − BN", "paper": "≈ −6 pts", "ours": test},
        {"quantity": "Train top-1, WN-family − BN", "paper": "> 0 (WN higher)", "ours": train},
        {"quantity": "Divergence rate (all trials)", "paper": PAPER["stability"], "ours": div},
        {
            "quantity": "BN's share of step time",
            "paper": f"~{_pct(PAPER['bn_share'])}",
            "ours": _pct(bn.norm_share) if bn and bn.norm_share is not None else "not measured",
        },
        {
            "quantity": "Convolutions' share of step time (BN model)",
            "paper": f"~{_pct(PAPER['conv_share'])}",
            "ours": _pct(bn.conv_share) if bn and bn.conv_share is not None else "not measured",
        },
        {
            "quantity": "Verdicts",
            "paper": "claims 1–3 hold",
            "ours": "; ".join(f"{c.id}: {c.verdict}" for c in (c1, c2, c3)),
        },
    ]
