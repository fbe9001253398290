"""Issue 9 §6: what the tool starts binds to 127.0.0.1, and specs are parsed with a safe YAML loader.

normstudy starts no MLflow server itself: it prints ``mlflow ui --backend-store-uri ...`` for the user,
which is checked here by starting exactly that command and reading the kernel's socket table. The local
Ray it starts (``study.runner.init_ray``) has no dashboard at all.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from study import spec as spec_mod
from study.spec import SpecError
from tests.reliability.conftest import ROOT, closed_port

PAYLOADS = [
    '!!python/object/apply:os.system ["touch {flag}"]',
    '!!python/object/apply:subprocess.call [["touch", "{flag}"]]',
    '!!python/object/new:os.system ["touch {flag}"]',
    "!!python/name:os.system",
]


# --------------------------------------------------------------------------------------------------
# YAML


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("where", ["top", "nested", "set", "search_space"])
def test_python_yaml_tags_are_refused_and_never_run(payload, where, tmp_path):
    flag = tmp_path / "PWNED"
    text = payload.format(flag=flag)
    spec_file = tmp_path / "spec.yaml"
    with pytest.raises(SpecError) as info:
        if where == "top":
            spec_file.write_text(text + "\n")
            spec_mod.load(spec_file)
        elif where == "nested":
            spec_file.write_text(f"training:\n  lr: {text}\n")
            spec_mod.load(spec_file)
        elif where == "set":
            spec_mod.load(None, [f"training.lr={text}"])
        else:
            import search_spaces

            (tmp_path / "bn.yaml").write_text(f"lr: {text}\n")
            from study.preflight import check_search

            check_search(spec_mod.load(None, ["schemes=[bn]", f"search.space_dir={tmp_path}"]))
            search_spaces.load("bn", tmp_path)
    assert "\n" not in str(info.value)
    assert not flag.exists(), "a YAML tag ran a command"


def test_the_project_uses_only_safe_yaml_loaders():
    """No ``yaml.load``/``unsafe_load``/``full_load``/``Loader=`` anywhere in the project's code."""
    unsafe = re.compile(r"yaml\.(load|unsafe_load|full_load|load_all|unsafe_load_all)\s*\(|Loader\s*=|UnsafeLoader")
    hits = []
    for folder in ("study", "trainers", "search_spaces", "analysis", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if unsafe.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == []


# --------------------------------------------------------------------------------------------------
# what is started, and where it listens


def test_local_ray_is_started_without_a_dashboard(monkeypatch):
    """``init_ray`` on a machine without a cluster: ``include_dashboard=False`` (nothing to bind), or,
    should it ever be enabled, a dashboard on 127.0.0.1 only."""
    import ray

    from study.runner import init_ray

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda *a, **kw: calls.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    init_ray(spec_mod.load(None))
    assert len(calls) == 1
    kw = calls[0]
    assert "address" not in kw or kw["address"] in (None, "local")
    assert kw.get("include_dashboard") is False or kw.get("dashboard_host") == "127.0.0.1", kw


def _listening(port: int) -> set[str]:
    """Local addresses listening on ``port`` (IPv4 and IPv6), from /proc/net/tcp*."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                if width == 8:
                    found.add(socket.inet_ntoa(bytes.fromhex(addr)[::-1]))
                else:
                    raw = bytes.fromhex(addr)
                    found.add(socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))))
    return found


@pytest.mark.integration
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net/tcp")
def test_the_mlflow_ui_command_normstudy_prints_listens_on_loopback_only(tmp_path):
    """`normstudy run` ends with 'browse with: mlflow ui --backend-store-uri <uri>': run exactly that (plus
    a free port) and check the kernel's socket table: 127.0.0.1 only."""
    import inspect

    from study import browse, cli

    printed = re.search(r"browse with: (mlflow ui --backend-store-uri) \{", inspect.getsource(browse.browse_lines))
    assert printed and "browse_lines" in inspect.getsource(cli.cmd_run), "cmd_run prints no mlflow ui command"
    port = closed_port()
    exe = Path(sys.executable).parent / "mlflow"
    cmd = [str(exe), "ui", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlruns.db'}", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow ui did not start")
        assert _listening(port) == {"127.0.0.1"}
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_socket_table_reader_sees_a_loopback_listener():
    """The helper above reads the table right: a socket bound here shows as 127.0.0.1."""
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc/net/tcp")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert _listening(s.getsockname()[1]) == {"127.0.0.1"}


def test_preflight_suggests_a_loopback_mlflow_server():
    """The one command the tool tells a user to start (tracking server down) binds 127.0.0.1."""
    from study.preflight import check_tracking

    port = closed_port()
    with pytest.raises(SpecError, match=rf"mlflow server --host 127\.0\.0\.1 --port {port}"):
        check_tracking(spec_mod.load(None, [f"tracking.tracking_uri=http://127.0.0.1:{port}"]))
