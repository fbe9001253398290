"""The stability report in MLflow, next to the runs it describes (docs/mlflow_layout.md).

On a cluster the report folder is on the head node and the MLflow UI is all a team sees, so after
``write_report`` has written the folder:
- the study run gets the report as artifacts under ``report/``: report.html, report.md, report.json and
  every plot report.json names;
- each scheme run gets its own stability map and curves (its representative trials' loss and gradient
  norm) under ``report/``;
- each scheme run gets the comparison as metrics (:mod:`analysis.scheme_metrics`: the best configuration's
  means, the failure rates by kind, the largest stable lr, the learning-rate sensitivity, the step time),
  comparable in the runs table and the chart view;
- the runs' descriptions (MLflow's run notes): each scheme run one line on its trials — every outcome kind,
  errored ones apart — its best configuration's convergence and sensitivity, the study run one line per
  scheme and where the report is.
Logging again (``normstudy report`` once more) replaces the files of the same names.

The writes go through a :class:`Publisher` the caller injects (``study.tracking.StudyTracker`` is one):
``analysis`` never depends on the ``study`` package, which depends on it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from analysis import collect, curve_plots
from analysis.collect import StudyData
from analysis.scheme_metrics import scheme_metrics
from analysis.summarize import SchemeSummary
from trainers.outcome import FAILURE_KINDS, STABLE

ARTIFACT_DIR = "report"
REPORT_FILES = ("report.html", "report.md", "report.json")


class PublishError(Exception):
    """Logging the report to MLflow failed (the report folder itself is complete)."""


class Publisher(Protocol):
    """What publishing the report needs from MLflow (``study.tracking.StudyTracker`` provides it)."""

    def log_artifacts(self, run_id: str, files: list[Path], artifact_path: str) -> None:
        """Log ``files`` to the run under ``artifact_path``, replacing files of the same names."""

    def set_note(self, run_id: str, text: str) -> None:
        """Set the run's description (MLflow's run note)."""

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log ``metrics`` on the run at ``step``."""

    def runs_table_url(self) -> str:
        """The link to the experiment's runs table, for the study run's description."""


PublisherFactory = Callable[[str, str], Publisher]  # (tracking URI, experiment name) -> Publisher


class DeferredPublisher:
    """A :class:`Publisher` that ``factory(tracking_uri, experiment)`` makes on first use, for the experiment
    of the first run written to (the study run's). Until then nothing is opened in MLflow, so a report that
    cannot be made creates no store and no experiment (``normstudy report`` knows the experiment only once
    the study is read: ``--study RUN_ID``)."""

    def __init__(self, factory: PublisherFactory, tracking_uri: str) -> None:
        self.factory, self.tracking_uri = factory, collect.normalize_uri(tracking_uri)
        self._publisher: Publisher | None = None

    def _for_run(self, run_id: str) -> Publisher:
        if self._publisher is None:
            client = collect.connect(self.tracking_uri)
            experiment = client.get_experiment(client.get_run(run_id).info.experiment_id).name
            self._publisher = self.factory(self.tracking_uri, experiment)
        return self._publisher

    def log_artifacts(self, run_id: str, files: list[Path], artifact_path: str) -> None:
        self._for_run(run_id).log_artifacts(run_id, files, artifact_path)

    def set_note(self, run_id: str, text: str) -> None:
        self._for_run(run_id).set_note(run_id, text)

    def log_metrics(self, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
        self._for_run(run_id).log_metrics(run_id, metrics, step)

    def runs_table_url(self) -> str:
        if self._publisher is None:
            raise PublishError("runs_table_url before any run was written: the experiment is not known yet")
        return self._publisher.runs_table_url()


def file_stem(name: str) -> str:
    """A scheme name as it appears in file names (stability_<stem>.png)."""
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)


def report_files(out: Path) -> list[Path]:
    """The files of the report in ``out``: the three documents and the plots report.json names (not
    whatever else the folder holds)."""
    plots = json.loads((out / "report.json").read_text(encoding="utf-8")).get("plots", {})
    names = [*plots.get("stability_maps", {}).values(), *(v for k, v in plots.items() if k != "stability_maps")]
    return [out / f for f in REPORT_FILES] + [out / n for n in sorted(set(filter(None, names)))]


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def scheme_note(s: SchemeSummary) -> str:
    """One line: "15 trials: 9 stable, 3 diverged (3 loss_explosion), 0 collapsed, 2 stalled, 1 errored; best
    lr 0.1, init scale 1: train 0.91 / test 0.71 over 3 seeds, not converged; largest stable lr 0.1 (init
    scale 1); lr sensitivity 1.36 [1.1, 1.6]"."""
    parts = [f"{s.outcomes.get(STABLE, 0)} stable"]
    for kind in FAILURE_KINDS:
        k = s.failures[kind]
        parts.append(f"{k.n} {kind}" + (" (" + ", ".join(f"{n} {c}" for c, n in k.causes.items()) + ")"
                                        if k.n and k.causes else ""))
    parts += [f"{s.n_errored} errored"] if s.n_errored else []
    left = s.n_trials - s.n_finished - s.n_errored
    parts += [f"{left} did not finish"] if left else []
    note = f"{s.n_trials} trials: " + ", ".join(parts)
    if s.best is not None:
        cfg = s.best.config
        at = ", ".join(f"{label} {cfg[k]:g}" for k, label in (("lr", "lr"), ("init_scale", "init scale"))
                       if isinstance(cfg.get(k), int | float))
        seeds = s.best.train_top1.n
        note += (f"; best {at}: train {_num(s.best.train_top1.mean)} / test {_num(s.best.test_top1.mean)}"
                 f" over {seeds} seed{'s' if seeds != 1 else ''}")
        if s.convergence is not None and s.convergence.converged is not None:
            note += ", converged" if s.convergence.converged else ", not converged"
    stable = [(c.get("init_scale"), c.get("lr")) for c in s.stability.largest_stable_lr]
    if stable:
        lrs = [("none" if lr is None else f"{lr:g}") + ("" if scale is None else f" (init scale {scale:g})")
               for scale, lr in stable]
        note += "; largest stable lr " + ", ".join(lrs)
    if s.sensitivity is not None and s.sensitivity.mean is not None:
        iv = s.sensitivity.interval
        note += f"; lr sensitivity {s.sensitivity.mean:.2f}" + (f" [{iv.lo:.2f}, {iv.hi:.2f}]" if iv else "")
    return note


def study_note(study: StudyData, summaries: Mapping[str, SchemeSummary], runs_url: str) -> str:
    lines = [f"Stability report of study {study.name}: artifacts {ARTIFACT_DIR}/report.html (one self-contained "
             f"page), with report.md, report.json and the plots beside it; compare schemes in the "
             f"[runs table]({runs_url}).", ""]
    lines += [f"- **{name}**: {scheme_note(s)}" for name, s in summaries.items()]
    return "\n".join(lines)


def publish_report(
    study: StudyData, summaries: Mapping[str, SchemeSummary], out_dir: str | Path, publisher: Publisher
) -> None:
    """Log the report in ``out_dir`` to the study's MLflow runs through ``publisher``; a
    :class:`PublishError` (one line) if MLflow refuses."""
    out = Path(out_dir)
    try:
        maps = json.loads((out / "report.json").read_text(encoding="utf-8")).get("plots", {}).get("stability_maps", {})
        publisher.log_artifacts(study.run_id, report_files(out), ARTIFACT_DIR)
        trials = {(t.scheme, t.trial_id): t for sch in study.schemes for t in sch.trials}
        with tempfile.TemporaryDirectory(prefix="normstudy-publish-") as tmp:
            for sch in study.schemes:
                s = summaries[sch.name]
                files = [out / maps[sch.name]] if sch.name in maps else []
                curves = curve_plots.plot_curves({sch.name: s}, trials, Path(tmp) / f"curves_{file_stem(sch.name)}.png")
                files += [curves] if curves else []
                publisher.log_artifacts(sch.run_id, files, ARTIFACT_DIR)
                publisher.log_metrics(sch.run_id, scheme_metrics(s))
                publisher.set_note(sch.run_id, scheme_note(s))
        publisher.set_note(study.run_id, study_note(study, summaries, publisher.runs_table_url()))
    except Exception as err:  # noqa: BLE001 - MLflow, HTTP and artifact-store errors all land here
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise PublishError(f"logging the report to MLflow run {study.run_id} failed: {first}") from err
