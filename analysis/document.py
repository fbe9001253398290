"""The report's content: ``build_data`` assembles report.json (schema in docs/report.md) and
``build_sections`` writes the human report from that same dictionary (the sections: :mod:`analysis.sections`
and :mod:`analysis.failure_sections`), so report.md/report.html never say a number that report.json does
not hold."""

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
from analysis.failure_sections import divergence_section, early_warning_section, stability_section
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
from analysis.summarize import ConfigGroup, SchemeSummary

SCHEMA_VERSION = 2  # 2: collapsed trials are failures (stable = neither diverged nor collapsed)


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


def build_sections(d: dict, out: Path) -> list[Section]:
    return [
        study_section(d),
        claims_section(d),
        stability_section(d, out),
        schemes_section(d, out),
        paper_section(d),
        divergence_section(d, out),
        early_warning_section(d),
        curves_section(d, out),
        signal_section(d, out),
        step_time_section(d, out),
    ]
