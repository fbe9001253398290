"""benchmarks/gpu_check.py runs where a borrowed GPU machine is bare: no Ray, MLflow, Optuna or DALI.

The smoke run (every part at tiny sizes, CPU) goes in a subprocess whose ``sitecustomize`` puts an import
hook first on ``sys.meta_path``: loading any of those packages (or matplotlib, psutil, scikit-learn),
directly or through the project's modules, raises ImportError and is written to a log. The run must
succeed, touch none of them, and leave a JSON with every figure and the markdown table. The compile part
runs in a child process under a hard time limit: a compile that overruns is killed with everything it
started, and costs only its own figure. The spec cost lines follow the measured rates.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The four the issue names, and the project's other dependencies that a bare PyTorch machine lacks.
BLOCKED = ("ray", "mlflow", "optuna", "nvidia.dali", "matplotlib", "psutil", "sklearn")

SITECUSTOMIZE = textwrap.dedent(f"""
    import importlib.abc, importlib.machinery, os, sys

    _BLOCKED = {BLOCKED!r}
    _LOG = os.environ["GPU_CHECK_BLOCKED_LOG"]

    class _Refuse(importlib.abc.Loader):
        # Refused when loaded, not when looked up: probes such as torch._dynamo's find_spec() of optional
        # libraries are not imports.
        def create_module(self, spec):
            with open(_LOG, "a") as f:
                f.write(spec.name + "\\n")
            raise ImportError(f"{{spec.name}}: not on a bare GPU machine (blocked by the test)")

        def exec_module(self, module):
            pass

    class _Bare(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in _BLOCKED):
                return importlib.machinery.ModuleSpec(name, _Refuse())
            return None

    sys.meta_path.insert(0, _Bare())
""")


def _bare_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "blocked.log"
    env = {**os.environ, "PYTHONPATH": str(site), "GPU_CHECK_BLOCKED_LOG": str(log), "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    return env, log


def _finite(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@pytest.mark.integration
def test_smoke_runs_every_part_without_ray_mlflow_optuna_dali(tmp_path):
    env, log = _bare_env(tmp_path)
    # The hook is live: ray is installed here, yet importing it fails in this environment.
    probe = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr
    log.unlink()

    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--smoke", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert not log.exists(), f"gpu_check tried to import: {log.read_text()}"

    r = json.loads((out / "gpu_check.json").read_text())
    assert r["errors"] == {} and r["forbidden_modules_loaded"] == []
    assert r["gpu_name"] and r["torch_version"] and "cuda_version" in r
    ips = r["bn_resnet50_img_per_s"]
    assert all(_finite(ips[k]) and ips[k] > 0 for k in ("eager", "compiled", "compile_s"))
    assert set(r["wn_over_bn_step_ratio"]) == {"wn", "normprop", "wn_trelu"}
    assert {"gn", "nf", "fixup", "none"} <= set(r["scheme_over_bn_step_ratio"])
    for ratio in (*r["wn_over_bn_step_ratio"].values(), *r["scheme_over_bn_step_ratio"].values()):
        assert _finite(ratio) and ratio > 0
    share = r["bn_norm_share"]
    assert all(_finite(share[k]) for k in ("norm", "conv", "other", "attributed"))
    assert 0 < share["norm"] < 1 and 0 < share["conv"] < 1  # BN's own kernels are found among the ops
    assert _finite(r["loop_over_bare_ratio"]) and r["loop_over_bare_ratio"] > 0
    assert set(r["loop_img_per_s"]) == {"bare", "normstudy", "normstudy_monitor_off"}
    assert _finite(r["monitor_on_over_off_ratio"]) and _finite(r["loop_monitor_off_over_bare_ratio"])
    assert set(r["bn_img_per_s_by_batch"]) == {str(r["sizes"]["batch"]), str(r["sizes"]["rate_batch"])}
    claim3 = r["claim3_profile"]  # the study's own worker-side profile, with its provenance
    assert set(claim3) == {"bn", "wn"} and claim3["bn"]["norm_share"] > claim3["wn"]["norm_share"]
    assert {(p["device"], p["dtype"], p["batch"]) for p in claim3.values()} == {("cpu", "bfloat16",
                                                                                r["sizes"]["rate_batch"])}

    md = (out / "gpu_check.md").read_text()
    assert "| measure | measured | target |" in md and "| scheme | step (ms) | × bn |" in md
    assert f"{r['loop_over_bare_ratio']:.3f}" in md and "| `wn_trelu` |" in md


def test_a_command_past_its_limit_is_killed_with_what_it_started(tmp_path):
    from benchmarks.time_limited import run_with_limit

    pid_file = tmp_path / "grandchild.pid"
    script = ("import subprocess, sys, time; "
              "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(60)")
    done = run_with_limit([sys.executable, "-c", script], 3.0)
    assert done.timed_out and 3.0 <= done.seconds < 15 and "started" in done.output
    grandchild = int(pid_file.read_text())
    time.sleep(0.2)
    assert not _alive(grandchild)  # the whole process group went
    quick = run_with_limit([sys.executable, "-c", "print('ok')"], 30.0)
    assert quick.returncode == 0 and not quick.timed_out and quick.output.strip() == "ok"


def test_a_compile_past_its_hard_limit_costs_only_its_own_figure(tmp_path, monkeypatch):
    import benchmarks.gpu_check as gpu_check

    monkeypatch.setattr(gpu_check, "child_command", lambda *a: [sys.executable, "-c", "import time; time.sleep(60)"])
    t0 = time.perf_counter()
    code = gpu_check.main(["--device", "cpu", "--smoke", "--parts", "compile", "--compile-limit-s", "2",
                           "--out", str(tmp_path)])
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 1 and time.perf_counter() - t0 < 30
    assert r["errors"]["compile"].startswith("TimeoutError: killed at its hard limit of 2 s")
    assert "compiled" not in r.get("bn_resnet50_img_per_s", {})


def test_spec_costs_follow_the_measured_rates():
    from benchmarks.gpu_check_report import SPEC_COSTS, cost_lines, trial_hours

    imagenet = SPEC_COSTS[0]
    r = {"bn_img_per_s_by_batch": {"32": 1000.0, "256": 2500.0}, "loop_over_bare_ratio": 0.95}
    faster = {**r, "bn_img_per_s_by_batch": {"32": 2000.0, "256": 2500.0}}
    hours = trial_hours(r, imagenet)
    assert hours is not None and trial_hours(faster, imagenet) == pytest.approx(hours / 2)
    assert trial_hours({**r, "loop_over_bare_ratio": 0.5}, imagenet) == pytest.approx(hours * 0.95 / 0.5)
    assert f"{hours:.2f} h a trial" in "\n".join(cost_lines(r))
    missing = {"loop_over_bare_ratio": 0.95}  # no GPU rate measured: no estimate is made up
    assert trial_hours(missing, imagenet) is None
    assert all("not measured" in line for line in cost_lines(missing) if line.startswith("- "))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.is_file() and status.read_text().split()[2] == "Z")  # a zombie is gone, unreaped

