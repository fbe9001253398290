"""``normstudy report``: read a study from MLflow and write its stability report.

    write_report(tracking_uri, out_dir, experiment=..., study_run_id=..., study_name=..., publisher=None)
        -> report.html

writes into ``out_dir``: report.json (schema: docs/report.md), report.md, a self-contained report.html
and the PNG plots, then, given a ``publisher`` (:class:`analysis.publish.Publisher`; the CLI passes
``study.tracking.StudyTracker``), logs them to the study's MLflow runs (docs/mlflow_layout.md). The
pipeline: collect (MLflow → dataclasses) → summarize (stability_map, sensitivity, convergence) / claims /
paper / early_warning (pure) → plots, curve_plots → document, sections, outcome_sections,
failure_sections (report.json's dict and the sections) → render (md, html) → publish.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from analysis import claims as claims_mod
from analysis import collect, cost_plots, curve_plots, document, early_warning, paper, plots, render, scale_sections
from analysis.collect import DEFAULT_EXPERIMENT, ReportError
from analysis.importance import plot_importances
from analysis.publish import DeferredPublisher, Publisher, PublisherFactory, PublishError, file_stem, publish_report
from analysis.regularization import evaluate as evaluate_regularization
from analysis.summarize import SchemeSummary, summarize_scheme

__all__ = ["ReportError", "add_arguments", "main", "render_report", "summarize_all", "write_report"]
DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"  # the spec's tracking.tracking_uri default
DEFAULT_OUT = "normstudy_report"


def _clean(x: Any) -> Any:
    """JSON without NaN/inf: non-finite floats become null."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    return x


def _draw(summaries: dict[str, SchemeSummary], trials, out: Path) -> dict[str, Any]:
    """Every plot, as {name: file name or None}; stability maps by scheme."""
    vrange = plots.accuracy_range(summaries)
    maps = {}
    for name, s in summaries.items():
        p = plots.plot_stability_map(s, out / f"stability_{file_stem(name)}.png", vrange)
        if p is not None:
            maps[name] = p.name
    drawn = {
        "accuracy": plots.plot_accuracy(summaries, out / "accuracy.png"),
        "divergence_vs_lr": plots.plot_divergence_vs_lr(summaries, out / "divergence_vs_lr.png"),
        "lr_sensitivity": plots.plot_lr_sensitivity(summaries, out / "lr_sensitivity.png"),
        "curves": curve_plots.plot_curves(summaries, trials, out / "curves.png"),
        "signal_propagation": curve_plots.plot_signal_propagation(summaries, trials, out / "signal_propagation.png"),
        "step_time": cost_plots.plot_step_time(summaries, out / "step_time.png"),
    }
    return {"stability_maps": maps} | {k: (p.name if p else None) for k, p in drawn.items()}


def summarize_all(study: collect.StudyData) -> dict[str, SchemeSummary]:
    classes = collect.num_classes(study.params)  # ln C: the initial loss of trials that did not record one
    return {s.name: summarize_scheme(s, classes) for s in study.schemes}


def render_report(study: collect.StudyData, summaries: dict[str, SchemeSummary], out_dir: str | Path) -> Path:
    """Write report.json, the plots, report.md and report.html for a study already read.

    Returns the path of report.html."""
    trials = {(t.scheme, t.trial_id): t for s in study.schemes for t in s.trials}
    reg = evaluate_regularization(study, summaries)  # claim 4, on the seed re-runs
    claims = claims_mod.evaluate_claims(summaries, extra=[reg.claim])
    comparison = paper.paper_comparison(claims, summaries, study.params)
    scale = scale_sections.add_to_report(study, claims, comparison)  # a scale study's claim and paper row
    ew = early_warning.evaluate(t for s in study.schemes for t in s.trials)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    drawn = _draw(summaries, trials, out)
    found = {n: s.importances for n, s in reg.schemes.items() if s.importances}
    drawn["importance"] = getattr(plot_importances(found, out / "importance.png"), "name", None)
    setup = paper.our_setup(study.params)
    data = _clean(document.build_data(study, summaries, claims, comparison, setup, ew, drawn)
                  | scale_sections.scale_data(scale, out) | {"regularization": reg.as_dict()})
    (out / "report.json").write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    sections = document.build_sections(data, out)
    title = f"normstudy stability report — {study.name}"
    (out / "report.md").write_text(render.to_markdown(title, sections), encoding="utf-8")
    html_path = out / "report.html"
    html_path.write_text(render.to_html(title, sections), encoding="utf-8")
    return html_path


def write_report(
    tracking_uri: str,
    out_dir: str | Path,
    *,
    experiment: str | None = None,
    study_run_id: str | None = None,
    study_name: str | None = None,
    publisher: Publisher | None = None,
) -> Path:
    """Write the report of one study into ``out_dir``; return the path of report.html.

    The study: ``study_run_id`` if given, else the most recent study run (named ``study_name`` if given)
    in ``experiment`` (default "normstudy"). Raises :class:`ReportError` with a one-line message.
    ``publisher``: also log the report to the study's MLflow runs through it (artifacts ``report/``, run
    descriptions); if MLflow refuses, a one-line note on stderr says so and the report folder stands.
    ``None``: the folder only, nothing is written to MLflow."""
    uri = collect.normalize_uri(tracking_uri)
    client = collect.connect(uri)
    study = collect.read_study(
        uri, experiment=experiment, study_run_id=study_run_id, study_name=study_name, client=client
    )
    summaries = summarize_all(study)
    html = render_report(study, summaries, out_dir)
    if publisher is not None:
        try:
            publish_report(study, summaries, out_dir, publisher)
        except PublishError as e:
            print(f"normstudy: note: {e}; the report is in {Path(out_dir)}", file=sys.stderr)
    return html


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``normstudy report`` options."""
    parser.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI: a SQLite file (sqlite:///mlruns.db, or a path to a .db file) or an "
        "`mlflow server` URL (default: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--experiment",
        default=None,
        help=f"MLflow experiment (default: {DEFAULT_EXPERIMENT}); its most recent study run is reported",
    )
    which.add_argument("--study", dest="study_run_id", default=None, metavar="RUN_ID", help="a study run's id")
    parser.add_argument("--study-name", default=None, help="the most recent study run with this name")
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR", help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument(
        "--no-publish",
        action="store_true",
        help="only write the folder: do not log the report to the study's MLflow runs (artifacts report/ and "
        "the runs' descriptions)",
    )


def main(args: argparse.Namespace, publisher_factory: PublisherFactory | None = None) -> int:
    """``normstudy report``. ``publisher_factory(tracking_uri, experiment)`` makes the :class:`Publisher`
    the report is logged through (``study.tracking.StudyTracker``), unless ``--no-publish``; it is called
    once the study has been read, for the study's experiment. Without one, only the folder is written."""
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    publish = publisher_factory is not None and not getattr(args, "no_publish", False)
    try:
        path = write_report(
            uri,
            getattr(args, "out", None) or DEFAULT_OUT,
            experiment=getattr(args, "experiment", None),
            study_run_id=getattr(args, "study_run_id", None),
            study_name=getattr(args, "study_name", None),
            publisher=DeferredPublisher(publisher_factory, uri) if publish else None,
        )
    except ReportError as e:
        print(f"normstudy report: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="normstudy report", description=__doc__.splitlines()[0])
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
