"""The GPU check's markdown (the table for docs/benchmarks.md, "GPU results") and what its measured rates
say a GPU spec's trial costs, from the check's JSON (benchmarks/gpu_check.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

WN_FAMILY = ("wn", "normprop", "wn_trelu")
# Targets from docs/benchmarks.md ("GPU results").
TARGET_WN_OVER_BN = 0.85
TARGET_LOOP_OVER_BARE = 0.95


@dataclass(frozen=True)
class SpecCost:
    """What one trial of a GPU spec trains: ``images`` on ``gpus`` GPUs at ``per_gpu_batch`` a GPU."""

    spec: str
    images: int
    gpus: int
    per_gpu_batch: int
    trials: int
    note: str


SPEC_COSTS = (
    SpecCost("specs/imagenet_resnet50.yaml", 90 * 1_281_167, 8, 32, 12, "90 epochs of ImageNet's 1,281,167 images"),
    SpecCost("specs/imagenette_resnet50.yaml", 80 * 36 * 256, 1, 256, 72, "80 epochs of 36 steps of 256"),
    SpecCost("specs/imagenette_regularization.yaml", 80 * 36 * 256, 1, 256, 72,
             "80 epochs of 36 steps of 256 (48 searched, 24 re-run)"),
)


def trial_hours(r: dict[str, Any], cost: SpecCost) -> float | None:
    """Hours of training a trial of ``cost``'s spec takes at the measured per-GPU rate of eager BN at its
    per-GPU batch (bf16, channels_last) times the loop's overhead (normstudy / bare, monitor on), with
    linear scaling over its GPUs. Evaluation, start-up and a loader slower than the GPU come on top."""
    rate = r.get("bn_img_per_s_by_batch", {}).get(str(cost.per_gpu_batch))
    loop = r.get("loop_over_bare_ratio")
    if not _finite(rate) or not _finite(loop) or rate <= 0 or loop <= 0:
        return None
    return cost.images / (cost.gpus * rate * loop) / 3600.0


def cost_lines(r: dict[str, Any]) -> list[str]:
    lines = ["", "Cost of the GPU specs from these rates (eager BN at the spec's per-GPU batch × the loop's "
             "overhead; linear scaling over GPUs; evaluation, start-up and the data loader not included):", ""]
    for c in SPEC_COSTS:
        h = trial_hours(r, c)
        rate = r.get("bn_img_per_s_by_batch", {}).get(str(c.per_gpu_batch))
        if h is None:
            lines.append(f"- `{c.spec}`: not measured (needs `bn_img_per_s_by_batch[{c.per_gpu_batch}]` "
                         "and the loop ratio)")
            continue
        lines.append(f"- `{c.spec}`: {c.note} on {c.gpus} GPU(s) at {_fmt(rate, ',.0f')} images/s a GPU "
                     f"(batch {c.per_gpu_batch}): **{h:.2f} h a trial**; its {c.trials} trials {h * c.trials:.1f} h on "
                     f"one set of {c.gpus} GPU(s)")
    return lines


def markdown(r: dict[str, Any], command: str) -> str:
    """The table for docs/benchmarks.md ("GPU results"), from the JSON."""
    s, ips = r["sizes"], r.get("bn_resnet50_img_per_s", {})
    by_batch = r.get("bn_img_per_s_by_batch", {})
    wn, other, share = r.get("wn_over_bn_step_ratio", {}), r.get("scheme_over_bn_step_ratio", {}), \
        r.get("bn_norm_share", {})
    timer = "CUDA events" if r["device"].startswith("cuda") else "perf_counter"
    head = "SMOKE RUN (tiny sizes; checks the script, not a measurement). " if r["smoke"] else ""
    lines = [f"{head}`{command}` — {r['date']}, {r['gpu_name']}, torch {r['torch_version']}, "
             f"CUDA {r['cuda_version']}, cuDNN {r['cudnn_version'] or '–'} (autotuner "
             f"{'on' if r.get('cudnn_benchmark') else 'off'}); {r.get('total_s', 0):.0f} s.", "",
             f"{s['arch']}, {s['image_size']} px synthetic images made on the device, batch {s['batch']}, bf16 "
             f"autocast, channels_last, SGD with momentum; step times are medians of {s['blocks']} blocks of "
             f"{s['block_steps']} steps ({timer}) after {s['warmup']} warm-up steps; BN drift over the "
             f"scheme part {_fmt(r.get('bn_drift'), '.3f')}×.", "",
             "| measure | measured | target |", "|---|---:|---|",
             f"| BN images/s, eager | {_fmt(ips.get('eager'), ',.0f')} | – |",
             f"| BN images/s, eager, batch {s['rate_batch']} (the ImageNet spec's per-GPU batch) | "
             f"{_fmt(by_batch.get(str(s['rate_batch'])), ',.0f')} | – |",
             f"| BN images/s, `torch.compile` ({r['compile_backend']}, in a child process; compiling took "
             f"{_fmt(ips.get('compile_s'), '.0f')} s) | {_fmt(ips.get('compiled'), ',.0f')} | – |"]
    for n in WN_FAMILY:
        lines.append(f"| `{n}` step / `bn` step | {_fmt(wn.get(n), '.2f')} | ≤ {TARGET_WN_OVER_BN} |")
    lines += [f"| normalization share of the BN step (device time, torch.profiler, each kernel once) | "
              f"{_fmt(share.get('norm'), '.1%')} | paper: ~24% (Pascal) |",
              f"| convolution share of the BN step | {_fmt(share.get('conv'), '.1%')} | paper: ~60% |",
              f"| normstudy loop / bare loop (monitor on, a report every {s['report_every']} steps) | "
              f"{_fmt(r.get('loop_over_bare_ratio'), '.3f')} | ≥ {TARGET_LOOP_OVER_BARE} |",
              f"| normstudy loop, monitor off / bare loop | "
              f"{_fmt(r.get('loop_monitor_off_over_bare_ratio'), '.3f')} | – |",
              f"| monitor: loop with it / without (images/s) | {_fmt(r.get('monitor_on_over_off_ratio'), '.3f')} "
              "| ≥ 0.97 |"]
    claim3 = r.get("claim3_profile", {})
    if claim3:
        lines += ["", "Claim 3's profile as a study takes it (`trainers.profiling.profile_on_this_worker`, the "
                  "trial's per-GPU batch, bf16, channels_last):", "",
                  "| scheme | device | dtype | batch | normalization share | convolution share | step (ms) |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for n, p in claim3.items():
            lines.append(f"| `{n}` | {p['device']} | {p['dtype']} | {p['batch']} | {_fmt(p['norm_share'], '.1%')} "
                         f"| {_fmt(p['conv_share'], '.1%')} | {_fmt(p['step_ms'], '.1f')} |")
    lines += ["", "| scheme | step (ms) | × bn |", "|---|---:|---:|"]
    for n, ms in r.get("step_ms", {}).items():
        rel = 1.0 if n == "bn" else wn.get(n, other.get(n))
        lines.append(f"| `{n}` | {_fmt(ms, '.1f')} | {_fmt(rel, '.2f')} |")
    lines += cost_lines(r)
    if r.get("errors"):
        lines += ["", "Failed or skipped parts: " + "; ".join(f"{k}: {v}" for k, v in r["errors"].items())]
    return "\n".join(lines) + "\n"


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v: Any, spec: str) -> str:
    return format(v, spec) if _finite(v) else "–"
