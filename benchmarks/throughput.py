"""Images/s of the normstudy training loop vs a bare PyTorch loop on the same model, data and batches.

normstudy: ``trainers.loop.train_loop_per_worker`` with a ``LocalSession`` (no Ray), the DivergenceMonitor on
(per-step loss and gradient norms, detailed statistics and a report every ``training.report_every`` steps),
evaluation only after the last step. bare: what one writes by hand — the same model built the same way
(same seed, same data-dependent init), the same batches in the same order, SGD with the same lr, momentum
and weight decay, the same autocast / channels_last; no monitor, no reporting.

Both are timed the same way, from outside: the wall time between consecutive ``report_every``-step
boundaries (for normstudy, between its reports, so everything the loop does per interval counts: the
monitor's flush, logging, the report itself), in steady state (set-up, data-dependent init and evaluation
fall outside). images/s = report_every × batch / median interval. On CPU the same is also computed from
this process's CPU time (images per CPU-second), which other processes on a shared machine barely move.
``--repeats`` alternates bare and normstudy runs so both see the same machine; the medians over repeats
are compared.

CPU, the quick default's small model (what docs/benchmarks.md records from this machine):
    python benchmarks/throughput.py
One GPU, the paper's model from its spec (ResNet-50, 224 px, batch 256, bf16, channels_last, DALI when a GPU
is visible; any spec value can be changed with --set):
    python benchmarks/throughput.py --device cuda --threads 0 --spec specs/imagenet_resnet50.yaml \\
        --set data.path=$IMAGENET --set data.loader_workers=8 --set data.train_eval_size=1024 --steps 500 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import shlex
import statistics
import sys
import time
from typing import Any

import torch
from torch import nn

from study import spec as spec_mod
from study.spec import StudySpec
from trainers import norms
from trainers.data import build_data
from trainers.inputs import batches, seed_everything, to_device
from trainers.loop import build_module, train_loop_per_worker
from trainers.models import data_dependent_init
from trainers.schedule import base_lr
from trainers.session import LocalSession


class TimedSession(LocalSession):
    """A LocalSession that notes the wall time of every report."""

    def __init__(self, device: torch.device) -> None:
        super().__init__(device=device)
        self.times: list[tuple[float, float]] = []

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        self.times.append(_now(self.device))
        super().report(metrics, checkpoint_dir)


def _now(device: torch.device) -> tuple[float, float]:
    """(wall clock, this process's CPU time), after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter(), time.process_time()


def _intervals(marks: list[tuple[float, float]]) -> list[tuple[float, float]]:
    return [(b[0] - a[0], b[1] - a[1]) for a, b in zip(marks, marks[1:], strict=False)]


def build_spec(args: argparse.Namespace) -> StudySpec:
    """The quick default (or --spec) with the benchmark's shape: ``steps`` steps, evaluation only at the end."""
    base = [f"training.max_steps={args.steps}", f"training.eval_every={args.steps}", "training.checkpoint_every=0",
            f"training.torch_threads={args.threads}", "divergence.monitor=true"]
    spec = spec_mod.load(args.spec, [*base, *args.overrides])
    if spec.training.max_steps % spec.training.report_every:
        raise SystemExit(f"--steps {spec.training.max_steps} must be a multiple of training.report_every "
                         f"({spec.training.report_every})")
    return spec


def normstudy_intervals(spec: StudySpec, scheme: str, device: torch.device) -> list[tuple[float, float]]:
    """(wall, CPU) seconds between consecutive interval reports of train_loop_per_worker (the final summary,
    which follows the evaluation, excluded)."""
    session = TimedSession(device)
    train_loop_per_worker({"trial": spec.trainer_config(scheme), "session": "local"}, session=session)
    interval_reports = session.times[:-1]  # the last report is the summary, after the evaluation
    if len(interval_reports) < 2:
        raise SystemExit("too few reports to time: raise --steps")
    return _intervals(interval_reports)


def bare_intervals(spec: StudySpec, scheme: str, device: torch.device) -> list[tuple[float, float]]:
    """The same steps as plain PyTorch; (wall, CPU) seconds per ``report_every`` steps, timed at the same step
    boundaries as normstudy's reports."""
    t = spec.training
    if t.torch_threads:
        torch.set_num_threads(t.torch_threads)
    seed_everything(t.seed)
    data = build_data(spec.data, batch_size=t.batch_size, seed=t.seed, device=device)
    sch = norms.create(spec.scheme(scheme).name, **spec.scheme(scheme).options)
    model = build_module(spec.trainer_config(scheme), sch, data.num_classes, device)  # the loop's initial weights
    first_x, _ = next(data.train.epoch_iter(0))
    data_dependent_init(model, sch, to_device(first_x, device, t.channels_last))
    if t.compile:
        model = torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=base_lr(t.lr, t.batch_size, t.lr_reference_batch),
                          momentum=t.momentum, nesterov=t.nesterov, weight_decay=t.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if t.amp == "bf16" else contextlib.nullcontext()
    stream = batches(data.train, data.steps_per_epoch, start_step=0)
    model.train()
    marks = []
    for step in range(1, t.max_steps + 1):
        x, y = next(stream)
        x, y = to_device(x, device, t.channels_last), y.to(device, non_blocking=True)
        with amp:
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % t.report_every == 0 and step < t.max_steps:  # the boundaries where normstudy reports
            marks.append(_now(device))
    return _intervals(marks)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", help="base spec (default: the quick default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a spec value, e.g. --set training.amp=bf16 (repeatable)")
    p.add_argument("--scheme", default="bn")
    p.add_argument("--steps", type=int, default=120, help="training steps per run (a multiple of report_every)")
    p.add_argument("--repeats", type=int, default=5, help="alternating bare/normstudy runs (medians compared)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads; 0 = torch's default")
    args = p.parse_args(argv)
    given = sys.argv[1:] if argv is None else argv
    device = torch.device(args.device)
    spec = build_spec(args)
    t = spec.training
    images = t.report_every * t.batch_size
    cpu = device.type == "cpu"
    runs: dict[str, list[tuple[float, float]]] = {"bare": [], "normstudy": []}  # (wall, CPU-time) images/s
    for r in range(args.repeats):
        for name, fn in (("bare", bare_intervals), ("normstudy", normstudy_intervals)):
            iv = fn(spec, args.scheme, device)
            ips = (images / statistics.median(w for w, _ in iv), images / statistics.median(c for _, c in iv))
            runs[name].append(ips)
            print(f"repeat {r + 1}: {name} {ips[0]:.0f} img/s wall, {ips[1]:.0f} img/CPU-s", file=sys.stderr,
                  flush=True)
    med = {name: tuple(statistics.median(v[i] for v in vals) for i in (0, 1)) for name, vals in runs.items()}
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} thread(s)")
    model = spec.model.arch + (f" (width {spec.model.cifar_width}, blocks {spec.model.cifar_blocks})"
                               if spec.model.arch == "resnet_cifar" else "")
    print(f"`python benchmarks/throughput.py{' ' + shlex.join(given) if given else ''}`")
    print()
    print(f"{args.scheme}, {model}, {spec.data.kind} data at {spec.data.image_size} px, batch {t.batch_size}, {where}, "
          f"amp {t.amp}, channels_last {t.channels_last}, compile {t.compile}; {t.max_steps} steps a run, "
          f"median of {t.report_every}-step intervals, median of {args.repeats} alternating repeats; "
          f"torch {torch.__version__}")
    print()
    if cpu:
        print("| loop | images/s (wall) | step (ms, wall) | images per CPU-second | per repeat (wall) |")
        print("|---|---:|---:|---:|---|")
    else:
        print("| loop | images/s | step (ms) | per repeat |")
        print("|---|---:|---:|---|")
    for name, label in (("bare", "bare PyTorch"), ("normstudy", "normstudy (monitor on)")):
        wall, cput = med[name]
        per = ", ".join(f"{v[0]:.0f}" for v in runs[name])
        extra = f" {cput:.0f} |" if cpu else ""
        print(f"| {label} | {wall:.0f} | {1e3 * t.batch_size / wall:.1f} |{extra} {per} |")
    print()
    print(f"ratio normstudy / bare: **{med['normstudy'][0] / med['bare'][0]:.3f}** (wall clock)"
          + (f", **{med['normstudy'][1] / med['bare'][1]:.3f}** (CPU time: insensitive to other processes "
             "sharing the cores)" if cpu else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
