"""A command run in a child process under a hard time limit: when the limit passes, the child and everything
it started (inductor's compile workers, for one) are killed, and the caller goes on.

Why a child process: a slow ``torch.compile`` cannot be cut off from inside its own process (the compile
holds the interpreter; a timer cannot interrupt C++ code generation), so ``benchmarks/gpu_check.py`` runs its
compile part this way and a compile that overruns costs its own budget, not the other figures'.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Finished:
    """How a time-limited command ended."""

    returncode: int | None  # None: killed at the limit
    seconds: float
    output: str  # stdout and stderr together, as it came

    @property
    def timed_out(self) -> bool:
        return self.returncode is None


def run_with_limit(command: Sequence[str], limit_s: float, *, cwd: str | None = None,
                   env: dict[str, str] | None = None) -> Finished:
    """Run ``command`` in its own process group; at ``limit_s`` seconds kill the whole group (SIGKILL)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=max(0.0, limit_s))
        return Finished(proc.returncode, time.perf_counter() - t0, output)
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        try:
            output, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:  # a grandchild that left the group still holds the pipe: stop reading
            proc.wait()
            output = ""
        return Finished(None, time.perf_counter() - t0, output or "")
    except BaseException:  # an interrupt of the caller: the child must not outlive it
        _kill_group(proc.pid)
        proc.wait()
        raise


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
