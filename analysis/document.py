"""The report's content: ``build_data`` assembles report.json (schema in docs/report.md) and
``build_sections`` writes the human report from that same dictionary, so report.md/report.html never
say a number that report.json does not hold."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analysis.boundary import groups_boundary
from analysis.claims import SCALE_NOTE, Claim
from analysis.collect import StudyData
from analysis.early_warning import ANY, SIGNALS, EarlyWarning
from analysis.render import Image, Section, Table
from analysis.summarize import ConfigGroup, SchemeSummary

SCHEMA_VERSION = 2  # 2: collapsed trials are failures (stable = neither diverged nor collapsed)
MAX_ROWS = 60  # longer per-trial tables are cut in md/html (report.json keeps every row)


def _stat(st) -> dict[str, Any]:
    return dataclasses.asdict(st)


def _best(b: ConfigGroup | None) -> dict[str, Any] | None:
    if b is None:
        return None
    return {
        "config": b.config,
        "seeds": b.seeds,
        "n_seeds": b.n,
        "n_diverged": b.n_diverged,
        "n_collapsed": b.n_collapsed,
        "n_failed": b.n_failed,
        "all_seeds_stable": b.all_seeds_stable,
        "train_top1": _stat(b.train_top1),
        "test_top1": _stat(b.test_top1),
        "gap": _stat(b.gap),
    }


def scheme_data(s: SchemeSummary) -> dict[str, Any]:
    m = s.stability
    return {
        "run_id": s.run_id,
        "n_trials": s.n_trials,
        "n_finished": s.n_finished,
        "n_diverged": s.n_diverged,
        "divergence_rate": s.divergence_rate,
        "divergence_causes": s.divergence_causes,
        "n_collapsed": s.n_collapsed,
        "collapse_rate": s.collapse_rate,
        "collapse_causes": s.collapse_causes,
        "n_failed": s.n_failed,
        "failure_rate": s.failure_rate,
        "best": _best(s.best),
        "stability_map": {
            "lrs": m.lrs,
            "init_scales": m.init_scales,
            "binned": m.binned,
            "cells": [dataclasses.asdict(c) | {"status": c.status} for c in m.cells],
            "largest_stable_lr": m.largest_stable_lr,
        },
        "boundary": groups_boundary(s.groups),
        "divergence_by_lr": s.divergence_by_lr,
        "diverged_trials": s.diverged_trials,
        "collapsed_trials": s.collapsed_trials,
        "step_time_s": _stat(s.step_time_s),
        "norm_share": s.norm_share,
        "conv_share": s.conv_share,
        "profile_step_time_s": s.profile_step_time_s,
        "representative_trials": {"stable": s.representative_stable, "diverged": s.representative_diverged},
    }


def build_data(
    study: StudyData,
    summaries: Mapping[str, SchemeSummary],
    claims: list[Claim],
    comparison: list[dict],
    setup: str,
    ew: EarlyWarning,
    plots: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "study": {
            "name": study.name,
            "run_id": study.run_id,
            "experiment": study.experiment,
            "tracking_uri": study.tracking_uri,
            "setup": setup,
            "n_trials": sum(s.n_trials for s in summaries.values()),
            "params": study.params,
        },
        "schemes": {name: scheme_data(s) for name, s in summaries.items()},
        "claims": [dataclasses.asdict(c) for c in claims],
        "paper_comparison": {"rows": comparison, "note": SCALE_NOTE},
        "early_warning": dataclasses.asdict(ew),
        "plots": dict(plots),
    }


# --------------------------------------------------------------------------------------------------
# Human-readable sections


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x * 100:.{digits}f}%"


def fmt_stat(st: Mapping[str, Any], scale: float = 100.0, unit: str = "%", digits: int = 1) -> str:
    if st["mean"] is None:
        return "n/a"
    s = f"{st['mean'] * scale:.{digits}f}"
    if st["std"] is not None:
        s += f" ± {st['std'] * scale:.{digits}f}"
    return s + unit + (f" (n={st['n']})" if st["n"] != 1 else " (1 seed)")


def _config(cfg: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in cfg.items()) or "-"


def _scale(s: float | None) -> str:
    return "-" if s is None else f"{s:g}"


def _g(x: Any) -> str:
    return "—" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def _img(out: Path, name: str | None, caption: str) -> list:
    return [Image(out / name, caption)] if name else []


def _study_section(d: dict) -> Section:
    st = d["study"]
    counts = ", ".join(f"{n}: {s['n_trials']}" for n, s in d["schemes"].items()) or "none"
    return Section(
        "study",
        "Study",
        [
            Table(
                ["", ""],
                [
                    ["study", st["name"]],
                    ["experiment", st["experiment"]],
                    ["study run id", st["run_id"]],
                    ["tracking URI", st["tracking_uri"]],
                    ["setup", st["setup"]],
                    ["trials per scheme", counts],
                    ["generated", d["generated_at"]],
                ],
            ),
            "Accuracies are final top-1 fractions shown as %; means ± sample standard deviation over stable "
            "seeds; every rate counts finished trials only (trained to the end or diverged). A trial *failed* "
            "when it diverged or collapsed (stayed finite but ended at chance accuracy); stable = neither.",
        ],
    )


def _claims_section(d: dict) -> Section:
    rows = [[str(c["id"]), c["claim"], f"**{c['verdict']}**", c["reason"]] for c in d["claims"]]
    return Section(
        "claims",
        "The paper's claims on this study's data",
        [
            "Gitman & Ginsburg 2017 (arXiv:1709.08145) on ResNet-50/ImageNet; each claim judged on this "
            "study's own numbers (rules in docs/report.md). Every comparison carries a 95% interval (over "
            "seeds for accuracies, over trials for failure rates, over profiler repeats for step shares): "
            "**confirmed** or **not confirmed** only when the interval excludes no effect, else "
            "**inconclusive**.",
            Table(["#", "claim", "verdict", "numbers behind it"], rows),
        ],
    )


def _paper_section(d: dict) -> Section:
    pc = d["paper_comparison"]
    return Section(
        "paper",
        "Side by side with the paper",
        [
            Table(
                ["quantity", "paper (ResNet-50, ImageNet)", "this study"],
                [[r["quantity"], r["paper"], r["ours"]] for r in pc["rows"]],
            ),
            pc["note"],
        ],
    )


def _schemes_section(d: dict, out: Path) -> Section:
    rows = []
    for name, s in d["schemes"].items():
        b = s["best"]
        causes = ", ".join(f"{c} ×{n}" for c, n in s["divergence_causes"].items()) or "—"
        collapses = ", ".join(f"{c} ×{n}" for c, n in s["collapse_causes"].items())
        rows.append(
            [
                name,
                _config(b["config"]) + ("" if b["all_seeds_stable"] else f" ({_lost(b)})") if b else "no stable trial",
                fmt_stat(b["train_top1"]) if b else "n/a",
                fmt_stat(b["test_top1"]) if b else "n/a",
                fmt_stat(b["gap"]).replace("%", " pts") if b else "n/a",
                f"{s['n_diverged']}/{s['n_finished']} ({pct(s['divergence_rate'])})",
                causes,
                f"{s['n_collapsed']}/{s['n_finished']} ({pct(s['collapse_rate'])})"
                + (f": {collapses}" if collapses else ""),
            ]
        )
    return Section(
        "schemes",
        "Per-scheme results",
        [
            "Best configuration = the hyperparameters (seed aside) with the highest mean final test top-1 "
            "among configurations where no seed diverged or collapsed.",
            Table(
                [
                    "scheme",
                    "best configuration",
                    "train top-1",
                    "test top-1",
                    "gap (train − test)",
                    "diverged / finished",
                    "divergence causes",
                    "collapsed / finished: causes",
                ],
                rows,
            ),
            *_img(out, d["plots"].get("accuracy"), "Train vs test top-1 of each scheme's best configuration."),
        ],
    )


def _stability_section(d: dict, out: Path) -> Section:
    rows = []
    for name, s in d["schemes"].items():
        per_scale = [
            f"{_scale(e['init_scale'])} → {_g(e['lr']) if e['lr'] is not None else 'none'}"
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


def _lost(b: Mapping[str, Any]) -> str:
    """What the best configuration's failed seeds did, in words."""
    parts = [f"{b['n_diverged']} diverged"] if b["n_diverged"] else []
    parts += [f"{b['n_collapsed']} collapsed"] if b.get("n_collapsed") else []
    return (" and ".join(parts) or "a seed failed") + f" of {b['n_seeds']} seeds"


def _divergence_section(d: dict, out: Path) -> Section:
    trials = [(n, "diverged", t) for n, s in d["schemes"].items() for t in s["diverged_trials"]]
    trials += [(n, "collapsed", t) for n, s in d["schemes"].items() for t in s["collapsed_trials"]]
    rows = [
        [
            n,
            t["trial_id"],
            _g(t["lr"]),
            _scale(t["init_scale"]),
            _g(t["seed"]),
            outcome,
            _g(t["step"]),
            t["cause"] or "—",
            t["layer"] or "—",
        ]
        for n, outcome, t in trials[:MAX_ROWS]
    ]
    n_div = sum(s["n_diverged"] for s in d["schemes"].values())
    n_col = sum(s["n_collapsed"] for s in d["schemes"].values())
    n_fin = sum(s["n_finished"] for s in d["schemes"].values())
    blocks: list = [
        *_img(
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
    lead_ci = f" [{_g(ci[0])}, {_g(ci[1])}]" if ci else ""
    lead = (f"{_g(st['lead_median'])}{lead_ci} (min {st['lead_min']}, max {st['lead_max']})"
            if st["lead_steps"] else "—")
    fa = (
        f"{st['n_false_alarms']}/{st['n_stable']} ({pct(st['false_alarm_rate'], 0)}"
        f"{_rate_ci(st.get('false_alarm_rate_ci'))})"
        if st["n_stable"]
        else "no stable trial"
    )
    return [*label, det, lead, fa]


def _early_warning_section(d: dict) -> Section:
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
        [r["scheme"], r["trial_id"], _g(r["divergence_step"])]
        + [
            _g(r["signals"][s]["lead_steps"]) if r["signals"][s]["measured"] else "not measured"
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


def _curves_section(d: dict, out: Path) -> Section:
    return Section(
        "curves",
        "Loss and gradient-norm curves",
        _img(
            out,
            d["plots"].get("curves"),
            "Representative trials: each scheme's best configuration (solid) and its diverged trial at the "
            "smallest learning rate (dashed).",
        )
        or ["No loss or gradient-norm curves were logged."],
    )


def _signal_section(d: dict, out: Path) -> Section:
    return Section(
        "signal-propagation",
        "Signal propagation",
        _img(
            out,
            d["plots"].get("signal_propagation"),
            "Per-stage activation std (act_std/<stage>) of each scheme's representative trial.",
        )
        or ["Not measured: no trial logged act_std/<stage>."],
    )


def _step_time_section(d: dict, out: Path) -> Section:
    rows = [
        [
            n,
            fmt_stat(s["step_time_s"], scale=1e3, unit=" ms", digits=2).replace(" (n=", " (trials="),
            pct(s["norm_share"]) if s["norm_share"] is not None else "not measured",
            pct(s["conv_share"]) if s["conv_share"] is not None else "not measured",
            f"{s['profile_step_time_s'] * 1e3:.2f} ms" if s["profile_step_time_s"] is not None else "—",
        ]
        for n, s in d["schemes"].items()
    ]
    return Section(
        "step-time",
        "Step time and the cost of normalization",
        [
            Table(
                [
                    "scheme",
                    "step time (mean over trials)",
                    "normalization share",
                    "convolution share",
                    "profiled step",
                ],
                rows,
            ),
            *_img(
                out,
                d["plots"].get("step_time"),
                "Step time per scheme and, where profiled, normalization's share.",
            ),
        ],
    )


def build_sections(d: dict, out: Path) -> list[Section]:
    return [
        _study_section(d),
        _claims_section(d),
        _stability_section(d, out),
        _schemes_section(d, out),
        _paper_section(d),
        _divergence_section(d, out),
        _early_warning_section(d),
        _curves_section(d, out),
        _signal_section(d, out),
        _step_time_section(d, out),
    ]
