"""Where a training step's time goes: normalization vs convolution, by torch.profiler op names.

BN's cost is memory-bandwidth bound (Gitman & Ginsburg 2017 §5 measured ~24% of ResNet-50 step time
on Pascal GPUs, convs ~60%). We sum the *self* time of profiler events by category over forward and
backward: norm = batch/group/layer-norm kernels and their backward, plus WN's weight reparameterization
(the vector norms and the scaling of v), conv = convolution kernels and their backward. On GPU the
device time is used, on CPU the host time.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from typing import Any

import torch
from torch import nn

from trainers import norms
from trainers.config import TrainerConfig
from trainers.models import build_model

NORM_KEYS = ("batch_norm", "batchnorm", "group_norm", "groupnorm", "layer_norm", "native_norm",
             "linalg_vector_norm", "aten::norm", "normbackward", "_weight_norm", "instance_norm")
CONV_KEYS = ("conv", "convolution", "mkldnn_conv", "cudnn_conv")


def categorize(name: str) -> str:
    n = name.lower()
    if any(k in n for k in NORM_KEYS):
        return "norm"
    if any(k in n for k in CONV_KEYS):
        return "conv"
    return "other"


def shares_from_events(events: Any, use_cuda: bool) -> dict[str, float]:
    """Fractions of total self time per category from ``prof.key_averages()``."""
    totals = {"norm": 0.0, "conv": 0.0, "other": 0.0}
    for e in events:
        t = e.self_device_time_total if use_cuda else e.self_cpu_time_total
        totals[categorize(e.key)] += float(t)
    whole = sum(totals.values()) or 1.0
    return {"norm_share": totals["norm"] / whole, "conv_share": totals["conv"] / whole}


def profile_model_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 1,
                       warmup: int = 2, repeats: int = 5) -> dict[str, float]:
    """Profile ``repeats`` windows of ``steps`` SGD steps (after ``warmup``).

    Returns the mean over windows of norm_share and conv_share, their sample std over the windows
    (``norm_share_std``, ``conv_share_std``: the claims' intervals need a spread), ``profile_repeats``
    and ``profile_step_time_s``.
    """
    from torch.profiler import ProfilerActivity, profile

    opt = torch.optim.SGD(model.parameters(), lr=1e-6)
    loss_fn = nn.CrossEntropyLoss()
    use_cuda = x.is_cuda

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if use_cuda else [])
    windows, times = [], []
    for _ in range(repeats):
        with _quiet_stderr(), profile(activities=activities) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            if use_cuda:
                torch.cuda.synchronize()
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


def profile_step(config: TrainerConfig, per_worker_batch: int) -> dict[str, float]:
    """Profile a trainer's model on one batch shaped like its data (random pixels), at most 64 images."""
    batch = min(per_worker_batch, 64)
    spec, entry = config, config.scheme
    num_classes = spec.data.num_classes if spec.data.kind == "generated" else 1000
    model = build_model(spec.model.arch, norms.create(entry.name, **entry.options), num_classes,
                        cifar_width=spec.model.cifar_width, cifar_blocks=spec.model.cifar_blocks)
    g = torch.Generator().manual_seed(0)
    size = spec.data.image_size
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    return profile_model_step(model, x, y)
