"""Cost of the sharpness probe in the quick default's training loop (CPU), and how close its estimate is.

1. **Overhead** (always): ``train_loop_per_worker`` on the quick default spec (resnet_cifar, 16 px generated
   data, batch 64, one torch thread) with ``divergence.hessian_every=K``, ``hessian_iters=M`` vs
   ``hessian_every=0``, paired repetitions in this process (the order alternates, so drift in the machine's
   load hits both sides alike). The probe changes no weight, so both sides train the same trajectory.
   Measured: the loop's own step time (``step_time_s`` of each report interval, which holds the probes) as
   the paired ratio on/off, median over repetitions; and, drift-free, the probe's own time
   (``DivergenceMonitor.hessian_top_eigenvalue``, timed directly) per step over the rest of the same run's
   step time (the loop's step time less the probes'): on a loaded machine the paired ratio swings by tens
   of percent, this one does not.
   Also a probe's cost in steps, and the k at which it would cost 5%: ⌈20 × cost⌉.
2. **Accuracy** (``--accuracy``): along one trial per scheme, each probe's estimate (warm-started, as the
   loop runs it) and a cold-started probe of the same M over a 20-step Lanczos reference on the same batch
   and weights (``trainers/sharpness.py``): their median and smallest ratio (1 = exact; a Lanczos value is a
   lower bound).

Usage: python benchmarks/sharpness_overhead.py [--every 150] [--iters 3] [--steps N] [--reps 3]
                                               [--schemes bn,wn] [--set training.lr=1.0 ...] [--accuracy]
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from the repository root (benchmarks/ is no package install)
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks.monitor_overhead import Clock, machine  # noqa: E402
from study.spec import load  # noqa: E402
from trainers import divergence  # noqa: E402
from trainers.loop import train_loop_per_worker  # noqa: E402
from trainers.session import LocalSession  # noqa: E402
from trainers.sharpness import hessian_top_eigenvalue  # noqa: E402

REFERENCE_ITERS = 20


def run_once(scheme: str, steps: int | None, every: int, iters: int, overrides: list[str]) -> dict[str, float]:
    """One trial of the quick default (``steps``: its max_steps when None); the loop's mean step time and the
    probes' own time."""
    spec = load(None, [*([f"training.max_steps={steps}"] if steps else []), "training.torch_threads=1",
                       f"divergence.hessian_every={every}", f"divergence.hessian_iters={iters}", *overrides])
    session = LocalSession()
    clock = Clock(divergence.DivergenceMonitor, ("hessian_top_eigenvalue",))
    t0 = time.perf_counter()
    with clock:
        train_loop_per_worker({"trial": spec.trainer_config(scheme), "session": "local"}, session=session)
    wall = time.perf_counter() - t0
    summary = session.reports[-1]  # step_time_mean_s: over the report intervals, probes included
    return {"wall": wall, "step": summary["step_time_mean_s"], "probe_s": clock.seconds,
            "probes": clock.calls["hessian_top_eigenvalue"], "steps": summary["steps_done"]}


def bench(schemes: list[str], args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for scheme in schemes:
        run_once(scheme, 40, 10, 1, args.set)  # warm-up: caches, allocator, lazy imports, double backward
        out[scheme] = {k: [] for k in ("step_on", "step_off", "probe_per_step", "probe_s", "probes")}
    for rep in range(args.reps):
        for scheme in schemes:
            sides = (args.every, 0) if rep % 2 == 0 else (0, args.every)
            for every in sides:
                r = run_once(scheme, args.steps, every, args.iters, args.set)
                if every:
                    out[scheme]["step_on"].append(r["step"])
                    out[scheme]["probe_per_step"].append(r["probe_s"] / r["steps"])
                    out[scheme]["probe_s"].append(r["probe_s"] / max(r["probes"], 1))
                    out[scheme]["probes"].append(r["probes"])
                else:
                    out[scheme]["step_off"].append(r["step"])
            o = out[scheme]
            print(f"  rep {rep + 1}/{args.reps} {scheme}: step on/off {o['step_on'][-1] * 1e3:.1f}/"
                  f"{o['step_off'][-1] * 1e3:.1f} ms, a probe {o['probe_s'][-1] * 1e3:.0f} ms", flush=True)
    return out


def table(res: dict[str, dict[str, list[float]]], every: int, iters: int) -> str:
    rows = ["| scheme | step off (ms) | step on/off (paired, median) | probe time / rest of the step (direct) "
            "| a probe, in steps | probes a run | k for 5% |", "|---|---|---|---|---|---|---|"]
    for scheme, r in res.items():
        off = statistics.median(r["step_off"])
        paired = statistics.median(a / b for a, b in zip(r["step_on"], r["step_off"], strict=True))
        # drift-free: the probes' time against the rest of the same run's step time
        bare = [on - p for on, p in zip(r["step_on"], r["probe_per_step"], strict=True)]
        direct = statistics.median(p / b for p, b in zip(r["probe_per_step"], bare, strict=True))
        cost = statistics.median(p / b for p, b in zip(r["probe_s"], bare, strict=True))
        rows.append(f"| {scheme} | {off * 1e3:.1f} | {paired:.3f} | {direct:.1%} | {cost:.1f} | "
                    f"{statistics.median(r['probes']):.0f} | {math.ceil(20 * cost)} |")
    return f"hessian_every={every}, hessian_iters={iters}:\n\n" + "\n".join(rows)


def accuracy(schemes: list[str], args: argparse.Namespace) -> str:
    """Estimate / reference at every probe of one trial per scheme, warm (the loop's) and cold."""
    original = divergence.DivergenceMonitor.hessian_top_eigenvalue
    lines = []
    for scheme in schemes:
        found: list[tuple[int, float, float, float]] = []

        def probe(mon: Any, loss_fn, iters: int | None = None, _found=found):
            warm = original(mon, loss_fn, iters)
            with mon.recorder.hooks_paused():
                ref = hessian_top_eigenvalue(loss_fn, mon.recorder.params, REFERENCE_ITERS).value
                cold = hessian_top_eigenvalue(loss_fn, mon.recorder.params, args.iters).value
            _found.append((len(_found) + 1, warm, cold, ref))
            return warm

        divergence.DivergenceMonitor.hessian_top_eigenvalue = probe
        try:
            run_once(scheme, args.steps, args.every, args.iters, args.set)
        finally:
            divergence.DivergenceMonitor.hessian_top_eigenvalue = original
        warm = [w / r for _, w, _, r in found if r > 0]
        cold = [c / r for _, _, c, r in found if r > 0]
        if warm:
            lines.append(f"| {scheme} | {len(found)} | {statistics.median(warm):.2f} (min {min(warm):.2f}) | "
                         f"{statistics.median(cold):.2f} (min {min(cold):.2f}) | "
                         + ", ".join(f"{r:.3g}" for *_, r in found) + " |")
    head = ["| scheme | probes | warm / reference: median (min) | cold / reference | reference λ_max at each probe |",
            "|---|---|---|---|---|"]
    return "\n".join(head + lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--every", type=int, default=150, help="divergence.hessian_every (steps between probes)")
    p.add_argument("--iters", type=int, default=3, help="divergence.hessian_iters (products a probe)")
    p.add_argument("--steps", type=int, help="training steps a run (default: the quick default's max_steps)")
    p.add_argument("--reps", type=int, default=3, help="paired repetitions, probe on/off")
    p.add_argument("--schemes", default="bn,wn")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="more spec overrides")
    p.add_argument("--accuracy", action="store_true", help="also each probe's estimate against a reference")
    args = p.parse_args()
    torch.set_num_threads(1)
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    load_before, started = os.getloadavg(), time.perf_counter()
    print(f"probe on/off: {args.reps} paired reps × {schemes}, {args.steps} steps each", flush=True)
    out = [table(bench(schemes, args), args.every, args.iters)]
    if args.accuracy:
        out.append(accuracy(schemes, args))
    command = "python " + shlex.join(["benchmarks/sharpness_overhead.py", *sys.argv[1:]])
    print("\n" + "\n\n".join(out))
    print(f"\n`{command}` — {machine()}; {time.perf_counter() - started:.0f} s; load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after.")


if __name__ == "__main__":
    main()
