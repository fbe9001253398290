"""The report's sections on outcomes, written from report.json's dictionary (:mod:`analysis.document`): the
stability maps, the learning-rate sensitivity beside them, and every trial's outcome — each failure kind
of :data:`trainers.outcome.FAILURE_KINDS` apart, and errored trials, which enter no rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.formatting import (
    MAX_ROWS,
    fmt_config,
    fmt_scale,
    fmt_value,
    image_blocks,
    kind_symbol,
    kind_words,
    rate_text,
)
from analysis.render import Image, Section, Table
from trainers.outcome import FAILURE_KINDS


def _kinds_legend() -> str:
    return "; ".join(f"{kind_symbol(k)} {k} — {kind_words(k)}" for k in FAILURE_KINDS)


def stability_section(d: dict, out: Path) -> Section:
    rows = []
    for name, s in d["schemes"].items():
        per_scale = [
            f"{fmt_scale(e['init_scale'])} → {fmt_value(e['lr']) if e['lr'] is not None else 'none'}"
            for e in s["stability_map"]["largest_stable_lr"]
        ]
        rows.append([name, ", ".join(per_scale) or "no finished trial"])
    maps = [
        Image(out / path, f"Stability map of {name}.")  # full width: its cells' numbers legible
        for name, path in d["plots"].get("stability_maps", {}).items()
    ]
    return Section(
        "stability",
        "Stability maps",
        [
            "Each cell: mean final test top-1 of the stable trials at that learning rate and init scale (grey: "
            "none was stable); a mark per failure kind where a seed failed that way, with k/n seeds: "
            f"{_kinds_legend()}. The pink outline is the largest stable learning rate of its row — the largest "
            "lr tried at which no seed failed in any way; errored trials enter no cell.",
            *maps,
            Table(["scheme", "largest stable learning rate per init scale (init scale → lr)"], rows),
        ],
    )


def _ci_text(mean: float | None, ci: dict | None) -> str:
    if mean is None:
        return "not measured"
    return f"{mean:.2f}" + (f" [{ci['lo']:.2f}, {ci['hi']:.2f}]" if ci else " (no interval: one seed)")


def _seed_values(per_seed: list[dict]) -> str:
    return ", ".join(f"{fmt_value(e['seed'])}: {e['value']:.2f}" for e in per_seed) or "—"


def _left_out(w: dict) -> str:
    parts = []
    if w["incomplete_seeds"]:
        parts.append("seeds " + ", ".join(map(fmt_value, w["incomplete_seeds"])) + " lack a rate (errored or "
                     "unfinished)")
    if w["unfit_seeds"]:
        parts.append("seeds " + ", ".join(map(fmt_value, w["unfit_seeds"])) + ": no run ended below its initial loss")
    return "; ".join(parts) or "—"


def sensitivity_section(d: dict, out: Path) -> Section:
    rows = []
    for name, s in d["schemes"].items():
        sens = s.get("lr_sensitivity")
        if not sens or not sens["sweeps"]:
            rows.append([name, "—", "not measured (no finished trial with its losses)", "", "", ""])
            continue
        for w in sens["sweeps"]:
            config = fmt_config({k: v for k, v in w["config"].items() if k != "init_scale"})
            rows.append([name, fmt_scale(w["init_scale"]) + ("" if config == "-" else f" ({config})"),
                         _ci_text(w["mean"], w["ci"]), _seed_values(w["per_seed"]),
                         ", ".join(fmt_value(x) for x in w["lrs"]), _left_out(w)])
        if len(sens["sweeps"]) > 1:
            rows.append([name, "all init scales (mean per seed)", _ci_text(sens["mean"], sens["ci"]),
                         _seed_values(sens["per_seed"]), "", ""])
    src = d.get("lr_sensitivity", {})
    return Section(
        "sensitivity",
        "Learning-rate sensitivity",
        [
            "How much of a scheme's final loss depends on getting the learning rate right (Wortsman et al. 2023, "
            f"§2): {src.get('definition', '')}. 0: every rate reaches the best loss; about the initial loss "
            "(≈ ln C): one rate trains and the others do not. Lower is more robust. "
            f"Final loss: {src.get('final_loss') or 'not measured'}; initial loss: "
            f"{src.get('initial_loss') or 'not measured'}.",
            Table(["scheme", "init scale", "lr sensitivity, nats: mean [95% CI]", "per seed", "learning rates",
                   "seeds left out"], rows),
            *image_blocks(out, d["plots"].get("lr_sensitivity"),
                          "Left: min(final, initial) train loss per learning rate (a diverged run at its initial "
                          "loss), mean over seeds with their range. Right: learning-rate sensitivity with its 95% "
                          "interval over seeds."),
        ],
    )


def _kind_cell(s: dict, kind: str) -> str:
    k = s["failures"][kind]
    text = rate_text(k["n"], s["n_finished"], k["rate"], k["rate_ci"])
    causes = ", ".join(f"{c} ×{n}" for c, n in k["causes"].items())
    return text + (f": {causes}" if causes and k["n"] else "")


def _outcome_table(d: dict) -> Table:
    rows = [
        [name, str(s["n_trials"]), str(s["n_finished"]), str(s["outcomes"].get("stable", 0)),
         *(_kind_cell(s, k) for k in FAILURE_KINDS),
         rate_text(s["n_failed"], s["n_finished"], s["failure_rate"], s["failure_rate_ci"]),
         str(s["n_errored"]), str(s["outcomes"].get("unfinished", 0))]
        for name, s in d["schemes"].items()
    ]
    return Table(["scheme", "trials", "finished", "stable", *(f"{k} / finished [95% CI]" for k in FAILURE_KINDS),
                  "failed, any kind [95% CI]", "errored (in no rate)", "unfinished"], rows)


def _detail(t: dict[str, Any]) -> str:
    """The layer (diverged: the parameter that moved most; collapsed: the stage) and, for a run that ended
    finite, its final train loss over min(L0, ln C) and its train top-1."""
    parts = [t["layer"]] if t.get("layer") else []
    if t.get("loss_ratio") is not None:
        parts.append(f"final loss {t['loss_ratio']:.2f} × min(L0, ln C)")
    if t.get("train_top1") is not None:
        parts.append(f"train top-1 {t['train_top1'] * 100:.1f}%")
    return "; ".join(parts) or "—"


def failures_section(d: dict, out: Path) -> Section:
    failed = [(n, t) for n, s in d["schemes"].items() for t in s["failed_trials"]]
    errored = [(n, t) for n, s in d["schemes"].items() for t in s["errored_trials"]]
    frac = d["study"]["params"].get("divergence.stall_loss_frac")
    blocks: list = [
        "Every trial's outcome by the one rule (trainers/outcome.py): "
        + "; ".join(f"**{k}** {kind_words(k)}" for k in FAILURE_KINDS)
        + (f" (f = {frac} in this study)" if frac else "")
        + ". Each is a failure; rates count finished trials (stable or failed), with 95% Wilson intervals. "
        "**Errored** trials raised an exception (no statement about stability): counted here, in no rate.",
        _outcome_table(d),
        *image_blocks(out, d["plots"].get("divergence_vs_lr"),
                      "Share of finished trials that failed at each learning rate (solid: any kind; dotted: "
                      "diverged only, where other kinds occur)."),
    ]
    if failed:
        rows = [[n, t["trial_id"], fmt_value(t["lr"]), fmt_scale(t["init_scale"]), fmt_value(t["seed"]),
                 t["outcome"], fmt_value(t["step"]), t["cause"] or "—", _detail(t)] for n, t in failed[:MAX_ROWS]]
        blocks.append(Table(["scheme", "trial", "lr", "init scale", "seed", "outcome", "at step", "cause",
                             "detail"], rows))
        if len(failed) > MAX_ROWS:
            blocks.append(f"First {MAX_ROWS} of {len(failed)} failed trials; report.json lists all.")
    else:
        blocks.append("No trial failed.")
    if errored:
        blocks.append(Table(["scheme", "trial", "lr", "init scale", "seed", "error (its last line)"],
                            [[n, t["trial_id"], fmt_value(t["lr"]), fmt_scale(t["init_scale"]), fmt_value(t["seed"]),
                              t["error"] or "not recorded"] for n, t in errored[:MAX_ROWS]]))
    else:
        blocks.append("No trial errored.")
    return Section("failures", "Outcomes: failures of every kind, and errored trials", blocks)
