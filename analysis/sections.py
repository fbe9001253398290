"""The report's human-readable sections on the study, the paper's claims, each scheme's results, its
curves and the cost of normalization, written from report.json's dictionary (:mod:`analysis.document`);
the sections on stability, divergence and early warning are in :mod:`analysis.failure_sections`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from analysis.formatting import fmt_config, fmt_stat, image_blocks, pct
from analysis.render import Section, Table


def study_section(d: dict) -> Section:
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


def claims_section(d: dict) -> Section:
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


def paper_section(d: dict) -> Section:
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


def schemes_section(d: dict, out: Path) -> Section:
    rows = []
    for name, s in d["schemes"].items():
        b = s["best"]
        best = fmt_config(b["config"]) + ("" if b["all_seeds_stable"] else f" ({_lost(b)})") if b else None
        causes = ", ".join(f"{c} ×{n}" for c, n in s["divergence_causes"].items()) or "—"
        collapses = ", ".join(f"{c} ×{n}" for c, n in s["collapse_causes"].items())
        rows.append(
            [
                name,
                best or "no stable trial",
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
            *image_blocks(out, d["plots"].get("accuracy"), "Train vs test top-1 of each scheme's best configuration."),
        ],
    )


def _lost(b: Mapping[str, Any]) -> str:
    """What the best configuration's failed seeds did, in words."""
    parts = [f"{b['n_diverged']} diverged"] if b["n_diverged"] else []
    parts += [f"{b['n_collapsed']} collapsed"] if b.get("n_collapsed") else []
    return (" and ".join(parts) or "a seed failed") + f" of {b['n_seeds']} seeds"


def curves_section(d: dict, out: Path) -> Section:
    return Section(
        "curves",
        "Loss and gradient-norm curves",
        image_blocks(
            out,
            d["plots"].get("curves"),
            "Representative trials: each scheme's best configuration (solid) and its diverged trial at the "
            "smallest learning rate (dashed).",
        )
        or ["No loss or gradient-norm curves were logged."],
    )


def signal_section(d: dict, out: Path) -> Section:
    return Section(
        "signal-propagation",
        "Signal propagation",
        image_blocks(
            out,
            d["plots"].get("signal_propagation"),
            "Per-stage activation std (act_std/<stage>) of each scheme's representative trial.",
        )
        or ["Not measured: no trial logged act_std/<stage>."],
    )


def step_time_section(d: dict, out: Path) -> Section:
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
            *image_blocks(
                out,
                d["plots"].get("step_time"),
                "Step time per scheme and, where profiled, normalization's share.",
            ),
        ],
    )
