"""Issue 9 §3: malformed specs give one line on stderr naming the field (and the fix), exit 2, and write
nothing — no mlruns.db, no normstudy_results, no normstudy_report, no MLflow run.

Two layers, both through the real ``normstudy run`` (``study.cli.main``):
- spec errors (types, unknown keys, sizes, names, YAML, ``--set``) fail in ``study.spec.load``: no Ray;
- preflight errors (tracking store, data path, search spaces, placement) fail in ``study.preflight``
  after Ray is up and before the first MLflow write: the CLI cases join the session's Ray
  (``ray_cluster``); the same cases also run fast against ``preflight`` with a faked 2-CPU cluster.
A few run as real subprocesses to prove the exit code and the stderr line end to end.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from study import spec as spec_mod
from study.cli import main
from study.preflight import preflight
from study.runner import resolve_paths
from study.spec import SpecError
from tests.reliability.conftest import TINY, cli_subprocess, closed_port, foreign_db, half_made_store, written

# --------------------------------------------------------------------------------------------------
# Spec errors: (id, YAML text of --spec or None, extra CLI args, what the line must start with)

SPEC_CASES = [
    ("type-int", "training: {batch_size: abc}", [], "training.batch_size:"),
    ("type-float-list", "training: {lr: [0.1]}", [], "training.lr:"),
    ("type-bool", "training: {nesterov: maybe}", [], "training.nesterov:"),
    ("type-section", "training: 5", [], "training:"),
    ("type-list", "search: {seeds: 3}", [], "search.seeds:"),
    ("unknown-top-key", "trainig: {lr: 0.1}", [], "trainig: unknown key"),
    ("unknown-nested-key", "training: {lrr: 0.1}", [], "training.lrr: unknown key"),
    ("negative-lr", "training: {lr: -0.1}", [], "training.lr: must be > 0"),
    ("zero-batch", "training: {batch_size: 0}", [], "training.batch_size: must be > 0"),
    ("zero-image-size", "data: {image_size: 0}", [], "data.image_size: must be > 0"),
    ("negative-train-size", "data: {train_size: -4}", [], "data.train_size: must be > 0"),
    ("zero-workers", "scaling: {num_workers: 0}", [], "scaling.num_workers: must be > 0"),
    ("negative-workers", "scaling: {num_workers: -2}", [], "scaling.num_workers: must be > 0"),
    ("zero-cpus", "scaling: {cpus_per_worker: 0}", [], "scaling.cpus_per_worker: must be > 0"),
    ("negative-max-steps", "training: {max_steps: -5}", [], "training.max_steps: must be >= 0"),
    ("zero-blocks", "model: {cifar_blocks: [1, 0]}", [], "model.cifar_blocks:"),
    ("zero-samples", "search: {num_samples: 0}", [], "search.num_samples: must be > 0"),
    ("momentum-one", "training: {momentum: 1.0}", [], "training.momentum: must be < 1"),
    ("loss-multiple", "divergence: {loss_multiple: 1}", [], "divergence.loss_multiple: must be > 1"),
    ("unknown-scheme", "schemes: [bn, batchnorm2]", [], "schemes"),
    ("unknown-arch", "model: {arch: resnet9000}", [], "model.arch: must be one of"),
    ("unknown-schedule", "training: {schedule: linear}", [], "training.schedule: must be one of"),
    ("unknown-data-kind", "data: {kind: imagenet}", [], "data.kind: must be one of"),
    ("unknown-scheme-option", "schemes: {wn: {bogus: 1}}", [], "schemes.wn.bogus: unknown option"),
    ("bad-scheme-option", "schemes: {wn: {init_scale: -1}}", [], "schemes.wn.init_scale:"),
    ("empty-schemes", "schemes: []", [], "schemes:"),
    ("duplicate-scheme", "schemes: [bn, bn]", [], "schemes:"),
    ("empty-grid", "search: {grid_lr: []}", [], "search.grid_lr: must not be empty"),
    ("negative-grid", "search: {grid_lr: [0.1, -1]}", [], "search.grid_lr: every value must be > 0"),
    ("empty-seeds", "search: {seeds: []}", [], "search.seeds: must not be empty"),
    ("folder-without-path", "data: {kind: folder}", [], "data.path: required"),
    ("yaml-syntax", "training:\n  lr: [0.1\n  momentum: 0.9\n", [], "{spec}: line"),
    ("yaml-top-list", "- model\n- training\n", [], "{spec}: the top level must be a mapping"),
    ("yaml-python-tag", '!!python/object/apply:os.system ["touch PWNED"]\n', [], "{spec}:"),
    ("yaml-python-tag-nested", 'training: !!python/object/apply:os.system ["touch PWNED"]\n', [], "{spec}:"),
    ("missing-spec-file", None, ["--spec", "{inp}/nope.yaml"], "--spec: file"),
    ("set-without-equals", None, ["--set", "training.lr"], "--set training.lr: expected section.field=value"),
    ("set-bad-yaml", None, ["--set", "training.lr=[0.1"], "--set training.lr: value"),
    ("set-through-value", None, ["--set", "training.lr.x=1"], "--set training.lr.x: 'lr' is not a section"),
    ("set-unknown-key", None, ["--set", "training.lrr=0.3"], "training.lrr: unknown key"),
    ("schemes-flag-unknown", None, ["--schemes", "bn,nope"], "schemes"),
    # issue 23: values that parse but cannot mean a study, repeated YAML keys, the small messages
    ("epochs-inf", "training: {epochs: .inf}", [], "training.epochs: must be a finite number"),
    ("lr-nan", "training: {lr: .nan}", [], "training.lr: must be a finite number"),
    ("yaml-repeated-key", "training:\n  lr: 0.1\n  lr: 0.2\n", [],
     "{spec}: key 'lr' repeated at line 3 (first at line 2); keep one"),
    ("yaml-repeated-section", "training: {lr: 0.1}\nmodel: {arch: resnet18}\ntraining: {lr: 0.2}\n", [],
     "{spec}: key 'training' repeated at line 3 (first at line 1)"),
    ("set-repeated-key", None, ["--set", "training={lr: 0.1, lr: 0.2}"],
     "--set training: in the value, key 'lr' repeated"),
    ("set-no-field", None, ["--set", "=3"], "--set =3: no field name before '='"),
    ("set-empty-part", None, ["--set", "training..lr=3"], "--set training..lr=3: no field name"),
    ("spec-is-a-folder", None, ["--spec", "{inp}"], "--spec: '{inp}' is a folder"),
    ("repeated-seed", "search: {seeds: [0, 1, 0]}", [], "search.seeds: 0 is listed more than once"),
    ("repeated-grid-lr", "search: {grid_lr: [0.1, 0.3, 0.1]}", [], "search.grid_lr: 0.1 is listed more than once"),
    ("repeated-init-scale", "search: {grid_init_scale: [1, 1.0]}", [], "search.grid_init_scale: 1"),
    ("negative-seed", "training: {seed: -1}", [], "training.seed: must be >= 0"),
    ("seed-beyond-32-bit", "search: {seeds: [4294967296]}", [], "search.seeds: seeds must be in [0, 2**32)"),
    ("negative-data-seed", "data: {data_seed: -3}", [], "data.data_seed: must be >= 0"),
    ("zero-steps", "training: {max_steps: 0}", [], "training.max_steps: 0 steps train nothing"),
    ("nesterov-without-momentum", "training: {nesterov: true, momentum: 0}", [],
     "training.nesterov: Nesterov momentum needs training.momentum > 0"),
    ("milestones-not-increasing", "training: {step_epochs: [60, 30]}", [],
     "training.step_epochs: milestones must be > 0 and increasing"),
    ("path-with-generated-data", "data: {path: /srv/imagenet}", [],
     "data.path: '/srv/imagenet' is set but data.kind is 'generated'"),
    ("fewer-samples-than-classes", "data: {num_classes: 10, test_size: 5}", [],
     "data.test_size: 5 samples cannot hold each of the 10 classes"),
    ("eval-resize-below-crop", "data: {kind: folder, path: /srv/x, image_size: 224, eval_resize: 200}", [],
     "data.eval_resize: 200 is below data.image_size 224"),
    ("resources-cpu-key", "scaling: {resources_per_worker: {CPU: 2}}", [], "scaling.resources_per_worker: 'CPU'"),
    ("resources-zero-amount", "scaling: {resources_per_worker: {ddp_node: 0}}", [],
     "scaling.resources_per_worker: 'ddp_node': 0.0 is not a positive amount"),
    ("class-imbalance-below-one", "data: {max_class_imbalance: 0.5}", [], "data.max_class_imbalance: must be >= 1"),
]


def _args(inp: Path, text: str | None, extra: list[str]) -> list[str]:
    args = ["run", "--no-report"]
    if text is not None:
        (inp / "spec.yaml").write_text(text)
        args += ["--spec", str(inp / "spec.yaml")]
    return args + [a.replace("{inp}", str(inp)) for a in extra]


def _check_line(err: str, start: str, inp: Path) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, f"not one line on stderr: {err!r}"
    assert lines[0].startswith("normstudy: "), lines[0]
    msg = lines[0].removeprefix("normstudy: ")
    start = start.replace("{spec}", str(inp / "spec.yaml")).replace("{inp}", str(inp))
    assert msg.startswith(start), f"{msg!r} does not start with {start!r}"
    return msg


def test_at_least_thirty_malformed_specs_are_covered():
    assert len(SPEC_CASES) + len(PREFLIGHT_CASES) >= 30
    assert len(SPEC_CASES) >= 30


@pytest.mark.parametrize("case", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_spec_error_is_one_line_exit_2_and_writes_nothing(case, tmp_path, cwd, capsys):
    _, text, extra, start = case
    inp = tmp_path / "in"
    inp.mkdir()
    rc = main(_args(inp, text, extra))
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    _check_line(err, start, inp)
    assert written(cwd) == []
    assert not (cwd / "PWNED").exists() and not (Path.cwd() / "PWNED").exists()  # the tag ran nothing


@pytest.mark.integration
@pytest.mark.parametrize("case", [SPEC_CASES[0], SPEC_CASES[33]], ids=["type-int", "yaml-python-tag"])
def test_spec_error_through_a_real_subprocess(case, tmp_path):
    _, text, extra, start = case
    inp, cwd = tmp_path / "in", tmp_path / "cwd"
    inp.mkdir(), cwd.mkdir()
    proc = cli_subprocess(_args(inp, text, extra), cwd, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    _check_line(proc.stderr, start, inp)
    assert written(cwd) == [] and not (cwd / "PWNED").exists()


# --------------------------------------------------------------------------------------------------
# Preflight errors: refused after Ray is up, before anything is written.
# (id, setup(inp) -> list of --set overrides, what the line must start with)


def _space(inp: Path, text: str) -> list[str]:
    d = inp / "spaces"
    d.mkdir()
    (d / "bn.yaml").write_text(text)
    return ["schemes=[bn]", f"search.space_dir={d}"]


def _folder(inp: Path, make: list[str]) -> list[str]:
    root = inp / "data"
    for rel in make:
        (root / rel).mkdir(parents=True, exist_ok=True)
    return ["data.kind=folder", f"data.path={root}", "data.loader=torchvision"]


def _file(inp: Path, name: str, text: str) -> Path:
    (inp / name).write_text(text)
    return inp / name


PREFLIGHT_CASES = [
    ("uri-unreachable", lambda inp: [f"tracking.tracking_uri=http://127.0.0.1:{closed_port()}"],
     "tracking.tracking_uri: cannot reach http://127.0.0.1:"),
    ("uri-sqlite-no-folder", lambda inp: [f"tracking.tracking_uri=sqlite:///{inp}/nope/x.db"],
     "tracking.tracking_uri: folder '{inp}/nope' of the SQLite file does not exist"),
    ("uri-sqlite-not-a-db", lambda inp: [f"tracking.tracking_uri=sqlite:///{_file(inp, 'x.db', 'hello')}"],
     "tracking.tracking_uri: '{inp}/x.db' is not a SQLite database"),
    ("uri-file-store", lambda inp: ["tracking.tracking_uri=./mlruns"], "tracking.tracking_uri: "),
    ("uri-unknown-scheme", lambda inp: ["tracking.tracking_uri=ftp://127.0.0.1/x"],
     "tracking.tracking_uri: unknown scheme 'ftp'"),
    ("study-name-quote", lambda inp: ["tracking.study_name=it's"], "tracking.study_name:"),
    ("experiment-empty", lambda inp: ["tracking.experiment=''"], "tracking.experiment:"),
    ("storage-is-a-file", lambda inp: [f"tracking.storage_path={_file(inp, 'f', '')}"], "tracking.storage_path:"),
    ("workers-exceed-cluster", lambda inp: ["scaling.num_workers=4"], "scaling.num_workers: 4 workers"),
    ("cpus-exceed-cluster", lambda inp: ["scaling.cpus_per_worker=3"], "scaling.num_workers: 1 workers × 3 CPUs"),
    ("gpu-without-gpus", lambda inp: ["scaling.use_gpu=true"], "scaling.use_gpu:"),
    ("batch-uneven", lambda inp: ["scaling.num_workers=2", "training.batch_size=63"],
     "training.batch_size: 63 does not split evenly"),
    ("batch-below-workers", lambda inp: ["scaling.num_workers=2", "training.batch_size=1"], "training.batch_size:"),
    ("train-size-below-batch", lambda inp: ["data.train_size=16"], "data.train_size:"),
    ("data-path-missing", lambda inp: ["data.kind=folder", f"data.path={inp}/nodata"], "data.path: folder"),
    ("data-train-dir-missing", lambda inp: _folder(inp, ["val/a"]), "data.train_dir: folder"),
    ("data-no-class-folders", lambda inp: _folder(inp, ["train", "val"]), "data: '{inp}/data/train' has no class"),
    # relative paths are made absolute against the working directory (runner.resolve_paths), then checked
    ("space-dir-relative-missing", lambda inp: ["search.space_dir=spaces"], "search.space_dir: folder '{cwd}/spaces'"),
    ("data-path-relative-missing", lambda inp: ["data.kind=folder", "data.path=data"],
     "data.path: folder '{cwd}/data'"),
    ("space-dir-missing", lambda inp: [f"search.space_dir={inp}/nospaces"], "search.space_dir: folder"),
    ("space-empty", lambda inp: _space(inp, "# nothing\n"), "search.space_dir: "),
    ("space-lr-min-gt-max", lambda inp: _space(inp, "lr: {min: 1.0, max: 0.1, default: 0.5, target: training.lr}\n"),
     "search.space_dir: bn.yaml: lr: min 1.0 > max 0.1"),
    ("space-bad-yaml", lambda inp: _space(inp, "lr: {min: 1.0\n"), "search.space_dir: the space of scheme 'bn'"),
    ("space-python-tag", lambda inp: _space(inp, 'lr: !!python/object/apply:os.system ["touch PWNED"]\n'),
     "search.space_dir: the space of scheme 'bn' line 1 is not valid YAML"),
    ("space-grid-without-lr", lambda inp: _space(
        inp, "dropout: {min: 0.0, max: 0.5, default: 0.0, target: training.dropout}\n"),
     "search.space_dir: the space of scheme 'bn' has no lr"),
    # issue 23: another program's database, a half-made store, a run too short for its settings, a machine
    # too small for one worker
    ("uri-foreign-sqlite", lambda inp: [f"tracking.tracking_uri=sqlite:///{foreign_db(inp / 'app.db')}"],
     "tracking.tracking_uri: '{inp}/app.db' is a SQLite database but not an MLflow store (it has tables orders, "
     "users); nothing was written to it"),
    ("uri-half-made-store", lambda inp: [f"tracking.tracking_uri=sqlite:///{half_made_store(inp / 'half.db')}"],
     "tracking.tracking_uri: '{inp}/half.db' is an MLflow store left half-made by an interrupted schema migration "
     "(_alembic_tmp_experiments); it holds no runs: remove it"),
    ("warmup-whole-run", lambda inp: ["training.warmup_steps=12"],
     "training.warmup_steps: 12 warm-up steps cover the whole run of 12 steps"),
    ("initial-steps-whole-run", lambda inp: ["divergence.initial_steps=20"],
     "divergence.initial_steps: the initial loss is averaged over 20 steps but the run has 12"),
    ("threads-beyond-node", lambda inp: ["training.torch_threads=4096"], "training.torch_threads: 4096 threads"),
    ("memory-beyond-node", lambda inp: ["model.arch=resnet18", "data.image_size=224", "data.train_size=4096",
                                        "training.batch_size=4096"],
     "training.batch_size: one worker of a trial needs about"),
    ("metric-unknown", lambda inp: ["search.metric=accuracy"], "search.metric: 'accuracy'"),
    ("metric-direction", lambda inp: ["search.metric=test_loss"], "search.mode_direction:"),
]


def _preflight_args(case, inp: Path) -> list[str]:
    _, setup, _ = case
    args = ["run", "--no-report"]
    for item in TINY + setup(inp):
        args += ["--set", item]
    return args


@pytest.mark.parametrize("case", PREFLIGHT_CASES, ids=[c[0] for c in PREFLIGHT_CASES])
def test_preflight_refuses_before_writing(case, tmp_path, cwd, monkeypatch):
    """Fast: the same checks against a faked 2-CPU cluster (the CLI path is the integration test below)."""
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "memory": 8 * 2**30})
    inp = tmp_path / "in"
    inp.mkdir()
    overrides = [a for a in _preflight_args(case, inp)[2:] if a != "--set"]
    spec = resolve_paths(spec_mod.load(None, overrides))
    started = time.monotonic()
    with pytest.raises(SpecError) as info:
        preflight(spec)
    assert time.monotonic() - started < 5.0
    msg = str(info.value)
    assert "\n" not in msg
    expect = case[2].replace("{inp}", str(inp)).replace("{cwd}", str(cwd))
    assert msg.startswith(expect), f"{msg!r} does not start with {expect!r}"
    assert written(cwd) == []
    assert not (inp / "nope").exists() and not (inp / "spaces" / "PWNED").exists()


@pytest.mark.integration
@pytest.mark.parametrize("case", PREFLIGHT_CASES, ids=[c[0] for c in PREFLIGHT_CASES])
def test_preflight_error_through_the_cli(case, tmp_path, cwd, capsys, ray_cluster):
    inp = tmp_path / "in"
    inp.mkdir()
    started = time.monotonic()
    rc = main(_preflight_args(case, inp))
    seconds = time.monotonic() - started
    out, err = capsys.readouterr()
    assert rc == 2, (out, err)
    _check_line(err, case[2].replace("{cwd}", str(cwd)), inp)
    assert "normstudy: study" not in out  # a refused study does not say it started
    assert written(cwd) == []
    assert not (inp / "nope").exists()
    assert seconds < 10, f"refused only after {seconds:.1f} s"


@pytest.mark.integration
def test_unreachable_tracking_server_through_a_real_subprocess(tmp_path, ray_cluster):
    """`normstudy run` at a closed port: exit 2, one line naming tracking.tracking_uri, nothing written, and
    the refusal itself takes seconds (a plain connect), not MLflow's minutes of HTTP retries."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    port = closed_port()
    args = ["run", "--no-report", "--set", f"tracking.tracking_uri=http://127.0.0.1:{port}"]
    for item in TINY:
        args += ["--set", item]
    proc = cli_subprocess(args, cwd, ray_address=ray_cluster, timeout=180)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"normstudy: tracking.tracking_uri: cannot reach http://127.0.0.1:{port}"), lines
    assert written(cwd) == []


@pytest.mark.integration
def test_the_quick_default_still_passes_preflight(cwd, ray_cluster):
    """No --spec: the bundled quick default is accepted, and preflight itself writes nothing."""
    spec = resolve_paths(spec_mod.load(None))
    preflight(spec)
    assert written(cwd) == []


def test_the_quick_default_passes_preflight_on_a_two_cpu_cluster(cwd, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    preflight(resolve_paths(spec_mod.load(None)))
    assert written(cwd) == []


def test_preflight_refuses_relative_paths_it_is_handed_unresolved(tmp_path, cwd, monkeypatch):
    """A caller that skips runner.resolve_paths: trials run in their own working directories, so a relative
    data path or space folder that exists here would be missing there — refused, with the absolute path."""
    import ray

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    (cwd / "spaces").mkdir()
    (cwd / "spaces" / "bn.yaml").write_text("lr: {min: 0.01, max: 1.0, default: 0.1, target: training.lr}\n")
    spec = spec_mod.load(None, TINY + ["schemes=[bn]", "search.space_dir=spaces"])
    with pytest.raises(SpecError, match=rf"^search.space_dir: 'spaces' is a relative path.*e.g. {cwd}/spaces$"):
        preflight(spec)
    preflight(resolve_paths(spec))  # resolved, it is fine


@pytest.mark.integration
def test_a_relative_space_dir_works_in_the_trials(tmp_path, ray_cluster, monkeypatch):
    """The fault behind the check above, end to end: a relative search.space_dir that passes the preflight
    in the driver's directory must also be found by the Tune trials (which run elsewhere)."""
    import io

    from study.runner import run_study

    monkeypatch.chdir(tmp_path)
    (tmp_path / "spaces").mkdir()
    (tmp_path / "spaces" / "bn.yaml").write_text("lr: {min: 0.01, max: 0.3, scaling: log, default: 0.1, "
                                                  "target: training.lr}\n")
    spec = spec_mod.load(None, TINY + ["schemes=[bn]", "search.mode=optuna", "search.num_samples=1",
                                       "search.space_dir=spaces", "tracking.study_name=relspace"])
    result = run_study(spec, out=io.StringIO())
    assert [o.error for o in result.trials] == [None]
    assert "final_test_top1" in result.trials[0].metrics
