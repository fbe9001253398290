"""write_report end to end on a real MLflow SQLite store written through the MLflow API, including what it
logs back to the study's runs through an injected publisher (analysis/publish.py; study.tracking.StudyTracker,
which the tests may import — the analysis package may not)."""

from __future__ import annotations

import argparse
import inspect
import json
import socket
from pathlib import Path

import pytest

from analysis import report
from analysis.collect import Curve, read_study
from analysis.publish import DeferredPublisher, Publisher, scheme_note
from analysis.report import ReportError, summarize_all, write_report
from study.tracking import StudyTracker
from tests.analysis.conftest import copy_store
from tests.analysis.synth import STAGES, study, trial, write_mlflow

STEPS = 40


def grad(div: int | None = None, spike_at: int | None = None) -> Curve:
    """1.0 a step; from 4 steps before a divergence 20.0 (a 20x jump); an optional one-step spike."""
    n = div or STEPS
    vals = [20.0 if div and s >= div - 4 else 15.0 if s == spike_at else 1.0 for s in range(1, n + 1)]
    return Curve(tuple(range(1, n + 1)), tuple(vals))


def loss(div: int | None = None) -> Curve:
    n = div or STEPS
    return Curve(tuple(range(1, n + 1)), tuple([2.0 / s**0.3 for s in range(1, n)] + [float("nan") if div else 0.3]))


def act(scale: float) -> dict[str, Curve]:
    return {f"act_std/{st}": Curve((10, 20, 30, 40), (1.0, scale, scale**2, scale**3)) for st in STAGES}


def known_study(bn_better: bool, name: str, shares: dict | None = None):
    """BN: lr 0.1 best (test .76, or .66 when not bn_better), diverges once at lr 3.
    WN: best (lr 0.1, init 1) train .91 test .71; 3 of 8 trials diverge at lr 1."""
    d = 0.0 if bn_better else 0.10

    def ok(scheme, lr, seed, train, test, init=None, spike_at=None, extra=None):
        curves = {"grad_norm": grad(spike_at=spike_at), "loss": loss()} | (extra or {})
        # a store older than initial_train_loss: the report falls back to ln C for the initial loss
        return trial(scheme, lr, seed, init_scale=init, train=train, test=test, curves=curves,
                     metrics={"final_train_loss": 2.0 * (1 - train)})

    def div(scheme, lr, seed, step, cause, init=None):
        curves = {"grad_norm": grad(div=step), "loss": loss(div=step)}
        return trial(scheme, lr, seed, init_scale=init, diverged=True, step=step, cause=cause, curves=curves)

    bn = [
        ok("bn", 0.1, 0, 0.80, 0.75 - d, extra=act(1.0)),
        ok("bn", 0.1, 1, 0.82, 0.77 - d),
        ok("bn", 1.0, 0, 0.85, 0.70 - d, spike_at=30),  # a stable trial with one grad-norm spike: a false alarm
        ok("bn", 1.0, 1, 0.87, 0.72 - d),
        div("bn", 3.0, 0, 15, "nonfinite_loss"),
        ok("bn", 3.0, 1, 0.60, 0.50 - d),
    ]
    wn = [
        ok("wn", 0.1, 0, 0.90, 0.70, init=1.0, extra=act(2.0)),
        ok("wn", 0.1, 1, 0.92, 0.72, init=1.0),
        div("wn", 1.0, 0, 20, "loss_spike", init=1.0),
        div("wn", 1.0, 1, 30, "loss_spike", init=1.0),
        ok("wn", 0.1, 0, 0.88, 0.69, init=2.0),
        ok("wn", 0.1, 1, 0.88, 0.69, init=2.0),
        div("wn", 1.0, 0, 25, "nonfinite_loss", init=2.0),
        ok("wn", 1.0, 1, 0.80, 0.60, init=2.0),
    ]
    where = {"normstudy.profile_device": "cpu", "normstudy.profile_dtype": "float32",
             "normstudy.profile_batch": "64", "normstudy.profile_where": "worker"}
    return study({"bn": bn, "wn": wn}, name=name, scheme_metrics=shares,
                 scheme_tags={"bn": where, "wn": where} if shares else None)


@pytest.fixture(scope="module")
def two_studies(empty_store, tmp_path_factory):
    """Experiment 'normstudy': study 'bn_wins'; experiment 'flipped': study 'wn_wins' with norm_share and
    without per-stage activations. Written once; the tests read it, and log reports to bn_wins only."""
    folder = tmp_path_factory.mktemp("two_studies")
    uri, client = copy_store(empty_store, folder)
    for name in ("normstudy", "flipped"):  # artifacts in the test's folder, not in ./mlruns of the cwd
        client.create_experiment(name, artifact_location=(folder / "artifacts" / name).as_uri())
    repeats = {"norm_share_std": 0.01, "profile_repeats": 5}  # the profiler's spread over its windows
    flipped = known_study(False, "wn_wins", {"bn": {"norm_share": 0.3, **repeats},
                                              "wn": {"norm_share": 0.05, **repeats}})
    for sch in flipped.schemes:
        for t in sch.trials:
            t.curves = {k: c for k, c in t.curves.items() if not k.startswith("act_std/")}
    ids = {
        "bn_wins": write_mlflow(client, "normstudy", known_study(True, "bn_wins")),
        "wn_wins": write_mlflow(client, "flipped", flipped),
    }
    return uri, client, ids


def _verdicts(data):
    return {c["id"]: c["verdict"] for c in data["claims"]}


def test_report_json_numbers(two_studies, tmp_path):
    uri, _, ids = two_studies
    html = write_report(uri, tmp_path / "out")  # default experiment "normstudy", its latest study
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert html == tmp_path / "out" / "report.html" and html.is_file()
    assert data["study"]["name"] == "bn_wins" and data["study"]["run_id"] == ids["bn_wins"]
    bn, wn = data["schemes"]["bn"], data["schemes"]["wn"]

    assert bn["best"]["config"]["lr"] == 0.1
    assert bn["best"]["train_top1"]["mean"] == pytest.approx(0.81)
    assert bn["best"]["test_top1"]["mean"] == pytest.approx(0.76)
    assert bn["best"]["test_top1"]["std"] == pytest.approx(0.0141421, rel=1e-4)
    assert bn["best"]["gap"]["mean"] == pytest.approx(0.05)
    assert wn["best"]["config"] == {"init_scale": 1.0, "lr": 0.1, "weight_decay": 0.0001}
    assert wn["best"]["train_top1"]["mean"] == pytest.approx(0.91)
    assert wn["best"]["gap"]["mean"] == pytest.approx(0.20)

    assert bn["failures"]["diverged"]["rate"] == pytest.approx(1 / 6)
    assert wn["failures"]["diverged"]["rate"] == pytest.approx(3 / 8) == wn["failure_rate"]
    assert wn["failures"]["diverged"]["causes"] == {"loss_spike": 2, "nonfinite_loss": 1}
    assert wn["outcomes"] == {"stable": 5, "diverged": 3, "collapsed": 0, "stalled": 0, "errored": 0,
                              "unfinished": 0}
    assert bn["stability_map"]["largest_stable_lr"] == [{"init_scale": None, "lr": 1.0}]
    assert wn["stability_map"]["largest_stable_lr"] == [
        {"init_scale": 1.0, "lr": 0.1},
        {"init_scale": 2.0, "lr": 0.1},
    ]
    assert {(t["outcome"], t["step"], t["cause"]) for t in wn["failed_trials"]} == {
        ("diverged", 20, "loss_spike"),
        ("diverged", 30, "loss_spike"),
        ("diverged", 25, "nonfinite_loss"),
    }
    assert bn["failed_trials"][0]["layer"] == "layer3.0.conv2"
    # lr sensitivity read through MLflow, the initial loss from ln C (no initial_train_loss in this store)
    assert data["lr_sensitivity"]["initial_loss"].startswith("ln(num_classes) (the study predates")
    # bn, seed 0: lrs 0.1, 1, 3 → losses 0.4, 0.3, ln 10 (diverged); best 0.3
    assert bn["lr_sensitivity"]["per_seed"][0] == {"seed": 0, "value": pytest.approx((0.4 + 0.3 + 2.302585) / 3 - 0.3)}
    assert bn["best"]["convergence"]["converged"] is False  # 81% train
    assert bn["step_time_s"]["mean"] == pytest.approx(0.03)

    # two seeds a configuration: the means point the paper's way, but the 95% intervals hold 0
    assert _verdicts(data) == {1: "inconclusive", 2: "inconclusive", 3: "not measured", 4: "not measured"}
    ci = data["claims"][0]["evidence"]["wn"]["test_minus_bn_ci"]
    assert ci["level"] == 0.95 and ci["lo"] < ci["estimate"] < ci["hi"]
    assert "early_warning" in data  # its numbers: tests/analysis/test_early_warning.py
    assert data["plots"]["signal_propagation"] == "signal_propagation.png"


def test_claims_flip_with_the_data(two_studies, tmp_path):
    uri, _, _ = two_studies
    write_report(uri, tmp_path, experiment="flipped")  # no publisher: wn_wins stays unpublished (below)
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["study"]["name"] == "wn_wins"
    assert data["schemes"]["bn"]["best"]["test_top1"]["mean"] == pytest.approx(0.66)
    # claim 3 has a spread over profiler repeats and a large effect: decided; claims 1–2 rest on 2 seeds
    assert _verdicts(data) == {1: "inconclusive", 2: "inconclusive", 3: "confirmed", 4: "not measured"}
    assert "BN has the lower test top-1 here" in data["claims"][0]["reason"]
    assert data["schemes"]["bn"]["norm_share"] == 0.3
    # claim 3 says where the shares were profiled (the scheme runs' tags), in report.json and in words
    assert data["claims"][2]["evidence"]["measured_on"]["wn"] == {"device": "cpu", "dtype": "float32",
                                                                  "batch": "64", "where": "worker"}
    assert data["claims"][2]["reason"].endswith("Measured on: cpu, float32, batch 64 per worker, in the worker.")


def test_study_selection_by_run_id_and_by_name(two_studies, tmp_path):
    uri, client, ids = two_studies
    st = read_study(uri, study_run_id=ids["wn_wins"])
    assert (st.name, st.experiment) == ("wn_wins", "flipped")
    assert [s.name for s in st.schemes] == ["bn", "wn"] and len(st.schemes[1].trials) == 8
    t = next(t for t in st.schemes[1].trials if t.diverged)
    assert t.divergence_step in (20, 25, 30) and len(t.curves["grad_norm"]) == t.divergence_step
    assert "act_std/stem" not in t.curves  # per-stage curves are read for representatives only
    assert read_study(uri, experiment="flipped", study_name="wn_wins").run_id == ids["wn_wins"]
    with pytest.raises(ReportError, match="no study runs named 'nope' in experiment 'flipped'"):
        read_study(uri, experiment="flipped", study_name="nope")
    exp_id = client.get_experiment_by_name("flipped").experiment_id
    scheme_run = client.search_runs([exp_id], "tags.`normstudy.role` = 'scheme'")[0]
    with pytest.raises(ReportError, match="is not a study run"):
        read_study(uri, study_run_id=scheme_run.info.run_id)


def test_errors_are_one_line(store, tmp_path):
    uri, client = store
    with pytest.raises(ReportError, match="unknown experiment 'missing'") as e:
        write_report(uri, tmp_path, experiment="missing")
    assert "\n" not in str(e.value)
    client.create_experiment("normstudy")
    with pytest.raises(ReportError, match="no study runs in experiment 'normstudy'"):
        write_report(uri, tmp_path)
    with pytest.raises(ReportError, match="no MLflow run with id"):
        write_report(uri, tmp_path, study_run_id="0123456789abcdef")
    with pytest.raises(ReportError, match="no MLflow database at"):
        write_report(f"sqlite:///{tmp_path}/absent.db", tmp_path)
    assert not (tmp_path / "absent.db").exists()  # reading never creates a store


def test_unreachable_tracking_server(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ReportError, match=f"cannot reach the MLflow tracking server at http://127.0.0.1:{port}"):
        write_report(f"http://127.0.0.1:{port}", tmp_path)


def test_cli_main_passes_its_options_and_reports_errors_in_one_line(store, tmp_path, monkeypatch, capsys):
    uri, _ = store
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    with pytest.raises(SystemExit):  # --experiment and --study exclude each other
        parser.parse_args(["--experiment", "a", "--study", "b"])
    capsys.readouterr()
    args = parser.parse_args(["--tracking-uri", uri, "--experiment", "nope", "--out", str(tmp_path / "r")])
    assert report.main(args) == 2
    err = capsys.readouterr().err
    assert "unknown experiment 'nope'" in err and err.count("\n") == 1

    seen = {}

    def fake_write_report(tracking_uri, out_dir, **kw):
        seen.update(kw, tracking_uri=tracking_uri, out_dir=out_dir)
        return tmp_path / "r" / "report.html"

    def factory(tracking_uri, experiment):
        raise AssertionError("made only when the report is logged")

    monkeypatch.setattr(report, "write_report", fake_write_report)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///from_env.db")
    assert report.main(parser.parse_args(["--study", "abc", "--study-name", "S"]), publisher_factory=factory) == 0
    publisher = seen.pop("publisher")
    assert seen == {
        "tracking_uri": "sqlite:///from_env.db",
        "out_dir": "normstudy_report",
        "experiment": None,
        "study_run_id": "abc",
        "study_name": "S",
    }
    # publishing by default, through the factory's publisher, made for the study's experiment on first use
    assert isinstance(publisher, DeferredPublisher) and publisher.factory is factory
    assert publisher.tracking_uri == "sqlite:///from_env.db"
    assert capsys.readouterr().out.strip() == str(tmp_path / "r" / "report.html")
    assert report.main(parser.parse_args(["--no-publish"]), publisher_factory=factory) == 0
    assert seen["publisher"] is None
    assert report.main(parser.parse_args([])) == 0  # without a factory: the folder only
    assert seen["publisher"] is None


# --------------------------------------------------------------------------------------------------
# what write_report logs back to MLflow


def _artifacts(client, run_id: str, path: str = "report") -> set[str]:
    return {f.path.split("/")[-1] for f in client.list_artifacts(run_id, path)}


def test_report_is_logged_to_the_study_and_scheme_runs(two_studies, tmp_path):
    uri, client, ids = two_studies
    write_report(uri, tmp_path / "out", study_run_id=ids["bn_wins"], publisher=StudyTracker(uri, "normstudy"))
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    pngs = {p.name for p in (tmp_path / "out").glob("*.png")}
    assert len(pngs) >= 5 and "stability_wn.png" in pngs
    assert _artifacts(client, ids["bn_wins"]) == {"report.html", "report.md", "report.json"} | pngs
    (tmp_path / "dl").mkdir()
    logged = client.download_artifacts(ids["bn_wins"], "report/report.json", str(tmp_path / "dl"))
    assert json.loads(Path(logged).read_text()) == data  # the very file

    st = read_study(uri, study_run_id=ids["bn_wins"])
    summaries = summarize_all(st)
    for sch in st.schemes:
        assert _artifacts(client, sch.run_id) == {f"stability_{sch.name}.png", f"curves_{sch.name}.png"}
        run = client.get_run(sch.run_id)
        assert run.data.tags["mlflow.note.content"] == scheme_note(summaries[sch.name])
        sens = data["schemes"][sch.name]["lr_sensitivity"]
        assert run.data.metrics["lr_sensitivity"] == pytest.approx(sens["mean"], rel=1e-3)  # logged to 4 digits
        assert (run.data.metrics["lr_sensitivity_lo"], run.data.metrics["lr_sensitivity_hi"]) == pytest.approx(
            (sens["ci"]["lo"], sens["ci"]["hi"]), rel=1e-3)
        best = data["schemes"][sch.name]["best"]  # the report's best configuration, the run's metrics
        assert run.data.metrics["best_test_top1"] == pytest.approx(best["test_top1"]["mean"], rel=1e-3)
    wn = client.get_run(st.schemes[1].run_id).data.tags["mlflow.note.content"]
    assert wn.startswith("8 trials: 5 stable, 3 diverged (2 loss_spike, 1 nonfinite_loss), 0 collapsed, 0 stalled; "
                         "best lr 0.1, init scale 1: train 0.91 / test 0.71 over 2 seeds, not converged; "
                         "largest stable lr 0.1 (init scale 1)")
    assert "; lr sensitivity " in wn
    study_note = client.get_run(ids["bn_wins"]).data.tags["mlflow.note.content"]
    assert "report/report.html" in study_note and f"- **wn**: {wn}" in study_note
    exp = client.get_experiment_by_name("normstudy")  # reporting on it marked the experiment model-training
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "workflowType=machine_learning" in exp.tags["mlflow.note.content"]


def test_no_publish_writes_nothing_to_mlflow(two_studies, tmp_path):
    uri, client, ids = two_studies
    before = client.get_run(ids["wn_wins"]).data.tags
    write_report(uri, tmp_path / "out", study_run_id=ids["wn_wins"], publisher=None)
    assert (tmp_path / "out" / "report.html").is_file()
    assert client.list_artifacts(ids["wn_wins"]) == [] and client.get_run(ids["wn_wins"]).data.tags == before


def test_an_artifact_store_that_refuses_leaves_the_report_and_says_so(store, tmp_path, capsys):
    uri, client = store
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")  # a file where the artifact folder should be: every upload fails
    client.create_experiment("normstudy", artifact_location=(blocker / "artifacts").as_uri())
    run_id = write_mlflow(client, "normstudy", known_study(True, "blocked"))
    html = write_report(uri, tmp_path / "out", publisher=StudyTracker(uri, "normstudy"))
    assert html.is_file() and (tmp_path / "out" / "report.json").is_file()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"logging the report to MLflow run {run_id} failed" in err
    assert str(tmp_path / "out") in err


class RecordingPublisher:
    """A :class:`Publisher` that only records what it is asked to write."""

    def __init__(self, tracking_uri: str, experiment: str) -> None:
        self.made_for = (tracking_uri, experiment)
        self.artifacts: dict[str, set[str]] = {}
        self.notes: dict[str, str] = {}

    def log_artifacts(self, run_id: str, files: list[Path], artifact_path: str) -> None:
        assert artifact_path == "report" and all(Path(f).is_file() for f in files)
        self.artifacts.setdefault(run_id, set()).update(Path(f).name for f in files)

    def set_note(self, run_id: str, text: str) -> None:
        self.notes[run_id] = text

    def log_metrics(self, run_id: str, metrics, step: int = 0) -> None:
        self.metrics = getattr(self, "metrics", {}) | {run_id: dict(metrics)}

    def runs_table_url(self) -> str:
        return "#/experiments/42/runs"


def test_main_makes_the_publisher_for_the_study_experiment_once_the_study_is_read(two_studies, tmp_path):
    uri, client, ids = two_studies
    made: list[RecordingPublisher] = []

    def factory(tracking_uri: str, experiment: str) -> RecordingPublisher:
        made.append(RecordingPublisher(tracking_uri, experiment))
        return made[-1]

    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    args = parser.parse_args(["--tracking-uri", uri, "--study", ids["wn_wins"], "--out", str(tmp_path / "r")])
    assert report.main(args, publisher_factory=factory) == 0
    (pub,) = made
    assert pub.made_for == (uri, "flipped")  # --study names a run: its experiment, found from the run
    st = read_study(uri, study_run_id=ids["wn_wins"])
    assert pub.artifacts[st.run_id] >= {"report.html", "report.md", "report.json"}
    assert {sch.run_id for sch in st.schemes} <= set(pub.artifacts)
    assert "[runs table](#/experiments/42/runs)" in pub.notes[st.run_id]
    assert {sch.run_id for sch in st.schemes} == set(pub.metrics)
    assert all("lr_sensitivity" in m for m in pub.metrics.values())
    assert client.list_artifacts(ids["wn_wins"]) == []  # it wrote only through the publisher

    # a report that cannot be made never makes a publisher: nothing is created in MLflow
    missing = parser.parse_args(["--tracking-uri", uri, "--experiment", "nope", "--out", str(tmp_path / "n")])
    assert report.main(missing, publisher_factory=factory) == 2 and len(made) == 1
    assert client.get_experiment_by_name("nope") is None


def test_study_tracker_is_a_publisher():
    for name in ("log_artifacts", "set_note", "log_metrics", "runs_table_url"):
        want = inspect.signature(getattr(Publisher, name))
        have = inspect.signature(getattr(StudyTracker, name))
        assert str(have) == str(want), name  # the same parameters, annotations and return type
