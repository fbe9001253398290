"""Locating the stability boundary: the boundary search against the finest grid with the same precision.

In one process (one local Ray, one SQLite MLflow store in a temporary folder) it runs two studies on the
quick default (``study/specs/quick.yaml``, read at run time, so whatever model, data and steps it holds
now), for the same schemes, init scales and seeds:

- ``search.mode: boundary`` with ``search.boundary_lr = [low, high]`` and ``search.boundary_tolerance``;
- ``search.mode: grid`` over ``low · tolerance^k`` up to ``high`` (``study.boundary.tolerance_grid``):
  the coarsest grid whose neighbouring rates are within the tolerance — it brackets the boundary as
  tightly as the search is asked to, provided the boundary lies in ``[low, high]``.

``[low, high]`` defaults to the quick spec's own grid range (``search.grid_lr``: chosen from stable to
divergent). It prints, per (scheme, init scale), each study's bracket (largest stable lr, smallest
diverged lr, their ratio) and trials, then the totals: trials, SGD steps trained (load-independent: a
diverged trial stops early), the trials' summed run time and the wall time.
Both studies pay the same fixed costs (Ray is started and the MLflow store created before either).

Usage: python benchmarks/boundary_search.py [--schemes bn,wn] [--max-steps N] [--seeds 0,1]
           [--tolerance 1.414] [--lr-range LOW HIGH] [--concurrency N] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import re
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch

from study import spec as spec_mod
from study.boundary import expected_points, tolerance_grid
from study.results import StudyResult, boundary_rows
from study.runner import init_ray, resolve_paths, run_study
from study.trial_configs import TrialConfigs

SECTION = "## Boundary search vs grid"


def _spec(base: list[str], extra: list[str]) -> spec_mod.StudySpec:
    return spec_mod.load(None, base + extra)


def run(spec: spec_mod.StudySpec) -> tuple[StudyResult, float, list[dict[str, Any]]]:
    t0 = time.perf_counter()
    result = run_study(spec, out=io.StringIO())
    wall = time.perf_counter() - t0
    return result, wall, boundary_rows(TrialConfigs(resolve_paths(spec)), result.trials)


def _lr(x: float | None) -> str:
    return "–" if x is None else f"{x:.3g}"


def _bracket(row: dict[str, Any]) -> str:
    ratio = "" if row["ratio"] is None else f" (×{row['ratio']:.2f})"
    return f"{_lr(row['stable_lr'])} → {_lr(row['diverged_lr'])}{ratio}"


def _agree(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Do the two brackets overlap (the same boundary, each to its precision)?"""
    if None in (a["stable_lr"], a["diverged_lr"], b["stable_lr"], b["diverged_lr"]):
        return "–"
    return "yes" if a["stable_lr"] < b["diverged_lr"] and b["stable_lr"] < a["diverged_lr"] else "**no**"


def trial_seconds(result: StudyResult) -> float:
    return sum(float(o.metrics.get("time_total_s", 0.0)) for o in result.trials)


def steps_trained(result: StudyResult) -> int:
    """SGD steps over every trial (a diverged trial stops early): the cost other jobs' load does not move."""
    return int(sum(float(o.metrics.get("steps_done", 0.0)) for o in result.trials))


def table(bnd: tuple, grid: tuple, n_grid_lrs: int) -> str:
    (rb, wb, rows_b), (rg, wg, rows_g) = bnd, grid
    lines = [f"| scheme | init scale | boundary search: stable → diverged lr | trials | grid ({n_grid_lrs} lrs): "
             "stable → diverged lr | trials | brackets agree |", "|---|---|---|---:|---|---:|---|"]
    grid_by = {(r["scheme"], r["init_scale"]): r for r in rows_g}
    for b in rows_b:
        g = grid_by[(b["scheme"], b["init_scale"])]
        scale = "–" if b["init_scale"] is None else f"{b['init_scale']:g}"
        lines.append(f"| `{b['scheme']}` | {scale} | {_bracket(b)} | {b['trials']} | {_bracket(g)} | "
                     f"{g['trials']} | {_agree(b, g)} |")
    nb, ng = len(rb.outcomes), len(rg.outcomes)
    tb, tg = trial_seconds(rb), trial_seconds(rg)
    sb, sg = steps_trained(rb), steps_trained(rg)
    lines.append(f"| **total** | | {sb} steps trained, trial time {tb:.0f} s, wall **{wb:.0f} s** | **{nb}** | "
                 f"{sg} steps trained, trial time {tg:.0f} s, wall **{wg:.0f} s** | **{ng}** | |")
    summary = (f"Grid / boundary search: **{ng / nb:.2f}×** the trials, **{sg / sb:.2f}×** the steps trained, "
               f"**{wg / wb:.2f}×** the wall time ({tg / tb:.2f}× the summed trial time).")
    return "\n".join(lines) + "\n\n" + summary


def notes(rows_b: list[dict[str, Any]], rows_g: list[dict[str, Any]], low: float, high: float) -> str:
    """What the table cannot say by itself: where a bracket is open, and why."""
    out = []
    grid_by = {(r["scheme"], r["init_scale"]): r for r in rows_g}
    for b in rows_b:
        g = grid_by[(b["scheme"], b["init_scale"])]
        name = f"`{b['scheme']}`" + ("" if b["init_scale"] is None else f" at init scale {b['init_scale']:g}")
        if g["diverged_lr"] is None or g["stable_lr"] is None:
            side = "above" if g["diverged_lr"] is None else "below"
            found = ("; the boundary search widened its bracket and found it"
                     if b["stable_lr"] is not None and b["diverged_lr"] is not None else "")
            out.append(f"{name}: the boundary lies {side} the grid's range [{low:g}, {high:g}], which cannot "
                       f"bracket it{found}.")
        if b["stable_lr"] is None or b["diverged_lr"] is None:
            out.append(f"{name}: the boundary search stopped at search.boundary_max_points without a bracket.")
    return " ".join(out)


NOTES = ("The search's brackets are tighter than the tolerance (bisection halves the log width of the bracket, "
         "so it ends between tolerance^½ and tolerance), the grid's are exactly its spacing. Steps trained is "
         "the load-independent cost; on a shared machine the wall-time ratio moves with the other jobs' load "
         "during each of the two studies.")


def write_section(path: Path, body: str) -> None:
    """Replace (or append) this benchmark's section of ``path``; other sections stay as they are."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    section = f"{SECTION}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--schemes", default="bn,wn")
    p.add_argument("--max-steps", type=int, help="training.max_steps (default: the quick spec's)")
    p.add_argument("--seeds", help="search.seeds, e.g. 0,1 (default: the quick spec's)")
    p.add_argument("--tolerance", type=float, help="search.boundary_tolerance (default: the spec's, √2)")
    p.add_argument("--lr-range", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="the boundary search's starting bracket and the grid's range (default: the quick "
                        "spec's search.grid_lr, lowest to highest)")
    p.add_argument("--concurrency", type=int, help="search.max_concurrent_trials (default: from the CPUs)")
    p.add_argument("--write", metavar="MD", help=f"write the results into this file's '{SECTION}' section")
    args = p.parse_args()
    torch.set_num_threads(1)
    command = "python benchmarks/boundary_search.py " + " ".join(
        a for a in sys.argv[1:] if a != "--write" and not a.endswith(".md"))
    os.chdir(tempfile.mkdtemp(prefix="normstudy-boundary-bench-"))

    quick = spec_mod.load(None)
    low, high = args.lr_range or (min(quick.search.grid_lr), max(quick.search.grid_lr))
    tol = args.tolerance or quick.search.boundary_tolerance
    base = [f"schemes=[{args.schemes}]", f"search.boundary_tolerance={tol}", f"search.boundary_lr=[{low}, {high}]"]
    if args.max_steps is not None:
        base.append(f"training.max_steps={args.max_steps}")
    if args.seeds:
        base.append(f"search.seeds=[{args.seeds}]")
    if args.concurrency:
        base.append(f"search.max_concurrent_trials={args.concurrency}")
    grid_lrs = tolerance_grid(low, high, tol)
    bnd_spec = _spec(base, ["search.mode=boundary", "tracking.study_name=boundary"])
    grid_spec = _spec(base, ["search.mode=grid", f"search.grid_lr={grid_lrs}", "tracking.study_name=grid"])

    # Fixed costs out of both timings: Ray's start and the MLflow store's creation.
    init_ray(bnd_spec)
    from mlflow import MlflowClient

    MlflowClient(tracking_uri=f"sqlite:///{Path.cwd() / 'mlruns.db'}").search_experiments()
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    bnd = run(bnd_spec)
    grid = run(grid_spec)
    total = time.perf_counter() - t0
    load_after = os.getloadavg()[0]

    s, t, m = bnd_spec.search, bnd_spec.training, bnd_spec.model
    model = m.arch + (f" width {m.cifar_width} blocks {','.join(map(str, m.cifar_blocks))}"
                      if m.arch == "resnet_cifar" else "")
    setup = (f"Quick default as of the run: {model}, "
             f"{bnd_spec.data.kind} data {bnd_spec.data.image_size} px ({bnd_spec.data.train_size} train), batch "
             f"{t.batch_size}, {t.max_steps} steps; schemes {args.schemes}; init scales "
             f"{', '.join(f'{x:g}' for x in s.grid_init_scale)} where a scheme has one; seeds "
             f"{', '.join(map(str, s.seeds))}. Boundary search from [{low:g}, {high:g}] to ×{tol:.3g} (at most "
             f"{s.boundary_max_points} rates a bracket; {expected_points(low, high, tol)} when the boundary lies "
             f"inside); grid: {len(grid_lrs)} rates from {grid_lrs[0]:g} to {grid_lrs[-1]:g}, evenly spaced in log lr "
             f"(×{grid_lrs[1] / grid_lrs[0]:.4g} apart).")
    note = (f"`{command.strip()}` — {date.today().isoformat()}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, torch {torch.__version__}, 1 torch thread; {total:.0f} s for both studies; "
            f"load average {load_before:.1f} before, {load_after:.1f} after.")
    body = table(bnd, grid, len(grid_lrs))
    remarks = notes(bnd[2], grid[2], low, high)
    print(setup, note, body, remarks, sep="\n\n")
    if args.write:
        about = ("What it measures (`benchmarks/boundary_search.py`): how many trials and how much wall time it "
                 "takes to locate the largest stable learning rate of each (scheme, init scale) to a factor "
                 "`search.boundary_tolerance`, with `search.mode: boundary` (bracket, then bisect log lr; a "
                 "rate is stable only if every seed trained without diverging) and with the coarsest grid of "
                 "the same precision over the same range, in one run. A bracket is \"largest stable lr → "
                 "smallest diverged lr (their ratio)\"; \"brackets agree\": the two overlap. Diverged trials "
                 "stop early, so trial counts and time differ: the grid spends most of its trials far from the "
                 "boundary. Ratios within one run; absolute times are indicative (shared 2-core machine).")
        write_section(Path(args.write), f"{about}\n\n{setup}\n\n{note}\n\n{body}\n\n{remarks}\n\n{NOTES}\n")
        print(f"wrote {args.write}")


if __name__ == "__main__":
    main()
