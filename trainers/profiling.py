"""Where a training step's time goes: normalization vs convolution, by torch.profiler op names.

BN's cost is memory-bandwidth bound (Gitman & Ginsburg 2017 §5 measured ~24% of ResNet-50 step time
on Pascal GPUs, convs ~60%). We sum the *self* time of profiler events by category over forward and
backward: norm = batch/group/layer-norm kernels and their backward, plus WN's weight reparameterization
(the vector norms and the scaling of v), conv = convolution kernels and their backward.

On CPU the time is each op's self CPU time. On a GPU it is device time, and each kernel is counted once:
kineto reports every kernel twice — as a device event named after the kernel (cuDNN's names do not say
"batch_norm") and inside the self device time of the op that launched it — so the whole is the sum over
the device events and a category the sum over the launching ops, by op name (:func:`shares_from_events`).

:func:`profile_step` measures a trainer's step as its trials run it: on ``device``, under the trial's bf16
autocast (``training.amp``) and memory format (``training.channels_last``), at the per-worker batch (at
most :data:`CPU_BATCH_CAP` images on a CPU, where the profile must stay cheap). ``study.scheme_profile``
runs it on a worker with a trial's resources, never on the study driver.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.autograd import DeviceType

from trainers import norms
from trainers.config import TrainerConfig
from trainers.inputs import prepare_device, shared_init_seed
from trainers.models import build_model

NORM_KEYS = ("batch_norm", "batchnorm", "group_norm", "groupnorm", "layer_norm", "native_norm",
             "linalg_vector_norm", "aten::norm", "normbackward", "_weight_norm", "instance_norm")
CONV_KEYS = ("conv", "convolution", "mkldnn_conv", "cudnn_conv")
CPU_BATCH_CAP = 64  # images a profiled CPU step takes at most (7 steps a scheme must stay a few seconds)


def categorize(name: str) -> str:
    n = name.lower()
    if any(k in n for k in NORM_KEYS):
        return "norm"
    if any(k in n for k in CONV_KEYS):
        return "conv"
    return "other"


def shares_from_events(events: Any, use_cuda: bool) -> dict[str, float]:
    """Fractions of the step's time per category from ``prof.key_averages()``: ``norm_share``,
    ``conv_share`` and ``attributed`` (the fraction of the time that ops account for: 1 on CPU).

    CPU: every op's self CPU time. CUDA: the whole is the device events' time (kernels, copies; user
    annotations left out, they span kernels), a category the self device time of the ops that launched
    them, so each kernel counts once; kernels no op launched fall under "other".
    """
    totals = {"norm": 0.0, "conv": 0.0, "other": 0.0}
    if not use_cuda:
        for e in events:
            totals[categorize(e.key)] += float(e.self_cpu_time_total)
        whole, attributed = sum(totals.values()), 1.0
    else:
        for e in events:
            if e.device_type == DeviceType.CPU:
                totals[categorize(e.key)] += float(e.self_device_time_total)
        whole = sum(float(e.self_device_time_total) for e in events
                    if e.device_type != DeviceType.CPU and not getattr(e, "is_user_annotation", False))
        if whole <= 0:
            raise RuntimeError("torch.profiler recorded no GPU time (is CUPTI available to torch?)")
        attributed = sum(totals.values()) / whole
    whole = whole or 1.0
    return {"norm_share": totals["norm"] / whole, "conv_share": totals["conv"] / whole, "attributed": attributed}


def profile_model_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 1,
                       warmup: int = 2, repeats: int = 5, amp: torch.dtype | None = None) -> dict[str, float]:
    """Profile ``repeats`` windows of ``steps`` SGD steps (after ``warmup``), on the device ``x`` is on;
    ``amp``: the autocast dtype of the forward (None: none here; a caller's own autocast still applies).

    Returns the mean over windows of norm_share and conv_share, their sample std over the windows
    (``norm_share_std``, ``conv_share_std``: the claims' intervals need a spread), ``profile_repeats``
    and ``profile_step_time_s``.
    """
    from torch.profiler import ProfilerActivity, profile

    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    loss_fn = nn.CrossEntropyLoss()
    use_cuda = x.is_cuda
    autocast = (lambda: torch.autocast(x.device.type, dtype=amp)) if amp is not None else contextlib.nullcontext

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    def sync() -> None:
        if use_cuda:
            torch.cuda.synchronize(x.device)

    for _ in range(warmup):
        step()
    sync()  # the warm-up's kernels stay out of the first window
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if use_cuda else [])
    windows, times = [], []
    for _ in range(repeats):
        with _quiet_stderr(), profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            times.append((time.perf_counter() - t0) / steps)
        windows.append(shares_from_events(prof.key_averages(), use_cuda))
    out: dict[str, float] = {"profile_repeats": float(repeats), "profile_step_time_s": statistics.fmean(times)}
    for key in ("norm_share", "conv_share"):
        values = [w[key] for w in windows]
        out[key] = statistics.fmean(values)
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    return out


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints 'profiler_start/stop' lines on fd 2 from C++; keep the study's output clean."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def profile_batch(per_worker_batch: int, device: torch.device) -> int:
    """The batch a profile is taken at: the trial's per-worker batch, capped on a CPU."""
    return per_worker_batch if device.type == "cuda" else min(per_worker_batch, CPU_BATCH_CAP)


def profile_dtype(config: TrainerConfig) -> torch.dtype:
    """The dtype the trial's forward runs in: bf16 under ``training.amp: bf16``, else float32."""
    return torch.bfloat16 if config.training.amp == "bf16" else torch.float32


def describe_device(device: torch.device) -> str:
    """``"cpu"`` or ``"cuda:0 NVIDIA H100 80GB HBM3"``: the device and, on a GPU, the card."""
    if device.type != "cuda":
        return device.type
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} {torch.cuda.get_device_name(index)}"


def profile_step(config: TrainerConfig, per_worker_batch: int, device: torch.device | None = None) -> dict[str, float]:
    """Profile a trainer's step on one batch shaped like its data (random pixels) as its trials run it:
    the model on ``device`` (default: the CPU), ``training.channels_last``'s memory format, ``training.amp``'s
    autocast, at :func:`profile_batch` images."""
    device = device or torch.device("cpu")
    prepare_device(device)
    t = config.training
    batch = profile_batch(per_worker_batch, device)
    num_classes = config.data.num_classes if config.data.kind == "generated" else 1000
    with shared_init_seed(0):  # the same weights wherever it runs; the process's generators untouched
        model = build_model(config.model.arch, norms.create(config.scheme.name, **config.scheme.options),
                            num_classes, cifar_width=config.model.cifar_width,
                            cifar_blocks=config.model.cifar_blocks).to(device)
    g = torch.Generator().manual_seed(0)
    size = config.data.image_size
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    if t.channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    dtype = profile_dtype(config)
    return profile_model_step(model, x, y, amp=dtype if dtype != torch.float32 else None)


@dataclass(frozen=True)
class WorkerProfile:
    """A step profile and what it was measured with."""

    metrics: dict[str, float]  # profile_model_step's
    device: str  # describe_device's
    dtype: str  # "float32" or "bfloat16"
    batch: int  # images in the profiled step


def profile_on_this_worker(config: TrainerConfig, per_worker_batch: int, use_gpu: bool) -> WorkerProfile:
    """What a process with one trial worker's resources runs to profile the trial's step: on its GPU with
    ``use_gpu`` (the one Ray assigned it, visible as ``cuda:0``), else on its CPU with the loop's thread
    count (``training.torch_threads``; 0 leaves the worker's, which Ray sets to its CPUs)."""
    device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
    if config.training.torch_threads:
        torch.set_num_threads(config.training.torch_threads)
    metrics = profile_step(config, per_worker_batch, device)
    return WorkerProfile(metrics, describe_device(device), str(profile_dtype(config)).removeprefix("torch."),
                         profile_batch(per_worker_batch, device))
