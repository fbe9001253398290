"""Issue 18 §1–2: a real multi-node Ray cluster on this machine — a study submitted as a Ray job, and a
study of cross-node DDP trials that loses a worker node in the middle of a trial.

The cluster (one per module): three ``ray start --block`` nodes, each its own raylet, object store and
agents on its own loopback address, with non-default ports, its own temp dir and this module's auth token
(Ray >= 2.59 puts token auth on a head, docs/design.md §11):

- head ``127.0.0.2``: GCS, dashboard (the job API), ``--num-cpus=2``, ``--resources={"ddp_node": 1}``;
  its GCS checks node health every 0.5 s (``RAY_health_check_*``), so a dead node is declared dead in
  ~2 s instead of ~15 s;
- workers ``127.0.0.3`` and ``127.0.0.4``: ``--num-cpus=1``, ``--resources={"ddp_node": 1}``.
Distinct loopback addresses (not 127.0.0.1, which Ray rewrites to the host's interface address) keep
every connection on loopback and let the CLI's driver join the head (Ray prefers the head among the
local raylets).

Placement, forced: each DDP trial is a 2-worker gloo ``TorchTrainer`` with
``scaling.resources_per_worker={ddp_node: 1}`` and ``scaling.placement_strategy=STRICT_SPREAD``: its two
workers are on two different nodes that carry ``ddp_node``. The trial's own process (the Tune trial actor,
and the Train controller Ray pins beside it) takes no CPU and is placed on the study driver's node, the
head (``study/runner.py``), so a worker node's death takes DDP workers, never a trial's driver. Three
nodes carry ``ddp_node``: when one worker node is gone, the two left still place a trial.

The fault: while the first trial trains, once Ray Train holds its step-10 checkpoint, the worker node
that holds one of its DDP workers is SIGKILLed whole — its ``ray start``, raylet, agents and workers, by
PID (nothing else on the host is touched; teardown kills only this module's process trees). Ray Train
restarts the worker group from the checkpoint on the surviving nodes; the study finishes its budget.
A ``sitecustomize`` on the driver's PYTHONPATH (the runner hands it to every worker) records, in each
training worker, its PID, its raylet (the worker's parent: which node it is on) and the step it resumed
from.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
import yaml

from tests.reliability.conftest import ROOT, cli_env
from tests.study.test_submit import BIN, _dashboard_ready, _free_port, _kill_tree, _start_mlflow, _wait_http

pytestmark = pytest.mark.integration

HEAD_IP, WORKER_IPS = "127.0.0.2", ("127.0.0.3", "127.0.0.4")
NODE_PORTS = ("node-manager-port", "object-manager-port", "metrics-export-port", "dashboard-agent-listen-port",
              "dashboard-agent-grpc-port", "runtime-env-agent-port")
HEALTH = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3",
          "RAY_health_check_initial_delay_ms": "1000"}
STEPS, CHECKPOINT_EVERY = 30, 10
TRIAL = "normstudy.trial_id"  # study.tracking.TRIAL: the Tune trial id, also the Train run's name trial-<id>


@dataclass
class Node:
    name: str
    ip: str
    proc: subprocess.Popen
    log: Path

    def raylet(self) -> int | None:
        try:
            kids = psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return None
        return next((p.pid for p in kids if p.name().startswith("raylet")), None)

    def tree(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


@dataclass
class Cluster:
    tmp: str
    env: dict[str, str]
    token: str
    gcs_port: int
    dashboard: str
    mlflow: str
    nodes: dict[str, Node] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.gcs_port}"

    def alive(self) -> list[dict]:
        req = urllib.request.Request(f"{self.dashboard}/api/v0/nodes?limit=100",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            nodes = json.load(resp)["data"]["result"]["result"]
        return [n for n in nodes if n["state"] == "ALIVE"]

    def wait_alive(self, count: int, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for node in self.nodes.values():
                if node.proc.poll() is not None:
                    pytest.fail(f"node {node.name} exited {node.proc.returncode}:\n{node.log.read_text()[-3000:]}")
            try:
                if len(self.alive()) == count:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        pytest.fail(f"{count} nodes were not alive in {timeout:.0f} s")

    def node_of_raylet(self, pid: int) -> Node | None:
        return next((n for n in self.nodes.values() if n.raylet() == pid), None)


def _start_node(cluster: Cluster, name: str, ip: str, cpus: int, head: bool) -> Node:
    cmd = [str(BIN / "ray"), "start", "--block", f"--node-ip-address={ip}", f"--num-cpus={cpus}", "--num-gpus=0",
           # each node its own temp dir, as on separate machines: the runtime env agents of nodes sharing one
           # would unpack (and garbage-collect) the job's working dir in the same folder under each other
           '--resources={"ddp_node": 1}', f"--temp-dir={cluster.tmp}/{name}", "--disable-usage-stats",
           *(f"--{k}={_free_port()}" for k in NODE_PORTS)]
    env = dict(cluster.env)
    if head:
        cmd += ["--head", f"--port={cluster.gcs_port}", f"--dashboard-host={ip}", "--include-dashboard=true",
                f"--dashboard-port={cluster.dashboard.rsplit(':', 1)[1]}", f"--ray-client-server-port={_free_port()}"]
        env.update(HEALTH)
    else:
        cmd.append(f"--address={cluster.address}")
    Path(cluster.tmp, name).mkdir()
    log = Path(cluster.tmp) / f"{name}.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    node = Node(name, ip, proc, log)
    cluster.nodes[name] = node
    return node


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    if not _dashboard_ready():
        pytest.skip("ray job submit needs the Ray dashboard: pip install 'ray[default]==2.60.0'")
    work = tmp_path_factory.mktemp("multinode")
    ray_tmp = tempfile.mkdtemp(prefix="nsmn-")  # short: Ray's unix socket paths must stay < 107 characters
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0",
           # the job's `python -m study.cli` is this environment's python (as on a head started from it)
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    server = None
    c = Cluster(ray_tmp, env, token, _free_port(), f"http://{HEAD_IP}:{_free_port()}", "")
    started = time.monotonic()
    try:
        server, c.mlflow, server_log = _start_mlflow(work)
        head = _start_node(c, "head", HEAD_IP, cpus=2, head=True)
        _wait_http(f"{c.dashboard}/api/version", head.proc, head.log, timeout=120, ok=(200, 401))
        for i, ip in enumerate(WORKER_IPS, 1):
            _start_node(c, f"worker{i}", ip, cpus=1, head=False)
        c.wait_alive(3)
        _wait_http(f"{c.mlflow}/health", server, server_log, timeout=120)
        print(f"cluster of 3 nodes up in {time.monotonic() - started:.0f} s")
        yield c
    finally:
        for node in reversed(list(c.nodes.values())):
            _kill_tree(node.proc, marker=ray_tmp)
        if server is not None:
            _kill_tree(server)
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)


def _runs(uri: str, experiment: str, role: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return client.search_runs([exp.experiment_id], f"tags.`normstudy.role` = '{role}'", max_results=100)


# --------------------------------------------------------------------------------------------------
# §2: `normstudy submit` on the cluster, an mlflow server as the store


def test_submitted_study_writes_its_report_where_the_spec_says_and_into_mlflow(cluster, tmp_path):
    from mlflow import MlflowClient

    spec_file = tmp_path / "submitted.yaml"
    raw = yaml.safe_load((ROOT / "study" / "specs" / "quick.yaml").read_text())
    report_dir, storage = tmp_path / "reports" / "submitted", tmp_path / "results"
    raw["tracking"].update(experiment="submitted", study_name="submitted", tracking_uri=cluster.mlflow,
                           storage_path=str(storage), report_dir=str(report_dir))
    spec_file.write_text(yaml.safe_dump(raw))
    exe = [str(BIN / "normstudy")] if (BIN / "normstudy").is_file() else [sys.executable, "-m", "study.cli"]
    sets = ["schemes=[bn]", "search.grid_lr=[0.1]", "search.grid_init_scale=[1.0]", "search.seeds=[0]",
            "training.max_steps=8", "training.report_every=4", "training.eval_every=8", "training.batch_size=32",
            "data.train_size=256", "data.test_size=64", "data.train_eval_size=64"]
    argv = [*exe, "submit", "--address", cluster.dashboard, "--spec", str(spec_file),
            *(a for s in sets for a in ("--set", s))]
    started = time.monotonic()
    done = subprocess.run(argv, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=300)
    log = done.stdout[-5000:] + done.stderr[-3000:]
    assert done.returncode == 0 and "succeeded" in done.stdout, log
    print(f"job: {time.monotonic() - started:.0f} s")

    # the report where the spec says (an absolute report_dir, on the head's filesystem: this machine)
    report = json.loads((report_dir / "report.json").read_text())
    assert report["study"]["name"] == "submitted" and report["study"]["n_trials"] == 1
    assert (report_dir / "report.html").is_file() and (report_dir / "report.md").is_file()
    # ... and in MLflow: the study run on the server holds the same report
    (study,) = _runs(cluster.mlflow, "submitted", "study")
    assert study.info.status == "FINISHED" and study.info.run_id == report["study"]["run_id"]
    client = MlflowClient(tracking_uri=cluster.mlflow)
    logged = {Path(a.path).name for a in client.list_artifacts(study.info.run_id, "report")}
    assert {"report.html", "report.json", "report.md"} <= logged, logged
    assert logged == {p.name for p in report_dir.iterdir()}
    copy = Path(client.download_artifacts(study.info.run_id, "report/report.json", str(tmp_path / "dl")))
    assert json.loads(copy.read_text()) == report
    (trial,) = _runs(cluster.mlflow, "submitted", "trial")
    assert trial.info.status == "FINISHED"


# --------------------------------------------------------------------------------------------------
# §1: a worker node SIGKILLed while a cross-node DDP trial trains

HOOK = r'''
"""Test hook of tests/reliability/test_multinode.py: in every process that runs the training loop, record
its PID, its parent (the raylet of its node) and the checkpoint step it resumed from."""
import importlib.abc, importlib.util, json, os, sys, time
from pathlib import Path

OUT = Path({out!r})


def _event(kind, **data):
    data.update(kind=kind, pid=os.getpid(), ppid=os.getppid(), t=time.time())
    (OUT / f"{{kind}}.{{os.getpid()}}.{{time.time_ns()}}.json").write_text(json.dumps(data))


def _patch(loop):
    create, load = loop.create_logger, loop.load_checkpoint

    def create_logger(rank, tracking_uri=None, run_id=None):
        _event("start", rank=rank, run_id=run_id)
        return create(rank, tracking_uri, run_id)

    def load_checkpoint(*args, **kwargs):
        restored = load(*args, **kwargs)  # (step, the run's extra state)
        _event("resume", step=restored[0])
        return restored

    loop.create_logger, loop.load_checkpoint = create_logger, load_checkpoint


class _PatchLoop(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "trainers.loop":
            return None
        sys.meta_path.remove(self)  # once: the real finder does the rest
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


sys.meta_path.insert(0, _PatchLoop())
'''


def _events(folder: Path, kind: str) -> list[dict]:
    return sorted((json.loads(p.read_text()) for p in folder.glob(f"{kind}.*.json")), key=lambda e: e["t"])


def _checkpointed_step(run_dir: Path) -> int:
    """The step of the latest checkpoint Ray Train has registered for a run (0: none yet)."""
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or being written
        return 0
    return max((int(r["metrics"].get("step", 0)) for r in snapshot.get("checkpoint_results", [])), default=0)


def _loss_steps(uri: str, run_id: str) -> list[int]:
    from mlflow import MlflowClient

    return [m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, "loss")]


def test_study_of_cross_node_ddp_trials_survives_a_worker_node_sigkill(cluster, tmp_path):
    hook, events = tmp_path / "hook", tmp_path / "events"
    hook.mkdir()
    events.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK.format(out=str(events)))
    study = "multinode"
    sets = ["schemes=[bn]", "search.mode=grid", "search.grid_lr=[0.05, 0.1]", "search.grid_init_scale=[1.0]",
            "search.seeds=[0]", "search.max_concurrent_trials=1", f"training.max_steps={STEPS}",
            "training.report_every=2", f"training.eval_every={CHECKPOINT_EVERY}", "training.batch_size=32",
            "training.lr_reference_batch=32", "training.torch_threads=1", "data.train_size=256", "data.test_size=64",
            "data.train_eval_size=64", "model.cifar_blocks=[1, 1]", "scaling.num_workers=2",
            "scaling.placement_strategy=STRICT_SPREAD", "scaling.resources_per_worker={ddp_node: 1}",
            "scaling.max_failures=2", f"tracking.study_name={study}", f"tracking.experiment={study}",
            f"tracking.tracking_uri={cluster.mlflow}", f"tracking.storage_path={tmp_path / 'results'}"]
    env = cli_env(cluster.address, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(hook), env["PYTHONPATH"]])  # the runner passes it to every worker
    out = (tmp_path / "driver.log").open("w")
    started = time.monotonic()
    driver = subprocess.Popen([sys.executable, "-m", "study.cli", "run", "--no-report",
                               *(a for s in sets for a in ("--set", s))], cwd=tmp_path, env=env, stdout=out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        # 1. wait until Ray Train holds the first trial's step-10 checkpoint (registered by the controller in
        # the run's checkpoint_manager_snapshot.json: a checkpoint on disk that it has not collected yet is
        # not resumed from) while the trial is still training
        victim, first, registered = None, None, 0
        deadline = time.monotonic() + 360
        while victim is None:
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "the first trial never got past its first checkpoint"
            time.sleep(0.5)
            trials = _runs(cluster.mlflow, study, "trial")
            if not trials:
                continue
            first = min(trials, key=lambda r: r.info.start_time)
            registered = _checkpointed_step(tmp_path / "results" / f"trial-{first.data.tags[TRIAL]}")
            workers = [e for e in _events(events, "start") if e["run_id"] == first.info.run_id]
            if not CHECKPOINT_EVERY <= registered < STEPS or len(workers) < 2:
                continue
            # the two DDP workers are on two different nodes (STRICT_SPREAD), each under its node's raylet
            placed = {e["rank"]: cluster.node_of_raylet(e["ppid"]) for e in workers}
            assert None not in placed.values() and placed[0] is not placed[1], placed
            # 2. SIGKILL a worker node that holds one of them: its whole process tree, by PID
            victim = next(n for n in placed.values() if n.name != "head")
            tree = victim.tree()
            killed_at = time.monotonic()
            for p in tree:
                try:
                    p.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass
        seen = _loss_steps(cluster.mlflow, first.info.run_id)
        seen_at_kill = max(seen, default=0)
        dead_pids = {p.pid for p in tree}
        survivors = {n.raylet() for n in cluster.nodes.values() if n is not victim}
        driver.wait(timeout=420)
    finally:
        if driver.poll() is None:
            driver.kill()
        out.close()
    seconds = time.monotonic() - started
    log = (tmp_path / "driver.log").read_text()
    assert driver.returncode == 0, log[-5000:]
    print(f"study with a node killed: {seconds:.0f} s (kill {killed_at - started:.0f} s in, checkpoint of step "
          f"{registered} held, MLflow at step {seen_at_kill}; killed {victim.name}: {len(dead_pids)} processes)")

    # the node is gone for real, the other two are alive
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in dead_pids)
    assert sorted(n["node_ip"] for n in cluster.alive()) == sorted({HEAD_IP, *WORKER_IPS} - {victim.ip})

    # the trial resumed from its last checkpoint, both ranks in new processes on the two surviving nodes
    resumed = _events(events, "resume")
    assert len(resumed) == 2, resumed
    step = resumed[0]["step"]
    assert {e["step"] for e in resumed} == {step} and step % CHECKPOINT_EVERY == 0, resumed
    assert registered <= step < STEPS, (step, registered)
    runs_of = {e["pid"]: e["run_id"] for e in _events(events, "start")}
    assert all(runs_of.get(e["pid"]) == first.info.run_id and e["pid"] not in dead_pids for e in resumed)
    assert len({e["ppid"] for e in resumed}) == 2 and {e["ppid"] for e in resumed} <= survivors, resumed

    # the study finished its full budget: every run FINISHED, every curve continuous, no step twice
    runs = {role: _runs(cluster.mlflow, study, role) for role in ("study", "scheme", "trial")}
    assert len(runs["study"]) == 1 and len(runs["scheme"]) == 1 and len(runs["trial"]) == 2
    for role, rs in runs.items():
        assert all(r.info.status == "FINISHED" for r in rs), (role, [r.info.status for r in rs])
    assert sorted(float(t.data.params["hp.lr"]) for t in runs["trial"]) == [0.05, 0.1]
    for t in runs["trial"]:
        assert sorted(_loss_steps(cluster.mlflow, t.info.run_id)) == list(range(1, STEPS + 1)), t.info.run_name
        assert t.data.metrics["steps_done"] == STEPS and t.data.tags["diverged"] == "0"
