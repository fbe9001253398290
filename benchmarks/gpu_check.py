"""The GPU check: one command that measures docs/benchmarks.md's GPU figures on a bare CUDA machine in minutes.

A borrowed GPU machine has PyTorch (with torchvision, numpy, pyyaml), no Ray, MLflow, Optuna or DALI, no
network, no data set and a few minutes. This script needs nothing more than that plus pydantic (the spec
and the schemes' option models use it), carried as five wheels, 2.8 MB: pydantic 2.14.4, pydantic-core
2.50.5 (the one compiled wheel, cp312 manylinux), annotated-types 0.8.0, typing-extensions 4.16.0 and
typing-inspection 0.4.5; docs/benchmarks.md ("The GPU check") gives the commands. It imports no Ray,
MLflow, Optuna or DALI, directly or through the project's modules (checked at the end, and by
tests/benchmarks/test_gpu_check.py with those imports made to fail).

Parts, in the order they run (GPU budget; the whole check ≤ 8 min on one H100-class GPU):

1. ``schemes`` (75 s): the training step (forward, backward, SGD with momentum) of ResNet-50 built with each
   registered scheme — bf16 autocast, channels_last, batch 256, 224 px synthetic images and labels made on
   the GPU (no loader in the way), eager — timed with CUDA events over blocks of steps after a warm-up.
   BN is timed first and last (its drift is recorded). Gives ``bn_resnet50_img_per_s.eager``,
   ``wn_over_bn_step_ratio`` (wn, normprop, wn_trelu) and ``scheme_over_bn_step_ratio`` (the others).
2. ``profile`` (30 s): ``bn_norm_share``: normalization's and convolution's shares of the eager BN step's
   GPU time under torch.profiler (categories by op name, as ``trainers.profiling``; see ``device_shares``).
3. ``loop`` (120 s): ``loop_over_bare_ratio``: the project's ``train_loop_per_worker`` (LocalSession,
   monitor on, a report every 100 steps) against a bare PyTorch loop on the same model, the same batches
   and SGD settings (``benchmarks/throughput.py``'s two runs, timed between the same 100-step boundaries).
   The data is the generated kind at 224 px, copied to the GPU once and cut into batches there, for both.
4. ``compile`` (180 s, last because compiling ResNet-50 takes 1-2 min): the BN step of part 1 under
   ``torch.compile`` (``bn_resnet50_img_per_s.compiled``, with the compile time).

A part that fails is recorded under ``errors`` and the rest still run; a part whose budget would take the
run past ``--time-limit-s`` is skipped. The JSON and the markdown table are rewritten after every part,
so a run cut short still leaves its results. Exit status 1 if any part failed or was skipped.

    python benchmarks/gpu_check.py --out $OUT                       # one GPU, the real sizes
    python benchmarks/gpu_check.py --device cpu --smoke --out /tmp/gc   # every part at tiny sizes, CPU

``--smoke`` uses a small CIFAR-style ResNet at 16 px, batch 8, a few steps, and compiles with the
``aot_eager`` backend (inductor's C++ code generation would take a minute on a small CPU); it checks the
script, not the speed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import functools
import gc
import json
import math
import platform
import shlex
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from a plain copy of the repository (nothing installed)
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.autograd import DeviceType  # noqa: E402

from benchmarks.throughput import TimedSession, _intervals, bare_intervals  # noqa: E402
from study import spec as spec_mod  # noqa: E402
from study.spec import StudySpec  # noqa: E402
from trainers import norms  # noqa: E402
from trainers.data import generated  # noqa: E402
from trainers.loop import train_loop_per_worker  # noqa: E402
from trainers.models import build_model, data_dependent_init  # noqa: E402
from trainers.profiling import _quiet_stderr, categorize  # noqa: E402

FORBIDDEN = ("ray", "mlflow", "optuna", "nvidia.dali")
WN_FAMILY = ("wn", "normprop", "wn_trelu")
PARTS = ("schemes", "profile", "loop", "compile")
# Targets from docs/benchmarks.md ("GPU results").
TARGET_WN_OVER_BN = 0.85
TARGET_LOOP_OVER_BARE = 0.95


@dataclass(frozen=True)
class Sizes:
    arch: str
    image_size: int
    batch: int
    num_classes: int
    cifar_width: int
    warmup: int  # steps before timing (the first also sets up cuDNN and the allocator)
    block_steps: int  # steps per timed block (one CUDA-event pair a block: no sync inside it)
    blocks: int  # the median block is reported
    profile_steps: int
    loop_steps: int  # per loop run; a multiple of report_every, >= 4 reports so two intervals are timed
    report_every: int
    loop_train_size: int  # generated images (224 px: 0.6 MB each, on the GPU)
    loop_test_size: int
    compile_backend: str
    budgets_s: dict[str, int]


GPU_SIZES = Sizes("resnet50", 224, 256, 1000, 64, warmup=5, block_steps=10, blocks=3, profile_steps=5,
                  loop_steps=400, report_every=100, loop_train_size=512, loop_test_size=256,
                  compile_backend="inductor",
                  budgets_s={"setup": 15, "schemes": 75, "profile": 30, "loop": 120, "compile": 180})
SMOKE_SIZES = Sizes("resnet_cifar", 16, 8, 10, 8, warmup=1, block_steps=2, blocks=2, profile_steps=1,
                    loop_steps=8, report_every=2, loop_train_size=32, loop_test_size=16,
                    compile_backend="aot_eager",
                    budgets_s={"setup": 15, "schemes": 20, "profile": 5, "loop": 15, "compile": 20})


@dataclass
class Check:
    device: torch.device
    sizes: Sizes
    threads: int
    compile_backend: str

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def amp(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16)


# --------------------------------------------------------------------------------------------------
# the step every part times


def make_step(check: Check, scheme: str, compile_backend: str | None = None) -> Callable[[], None]:
    """One training step of ``scheme``'s ResNet on a fixed synthetic batch made on the device (bf16 autocast,
    channels_last). The lr is tiny so that no scheme's weights run off during the timed steps."""
    s, dev = check.sizes, check.device
    torch.manual_seed(0)
    sch = norms.create(scheme)
    model = build_model(s.arch, sch, s.num_classes, cifar_width=s.cifar_width).to(dev)
    model = model.to(memory_format=torch.channels_last)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(s.batch, 3, s.image_size, s.image_size, device=dev, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, s.num_classes, (s.batch,), device=dev, generator=g)
    data_dependent_init(model, sch, x)
    model.train()
    forward = torch.compile(model, backend=compile_backend) if compile_backend else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        with check.amp():
            loss = loss_fn(forward(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def time_step(check: Check, step: Callable[[], None], warmup: int | None = None) -> float:
    """Median over ``blocks`` of the mean step time (s) in a block; one device sync per block."""
    s = check.sizes
    for _ in range(s.warmup if warmup is None else warmup):
        step()
    check.sync()
    per_step = []
    for _ in range(s.blocks):
        if check.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(s.block_steps):
                step()
            end.record()
            end.synchronize()
            per_step.append(start.elapsed_time(end) / 1e3 / s.block_steps)
        else:
            t0 = time.perf_counter()
            for _ in range(s.block_steps):
                step()
            per_step.append((time.perf_counter() - t0) / s.block_steps)
    return statistics.median(per_step)


def _free(check: Check) -> None:
    gc.collect()
    if check.device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------------
# the parts


def part_schemes(check: Check) -> dict[str, Any]:
    order = ["bn", *[n for n in norms.names() if n != "bn"], "bn"]
    step_s: dict[str, list[float]] = {}
    for name in order:
        t = time_step(check, make_step(check, name))
        step_s.setdefault(name, []).append(t)
        _free(check)
        print(f"  {name}: {1e3 * t:.1f} ms a step", flush=True)
    bn = statistics.mean(step_s["bn"])  # timed first and last: the mean is fair to schemes timed in between
    ratio = {n: v[0] / bn for n, v in step_s.items() if n != "bn"}
    return {
        "bn_resnet50_img_per_s": {"eager": check.sizes.batch / bn},
        "step_ms": {n: 1e3 * statistics.mean(v) for n, v in step_s.items()},
        "bn_drift": step_s["bn"][1] / step_s["bn"][0],  # last BN step time / first: the machine's drift
        "wn_over_bn_step_ratio": {n: ratio[n] for n in WN_FAMILY if n in ratio},
        "scheme_over_bn_step_ratio": {n: r for n, r in ratio.items() if n not in WN_FAMILY},
    }


def device_shares(events: Any, on_device: bool) -> dict[str, float]:
    """Shares of the step's time by category from ``prof.key_averages()``.

    On CPU: every op's self CPU time (what ``trainers.profiling.shares_from_events`` does). On a GPU the
    kineto trace holds each kernel twice — as a device event named after the kernel (cuDNN's kernel names
    do not say "batch_norm") and inside the self device time of the op that launched it — so the whole is
    the sum over device events and each category the sum over the launching ops, by op name.
    ``attributed`` is the fraction of device time the ops account for (near 1 when the attribution holds).
    """
    totals = {"norm": 0.0, "conv": 0.0, "other": 0.0}
    if not on_device:
        for e in events:
            totals[categorize(e.key)] += float(e.self_cpu_time_total)
        whole, attributed = sum(totals.values()), 1.0
    else:
        whole = sum(float(e.self_device_time_total) for e in events
                    if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False))
        for e in events:
            if e.device_type == DeviceType.CPU:
                totals[categorize(e.key)] += float(e.self_device_time_total)
        if whole <= 0:
            raise RuntimeError("torch.profiler recorded no GPU time (is CUPTI available to torch?)")
        attributed = sum(totals.values()) / whole
    whole = whole or 1.0
    return {"norm": totals["norm"] / whole, "conv": totals["conv"] / whole,
            "other": 1.0 - (totals["norm"] + totals["conv"]) / whole, "attributed": attributed}


def part_profile(check: Check) -> dict[str, Any]:
    from torch.profiler import ProfilerActivity, profile

    step = make_step(check, "bn")
    for _ in range(2):
        step()
    check.sync()
    on_device = check.device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_device else [])
    with _quiet_stderr(), profile(activities=activities) as prof:
        for _ in range(check.sizes.profile_steps):
            step()
        check.sync()
    shares = device_shares(prof.key_averages(), on_device)
    print(f"  BN step: normalization {shares['norm']:.1%}, convolution {shares['conv']:.1%} "
          f"({shares['attributed']:.1%} of the time attributed to ops)", flush=True)
    return {"bn_norm_share": shares}


def loop_spec(check: Check) -> StudySpec:
    """BN ResNet-50 (or the smoke model) on generated data, bf16, channels_last, monitor on, a report every
    ``report_every`` steps, evaluation only at the end. The stop rules cannot fire (a benchmark must run
    all its steps; the monitor still computes every statistic); constant lr, as in the bare loop."""
    s, steps = check.sizes, check.sizes.loop_steps
    return spec_mod.from_dict({
        "model": {"arch": s.arch, "cifar_width": s.cifar_width},
        "schemes": ["bn"],
        "data": {"kind": "generated", "image_size": s.image_size, "num_classes": 10,
                 "train_size": s.loop_train_size, "test_size": s.loop_test_size,
                 "train_eval_size": s.loop_test_size},
        "training": {"batch_size": s.batch, "max_steps": steps, "eval_every": steps, "checkpoint_every": 0,
                     "report_every": s.report_every, "lr": 0.01, "schedule": "constant", "amp": "bf16",
                     "channels_last": True, "compile": False, "torch_threads": check.threads},
        "divergence": {"monitor": True, "loss_multiple": 1e9, "spike_patience": steps + 1},
    })


def normstudy_run(spec: StudySpec, device: torch.device) -> list[tuple[float, float]]:
    """``train_loop_per_worker`` as throughput.py runs it; (wall, CPU) s per interval; it must not stop early."""
    session = TimedSession(device)
    summary = train_loop_per_worker({"trial": spec.trainer_config("bn"), "session": "local"}, session=session)
    for copy in session.checkpoints:  # LocalSession keeps a copy of the final checkpoint (~0.2 GB for ResNet-50)
        shutil.rmtree(copy, ignore_errors=True)
    if summary.get("diverged") or summary.get("steps_done") != float(spec.training.max_steps):
        raise RuntimeError(f"the normstudy loop stopped early: {summary}")
    return _intervals(session.times[:-1])  # the last report is the summary, after the evaluation


def part_loop(check: Check) -> dict[str, Any]:
    spec = loop_spec(check)
    images = spec.training.report_every * spec.training.batch_size
    # The generated set lives on the device for both loops: batches are cut there, no copy from the host.
    on_device = functools.partial(generated.build_generated, device=check.device)
    ips: dict[str, float] = {}
    with mock.patch.object(generated, "build_generated", on_device):
        for name, run in (("bare", functools.partial(bare_intervals, spec, "bn")),
                          ("normstudy", functools.partial(normstudy_run, spec))):
            intervals = run(check.device)
            if not intervals:
                raise RuntimeError(f"{name}: no report interval was timed; raise loop_steps")
            ips[name] = images / statistics.median(w for w, _ in intervals)
            print(f"  {name}: {ips[name]:.0f} images/s over {len(intervals)} intervals of "
                  f"{spec.training.report_every} steps", flush=True)
            _free(check)
    return {"loop_over_bare_ratio": ips["normstudy"] / ips["bare"], "loop_img_per_s": ips}


def part_compile(check: Check) -> dict[str, Any]:
    step = make_step(check, "bn", compile_backend=check.compile_backend)
    t0 = time.perf_counter()
    step()  # compiles forward and backward
    check.sync()
    compile_s = time.perf_counter() - t0
    print(f"  compiled ({check.compile_backend}) in {compile_s:.0f} s", flush=True)
    t = time_step(check, step, warmup=max(1, check.sizes.warmup - 1))
    _free(check)
    print(f"  compiled BN: {1e3 * t:.1f} ms a step", flush=True)
    return {"bn_resnet50_img_per_s": {"compiled": check.sizes.batch / t, "compile_s": compile_s}}


# --------------------------------------------------------------------------------------------------
# output


def environment(check: Check, smoke: bool) -> dict[str, Any]:
    dev = check.device
    name = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)")
    return {"gpu_name": name, "torch_version": torch.__version__, "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if dev.type == "cuda" else None,
            "python_version": platform.python_version(), "device": str(dev), "smoke": smoke,
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")}


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            into[k].update(v)
        else:
            into[k] = v


def _fmt(v: Any, spec: str) -> str:
    return "–" if not isinstance(v, int | float) or not math.isfinite(v) else format(v, spec)


def markdown(r: dict[str, Any], command: str) -> str:
    """The table for docs/benchmarks.md ("GPU results"), from the JSON."""
    s, ips = r["sizes"], r.get("bn_resnet50_img_per_s", {})
    wn, other, share = r.get("wn_over_bn_step_ratio", {}), r.get("scheme_over_bn_step_ratio", {}), \
        r.get("bn_norm_share", {})
    timer = "CUDA events" if r["device"].startswith("cuda") else "perf_counter"
    head = "SMOKE RUN (tiny sizes; checks the script, not a measurement). " if r["smoke"] else ""
    lines = [f"{head}`{command}` — {r['date']}, {r['gpu_name']}, torch {r['torch_version']}, "
             f"CUDA {r['cuda_version']}, cuDNN {r['cudnn_version'] or '–'}; {r.get('total_s', 0):.0f} s.", "",
             f"{s['arch']}, {s['image_size']} px synthetic images made on the device, batch {s['batch']}, bf16 "
             f"autocast, channels_last, SGD with momentum; step times are medians of {s['blocks']} blocks of "
             f"{s['block_steps']} steps ({timer}) after {s['warmup']} warm-up steps; BN drift over the "
             f"scheme part {_fmt(r.get('bn_drift'), '.3f')}×.", "",
             "| measure | measured | target |", "|---|---:|---|",
             f"| BN images/s, eager | {_fmt(ips.get('eager'), ',.0f')} | – |",
             f"| BN images/s, `torch.compile` ({r['compile_backend']}; compiling took "
             f"{_fmt(ips.get('compile_s'), '.0f')} s) | {_fmt(ips.get('compiled'), ',.0f')} | – |"]
    for n in WN_FAMILY:
        lines.append(f"| `{n}` step / `bn` step | {_fmt(wn.get(n), '.2f')} | ≤ {TARGET_WN_OVER_BN} |")
    lines += [f"| normalization share of the BN step (device time, torch.profiler) | {_fmt(share.get('norm'), '.1%')} "
              "| paper: ~24% (Pascal) |",
              f"| convolution share of the BN step | {_fmt(share.get('conv'), '.1%')} | paper: ~60% |",
              f"| normstudy loop / bare loop (monitor on, a report every {s['report_every']} steps) | "
              f"{_fmt(r.get('loop_over_bare_ratio'), '.3f')} | ≥ {TARGET_LOOP_OVER_BARE} |", "",
              "| scheme | step (ms) | × bn |", "|---|---:|---:|"]
    for n, ms in r.get("step_ms", {}).items():
        rel = 1.0 if n == "bn" else wn.get(n, other.get(n))
        lines.append(f"| `{n}` | {_fmt(ms, '.1f')} | {_fmt(rel, '.2f')} |")
    if r.get("errors"):
        lines += ["", "Failed or skipped parts: " + "; ".join(f"{k}: {v}" for k, v in r["errors"].items())]
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], json_path: Path, command: str) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    json_path.with_suffix(".md").write_text(markdown(results, command))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="a folder (gets gpu_check.json and gpu_check.md) or a .json path")
    p.add_argument("--device", default="cuda", help="cuda[:N] (default) or cpu")
    p.add_argument("--smoke", action="store_true", help="every part at tiny sizes (checks the script)")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default: inductor; "
                   "aot_eager with --smoke)")
    p.add_argument("--time-limit-s", type=float, default=480.0, help="skip parts that would run past this")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on CPU, torch's on GPU)")
    args = p.parse_args(argv)
    started = time.perf_counter()
    given = sys.argv[1:] if argv is None else argv
    command = "python benchmarks/gpu_check.py" + (" " + shlex.join(given) if given else "")
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    if unknown := [x for x in parts if x not in PARTS]:
        print(f"--parts: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device is visible to torch; use --device cpu (with --smoke)", file=sys.stderr)
        return 2
    out = Path(args.out)
    json_path = out if out.suffix == ".json" else out / "gpu_check.json"
    sizes = SMOKE_SIZES if args.smoke else GPU_SIZES
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    check = Check(device, sizes, threads, args.compile_backend or sizes.compile_backend)
    results: dict[str, Any] = {**environment(check, args.smoke), "sizes": asdict(sizes),
                               "compile_backend": check.compile_backend, "errors": {}, "part_s": {}}
    print(f"gpu check on {results['gpu_name']}, torch {results['torch_version']}, CUDA {results['cuda_version']}; "
          f"parts {', '.join(parts)}; budget {sum(sizes.budgets_s[x] for x in ['setup', *parts])} s "
          f"(limit {args.time_limit_s:.0f} s)", flush=True)
    for i, part in enumerate(parts, 1):
        budget, elapsed = sizes.budgets_s[part], time.perf_counter() - started
        if elapsed + budget > args.time_limit_s:
            results["errors"][part] = f"skipped: {elapsed:.0f} s + its {budget} s budget > --time-limit-s"
            print(f"[{i}/{len(parts)}] {part}: {results['errors'][part]}", flush=True)
            continue
        print(f"[{i}/{len(parts)}] {part} (budget {budget} s; {elapsed:.0f} s elapsed)", flush=True)
        t0 = time.perf_counter()
        try:
            _merge(results, globals()[f"part_{part}"](check))
        except (Exception, SystemExit) as err:  # noqa: BLE001 - one failed part must not lose the others
            results["errors"][part] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            print(f"  FAILED: {results['errors'][part]}", flush=True)
        _free(check)
        results["part_s"][part] = time.perf_counter() - t0
        print(f"[{i}/{len(parts)}] {part} done in {results['part_s'][part]:.0f} s (budget {budget} s)", flush=True)
        results["total_s"] = time.perf_counter() - started
        write(results, json_path, command)
    loaded = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))
    results["forbidden_modules_loaded"] = loaded
    if loaded:
        results["errors"]["imports"] = f"imported {', '.join(loaded)}: the check must run without them"
    results["total_s"] = time.perf_counter() - started
    write(results, json_path, command)
    print(f"wrote {json_path} and {json_path.with_suffix('.md')} in {results['total_s']:.0f} s", flush=True)
    print(json_path.with_suffix(".md").read_text(), end="")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
