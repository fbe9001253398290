"""The report's section on claim 4 (analysis/regularization.py), written from report.json's
``regularization`` block: the gap to BN before and after tuning, the fraction closed, the train–test gaps,
the tuned values and which hyperparameter mattered."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from analysis.formatting import fmt_config, image_blocks
from analysis.render import Section, Table


def _ci(iv: Mapping[str, Any] | None, scale: float = 100.0, unit: str = " pts") -> str:
    if iv is None:
        return "—"
    return f"{iv['estimate'] * scale:+.1f}{unit} [{iv['lo'] * scale:+.1f}, {iv['hi'] * scale:+.1f}]"


def _arm(a: Mapping[str, Any] | None) -> str:
    if a is None:
        return "not run"
    t, iv = a["test_top1"], a["test_top1_ci"]
    if t["mean"] is None:
        return f"no stable seed ({a['n_failed']} failed)"
    ci = f" [{iv['lo'] * 100:.1f}, {iv['hi'] * 100:.1f}]" if iv else ""
    failed = f", {a['n_failed']} failed" if a["n_failed"] else ""
    return f"{t['mean'] * 100:.1f}%{ci} (n={t['n']}{failed})"


def _fraction(iv: Mapping[str, Any] | None) -> str:
    if iv is None:
        return "—"
    return f"{iv['estimate'] * 100:.0f}% [{iv['lo'] * 100:.0f}%, {iv['hi'] * 100:.0f}%]"


def _overfit(a: Mapping[str, Any] | None) -> str:
    return "—" if a is None or a["gap"]["mean"] is None else f"{a['gap']['mean'] * 100:.1f} pts"


def _importance(values: Mapping[str, float] | None, note: str) -> str:
    if not values:
        return f"not measured ({note})" if note else "not measured"
    return ", ".join(f"{k} {v:.2f}" for k, v in values.items())


def regularization_section(d: dict, out: Path) -> Section:
    reg = d.get("regularization") or {}
    schemes = reg.get("schemes") or {}
    claim = next((c for c in d["claims"] if c["id"] == reg.get("claim_id")), None)
    if not any(s["tuned"] or s["untuned"] for s in schemes.values()):
        return Section("regularization", "Regularization: does tuning it close the gap to BN?",
                       [claim["reason"] if claim else "Not measured: this study has no seed re-runs."])
    rows = [[n, _arm(s["untuned"]), _arm(s["tuned"]), _ci(s["gap_to_bn_before"]), _ci(s["gap_to_bn_after"]),
             _fraction(s["fraction_closed"]), f"{_overfit(s['untuned'])} → {_overfit(s['tuned'])}",
             s["verdict"] or "—"] for n, s in schemes.items()]
    knobs = [[n, fmt_config(s["best_values"]) if s["best_values"] else "—",
              _importance(s["importances"], s["importance_note"])] for n, s in schemes.items()]
    return Section(
        "regularization",
        "Regularization: does tuning it close the gap to BN?",
        [
            f"Claim {reg['claim_id']}: **{claim['verdict'] if claim else '—'}**. Each scheme's best configuration "
            "of its Optuna search re-run on the same seeds, *tuned* (as found) and *untuned* (weight decay, "
            "dropout and label smoothing at the search space's defaults; learning rate and init scale as found). "
            "Test top-1: mean over stable seeds [95% t interval]; gaps to BN: Welch 95% intervals; fraction "
            f"closed = 1 − gap after / gap before ({reg['fraction_closed_method']}).",
            Table(["scheme", "test top-1 untuned", "test top-1 tuned", "gap to BN untuned", "gap to BN tuned",
                   "fraction closed", "train − test untuned → tuned", "verdict"], rows),
            f"Which knob mattered: importances of the search's hyperparameters for test top-1, "
            f"{reg['importance_method']}, over each scheme's search trials (a failed trial without a final "
            "accuracy at 0).",
            Table(["scheme", "best values found (tuned)", "importance"], knobs),
            *image_blocks(out, d["plots"].get("importance"), "Hyperparameter importance per scheme (fANOVA)."),
        ],
    )
