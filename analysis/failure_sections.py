"""The report's sections on stability: the stability maps, divergence and collapse, and early warning,
written from report.json's dictionary (:mod:`analysis.document`). Failures, stable rates and the boundary
follow the one outcome rule (:mod:`trainers.outcome`)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from analysis.early_warning import ANY, SIGNALS
from analysis.formatting import MAX_ROWS, fmt_scale, fmt_value, image_blocks, pct
from analysis.render import Image, Section, Table


def stability_section(d: dict, out: Path) -> Section:
    rows = []
    for name, s in d["schemes"].items():
        per_scale = [
            f"{fmt_scale(e['init_scale'])} → {fmt_value(e['lr']) if e['lr'] is not None else 'none'}"
            for e in s["stability_map"]["largest_stable_lr"]
        ]
        rows.append([name, ", ".join(per_scale) or "no finished trial"])
    maps = [
        Image(out / path, f"Stability map of {name}.", half=True)
        for name, path in d["plots"].get("stability_maps", {}).items()
    ]
    return Section(
        "stability",
        "Stability maps",
        [
            "Each cell: mean final test top-1 of the stable trials at that learning rate and init scale; × marks "
            "a cell where a seed diverged, ○ one where a seed collapsed — stayed finite but ended at chance "
            "accuracy (k/n seeds); the pink outline is the largest stable learning rate of its row — the "
            "largest lr tried at which no seed diverged or collapsed.",
            *maps,
            Table(["scheme", "largest stable learning rate per init scale (init scale → lr)"], rows),
        ],
    )


def divergence_section(d: dict, out: Path) -> Section:
    trials = [(n, "diverged", t) for n, s in d["schemes"].items() for t in s["diverged_trials"]]
    trials += [(n, "collapsed", t) for n, s in d["schemes"].items() for t in s["collapsed_trials"]]
    rows = [
        [
            n,
            t["trial_id"],
            fmt_value(t["lr"]),
            fmt_scale(t["init_scale"]),
            fmt_value(t["seed"]),
            outcome,
            fmt_value(t["step"]),
            t["cause"] or "—",
            t["layer"] or "—",
        ]
        for n, outcome, t in trials[:MAX_ROWS]
    ]
    n_div = sum(s["n_diverged"] for s in d["schemes"].values())
    n_col = sum(s["n_collapsed"] for s in d["schemes"].values())
    n_fin = sum(s["n_finished"] for s in d["schemes"].values())
    blocks: list = [
        *image_blocks(
            out,
            d["plots"].get("divergence_vs_lr"),
            "Share of trials that diverged at each learning rate; dotted, for a scheme with collapses, the share "
            "that diverged or collapsed.",
        ),
        f"{n_div} of {n_fin} finished trials diverged and {n_col} collapsed. A collapse is a run that stayed "
        "finite but ended at chance accuracy (the collapse rule in docs/report.md): `dead_relu` when most of "
        "a stage's channels had died (step = the first detailed step past the threshold, layer = that "
        "stage), `chance_accuracy` when none had but the train loss sat at a uniform guess's (step = the "
        "last step).",
    ]
    if rows:
        blocks.append(
            Table(
                [
                    "scheme",
                    "trial",
                    "lr",
                    "init scale",
                    "seed",
                    "outcome",
                    "at step",
                    "cause",
                    "layer (diverged: the parameter that moved most; collapsed: the stage)",
                ],
                rows,
            )
        )
        if len(trials) > MAX_ROWS:
            blocks.append(
                f"First {MAX_ROWS} of {len(trials)} diverged and collapsed trials; report.json lists all."
            )
    else:
        blocks.append("No trial diverged or collapsed.")
    return Section("divergence", "Divergence and collapse", blocks)


def _rate_ci(ci: list[float] | None) -> str:
    return f" [{pct(ci[0], 0)}, {pct(ci[1], 0)}]" if ci else ""


def _ew_row(label: list[str], st: Mapping[str, Any]) -> list[str]:
    det = (
        f"{st['n_warned']}/{st['n_diverged']} ({pct(st['detection_rate'], 0)}{_rate_ci(st.get('detection_rate_ci'))})"
        if st["n_diverged"]
        else "no diverged trial"
    )
    ci = st.get("lead_median_ci")
    lead_ci = f" [{fmt_value(ci[0])}, {fmt_value(ci[1])}]" if ci else ""
    lead = (f"{fmt_value(st['lead_median'])}{lead_ci} (min {st['lead_min']}, max {st['lead_max']})"
            if st["lead_steps"] else "—")
    fa = (
        f"{st['n_false_alarms']}/{st['n_stable']} ({pct(st['false_alarm_rate'], 0)}"
        f"{_rate_ci(st.get('false_alarm_rate_ci'))})"
        if st["n_stable"]
        else "no stable trial"
    )
    return [*label, det, lead, fa]


def early_warning_section(d: dict) -> Section:
    ew = d["early_warning"]
    head = ["warned before divergence [95% CI]", "lead time, steps: median [95% CI] (range)",
            "false alarms on stable trials [95% CI]"]
    measured = [s for s in (*SIGNALS, ANY) if ew["per_signal"][s]["n_diverged"] + ew["per_signal"][s]["n_stable"]]
    per_signal = [_ew_row([s, ew["signals"][s]], ew["per_signal"][s]) for s in measured]
    not_measured = [s for s in SIGNALS if s not in measured]
    per_scheme = [
        _ew_row([scheme, s], stats[s])
        for scheme, stats in ew["per_scheme"].items()
        for s in (*SIGNALS, ANY)
        if stats[s]["n_diverged"] + stats[s]["n_stable"]
    ]
    rec = ew["recommended"]
    if rec.get("all"):
        per_scheme_rec = "".join(f"; {k}: {v}" for k, v in rec.items() if k != "all" and v)
        advice = (
            f"Signal to watch: **{rec['all']}** overall (highest detection rate minus false-alarm rate)"
            f"{per_scheme_rec}."
        )
    else:
        advice = "No diverged trial to learn a warning signal from."
    trial_rows = [
        [r["scheme"], r["trial_id"], fmt_value(r["divergence_step"])]
        + [
            fmt_value(r["signals"][s]["lead_steps"]) if r["signals"][s]["measured"] else "not measured"
            for s in (*SIGNALS, ANY)
        ]
        for r in ew["trials"][:MAX_ROWS]
    ]
    blocks: list = [
        "A signal warns at the first logged step past its threshold; the lead time is divergence step − "
        "warning step (warnings at or after the divergence step do not count). Any warning on a trial that "
        "stayed stable is a false alarm.",
        advice,
        Table(["signal", "rule", *head], per_signal) if per_signal else "No warning signal was logged.",
    ]
    if not_measured:
        blocks.append("Not measured in this study: " + ", ".join(not_measured) + ".")
    if per_scheme:
        blocks.append(Table(["scheme", "signal", *head], per_scheme))
    if trial_rows:
        blocks.append("Lead time (steps) of each signal on each diverged trial (— = no warning before it diverged):")
        blocks.append(Table(["scheme", "trial", "diverged at step", *SIGNALS, ANY], trial_rows))
    return Section("early-warning", "Early warning", blocks)
