"""Training-step time per normalization scheme, and normalization's share of it.

For every registered scheme (or ``--schemes``): the same ResNet built with that scheme, one fixed random
batch, ``--steps`` timed SGD steps (forward, backward, update; the median step is reported), then
``trainers.profiling.profile_model_step`` (torch.profiler, self time by op name) for the share of the step
spent in normalization ops (BN/GN/LN kernels and their backward, WN's weight norms) and in convolutions.
Gitman & Ginsburg (2017, §5) measured BN at ~24% of ResNet-50's step on Pascal GPUs, convolutions ~60%.

CPU, the small model of the quick default (what docs/benchmarks.md records from this machine):
    python benchmarks/step_time.py
GPU, the paper's model (one GPU):
    python benchmarks/step_time.py --arch resnet50 --image-size 224 --batch 256 --device cuda --amp bf16 \\
        --channels-last

Prints one markdown table; ``× bn`` is the step time relative to BN's (on CPU from this process's CPU time,
which other processes on a shared machine barely move; on GPU from the wall clock).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import shlex
import statistics
import sys
import time

import torch
from torch import nn

from trainers import norms
from trainers.models import build_model, data_dependent_init
from trainers.profiling import profile_model_step


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--schemes", default="all", help="comma-separated names, or 'all' (default)")
    p.add_argument("--arch", default="resnet_cifar", choices=["resnet_cifar", "resnet18", "resnet50"])
    p.add_argument("--cifar-width", type=int, default=16)
    p.add_argument("--cifar-blocks", default="1,1,1", help="resnet_cifar blocks per stage (default 1,1,1)")
    p.add_argument("--image-size", type=int, default=None, help="default: 16 for resnet_cifar, else 224")
    p.add_argument("--num-classes", type=int, default=None, help="default: 10 for resnet_cifar, else 1000")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--amp", default="off", choices=["off", "bf16"], help="bf16 autocast")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=50, help="timed steps per scheme (the median is reported)")
    p.add_argument("--profile-steps", type=int, default=10, help="profiled steps for the shares")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.image_size = args.image_size or (16 if args.arch == "resnet_cifar" else 224)
    args.num_classes = args.num_classes or (10 if args.arch == "resnet_cifar" else 1000)
    return args


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(scheme: str, args: argparse.Namespace) -> dict[str, float]:
    """Median step time (s) and the profiler's norm/conv shares for one scheme."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, generator=g)
    y = torch.randint(0, args.num_classes, (args.batch,), generator=g)
    sch = norms.create(scheme)
    model = build_model(args.arch, sch, args.num_classes, cifar_width=args.cifar_width,
                        cifar_blocks=[int(b) for b in args.cifar_blocks.split(",")])
    model = model.to(device)
    x, y = x.to(device), y.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    data_dependent_init(model, sch, x)
    model.train()
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if args.amp == "bf16" else contextlib.nullcontext())
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)  # tiny lr: the weights stay sane
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        with amp:
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    _sync(device)
    times, cpu_times = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    with amp:  # the profiled steps run under the same autocast (backward follows the forward's dtypes)
        shares = profile_model_step(model, x, y, steps=args.profile_steps, warmup=1)
    return {"step_s": statistics.median(times), "cpu_step_s": statistics.median(cpu_times),
            "norm_share": shares["norm_share"], "conv_share": shares["conv_share"]}


def table(rows: dict[str, dict[str, float]], cpu: bool) -> str:
    """On CPU, ``× bn`` compares the steps' CPU time (this process's; other processes on a shared machine
    barely move it); on GPU, wall time."""
    key = "cpu_step_s" if cpu else "step_s"
    ref = rows.get("bn", {}).get(key)
    head = "| scheme | step (ms, wall) |" + (" step (ms, CPU time) |" if cpu else "")
    lines = [head + " × bn | normalization share | convolution share |",
             "|---|---:|" + ("---:|" if cpu else "") + "---:|---:|---:|"]
    for name, r in rows.items():
        rel = f"{r[key] / ref:.2f}" if ref else "–"
        cpu_col = f" {1e3 * r['cpu_step_s']:.1f} |" if cpu else ""
        lines.append(f"| `{name}` | {1e3 * r['step_s']:.1f} |{cpu_col} {rel} | {100 * r['norm_share']:.1f}% "
                     f"| {100 * r['conv_share']:.1f}% |")
    return "\n".join(lines)


def describe(args: argparse.Namespace) -> str:
    dev = torch.device(args.device)
    cpu = f"{platform.processor() or platform.machine()} CPU"
    where = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu
    model = (f"resnet_cifar (width {args.cifar_width}, blocks {args.cifar_blocks})" if args.arch == "resnet_cifar"
             else args.arch)
    return (f"{model}, {args.image_size} px, batch {args.batch}, {where}, {args.threads} thread(s), "
            f"amp {args.amp}, channels_last {args.channels_last}, torch {torch.__version__}; "
            f"{args.steps} timed steps after {args.warmup} warm-up, shares from {args.profile_steps} profiled steps")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    names = norms.names() if args.schemes == "all" else [s.strip() for s in args.schemes.split(",") if s.strip()]
    rows = {}
    for name in names:
        rows[name] = measure(name, args)
        print(f"{name}: {1e3 * rows[name]['step_s']:.1f} ms", file=sys.stderr, flush=True)
    given = sys.argv[1:] if argv is None else argv
    print(f"`python benchmarks/step_time.py{' ' + shlex.join(given) if given else ''}`")
    print()
    print(describe(args))
    print()
    print(table(rows, cpu=torch.device(args.device).type == "cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
