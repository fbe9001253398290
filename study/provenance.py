"""Provenance recorded with every study (AlgoPerf's rule): code version, library versions, hardware."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path


def git_commit(path: str | Path | None = None) -> str:
    """HEAD (``-dirty`` with uncommitted changes); under `ray job submit` the upload has no .git, so
    NORMSTUDY_GIT_COMMIT, when set by the submitter, is used instead."""
    if os.environ.get("NORMSTUDY_GIT_COMMIT"):
        return os.environ["NORMSTUDY_GIT_COMMIT"]
    root = Path(path or Path(__file__).resolve().parent.parent)
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=1)
def collect() -> dict[str, str]:
    """Code, library and hardware versions (cached: trial actors are reused)."""
    import mlflow
    import optuna
    import ray
    import torch

    info = {
        "provenance.git_commit": git_commit(),
        "provenance.python": platform.python_version(),
        "provenance.torch": torch.__version__,
        "provenance.ray": ray.__version__,
        "provenance.optuna": optuna.__version__,
        "provenance.mlflow": mlflow.__version__,
        "provenance.host": platform.node(),
        "provenance.cpu_count": str(os.cpu_count()),
        "provenance.hardware": platform.processor() or platform.machine(),
        "provenance.cuda": str(torch.cuda.is_available()),
    }
    if torch.cuda.is_available():
        info["provenance.gpu"] = torch.cuda.get_device_name(0)
        info["provenance.gpu_count"] = str(torch.cuda.device_count())
    try:
        import nvidia.dali as dali

        info["provenance.dali"] = dali.__version__
    except ImportError:
        info["provenance.dali"] = "not installed"
    return info
