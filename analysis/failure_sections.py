"""The report's early-warning section, written from report.json's ``early_warning`` dictionary
(:mod:`analysis.early_warning`; schema in docs/report.md). The stability maps and the failures of every
kind are in :mod:`analysis.outcome_sections`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from analysis.early_warning import ALL_SIGNALS, SIGNALS
from analysis.formatting import MAX_ROWS, fmt_value, pct, rate_text
from analysis.render import Section, Table


def _threshold_text(st: Mapping[str, Any]) -> str:
    if st["threshold"] is None:
        return "—"
    folds = [t for t in st["fold_thresholds"] if t is not None]
    span = f" (folds {min(folds):.3g}–{max(folds):.3g})" if folds else ""
    return f"{st['threshold']:.3g}{span}"


def _lead_text(st: Mapping[str, Any]) -> str:
    if st["lead_median"] is None:
        return "—"
    lo, hi = st["lead_median_ci"]
    return f"{fmt_value(st['lead_median'])} [{fmt_value(lo)}, {fmt_value(hi)}] ({st['lead_min']}–{st['lead_max']})"


def _ew_cells(st: Mapping[str, Any]) -> list[str]:
    """Warned before divergence, lead time, false alarms; "too few" in place of rates it has no numbers for."""
    if st["too_few"]:
        return [f"{st['n_diverged']} diverged, {st['n_stable']} stable scored: too few", "—", "—"]
    det = rate_text(st["n_warned"], st["n_diverged"], st["detection_rate"], st["detection_rate_ci"])
    fa = rate_text(st["n_false_alarms"], st["n_stable"], st["false_alarm_rate"], st["false_alarm_rate_ci"])
    return [det, _lead_text(st), fa]


def _auc_text(st: Mapping[str, Any]) -> str:
    if st["auc"] is None:
        return "—"
    lo, hi = st["auc_ci"]
    return f"{st['auc']:.2f} [{lo:.2f}, {hi:.2f}]"


def _measured(st: Mapping[str, Any]) -> bool:
    return bool(st["n_diverged"] + st["n_stable"] + st["n_other_failures"])


def early_warning_section(d: dict) -> Section:
    ew = d["early_warning"]
    target, counts = ew["target_false_alarm_rate"], ew["counts"]
    signals = [s for s in ALL_SIGNALS if _measured(ew["per_signal"][s])]
    not_measured = [s for s in SIGNALS if s not in signals]
    head = ["warned before divergence [95% CI]", "lead, steps: median [95% CI] (range)",
            "false alarms on held-out stable trials [95% CI]"]
    rows = []
    for s in signals:
        st = ew["per_signal"][s]
        other = f"{st['n_other_warned']}/{st['n_other_failures']}" if st["n_other_failures"] else "—"
        rows.append([s, ew["signals"][s], *_ew_cells(st), _auc_text(st), _threshold_text(st), other])
    blocks: list = [
        f"**Target false-alarm rate: {pct(target, 0)} of stable trials.** A signal warns at the first logged step "
        "whose score is above its threshold. Thresholds are chosen by cross-validation over trials: "
        f"{ew['folds']} folds by {ew['grouping']} (the seeds of one configuration share a fold); for each fold, "
        f"the lowest threshold that at most {pct(target, 0)} of the *other* folds' stable trials pass, then scored "
        "on the held-out fold — a threshold never sees the trials it is scored on. Lead = divergence step − first "
        "warning step (a warning at the divergence step does not count). AUC: the chance that a diverged trial's "
        "peak score is above a stable trial's. The threshold column is the same rule fitted on every stable "
        "trial — the one to use on new runs — with the folds' range.",
        f"Trials: {counts['diverged']} diverged (to warn about), {counts['stable']} stable (a warning is a false "
        f"alarm), {counts['other_failures']} collapsed or stalled — no divergence step to lead, not stable either: "
        f"in neither rate (last column: how many a signal fired on) — and {counts['excluded']} errored or "
        "unfinished, left out.",
    ]
    rec = ew["recommended"]
    if rec.get("all"):
        per_scheme_rec = "".join(f"; {k}: {v}" for k, v in rec.items() if k != "all" and v)
        blocks.append(f"Signal to watch: **{rec['all']}** overall (highest held-out detection rate minus false-alarm "
                      f"rate){per_scheme_rec}.")
    if rows:
        blocks.append(Table(["signal", "score", *head, "ROC AUC [95% CI]", "threshold",
                             "collapsed/stalled warned"], rows))
    else:
        blocks.append("No warning signal was logged.")
    unscored = [f"{s}: {ew['per_signal'][s]['n_diverged_unmeasured']}" for s in signals
                if ew["per_signal"][s]["n_diverged_unmeasured"]]
    if unscored:
        blocks.append("Diverged trials with no score before their divergence step (e.g. diverged before the "
                      "signal's first value), counted in no rate: " + ", ".join(unscored) + ".")
    if not_measured:
        blocks.append("Not measured in this study: " + ", ".join(not_measured) + ".")
    per_scheme = [[scheme, s, *_ew_cells(stats[s])] for scheme, stats in ew["per_scheme"].items()
                  for s in ALL_SIGNALS if _measured(stats[s])]
    if per_scheme:
        blocks.append("Per scheme, the same held-out verdicts:")
        blocks.append(Table(["scheme", "signal", *head], per_scheme))
    trial_rows = [
        [r["scheme"], r["trial_id"], fmt_value(r["divergence_step"])]
        + [fmt_value(r["signals"][s]["lead_steps"]) if r["signals"][s]["measured"] else "no score"
           for s in signals]
        for r in ew["trials"][:MAX_ROWS]
    ]
    if trial_rows and signals:
        blocks.append("Lead (steps) of each signal on each diverged trial, at its held-out fold's threshold "
                      "(— = no warning before it diverged):")
        blocks.append(Table(["scheme", "trial", "diverged at step", *signals], trial_rows))
        if len(ew["trials"]) > MAX_ROWS:
            blocks.append(f"First {MAX_ROWS} of {len(ew['trials'])} diverged trials; report.json lists all.")
    return Section("early-warning", "Early warning", blocks)
