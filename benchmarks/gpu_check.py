"""The GPU check: one command that measures docs/benchmarks.md's GPU figures on a bare CUDA machine in minutes.

A borrowed GPU machine has PyTorch (with torchvision, numpy, pyyaml), no Ray, MLflow, Optuna or DALI, no
network, no data set and a few minutes. This script needs nothing more than that plus pydantic (the spec
and the schemes' option models use it), carried as five wheels, 2.8 MB: pydantic 2.14.4, pydantic-core
2.50.5 (the one compiled wheel, cp312 manylinux), annotated-types 0.8.0, typing-extensions 4.16.0 and
typing-inspection 0.4.5; docs/benchmarks.md ("The GPU check") gives the commands. It imports no Ray,
MLflow, Optuna or DALI, directly or through the project's modules (checked at the end, and by
tests/benchmarks/test_gpu_check.py with those imports made to fail).

cuDNN's autotuner is on (``trainers.inputs.prepare_device``), as in the training loop. Parts, in the order
they run (GPU budget; the whole check ≤ 9 min on one H100-class GPU):

1. ``schemes`` (90 s): the training step (forward, backward, SGD with momentum) of ResNet-50 built with each
   registered scheme — bf16 autocast, channels_last, batch 256, 224 px synthetic images and labels made on
   the GPU (no loader in the way), eager — timed with CUDA events over blocks of steps after a warm-up.
   BN is timed first and last (its drift is recorded), then once more at batch 32, the ImageNet spec's
   per-GPU batch. Gives ``bn_resnet50_img_per_s.eager``, ``bn_img_per_s_by_batch`` (256 and 32),
   ``wn_over_bn_step_ratio`` (wn, normprop, wn_trelu) and ``scheme_over_bn_step_ratio`` (the others).
2. ``profile`` (45 s): ``bn_norm_share``: normalization's and convolution's shares of the eager BN step's
   GPU time under torch.profiler, each kernel counted once (``trainers.profiling.shares_from_events``); and
   ``claim3_profile``: BN's and WN's step profiled exactly as a study profiles a scheme on its worker
   (``trainers.profiling.profile_on_this_worker``: batch 32, bf16, channels_last), with its provenance.
3. ``loop`` (170 s): ``loop_over_bare_ratio``: the project's ``train_loop_per_worker`` (LocalSession,
   monitor on, a report every 100 steps) against a bare PyTorch loop on the same model, the same batches
   and SGD settings (``benchmarks/throughput.py``'s two runs, timed between the same 100-step boundaries),
   then the loop once more with the monitor off (``loop_monitor_off_over_bare_ratio``,
   ``monitor_on_over_off_ratio``). The data is the generated kind at 224 px, copied to the GPU once and cut
   into batches there, for every run.
4. ``compile`` (180 s, last because compiling ResNet-50 takes 1-2 min): the BN step of part 1 under
   ``torch.compile`` (``bn_resnet50_img_per_s.compiled``, with the compile time), in a child process killed
   at the part's budget (``benchmarks/time_limited.py``; ``--compile-limit-s``): a slow inductor compile
   costs its own budget, not the other figures.

A part that fails is recorded under ``errors`` and the rest still run; a part whose budget would take the
run past ``--time-limit-s`` is skipped. The JSON and the markdown table (``benchmarks/gpu_check_report.py``,
with what the measured rates say a trial of each GPU spec costs) are rewritten after every part, so a run
cut short still leaves its results. Exit status 1 if any part failed or was skipped.

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
import platform
import shlex
import shutil
import statistics
import sys
import tempfile
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

from benchmarks.gpu_check_report import WN_FAMILY, markdown  # noqa: E402
from benchmarks.throughput import TimedSession, _intervals, bare_intervals  # noqa: E402
from benchmarks.time_limited import run_with_limit  # noqa: E402
from study import spec as spec_mod  # noqa: E402
from study.spec import StudySpec  # noqa: E402
from trainers import norms  # noqa: E402
from trainers.data import generated  # noqa: E402
from trainers.inputs import prepare_device  # noqa: E402
from trainers.loop import train_loop_per_worker  # noqa: E402
from trainers.models import build_model, data_dependent_init  # noqa: E402
from trainers.profiling import _quiet_stderr, profile_on_this_worker, shares_from_events  # noqa: E402

FORBIDDEN = ("ray", "mlflow", "optuna", "nvidia.dali")
PARTS = ("schemes", "profile", "loop", "compile")


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
    rate_batch: int  # BN's rate is also measured at this batch: specs/imagenet_resnet50.yaml's per-GPU batch
    budgets_s: dict[str, int]  # the compile part's is a hard limit (a child process); the others plan the run


GPU_SIZES = Sizes("resnet50", 224, 256, 1000, 64, warmup=5, block_steps=10, blocks=3, profile_steps=5,
                  loop_steps=400, report_every=100, loop_train_size=512, loop_test_size=256,
                  compile_backend="inductor", rate_batch=32,
                  budgets_s={"setup": 15, "schemes": 90, "profile": 45, "loop": 170, "compile": 180})
SMOKE_SIZES = Sizes("resnet_cifar", 16, 8, 10, 8, warmup=1, block_steps=2, blocks=2, profile_steps=1,
                    loop_steps=8, report_every=2, loop_train_size=32, loop_test_size=16,
                    compile_backend="aot_eager", rate_batch=4,
                    budgets_s={"setup": 15, "schemes": 25, "profile": 15, "loop": 25, "compile": 90})


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


def make_step(check: Check, scheme: str, compile_backend: str | None = None,
              batch: int | None = None) -> Callable[[], None]:
    """One training step of ``scheme``'s ResNet on a fixed synthetic batch made on the device (bf16 autocast,
    channels_last; ``batch`` images, default the sizes' batch). The lr is tiny so that no scheme's weights
    run off during the timed steps."""
    s, dev = check.sizes, check.device
    batch = batch or s.batch
    torch.manual_seed(0)
    sch = norms.create(scheme)
    model = build_model(s.arch, sch, s.num_classes, cifar_width=s.cifar_width).to(dev)
    model = model.to(memory_format=torch.channels_last)
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(batch, 3, s.image_size, s.image_size, device=dev, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, s.num_classes, (batch,), device=dev, generator=g)
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
    s = check.sizes
    small = time_step(check, make_step(check, "bn", batch=s.rate_batch))
    _free(check)
    print(f"  bn at batch {s.rate_batch}: {1e3 * small:.1f} ms a step", flush=True)
    return {
        "bn_resnet50_img_per_s": {"eager": s.batch / bn},
        "bn_img_per_s_by_batch": {str(s.batch): s.batch / bn, str(s.rate_batch): s.rate_batch / small},
        "step_ms": {n: 1e3 * statistics.mean(v) for n, v in step_s.items()},
        "bn_drift": step_s["bn"][1] / step_s["bn"][0],  # last BN step time / first: the machine's drift
        "wn_over_bn_step_ratio": {n: ratio[n] for n in WN_FAMILY if n in ratio},
        "scheme_over_bn_step_ratio": {n: r for n, r in ratio.items() if n not in WN_FAMILY},
    }


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
    got = shares_from_events(prof.key_averages(), on_device)
    shares = {"norm": got["norm_share"], "conv": got["conv_share"],
              "other": 1.0 - got["norm_share"] - got["conv_share"], "attributed": got["attributed"]}
    print(f"  BN step: normalization {shares['norm']:.1%}, convolution {shares['conv']:.1%} "
          f"({shares['attributed']:.1%} of the time attributed to ops)", flush=True)
    del step
    _free(check)
    claim3 = {}
    spec = profile_spec(check)
    for name in ("bn", "wn"):  # as study.scheme_profile takes it on a trial's worker
        done = profile_on_this_worker(spec.trainer_config(name), check.sizes.rate_batch, on_device)
        m = done.metrics
        claim3[name] = {"norm_share": m["norm_share"], "conv_share": m["conv_share"],
                        "step_ms": 1e3 * m["profile_step_time_s"], "device": done.device, "dtype": done.dtype,
                        "batch": done.batch}
        print(f"  claim 3, {name} on {done.device} ({done.dtype}, batch {done.batch}): normalization "
              f"{m['norm_share']:.1%}, convolution {m['conv_share']:.1%}", flush=True)
        _free(check)
    return {"bn_norm_share": shares, "claim3_profile": claim3}


def profile_spec(check: Check) -> StudySpec:
    """The shape a GPU study's trial profiles: the ImageNet spec's model, per-GPU batch, bf16, channels_last."""
    s = check.sizes
    return spec_mod.from_dict({
        "model": {"arch": s.arch, "cifar_width": s.cifar_width},
        "schemes": ["bn", "wn"],
        "data": {"kind": "generated", "image_size": s.image_size, "num_classes": s.num_classes},
        "training": {"batch_size": s.rate_batch, "amp": "bf16", "channels_last": True,
                     "torch_threads": check.threads},
    })


def loop_spec(check: Check, monitor: bool = True) -> StudySpec:
    """BN ResNet-50 (or the smoke model) on generated data, bf16, channels_last, the monitor on (or off), a
    report every ``report_every`` steps, evaluation only at the end. The stop rules cannot fire (a benchmark must run
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
        "divergence": {"monitor": monitor, "loss_multiple": 1e9, "spike_patience": steps + 1},
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
    # The generated set lives on the device for every loop: batches are cut there, no copy from the host.
    on_device = functools.partial(generated.build_generated, device=check.device)
    ips: dict[str, float] = {}
    with mock.patch.object(generated, "build_generated", on_device):
        for name, run in (("bare", functools.partial(bare_intervals, spec, "bn")),
                          ("normstudy", functools.partial(normstudy_run, spec)),
                          ("normstudy_monitor_off", functools.partial(normstudy_run, loop_spec(check, False)))):
            intervals = run(check.device)
            if not intervals:
                raise RuntimeError(f"{name}: no report interval was timed; raise loop_steps")
            ips[name] = images / statistics.median(w for w, _ in intervals)
            print(f"  {name}: {ips[name]:.0f} images/s over {len(intervals)} intervals of "
                  f"{spec.training.report_every} steps", flush=True)
            _free(check)
    return {"loop_over_bare_ratio": ips["normstudy"] / ips["bare"], "loop_img_per_s": ips,
            "loop_monitor_off_over_bare_ratio": ips["normstudy_monitor_off"] / ips["bare"],
            "monitor_on_over_off_ratio": ips["normstudy"] / ips["normstudy_monitor_off"]}


def part_compile(check: Check) -> dict[str, Any]:
    """In this process: what the child of :func:`compile_in_child` runs."""
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


def child_command(check: Check, smoke: bool, out: Path) -> list[str]:
    """This script, running only the compile part, in this process's configuration."""
    return [sys.executable, str(Path(__file__).resolve()), "--parts", "compile", "--in-process",
            "--device", str(check.device), "--compile-backend", check.compile_backend,
            "--threads", str(check.threads), "--out", str(out), *(["--smoke"] if smoke else [])]


def compile_in_child(check: Check, smoke: bool, limit_s: float) -> dict[str, Any]:
    """:func:`part_compile` in a child process, killed (with its compile workers) at ``limit_s`` seconds."""
    with tempfile.TemporaryDirectory(prefix="gpu-check-compile-") as tmp:
        out = Path(tmp) / "compile.json"
        done = run_with_limit(child_command(check, smoke, out), limit_s, cwd=str(ROOT))
        for line in done.output.splitlines():
            if line.startswith("  "):  # the part's own progress lines
                print(line, flush=True)
        if done.timed_out:
            raise TimeoutError(f"killed at its hard limit of {limit_s:.0f} s (--compile-limit-s)")
        child = json.loads(out.read_text()) if out.is_file() else {}
    if done.returncode != 0 or "compile" in child.get("errors", {}):
        reason = child.get("errors", {}).get("compile") or (done.output.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the compile child failed: {reason}")
    return {"bn_resnet50_img_per_s": child["bn_resnet50_img_per_s"]}


# --------------------------------------------------------------------------------------------------
# output


def environment(check: Check, smoke: bool) -> dict[str, Any]:
    dev = check.device
    name = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
            else f"{platform.processor() or platform.machine()} CPU ({torch.get_num_threads()} threads)")
    return {"gpu_name": name, "torch_version": torch.__version__, "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if dev.type == "cuda" else None,
            "python_version": platform.python_version(), "device": str(dev), "smoke": smoke,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")}


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            into[k].update(v)
        else:
            into[k] = v


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
    p.add_argument("--time-limit-s", type=float, default=540.0, help="skip parts that would run past this")
    p.add_argument("--compile-limit-s", type=float, default=None,
                   help="hard limit of the compile part's child process (default: its budget)")
    p.add_argument("--in-process", action="store_true", help="run the compile part in this process (the child)")
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
    prepare_device(device)  # cuDNN's autotuner, as in the training loop
    check = Check(device, sizes, threads, args.compile_backend or sizes.compile_backend)
    compile_limit_s = args.compile_limit_s if args.compile_limit_s is not None else sizes.budgets_s["compile"]
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
            if part == "compile" and not args.in_process:
                _merge(results, compile_in_child(check, args.smoke, compile_limit_s))
            else:
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
