"""A scheme's comparison as MLflow metrics: what the runs table and the chart view compare schemes by.

Every value is read off the scheme's :class:`analysis.summarize.SchemeSummary` — the object the stability
report and the CLI's summary table are made from — so MLflow, the CLI and the report cannot disagree
(docs/mlflow_layout.md, "Metrics of a scheme run"):

- ``best_test_top1``, ``best_train_top1``, ``best_gap``: the best configuration's means over its stable
  seeds (:func:`analysis.summarize.best_config`: highest mean test top-1 among configurations where no
  seed failed), gap = train − test top-1;
- ``failure_rate`` and ``<kind>_rate`` for every failure kind of the one outcome rule
  (:data:`trainers.outcome.FAILURE_KINDS`: diverged, collapsed, stalled): failed trials over finished
  trials (errored ones enter no rate);
- ``largest_stable_lr``: the largest learning rate at which no seed failed
  (:mod:`analysis.stability_map`), the largest over the scheme's init scales;
- ``lr_sensitivity`` with ``lr_sensitivity_lo`` / ``_hi``, its 95% interval (:mod:`analysis.sensitivity`,
  Wortsman et al. 2023 §2);
- ``step_time_s``: the mean over its trials of each trial's mean step time; ``norm_share`` is logged by the
  study's profile (study/scheme_profile.py) and is not repeated here.

Values are rounded to :data:`DIGITS` significant digits: MLflow's runs table prints a metric as logged
and has no number format of its own, and more digits than the measurement holds only widen its columns.
"""

from __future__ import annotations

import math

from analysis.summarize import SchemeSummary
from trainers.outcome import FAILURE_KINDS

DIGITS = 4
# The keys in the order the runs table shows them (study.tracking's saved view).
KEYS = ("best_test_top1", "best_train_top1", "best_gap", "failure_rate",
        *(f"{kind}_rate" for kind in FAILURE_KINDS), "largest_stable_lr", "lr_sensitivity", "lr_sensitivity_lo",
        "lr_sensitivity_hi", "step_time_s")


def rounded(x: float, digits: int = DIGITS) -> float:
    """``x`` to ``digits`` significant digits (0 stays 0)."""
    return float(f"{x:.{digits}g}")


def scheme_metrics(s: SchemeSummary) -> dict[str, float]:
    """The scheme run's comparison metrics (only those the study measured; none is NaN)."""
    out: dict[str, float | None] = {}
    if s.best is not None:
        out |= {"best_test_top1": s.best.test_top1.mean, "best_train_top1": s.best.train_top1.mean,
                "best_gap": s.best.gap.mean}
    out["failure_rate"] = s.failure_rate
    for kind in FAILURE_KINDS:
        out[f"{kind}_rate"] = s.failures[kind].rate
    stable_lrs = [c["lr"] for c in s.stability.largest_stable_lr if c.get("lr") is not None]
    out["largest_stable_lr"] = max(stable_lrs) if stable_lrs else None
    if s.sensitivity is not None and s.sensitivity.mean is not None:
        out["lr_sensitivity"] = s.sensitivity.mean
        if s.sensitivity.interval is not None:
            out |= {"lr_sensitivity_lo": s.sensitivity.interval.lo, "lr_sensitivity_hi": s.sensitivity.interval.hi}
    out["step_time_s"] = s.step_time_s.mean
    return {k: rounded(v) for k, v in out.items() if v is not None and math.isfinite(v)}
