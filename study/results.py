"""What a study run returns, and the CLI's summary of it — by the same rules as the report.

Each finished Tune trial becomes a :class:`TrialResult` (its trial config, last result and error). Its
outcome is the one rule's (:func:`trainers.outcome.outcome_of`); the per-scheme numbers of the summary
table — failures, the best configuration (highest mean test top-1 over seeds among configurations where
no seed failed) and the mean train/test of stable trials — come from ``analysis.summarize``, the
functions the stability report uses, so the two always agree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from analysis.collect import SchemeData, TrialData, scheme_order
from analysis.summarize import SchemeSummary, stat, summarize_scheme
from study.boundary import within
from study.boundary_search import classify
from study.trial_configs import TrialConfigs
from trainers.config import TrialConfig
from trainers.outcome import (
    COLLAPSED,
    DIVERGED,
    ERRORED,
    FAILURE_KINDS,
    STABLE,
    STALLED,
    bracket_of,
    outcome_of,
    point_status,
)


@dataclass
class TrialResult:
    trial: TrialConfig
    trial_id: str
    metrics: dict[str, Any]  # the trial's last reported result (its summary when it finished)
    error: str | None = None

    @property
    def scheme(self) -> str:
        return self.trial.scheme_name

    @property
    def outcome(self) -> str:
        return outcome_of(self.metrics, errored=self.error is not None)


@dataclass
class StudyResult:
    study_run_id: str
    tracking_uri: str
    experiment: str
    storage_path: str
    trials: list[TrialResult] = field(default_factory=list)
    seconds: float = 0.0
    boundary: list[dict[str, Any]] = field(default_factory=list)  # boundary mode: one row per bracket
    reruns: list[TrialResult] = field(default_factory=list)  # search.rerun_seeds: study/reruns.py's trials


def trial_data(r: TrialResult) -> TrialData:
    """A trial result as the report reads trials back from MLflow (``analysis.collect.TrialData``)."""
    hp = {k: v for k, v in r.trial.hp.items() if k != "seed"}
    m = r.metrics
    outcome = r.outcome
    return TrialData(run_id="", trial_id=r.trial_id, scheme=r.scheme, status="FAILED" if r.error else "FINISHED",
                     hp=hp, seed=r.trial.seed, diverged=outcome == DIVERGED,
                     divergence_cause=m.get("divergence_cause"), collapsed=outcome == COLLAPSED,
                     collapse_cause=m.get("collapse_cause"), stalled=outcome == STALLED,
                     metrics={k: float(v) for k, v in m.items() if isinstance(v, int | float)})


def scheme_summaries(result: StudyResult) -> dict[str, SchemeSummary]:
    by_scheme: dict[str, list[TrialData]] = {}
    for r in result.trials:
        by_scheme.setdefault(r.scheme, []).append(trial_data(r))
    return {name: summarize_scheme(SchemeData(name, "", {}, {}, by_scheme[name]))
            for name in sorted(by_scheme, key=scheme_order)}  # the report's order: BN first


def boundary_rows(configs: TrialConfigs, trials: Sequence[TrialResult]) -> list[dict[str, Any]]:
    """The bracket of every (scheme, init scale, variant) from the trials' results: scheme, init_scale,
    variant (None without a scale axis), stable_lr, diverged_lr (the smallest failed rate), ratio, converged
    (within search.boundary_tolerance), points, trials."""
    seeds: dict[tuple, dict[float, dict[int, str]]] = {k: {} for k in configs.bracket_keys()}
    for r in trials:
        key = (r.scheme, r.trial.hp.get("init_scale"), r.trial.hp.get("variant"))
        if key in seeds and "lr" in r.trial.hp:
            seeds[key].setdefault(float(r.trial.hp["lr"]), {})[r.trial.seed] = classify(r.metrics, r.error is not None)
    rows = []
    for (scheme, scale, variant), points in seeds.items():
        stable, failed = bracket_of({lr: point_status(v.values()) for lr, v in points.items()})
        ratio = failed / stable if stable and failed else None
        converged = ratio is not None and within(stable, failed, configs.spec.search.boundary_tolerance)
        rows.append({"scheme": scheme, "init_scale": scale, "variant": variant, "stable_lr": stable,
                     "diverged_lr": failed, "ratio": ratio, "converged": converged, "points": len(points),
                     "trials": sum(len(v) for v in points.values())})
    return rows


COUNTED = (STABLE, *FAILURE_KINDS, ERRORED)  # every failure kind in its own column
HEADER = ("scheme      trials  " + "  ".join(COUNTED) + "  best: mean test top-1 (lr, init, seeds)"
          "      mean train/test of stable")


def summary_table(result: StudyResult) -> str:
    """One line per scheme, by the report's rules: outcome counts, the best configuration, stable means."""
    rows = [HEADER]
    summaries = scheme_summaries(result)
    for scheme, s in summaries.items():
        counts = {o: sum(r.outcome == o for r in result.trials if r.scheme == scheme)
                  for o in COUNTED}
        trials = [trial_data(r) for r in result.trials if r.scheme == scheme and r.outcome == STABLE]
        mean_tr = stat(t.final("final_train_top1") for t in trials).mean
        mean_te = stat(t.final("final_test_top1") for t in trials).mean
        cells = "  ".join(f"{counts[o]:{len(o)}d}" for o in COUNTED)
        rows.append(f"{scheme:10s}  {s.n_trials:6d}  {cells}  {_best_text(s):45s}  {_num(mean_tr)} / {_num(mean_te)}")
    if result.boundary:
        rows += ["", _boundary_table(result.boundary)]
    return "\n".join(rows)


def _best_text(s: SchemeSummary) -> str:
    if s.best is None or s.best.test_top1.mean is None:
        return "-"
    cfg = s.best.config
    lr, init = (("-" if cfg.get(k) is None else f"{cfg[k]:g}") for k in ("lr", "init_scale"))
    return f"{s.best.test_top1.mean:.3f} ({lr}, {init}, {s.best.test_top1.n} of {s.best.n} seeds)"


def _boundary_table(rows: Sequence[dict[str, Any]]) -> str:
    names = [b["scheme"] if b.get("variant") is None else f"{b['scheme']}@{b['variant']}" for b in rows]
    width = max([10, *map(len, names)])  # scheme@variant names may be longer than a scheme's
    out = [f"{'boundary':{width}s}  init    largest stable lr  smallest diverged lr  ratio  within tolerance  "
           "rates  trials"]
    for name, b in zip(names, rows, strict=True):
        ratio = "-" if b["ratio"] is None else f"{b['ratio']:.2f}"
        init = "-" if b["init_scale"] is None else f"{b['init_scale']:g}"
        out.append(f"{name:{width}s}  {init:6s}  {_lr_text(b['stable_lr']):17s}  {_lr_text(b['diverged_lr']):20s}  "
                   f"{ratio:5s}  {'yes' if b['converged'] else 'no':16s}  {b['points']:5d}  {b['trials']:6d}")
    return "\n".join(out)


def _lr_text(lr: float | None) -> str:
    return "-" if lr is None else f"{lr:.4g}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
