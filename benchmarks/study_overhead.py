"""Per-trial orchestration overhead of a study: Ray Tune trial + MLflow runs vs the bare loop.

Runs the same trials twice: as studies through ``study.runner.run_study`` (real local Ray, Tune,
SQLite MLflow) and as plain ``train_loop_per_worker`` calls in this process. Fixed costs (Ray start,
MLflow database creation, the first trial actor) cancel in the difference between a small and a large
study:

    overhead per trial = [(study(N2) − study(N1)) − (in_process(N2) − in_process(N1))] / (N2 − N1)

Usage: python benchmarks/study_overhead.py [--steps 0] [--n1 2] [--n2 10] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time

import torch

from study import spec as spec_mod
from study.runner import run_study
from study.trial_configs import TrialConfigs
from trainers.loop import train_loop_per_worker
from trainers.session import LocalSession


def _spec(n: int, steps: int, name: str, concurrency: int):
    lrs = [round(0.01 * (i + 1), 4) for i in range(n)]
    return spec_mod.load(None, [f"training.max_steps={steps}", f"search.grid_lr={lrs}", "search.seeds=[0]",
                                "schemes=[bn]", f"tracking.study_name={name}",
                                f"search.max_concurrent_trials={concurrency}"])


def time_study(n: int, steps: int, name: str, concurrency: int) -> float:
    spec = _spec(n, steps, name, concurrency)
    t0 = time.perf_counter()
    result = run_study(spec, out=io.StringIO())
    elapsed = time.perf_counter() - t0
    assert len(result.trials) == n, f"expected {n} trials, got {len(result.trials)}"
    return elapsed


def time_in_process(n: int, steps: int, concurrency: int) -> float:
    spec = _spec(n, steps, "inproc", concurrency)
    t0 = time.perf_counter()
    for trial in TrialConfigs(spec).grid():  # the study's own trial configs: one a grid lr
        train_loop_per_worker({"trial": trial, "session": "local"}, session=LocalSession())
    return (time.perf_counter() - t0) / concurrency  # n trials spread over `concurrency` slots


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=0, help="training steps per trial (0 = orchestration only)")
    p.add_argument("--n1", type=int, default=2)
    p.add_argument("--n2", type=int, default=10)
    p.add_argument("--concurrency", type=int, default=1, help="max_concurrent_trials of the studies")
    args = p.parse_args()
    torch.set_num_threads(1)
    os.chdir(tempfile.mkdtemp(prefix="normstudy-overhead-"))
    time_study(1, args.steps, "warmup", args.concurrency)  # Ray start and MLflow DB creation, not counted
    s1 = time_study(args.n1, args.steps, "small", args.concurrency)
    s2 = time_study(args.n2, args.steps, "large", args.concurrency)
    i1 = time_in_process(args.n1, args.steps, args.concurrency)
    i2 = time_in_process(args.n2, args.steps, args.concurrency)
    per_trial = ((s2 - s1) - (i2 - i1)) / (args.n2 - args.n1)
    fixed = s1 - i1 - args.n1 * per_trial
    print(f"| steps/trial | concurrency | study N={args.n1} | study N={args.n2} | in-process N={args.n1} | "
          f"in-process N={args.n2} | overhead per trial | study start-up |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.steps} | {args.concurrency} | {s1:.1f} s | {s2:.1f} s | {i1:.1f} s | {i2:.1f} s | "
          f"**{per_trial:.2f} s** | {fixed:.1f} s |")


if __name__ == "__main__":
    main()
