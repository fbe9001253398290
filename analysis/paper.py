"""The report's side-by-side with the paper: the study's setup in one line, and the paper's numbers next
to ours (Gitman & Ginsburg 2017, as :mod:`analysis.claims` summarizes them; the scale caveat is
:data:`analysis.claims.SCALE_NOTE`)."""

from __future__ import annotations

from collections.abc import Mapping

from analysis.claims import PAPER, WN_FAMILY, Claim, pct_text, pts
from analysis.summarize import SchemeSummary
from trainers.outcome import FAILURE_KINDS


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
    c1, c2, c3 = claims[:3]  # a fourth (regularization) is in the verdicts row
    fam = [n for n in WN_FAMILY if n in c1.evidence]
    test = "; ".join(f"{n} {pts(c1.evidence[n]['test_minus_bn'])}" for n in fam) or "not measured"
    train = "; ".join(f"{n} {pts(c1.evidence[n]['train_minus_bn'])}" for n in fam) or "not measured"
    failed = "; ".join(
        f"{n} {pct_text(s.failure_rate)} (" + ", ".join(f"{s.failures[k].n} {k}" for k in FAILURE_KINDS) + ")"
        for n, s in summaries.items() if s.failure_rate is not None
    ) or "not measured"
    sens = "; ".join(f"{n} {s.sensitivity.mean:.2f}" for n, s in summaries.items()
                     if s.sensitivity is not None and s.sensitivity.mean is not None) or "not measured"
    conv = "; ".join(f"{n} {'yes' if s.convergence.converged else 'no'}" for n, s in summaries.items()
                     if s.convergence is not None and s.convergence.converged is not None) or "not measured"
    bn = summaries.get("bn")
    return [
        {"quantity": "Setup", "paper": PAPER["setup"], "ours": our_setup(params)},
        {"quantity": "Test top-1, WN-family − BN", "paper": "≈ −6 pts", "ours": test},
        {"quantity": "Train top-1, WN-family − BN", "paper": "> 0 (WN higher)", "ours": train},
        {"quantity": "Failure rate (all trials: " + ", ".join(FAILURE_KINDS) + ")", "paper": PAPER["stability"],
         "ours": failed},
        {"quantity": "Learning-rate sensitivity (nats; Wortsman et al. 2023)", "paper": "not reported",
         "ours": sens},
        {"quantity": "Best configuration converged (train top-1 ≥ 95%, loss flat)",
         "paper": "trained to the end of the schedule (90 epochs)", "ours": conv},
        {
            "quantity": "BN's share of step time",
            "paper": f"~{pct_text(PAPER['bn_share'])}",
            "ours": pct_text(bn.norm_share) if bn and bn.norm_share is not None else "not measured",
        },
        {
            "quantity": "Convolutions' share of step time (BN model)",
            "paper": f"~{pct_text(PAPER['conv_share'])}",
            "ours": pct_text(bn.conv_share) if bn and bn.conv_share is not None else "not measured",
        },
        {
            "quantity": "Verdicts",
            "paper": "claims 1–3 hold",
            "ours": "; ".join(f"{c.id}: {c.verdict}" for c in claims),
        },
    ]
