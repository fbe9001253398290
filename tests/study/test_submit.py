"""Real-study specs (specs/*.yaml) and cluster submission (`normstudy submit` → `ray job submit`).

Unit tests: each spec loads and validates with ``data.path`` pointing at a tiny ImageNet-layout folder (and
that folder builds 224 px batches through the spec's data section), the paper's values are what the spec
says; ``submit_command``'s command, spec path, notes and auth environment; ``cmd_submit`` runs exactly the
command it prints.

Integration test (``-m integration``): a real Ray head (``ray start --head --block`` with its own ports,
temp dir and auth token) and a real ``mlflow server`` on loopback ports; ``normstudy submit`` sends a reduced
quick study as a Ray job, waits for it, and the study/scheme/trial runs are read back from the server.
Teardown kills only the processes this test started (by pid: the head's process tree, anything whose
command line names this test's Ray temp dir, the mlflow server's tree) — never ``ray stop``, which stops
every Ray on the host.
"""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from study import cli
from study import spec as spec_mod
from study.spec import PAPER_SCHEMES
from tests.trainers.data.imagefolder import jpeg_folder  # noqa: F401  (session fixture)
from trainers.data import build_data
from trainers.data.folder import scan_folder

ROOT = Path(__file__).resolve().parents[2]
SPECS = {"imagenet_resnet50": ROOT / "specs" / "imagenet_resnet50.yaml",
         "imagenette_resnet50": ROOT / "specs" / "imagenette_resnet50.yaml"}
BIN = Path(sys.executable).parent  # ray, mlflow and normstudy of this environment


# --------------------------------------------------------------------------------------------------
# the specs


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_loads_validates_and_its_folder_builds_224px_batches(name, jpeg_folder):  # noqa: F811
    root = jpeg_folder[0]
    spec = spec_mod.load(SPECS[name], [f"data.path={root}"])
    assert spec.data.kind == "folder" and spec.data.path == str(root)
    assert spec.model.arch == "resnet50"
    assert [e.name for e in spec.schemes] == list(PAPER_SCHEMES)
    assert spec.scaling.use_gpu and spec.data.loader == "auto"
    assert spec.training.batch_size % spec.scaling.num_workers == 0
    assert spec.tracking.study_name == name  # distinct studies: one never --resumes into the other
    # every value survives the MLflow params round trip (flatten) and a dump/load round trip
    assert spec_mod.flatten(spec)["data.path"] == str(root)
    assert spec_mod.from_dict(yaml.safe_load(spec_mod.dump(spec))) == spec
    # the data section really reads an ImageNet-layout folder at the paper's 224 px (CPU loader here)
    assert len(scan_folder(spec.data).classes) == 3
    data = build_data(spec.data.model_copy(update={"loader": "torchvision", "loader_workers": 0}), batch_size=2,
                      device=torch.device("cpu"))
    x, y = next(data.train.epoch_iter(0))
    assert x.shape == (2, 3, 224, 224) and y.dtype == torch.int64
    xe, _ = next(iter(data.test))
    assert xe.shape[1:] == (3, 224, 224)


def test_imagenet_spec_is_the_papers_setup():
    s = spec_mod.load(SPECS["imagenet_resnet50"])
    t = s.training
    assert (s.scaling.num_workers, s.scaling.use_gpu) == (8, True)  # 8 GPUs
    assert (t.batch_size, t.epochs, t.lr, t.lr_reference_batch) == (256, 90, 0.1, 256)
    assert (t.momentum, t.weight_decay, t.schedule, t.step_epochs, t.step_gamma) == (0.9, 1e-4, "step",
                                                                                    [30, 60, 80], 0.1)
    assert (s.data.image_size, s.data.eval_resize) == (224, 256)
    assert 0.1 in s.search.grid_lr  # the paper's rate is a grid point


def test_imagenette_spec_is_one_gpu():
    s = spec_mod.load(SPECS["imagenette_resnet50"])
    assert (s.scaling.num_workers, s.scaling.use_gpu) == (1, True)
    assert s.training.batch_size == 256 and s.search.mode == "grid"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_spec_folder_data_needs_a_path(name):
    # The placeholder path validates (checked when data is built, on the cluster); an empty one does not.
    assert spec_mod.load(SPECS[name]).data.path
    with pytest.raises(spec_mod.SpecError, match="data.path: required"):
        spec_mod.load(SPECS[name], ["data.path="])


# --------------------------------------------------------------------------------------------------
# submit: the command


def _args(*argv: str):
    return cli.build_parser().parse_args(["submit", "--address", "http://127.0.0.1:8265", *argv])


def test_submit_command_is_the_readmes_ray_job_submit(monkeypatch):
    monkeypatch.chdir(ROOT)
    cmd = cli.submit_command(_args("--spec", "specs/imagenet_resnet50.yaml", "--set", "data.path=/d/imagenet",
                                   "--set", "schemes=[bn, wn]"))
    assert cmd[:cmd.index("--")] == ["ray", "job", "submit", "--address", "http://127.0.0.1:8265",
                                     "--working-dir", "."]
    assert cmd[cmd.index("--") + 1:] == ["python", "-m", "study.cli", "run", "--spec", "specs/imagenet_resnet50.yaml",
                                         "--set", "data.path=/d/imagenet", "--set", "schemes=[bn, wn]"]
    # `ray job submit` shlex-joins the entrypoint: a value with spaces stays one argument on the cluster
    assert shlex.split(shlex.join(cmd[cmd.index("--") + 1:]))[-1] == "schemes=[bn, wn]"
    assert "--no-wait" in cli.submit_command(_args("--no-wait"))


def test_submit_passes_a_spec_inside_the_working_dir_relative_and_keeps_symlinks(monkeypatch):
    monkeypatch.chdir(ROOT / "study")
    cmd = cli.submit_command(_args("--spec", str(ROOT / "specs" / "quick.yaml"), "--working-dir", str(ROOT)))
    assert cmd[cmd.index("--spec") + 1] == "specs/quick.yaml"  # read from the uploaded copy, symlink kept
    assert cmd[cmd.index("--working-dir") + 1] == str(ROOT)


def test_submit_notes_what_the_temporary_job_dir_would_lose(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    outside = tmp_path / "s.yaml"
    outside.write_text((ROOT / "study" / "specs" / "quick.yaml").read_text())
    assert cli.main(["submit", "--address", "http://h:8265", "--spec", str(outside), "--dry-run"]) == 0
    out, err = capsys.readouterr()
    assert out.strip().endswith(f"--spec {outside}")  # outside the working dir: absolute
    assert "tracking.tracking_uri 'sqlite:///mlruns.db' is relative" in err
    assert "tracking.storage_path 'normstudy_results' is relative" in err
    assert f"--spec '{outside}' is outside --working-dir" in err
    assert all(line.startswith("normstudy: note: ") for line in err.strip().splitlines())
    # absolute paths, an mlflow server, a spec inside the checkout: nothing to note
    assert cli.main(["submit", "--address", "http://h:8265", "--spec", "specs/quick.yaml", "--dry-run",
                     "--set", "tracking.tracking_uri=http://m:5000", "--set", f"tracking.storage_path={tmp_path}"]) == 0
    assert "is relative" not in capsys.readouterr().err


def test_submit_from_a_folder_without_the_source_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["submit", "--address", "http://h:8265", "--dry-run"]) == 0
    assert "holds no normstudy source" in capsys.readouterr().err


@pytest.mark.parametrize("env, token_file, expected", [
    ({}, True, {"RAY_AUTH_MODE": "token"}),               # `ray start` would have turned token auth on
    ({}, False, {}),                                      # no token anywhere: leave auth alone
    ({"RAY_AUTH_TOKEN": "t"}, False, {"RAY_AUTH_MODE": "token"}),
    ({"RAY_AUTH_MODE": "disabled"}, True, {}),            # an explicit choice is respected
])
def test_submit_auth_env(tmp_path, monkeypatch, env, token_file, expected):
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HOME", str(tmp_path))
    if token_file:
        (tmp_path / ".ray").mkdir()
        (tmp_path / ".ray" / "auth_token").write_text("x" * 32)
    assert cli._submit_auth_env() == expected


def test_cmd_submit_runs_exactly_what_it_prints_and_returns_its_exit_code(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    calls = []

    def fake_call(argv, env):
        calls.append((argv, env))
        return 1  # `ray job submit` exits 1 when the job fails

    monkeypatch.setattr(cli.subprocess, "call", fake_call)
    assert cli.main(["submit", "--address", "http://h:8265", "--spec", "specs/quick.yaml",
                     "--set", "training.lr=0.2"]) == 1
    printed = shlex.split(capsys.readouterr().out.strip())
    (argv, env), = calls
    assert Path(argv[0]).name == "ray" and argv[1:] == printed[1:] and printed[0] == "ray"
    assert env["RAY_AUTH_MODE"] == "token"


def test_submit_refuses_a_bad_spec_before_running_anything(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(cli.subprocess, "call", lambda *a, **k: pytest.fail("ran ray job submit"))
    assert cli.main(["submit", "--address", "http://h:8265", "--set", "training.lr=-1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().count("\n") == 0 and "training.lr: must be > 0" in err


# --------------------------------------------------------------------------------------------------
# submit: a real head, a real mlflow server, a real job


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float, ok=(200,)) -> None:
    """Until ``url`` answers with a status in ``ok`` (any HTTP answer counts when ok is None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:3]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status in ok:
                    return
        except urllib.error.HTTPError as err:
            if err.code in ok:
                return
        except OSError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _kill_tree(proc: subprocess.Popen, marker: str | None = None, grace: float = 5.0) -> None:
    """Terminate ``proc``, its descendants and (``marker``) any process whose command line contains it,
    then kill what is left after ``grace`` seconds. Only processes this test started are touched."""
    import psutil

    procs: dict[int, psutil.Process] = {}
    try:
        root = psutil.Process(proc.pid)
        procs[root.pid] = root
        procs.update({c.pid: c for c in root.children(recursive=True)})
    except psutil.NoSuchProcess:
        pass
    if marker:
        for p in psutil.process_iter(["cmdline"]):
            if p.pid != os.getpid() and marker in " ".join(p.info["cmdline"] or ()):
                procs[p.pid] = p
    for p in procs.values():
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def _dashboard_ready() -> bool:
    try:
        import aiohttp_cors  # noqa: F401
        import opencensus  # noqa: F401
        import prometheus_client  # noqa: F401
    except ImportError:
        return False
    return True


def _start_head(tmp: str) -> tuple[subprocess.Popen, str, dict[str, str], Path]:
    """``ray start --head --block`` on loopback with its own ports, temp dir and auth token."""
    ports = {k: _free_port() for k in ("port", "dashboard-port", "ray-client-server-port", "node-manager-port",
                                       "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
                                       "dashboard-agent-grpc-port", "runtime-env-agent-port")}
    env = {**os.environ,
           # token auth as on a real cluster, with this test's own token (not ~/.ray/auth_token)
           "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           # the job's `python -m study.cli` must be this environment's python, as on a cluster whose
           # head was started from the activated environment
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0",
           # keep every address on loopback: Ray otherwise swaps 127.0.0.1 for the host's interface address
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    env.pop("RAY_ADDRESS", None)
    log = Path(tmp) / "head.log"
    cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
           "--dashboard-host=127.0.0.1", "--include-dashboard=true", "--num-cpus=2", "--num-gpus=0",
           f"--temp-dir={tmp}", "--disable-usage-stats", *(f"--{k}={v}" for k, v in ports.items())]
    with open(log, "w") as fh:
        head = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    return head, f"http://127.0.0.1:{ports['dashboard-port']}", env, log


def _start_mlflow(tmp: Path) -> tuple[subprocess.Popen, str, Path]:
    port = _free_port()
    log = tmp / "mlflow.log"
    cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp}/m.db",
           "--artifacts-destination", str(tmp / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    with open(log, "w") as fh:
        server = subprocess.Popen(cmd, cwd=tmp, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True)
    return server, f"http://127.0.0.1:{port}", log


@pytest.fixture
def cluster(tmp_path) -> Iterator[tuple[str, dict[str, str], str]]:
    """A throwaway Ray head and an mlflow server, started side by side; yields (dashboard address, the
    environment a client needs, the MLflow tracking URI)."""
    if not _dashboard_ready():
        pytest.skip("ray job submit needs the Ray dashboard: pip install 'ray[default]==2.60.0'")
    ray_tmp = tempfile.mkdtemp(prefix="nsray-")  # short: Ray's unix socket paths must stay < 107 characters
    head = server = None
    try:
        head, address, env, head_log = _start_head(ray_tmp)
        server, uri, server_log = _start_mlflow(tmp_path)
        _wait_http(f"{uri}/health", server, server_log, timeout=120)
        # the job API answers 401 without the token once the head is up
        _wait_http(f"{address}/api/version", head, head_log, timeout=120, ok=(200, 401))
        yield address, env, uri
    finally:
        if head is not None:
            _kill_tree(head, marker=ray_tmp)
        if server is not None:
            _kill_tree(server)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.integration
def test_submit_runs_the_study_as_a_ray_job_and_logs_to_the_mlflow_server(cluster, tmp_path):
    from mlflow import MlflowClient

    address, env, mlflow_server = cluster
    spec_file = tmp_path / "quick_submit.yaml"
    raw = yaml.safe_load((ROOT / "study" / "specs" / "quick.yaml").read_text())
    raw["tracking"].update(experiment="submit_it", study_name="submit_it")
    spec_file.write_text(yaml.safe_dump(raw))
    storage = tmp_path / "results"
    exe = [str(BIN / "normstudy")] if (BIN / "normstudy").is_file() else [sys.executable, "-m", "study.cli"]
    argv = [*exe, "submit", "--address", address, "--spec", str(spec_file),
            "--set", f"tracking.tracking_uri={mlflow_server}", "--set", f"tracking.storage_path={storage}",
            "--set", "schemes=[bn, wn]", "--set", "search.grid_lr=[0.03, 0.3]", "--set", "search.grid_init_scale=[1.0]",
            "--set", "search.seeds=[0]", "--set", "training.max_steps=12", "--set", "training.batch_size=32",
            "--set", "data.train_size=256", "--set", "data.test_size=128", "--set", "data.train_eval_size=64"]
    try:
        done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as err:
        pytest.fail(f"the job did not finish in 240 s:\n{(err.stdout or b'')[-4000:]!r}")
    log = done.stdout[-6000:] + done.stderr[-3000:]
    assert done.returncode == 0, log
    first = done.stdout.splitlines()[0]
    assert first.startswith(f"ray job submit --address {address} --working-dir . -- python -m study.cli run "), log
    assert "succeeded" in done.stdout, log

    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("submit_it")
    assert exp is not None, log
    runs = client.search_runs([exp.experiment_id], max_results=100)
    by_role: dict[str, list] = {}
    for r in runs:
        by_role.setdefault(r.data.tags.get("normstudy.role"), []).append(r)
    (study,) = by_role["study"]
    assert study.info.status == "FINISHED" and study.data.params["training.max_steps"] == "12"
    schemes = {r.data.tags["normstudy.scheme"]: r for r in by_role["scheme"]}
    assert set(schemes) == {"bn", "wn"}
    assert all(r.data.tags["mlflow.parentRunId"] == study.info.run_id for r in schemes.values())
    trials = by_role["trial"]
    assert len(trials) == 4 and all(t.info.status == "FINISHED" for t in trials)
    for t in trials:
        assert t.data.tags["mlflow.parentRunId"] == schemes[t.data.tags["normstudy.scheme"]].info.run_id
        assert t.data.params["tracking.tracking_uri"] == mlflow_server
        assert "loss" in t.data.metrics and "steps_done" in t.data.metrics
    assert (storage / "submit_it").is_dir()  # Ray Tune storage at the absolute path, not in the job's temp dir
