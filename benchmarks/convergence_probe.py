"""Does a scheme's configuration converge under the quick default's budget? One configuration, three seeds,
trained in this process with the study's own loop (no Ray, no MLflow), printed as one JSON line.

    python benchmarks/convergence_probe.py wn 0.316                                   # the quick default
    python benchmarks/convergence_probe.py wn 0.316 training.batch_size=64 training.max_steps=300

Arguments after the learning rate are ``--set``-style overrides of specs/quick.yaml. Prints each seed's
outcome and final train/test top-1, the mean train top-1 over the seeds and the wall time of the three
trials (docs/design.md §12 compares budgets with it; compare wall times only within one run of the probes).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from study.spec import load
from trainers.loop import train_loop_per_worker
from trainers.session import LocalSession

QUICK = Path(__file__).resolve().parents[1] / "specs" / "quick.yaml"


def probe(scheme: str, lr: float, overrides: list[str], seeds: tuple[int, ...] = (0, 1, 2)) -> dict:
    runs, started = [], time.perf_counter()
    for seed in seeds:
        spec = load(QUICK, [f"training.lr={lr}", f"training.seed={seed}", *overrides])
        s = train_loop_per_worker({"trial": spec.trainer_config(scheme), "session": "local"}, session=LocalSession())
        runs.append({"seed": seed, "outcome": s["outcome"], "train_top1": s.get("final_train_top1"),
                     "test_top1": s.get("final_test_top1")})
    trains = [r["train_top1"] or 0.0 for r in runs]
    return {"scheme": scheme, "lr": lr, "overrides": overrides, "runs": runs,
            "mean_train_top1": sum(trains) / len(trains), "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scheme")
    parser.add_argument("lr", type=float)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of specs/quick.yaml")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as a quick-default trial (scaling.cpus_per_worker: 1)
    print(json.dumps(probe(args.scheme, args.lr, args.overrides)), flush=True)


if __name__ == "__main__":
    main()
