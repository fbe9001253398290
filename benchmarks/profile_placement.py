"""What profiling claim 3 on a worker costs a study: every scheme's step profile on a Ray worker with a trial
worker's resources (``study.scheme_profile``, how a study takes it) against the same profiles in the driver's
process (how it was taken before), on one local Ray, with the provenance the worker reports.

    python benchmarks/profile_placement.py                     # the quick default
    python benchmarks/profile_placement.py --spec S --set k=v   # any spec

The worker's first profile includes starting a Ray worker process and importing torch and the model code
there; the driver has them imported already. Prints one markdown table.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from study import spec as spec_mod  # noqa: E402
from study.runner import init_ray  # noqa: E402
from study.scheme_profile import PROFILE_BATCH, PROFILE_DEVICE, PROFILE_DTYPE, per_worker_batch, profile_scheme  # noqa: E402
from trainers.profiling import profile_step  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default=None, help="a spec file (default: the quick default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="a.b=value, repeatable")
    args = p.parse_args(argv)
    spec = spec_mod.load(args.spec, args.overrides)
    init_ray(spec)
    rows = []
    for entry in spec.schemes:
        t0 = time.perf_counter()
        on_worker = profile_scheme(spec, entry.name)
        t1 = time.perf_counter()
        on_driver = profile_step(spec.trainer_config(entry.name), per_worker_batch(spec))
        t2 = time.perf_counter()
        if on_worker.error:
            print(f"{entry.name}: the worker's profile failed: {on_worker.error}", file=sys.stderr)
            return 1
        rows.append((entry.name, t1 - t0, t2 - t1, on_worker, on_driver))
    given = sys.argv[1:] if argv is None else argv
    print(f"`python benchmarks/profile_placement.py{' ' + shlex.join(given) if given else ''}`\n")
    print("| scheme | on a worker (s) | on the driver (s) | worker: device, dtype, batch | norm share, worker / "
          "driver | step (ms), worker / driver |")
    print("|---|---:|---:|---|---|---|")
    for name, worker_s, driver_s, w, d in rows:
        t = w.tags
        print(f"| `{name}` | {worker_s:.1f} | {driver_s:.1f} | {t[PROFILE_DEVICE]}, {t[PROFILE_DTYPE]}, "
              f"{t[PROFILE_BATCH]} | {w.metrics['norm_share']:.1%} / {d['norm_share']:.1%} | "
              f"{1e3 * w.metrics['profile_step_time_s']:.1f} / {1e3 * d['profile_step_time_s']:.1f} |")
    print(f"| **total** | **{sum(r[1] for r in rows):.1f}** | **{sum(r[2] for r in rows):.1f}** | | | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
