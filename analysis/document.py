"""The report's content: ``build_data`` assembles report.json (schema in docs/report.md) and
``build_sections`` writes the human report from that same dictionary (the sections:
:mod:`analysis.sections`, :mod:`analysis.outcome_sections` and :mod:`analysis.failure_sections`), so
report.md/report.html never say a number that report.json does not hold."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analysis.boundary import groups_boundary
from analysis.claims import SCALE_NOTE, Claim
from analysis.collect import StudyData
from analysis.early_warning import EarlyWarning
from analysis.failure_sections import early_warning_section
from analysis.intervals import Interval
from analysis.outcome_sections import failures_section, sensitivity_section, stability_section
from analysis.regularization_sections import regularization_section
from analysis.render import Section
from analysis.sections import (
    claims_section,
    curves_section,
    paper_section,
    schemes_section,
    signal_section,
    step_time_section,
    study_section,
)
from analysis.sensitivity import Sensitivity, describe_sources
from analysis.summarize import ConfigGroup, SchemeSummary

SENSITIVITY_DEFINITION = (
    "per scheme and init scale, per seed: mean over the swept learning rates of min(final loss, initial loss) "
    "minus the seed's best final loss, a diverged run at its initial loss (Wortsman et al. 2023, §2); then the "
    "mean over seeds with a 95% t interval; a scheme's value averages its init scales seed by seed"
)

SCHEMA_VERSION = 3  # 3: every failure kind (stalled too) counted generically; errored trials listed; lr sensitivity


def _stat(st) -> dict[str, Any]:
    return dataclasses.asdict(st)


def _best(b: ConfigGroup | None, s: SchemeSummary) -> dict[str, Any] | None:
    if b is None:
        return None
    return {
        "config": b.config,
        "seeds": b.seeds,
        "n_seeds": b.n,
        "failures": b.failures,
        "n_failed": b.n_failed,
        "all_seeds_stable": b.all_seeds_stable,
        "train_top1": _stat(b.train_top1),
        "test_top1": _stat(b.test_top1),
        "gap": _stat(b.gap),
        "convergence": s.convergence.as_dict() if s.convergence is not None else None,
    }


def _ci(iv: Interval | None) -> dict[str, Any] | None:
    return None if iv is None else iv.as_dict()


def _seeds(per_seed: Mapping) -> list[dict[str, Any]]:
    return [{"seed": k, "value": v} for k, v in per_seed.items()]


def sensitivity_data(sens: Sensitivity | None) -> dict[str, Any] | None:
    """A scheme's learning-rate sensitivity for report.json (docs/report.md)."""
    if sens is None:
        return None
    return {
        "mean": sens.mean,
        "ci": _ci(sens.interval),
        "n_seeds": sens.n_seeds,
        "per_seed": _seeds(sens.per_seed),
        "final_loss": sens.final_loss,
        "initial_loss": sens.initial_loss,
        "sweeps": [
            {"config": w.config, "init_scale": w.init_scale, "lrs": w.lrs, "mean": w.mean, "ci": _ci(w.interval),
             "per_seed": _seeds(w.per_seed), "best_loss": _seeds(w.best_loss),
             "incomplete_seeds": w.incomplete_seeds, "unfit_seeds": w.unfit_seeds, "loss_by_lr": w.loss_by_lr}
            for w in sens.sweeps
        ],
    }


def scheme_data(s: SchemeSummary) -> dict[str, Any]:
    m = s.stability
    return {
        "run_id": s.run_id,
        "n_trials": s.n_trials,
        "outcomes": s.outcomes,
        "n_finished": s.n_finished,
        "failures": {k: dataclasses.asdict(v) for k, v in s.failures.items()},
        "n_failed": s.n_failed,
        "failure_rate": s.failure_rate,
        "failure_rate_ci": s.failure_rate_ci,
        "n_errored": s.n_errored,
        "best": _best(s.best, s),
        "stability_map": {
            "lrs": m.lrs,
            "init_scales": m.init_scales,
            "binned": m.binned,
            "cells": [dataclasses.asdict(c) | {"n_failed": c.n_failed, "status": c.status} for c in m.cells],
            "largest_stable_lr": m.largest_stable_lr,
        },
        "boundary": groups_boundary(s.groups),
        "failures_by_lr": s.failures_by_lr,
        "failed_trials": s.failed_trials,
        "errored_trials": s.errored_trials,
        "lr_sensitivity": sensitivity_data(s.sensitivity),
        "step_time_s": _stat(s.step_time_s),
        "norm_share": s.norm_share,
        "conv_share": s.conv_share,
        "profile_step_time_s": s.profile_step_time_s,
        "profile": s.profile,
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
        "lr_sensitivity": {"definition": SENSITIVITY_DEFINITION,
                           **describe_sources(s.sensitivity for s in summaries.values() if s.sensitivity)},
        "claims": [dataclasses.asdict(c) for c in claims],
        "paper_comparison": {"rows": comparison, "note": SCALE_NOTE},
        "early_warning": dataclasses.asdict(ew),
        "plots": dict(plots),
    }


def build_sections(d: dict, out: Path) -> list[Section]:
    from analysis.scale_sections import scale_sections  # imports this module (sensitivity_data)

    return [
        study_section(d),
        claims_section(d),
        stability_section(d, out),
        sensitivity_section(d, out),
        *scale_sections(d, out),
        regularization_section(d, out),
        schemes_section(d, out),
        paper_section(d),
        failures_section(d, out),
        early_warning_section(d),
        curves_section(d, out),
        signal_section(d, out),
        step_time_section(d, out),
    ]
