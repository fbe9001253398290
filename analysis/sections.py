"""The report's human-readable sections on the study, the paper's claims, each scheme's results (with its
best configuration's convergence mark), its curves and the cost of normalization, written from
report.json's dictionary (:mod:`analysis.document`); the sections on stability, learning-rate sensitivity
and outcomes are in :mod:`analysis.outcome_sections`, early warning in :mod:`analysis.failure_sections`."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from analysis.claims import profile_text
from analysis.formatting import fmt_config, fmt_stat, image_blocks, pct, rate_text
from analysis.render import Section, Table
from trainers.outcome import FAILURE_KINDS


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
            "seeds; every rate counts finished trials only (stable or failed). A trial *failed* when it "
            + ", ".join(FAILURE_KINDS[:-1]) + f" or {FAILURE_KINDS[-1]} (section Outcomes); stable = none of "
            "them. Errored trials (the run raised) are counted apart and enter no rate.",
        ],
    )


def unconverged(d: dict) -> list[str]:
    """The schemes whose best configuration is marked not converged."""
    return [n for n, s in d["schemes"].items()
            if s["best"] and s["best"]["convergence"] and s["best"]["convergence"]["converged"] is False]


def convergence_flag(d: dict) -> list[str]:
    """A bold line naming the unconverged schemes (none when every best configuration converged)."""
    names = unconverged(d)
    if not names:
        return []
    why = "; ".join(f"{n}: {d['schemes'][n]['best']['convergence']['reason']}" for n in names)
    return [f"**Not converged at this budget: {', '.join(names)}** ({why}). Claim 1 compares where training "
            "ends, so it is inconclusive while a scheme it compares has not converged."]


def claims_section(d: dict) -> Section:
    rows = [[str(c["id"]), c["claim"], f"**{c['verdict']}**", c["reason"]] for c in d["claims"]]
    return Section(
        "claims",
        "The paper's claims on this study's data",
        [
            *convergence_flag(d),
            "Gitman & Ginsburg 2017 (arXiv:1709.08145) on ResNet-50/ImageNet; each claim judged on this "
            "study's own numbers (rules in docs/report.md). Every comparison carries a 95% interval (over "
            "seeds for accuracies and learning-rate sensitivities, over trials for failure rates, over "
            "profiler repeats for step shares): **confirmed** or **not confirmed** only when the interval "
            "excludes no effect, else **inconclusive**. Claim 2 has two bases, failure rates (every kind) "
            "and learning-rate sensitivity, combined: confirmed only when both confirm.",
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


def _converged(b: Mapping[str, Any] | None) -> str:
    c = b and b.get("convergence")
    if not c or c["converged"] is None:
        return "n/a"
    return ("yes" if c["converged"] else "**no**") + f" ({c['reason']})"


def _by_kind(s: Mapping[str, Any]) -> str:
    """"2 diverged (loss_explosion ×2), 1 stalled": the failures of each kind that occurred."""
    parts = []
    for k in FAILURE_KINDS:
        f = s["failures"][k]
        if f["n"]:
            causes = ", ".join(f"{c} ×{n}" for c, n in f["causes"].items())
            parts.append(f"{f['n']} {k}" + (f" ({causes})" if causes else ""))
    return ", ".join(parts) or "none"


def schemes_section(d: dict, out: Path) -> Section:
    rows = []
    for name, s in d["schemes"].items():
        b = s["best"]
        best = fmt_config(b["config"]) + ("" if b["all_seeds_stable"] else f" ({_lost(b)})") if b else None
        rows.append(
            [
                name,
                best or "no stable trial",
                _converged(b),
                fmt_stat(b["train_top1"]) if b else "n/a",
                fmt_stat(b["test_top1"]) if b else "n/a",
                fmt_stat(b["gap"]).replace("%", " pts") if b else "n/a",
                rate_text(s["n_failed"], s["n_finished"], s["failure_rate"], s["failure_rate_ci"]),
                _by_kind(s),
                str(s["n_errored"]),
            ]
        )
    return Section(
        "schemes",
        "Per-scheme results",
        [
            "Best configuration = the hyperparameters (seed aside) with the highest mean final test top-1 "
            "among configurations where no seed failed. *Converged* (docs/report.md): mean final train "
            "top-1 ≥ 95% over its stable seeds and a train loss that no longer falls by more than 5% of its "
            "initial value over the last tenth of the steps.",
            *convergence_flag(d),
            Table(
                [
                    "scheme",
                    "best configuration",
                    "converged",
                    "train top-1",
                    "test top-1",
                    "gap (train − test)",
                    "failed / finished [95% CI]",
                    "failures by kind",
                    "errored (in no rate)",
                ],
                rows,
            ),
            *image_blocks(out, d["plots"].get("accuracy"), "Train vs test top-1 of each scheme's best configuration."),
        ],
    )


def _lost(b: Mapping[str, Any]) -> str:
    """What the best configuration's failed seeds did, in words."""
    parts = [f"{n} {k}" for k, n in b["failures"].items() if n]
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
            profile_text(s.get("profile") or {}) if s["norm_share"] is not None else "—",
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
                    "profiled on (device, dtype, batch, where)",
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
