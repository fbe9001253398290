"""The report's scale section, and its two hooks into the rest of the report (docs/design.md §13).

:func:`add_to_report` judges the scale claim (:mod:`analysis.scale`) after the paper's three and adds it to
the claims and a row to the side-by-side with the paper; :func:`scale_data` is report.json's ``scale``
entry (schema: docs/report.md) and draws the figure (:mod:`analysis.scale_plot`); :func:`scale_sections`
writes the section from that entry. A study without a scale axis gets none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.claims import PAPER, Claim
from analysis.collect import StudyData
from analysis.document import sensitivity_data
from analysis.formatting import image_blocks, pct
from analysis.intervals import iv_dict
from analysis.render import Section, Table
from analysis.scale import TARGET_DEPTH, ScaleResult, evaluate, ratio_to_bn
from analysis.scale_plot import plot_scale

PLOT = "scale.png"


def add_to_report(study: StudyData, claims: list[Claim], comparison: list[dict]) -> ScaleResult | None:
    """Judge the scale claim (numbered after the others) and add it and a paper row; None without variants."""
    result = evaluate(study, claim_id=len(claims) + 1)
    if result is not None:
        claims.append(result.claim)
        comparison.append({"quantity": f"Largest stable lr at depth {TARGET_DEPTH}, WN-family ÷ BN "
                                       "(extrapolated from the scale study's power laws)",
                           "paper": PAPER["stability"], "ours": _ratios_text(result)})
    return result


def _ratios_text(result: ScaleResult) -> str:
    parts = []
    for scheme in result.laws:
        r = ratio_to_bn(result, scheme) if scheme != "bn" else None
        if r is not None:
            parts.append(f"{scheme} {r.estimate:.2g} [{r.lo:.2g}, {r.hi:.2g}]")
    return "; ".join(parts) or "not measured (no power law for BN or the scheme)"


def scale_data(result: ScaleResult | None, out: Path) -> dict[str, Any]:
    """``{"scale": {...}}`` for report.json (``{}`` without a scale axis); draws the figure into ``out``."""
    if result is None:
        return {}
    rows = [{
        "scheme": r.scheme, "variant": r.variant, "depth": r.depth, "params": r.params, "init_scale": r.init_scale,
        "stable_lr": r.stable_lr, "diverged_lr": r.diverged_lr, "trials": r.trials,
        "lr_sensitivity": sensitivity_data(r.sensitivity),
        "best": None if r.best is None else {"config": r.best.config, "n": r.best.n,
                                             "test_top1": vars(r.best.test_top1),
                                             "train_top1": vars(r.best.train_top1)},
        "test_minus_bn_ci": iv_dict(r.test_minus_bn), "trained": r.trained,
    } for r in result.rows]
    laws = {n: {"a": law.a, "b": law.b, "b_ci": iv_dict(law.b_interval), "depths": law.depths,
                "open_depths": law.open_depths, "replicates": len(law.replicates),
                "extrapolated_lr": iv_dict(result.extrapolation.get(n)),
                "ratio_to_bn": iv_dict(ratio_to_bn(result, n)) if n != "bn" else None}
            for n, law in result.laws.items()}
    drawn = plot_scale(result, out / PLOT)
    return {"scale": {"rows": rows, "power_laws": laws, "extrapolation_depth": TARGET_DEPTH,
                      "claim_id": result.claim.id, "plot": drawn.name if drawn else None}}


def _lr(x: float | None) -> str:
    return "—" if x is None else f"{x:.3g}"


def _bracket(r: dict) -> str:
    s, d = r["stable_lr"], r["diverged_lr"]
    if s is None and d is None:
        return "—"
    text = f"{_lr(s)} → {_lr(d)}" + (f" (×{d / s:.2g})" if s and d else " (open)")
    return text if r.get("trained", True) else text + " — no rate trained (at chance; not fitted)"


def _sens(r: dict) -> str:
    s = r["lr_sensitivity"]
    if not s or s.get("mean") is None:
        return "n/a"
    ci = s.get("ci")
    return f"{s['mean']:.2f}" + (f" [{ci['lo']:.2f}, {ci['hi']:.2f}]" if ci else "")


def _top1(r: dict) -> str:
    b = r["best"]
    if not b or b["test_top1"]["mean"] is None:
        return "n/a"
    st = b["test_top1"]
    return f"{pct(st['mean'])}" + (f" ± {st['std'] * 100:.1f}" if st["std"] is not None else "") + f" (n={st['n']})"


def _gap(r: dict) -> str:
    ci = r["test_minus_bn_ci"]
    if r["scheme"] == "bn":
        return "—"
    if ci is None:
        return "no interval"
    return f"{ci['estimate'] * 100:+.1f} [{ci['lo'] * 100:+.1f}, {ci['hi'] * 100:+.1f}]"


def _law_row(n: str, law: dict, depth: int) -> list[str]:
    if law["b"] is None:
        return [n, "no fit (fewer than two depths with a closed bracket)", "—", "—", "—"]
    ci, ext, ratio = law["b_ci"], law["extrapolated_lr"], law["ratio_to_bn"]
    return [n, f"{law['b']:+.2f}" + (f" [{ci['lo']:+.2f}, {ci['hi']:+.2f}]" if ci else ""),
            f"{law['a']:.3g}", f"{ext['estimate']:.3g} [{ext['lo']:.3g}, {ext['hi']:.3g}]" if ext else "—",
            f"{ratio['estimate']:.2g} [{ratio['lo']:.2g}, {ratio['hi']:.2g}]" if ratio else "—"]


def scale_sections(d: dict, out: Path) -> list[Section]:
    """The scale section (none without a scale axis)."""
    sc = d.get("scale")
    if not sc:
        return []
    claim = next((c for c in d["claims"] if c["id"] == sc["claim_id"]), None)
    depth = sc["extrapolation_depth"]
    rows = [[r["scheme"], r["variant"], str(r["depth"] or "?"), f"{r['params']:,}" if r["params"] else "?",
             _bracket(r), _sens(r), _top1(r), _gap(r)] for r in sc["rows"]]
    laws = [_law_row(n, law, depth) for n, law in sc["power_laws"].items()]
    blocks: list = [
        "Every scheme searched on each model variant (spec section `scale`). Bracket: the largest stable learning "
        "rate → the first failed one (every seed; the one outcome rule), at the best configuration's init scale. "
        "Learning-rate sensitivity (nats, 95% CI over seeds) over the rates every seed of that bracket was "
        "trained at: each bracket visits its own rates, so it describes that search, not a common grid. Test "
        "top-1 of the best configuration (mean ± std over seeds) and its difference to BN's at the same variant "
        "(points, Welch 95% CI).",
        Table(["scheme", "variant", "depth", "params", "stable → failed lr", "lr sensitivity", "best test top-1",
               "− BN (pts)"], rows),
        f"Power law lr* = a·depth^b per scheme, fitted to the brackets' log midpoints; 95% bootstrap interval on b "
        f"over seeds and bracket ends (lr* drawn log-uniformly inside each bracket). **Extrapolation** to depth "
        f"{depth} (ResNet-50) as a 95% prediction interval — outside the depths measured, so a trend, not a "
        "measurement.",
        Table(["scheme", "exponent b [95% CI]", "a", f"lr* at depth {depth} (extrapolated) [95% PI]",
               "÷ BN's at that depth"], laws),
        *image_blocks(out, sc["plot"], "Stability boundary against depth (log–log), fits and their extrapolation"),
    ]
    if claim is not None:
        blocks.append(f"Claim {claim['id']}, \"{claim['claim']}\": **{claim['verdict']}** — {claim['reason']} "
                      f"The paper, at depth 50 on ImageNet: {PAPER['stability']}.")
    return [Section("scale", "How stability moves with depth", blocks)]
