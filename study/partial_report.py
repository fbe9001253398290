"""The report of an interrupted study, written only when asked for (``normstudy run --partial-report``) and
marked partial in each of its files, so that no one reads it as the study's result.

The report is the ordinary one (``analysis.report.write_report``) of the trials that finished, written
without publishing; this module then marks it — ``report.json`` gets a top-level ``partial`` object
(signal, trials finished, budget), ``report.md`` and ``report.html`` a first line saying so — and logs the
marked files as the study run's ``report/`` artifacts. The study and scheme runs keep their KILLED
descriptions (a published report would replace them with its summary).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from analysis.report import write_report
from study.tracking import StudyTracker


def partial_note(signal_name: str, finished: int, budget: int) -> str:
    return (f"Partial report: the study was interrupted by {signal_name} after {finished} of {budget} trials; "
            "its numbers are not the study's result. `normstudy run --resume` completes it.")


def write_partial_report(tracking_uri: str, experiment: str, study_run_id: str, folder: Path, *,
                         signal_name: str, finished: int, budget: int) -> Path:
    """Write the report of the finished trials into ``folder``, marked partial; returns report.html."""
    page = Path(write_report(tracking_uri, folder, experiment=experiment, study_run_id=study_run_id))
    mark_partial(page.parent, partial_note(signal_name, finished, budget),
                 {"signal": signal_name, "trials_finished": finished, "trial_budget": budget})
    tracker = StudyTracker(tracking_uri, experiment)
    tracker.log_artifacts(study_run_id, sorted(p for p in page.parent.iterdir() if p.is_file()), "report")
    return page


def mark_partial(folder: Path, note: str, info: dict) -> None:
    """Mark the report in ``folder`` partial: report.json's ``partial``, a first line in report.md/.html."""
    data_file = folder / "report.json"
    if data_file.is_file():
        data = json.loads(data_file.read_text(encoding="utf-8"))
        data = {"partial": {**info, "note": note}, **data}
        data_file.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    md = folder / "report.md"
    if md.is_file():
        title, _, rest = md.read_text(encoding="utf-8").partition("\n")
        md.write_text(f"{title}\n\n> **{note}**\n{rest}", encoding="utf-8")
    page = folder / "report.html"
    if page.is_file():
        text = page.read_text(encoding="utf-8")
        banner = f'<p class="partial"><strong>{html.escape(note)}</strong></p>'
        head, sep, tail = text.partition("</h1>")
        page.write_text(head + sep + banner + tail if sep else banner + text, encoding="utf-8")
