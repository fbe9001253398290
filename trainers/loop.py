"""The training loop every trial runs: ``train_loop_per_worker(config)``.

Reads top to bottom: config → init (data, model, data-dependent init, DDP, optimizer) → resume →
the loop (step, monitor, report every k steps, evaluate and checkpoint on an interval) → summary.
The same function runs in a Ray Train ``TorchTrainer`` worker (DDP over gloo on CPU, NCCL on GPU)
and, for single-worker CPU trials, inside the Tune trial process (docs/design.md §2).

``config`` keys: ``spec`` (a resolved StudySpec as a dict), ``scheme`` (a name in the spec),
``session`` ('train' | 'tune' | 'local'), ``tracking_uri`` and ``run_id`` (rank 0 logs curves there;
None = no MLflow), and optionally ``max_steps`` (overrides the spec; 0 = set up and stop).

The summary is reported last and always with a checkpoint from rank 0 (Ray Train V2's ``Result.metrics``
are those of the latest report that carried one): the final step's weights, or for a diverged run a
checkpoint holding only ``summary.json`` (no diverged weights; resuming from it starts afresh).

Outcome of a trial (summary ``outcome``): ``diverged`` (a divergence rule fired; ``diverged=1``,
``divergence_step/_cause/_layer``), ``collapsed`` (it stayed finite but ended at chance:
trainers/divergence.py's collapse rule, decided after the final evaluation; ``collapsed=1``,
``collapse_step/_cause/_layer/_dead_frac``, and its final accuracies, which are real measurements) or
``stable``. Numbers stay floats (Tune, MLflow metrics); ``outcome`` and the cause/layer names are the
summary's only strings (MLflow tags, study/trial.py).

Host–device syncs: one per report interval (the monitor's ``flush``), plus evaluation; the step itself
never calls ``.item()``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from study.spec import StudySpec
from trainers import norms
from trainers.data import build_data
from trainers.divergence import DivergenceMonitor
from trainers.models import build_model, data_dependent_init
from trainers.run_logger import create_logger
from trainers.schedule import base_lr, lr_multiplier, warmup_length
from trainers.session import LocalSession, Session, create_session

CHECKPOINT_FILE = "state.pt"
SUMMARY_FILE = "summary.json"  # in the checkpoint reported with the summary


def train_loop_per_worker(config: dict[str, Any], session: Session | None = None) -> dict[str, Any]:
    """Train one trial; returns (and reports last) the summary metrics. A divergence is a result."""
    spec = StudySpec.model_validate(config["spec"])
    t, scheme_entry = spec.training, spec.scheme(config["scheme"])
    session = session or create_session(config.get("session", "local"))
    rank, world = session.world_rank, session.world_size
    device = session.device
    if t.torch_threads:
        torch.set_num_threads(t.torch_threads)
    _seed_everything(t.seed + rank)
    logger = create_logger(rank, config.get("tracking_uri"), config.get("run_id"))

    # --- data and model -------------------------------------------------------------------------
    per_worker_batch = t.batch_size // world
    data = build_data(spec.data, batch_size=per_worker_batch, rank=rank, world_size=world, seed=t.seed,
                      device=device)
    scheme = norms.create(scheme_entry.name, **scheme_entry.options)
    # Identical initial weights on every rank (DDP also broadcasts rank 0's), drawn from a forked RNG so
    # the per-rank seed above still drives what follows (dropout masks differ between ranks).
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed)
        model = build_model(spec.model.arch, scheme, data.num_classes, dropout=t.dropout,
                            cifar_width=spec.model.cifar_width, cifar_blocks=spec.model.cifar_blocks).to(device)
    if t.channels_last:
        model = model.to(memory_format=torch.channels_last)
    steps_per_epoch = data.steps_per_epoch
    total_steps = int(config["max_steps"]) if config.get("max_steps") is not None else (
        t.max_steps if t.max_steps is not None else math.ceil(t.epochs * steps_per_epoch))
    eval_every = t.eval_every or steps_per_epoch
    ckpt_every = t.checkpoint_every or eval_every

    groups = _param_groups(model, t.weight_decay, t.wd_exclude_norm_and_bias, scheme.lr_multipliers(model))
    optimizer = torch.optim.SGD(groups,
                                lr=base_lr(t.lr, t.batch_size, t.lr_reference_batch), momentum=t.momentum,
                                nesterov=t.nesterov)
    monitor = DivergenceMonitor(model, spec.divergence)
    step = 0
    resume_dir = session.checkpoint_dir()
    if resume_dir and (Path(resume_dir) / CHECKPOINT_FILE).is_file():
        step = _load_checkpoint(Path(resume_dir) / CHECKPOINT_FILE, model, optimizer, monitor)
    else:
        # Data-dependent init (WN) on the first batch; DDP's broadcast then makes it identical on all ranks.
        first_x, _ = next(data.train.epoch_iter(0))
        data_dependent_init(model, scheme, _to(first_x, device, t.channels_last))

    module = model  # the unwrapped model: eval, monitor, checkpoints and AGC use it
    if world > 1 and dist.is_available() and dist.is_initialized():
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                    else None)
    eager = model  # DDP or the module, uncompiled: detailed steps run it (see the forward below)
    if t.compile:
        model = torch.compile(model)
    criterion = nn.CrossEntropyLoss(label_smoothing=t.label_smoothing)
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if t.amp == "bf16" else contextlib.nullcontext()

    warmup = warmup_length(t.warmup_steps, t.warmup_fraction, total_steps)

    def lr_at(s: int) -> float:
        return base_lr(t.lr, t.batch_size, t.lr_reference_batch) * lr_multiplier(
            s, total_steps, kind=t.schedule, warmup_steps=warmup, steps_per_epoch=steps_per_epoch,
            step_epochs=t.step_epochs, step_gamma=t.step_gamma, poly_power=t.poly_power)

    # --- the loop -----------------------------------------------------------------------------------
    summary: dict[str, Any] = {"diverged": 0.0, "steps_done": float(step)}
    last_eval: dict[str, float] = {}
    divergence = None
    step_times: list[float] = []
    final_ckpt: str | None = None  # the last step's checkpoint goes out with the summary
    batches = _batches(data.train, steps_per_epoch, start_step=step)
    interval_start = time.perf_counter()
    interval_steps = 0
    model.train()
    while step < total_steps and divergence is None:
        x, y = next(batches)
        x, y = _to(x, device, t.channels_last), y.to(device, non_blocking=True)
        step += 1
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step - 1) * group["lr_mult"]
        detailed = step % t.report_every == 0
        monitor.start_step(step, detailed)
        with amp:
            # Compiled code skips forward hooks added after compilation (torch._dynamo.config.
            # skip_nnmodule_hook_guards) and the monitor arms its activation hooks on detailed steps only:
            # those steps run eagerly, so training.compile keeps the activation statistics.
            loss = criterion((eager if detailed and monitor.enabled else model)(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        monitor.record(loss)
        scheme.clip_gradients(module)
        if t.grad_clip_norm:
            nn.utils.clip_grad_norm_(module.parameters(), t.grad_clip_norm)
        optimizer.step()
        monitor.end_step()
        interval_steps += 1
        if spec.divergence.hessian_every and step % spec.divergence.hessian_every == 0:
            with _frozen_batchnorm(module):
                sharp = monitor.hessian_top_eigenvalue(lambda x=x, y=y: criterion(module(x), y),
                                                       spec.divergence.hessian_iters)
            logger.log_metrics({"sharpness": sharp}, step)

        at_eval = step % eval_every == 0 or step == total_steps
        if step % t.report_every == 0 or at_eval:
            report = monitor.flush()  # the one sync of the interval
            elapsed = time.perf_counter() - interval_start
            step_time = elapsed / max(1, interval_steps)
            step_times.append(step_time)
            divergence = _agree_on_divergence(report.divergence, world)
            for s, metrics in report.per_step.items():
                if divergence is None or s <= divergence.step:  # the curve ends where the run diverged
                    logger.log_metrics({**metrics, "lr": lr_at(s - 1)}, s)
            logger.log_metrics({"step_time_s": step_time}, step)
            metrics = {**report.latest, "step": step, "lr": lr_at(step - 1), "step_time_s": step_time,
                       "diverged": float(divergence is not None), **last_eval}
            ckpt_dir = None
            if divergence is None and at_eval:
                last_eval = evaluate(module, data, device, criterion, t.channels_last, amp)
                logger.log_metrics(last_eval, step)
                metrics.update(last_eval)
                metrics["objective"] = last_eval.get(spec.search.metric, last_eval["test_top1"])
                if step % ckpt_every == 0 or step == total_steps:
                    ckpt_dir = _save_checkpoint(step, module, optimizer, monitor, rank)
            metrics.setdefault("objective", last_eval.get(spec.search.metric, _penalty(spec)))
            if ckpt_dir:
                logger.close()  # the curve up to a checkpoint is in the store before the checkpoint exists
            else:
                logger.flush()
            if divergence is None and step < total_steps:
                session.report(metrics, checkpoint_dir=ckpt_dir)
            if ckpt_dir and step < total_steps:
                _cleanup(ckpt_dir)
            elif ckpt_dir:
                final_ckpt = ckpt_dir
            # evaluation, checkpoint and MLflow writes are not step time: the next interval starts here
            interval_start, interval_steps = time.perf_counter(), 0

    # --- summary ------------------------------------------------------------------------------------
    if divergence is None and step > 0 and not last_eval:
        last_eval = evaluate(module, data, device, criterion, t.channels_last, amp)
    collapse = None
    if divergence is None and last_eval:
        collapse = _agree_on_collapse(monitor.collapse(last_eval.get("train_top1"), last_eval.get("train_loss_eval"),
                                                       data.num_classes), world)
    summary.update(_summary(last_eval, divergence, collapse, step, step_times, spec))
    logger.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)}, max(step, 1))
    logger.close()  # every curve point is in the store before the trial reports its end
    if rank == 0:
        if final_ckpt is None:  # diverged, max_steps 0, or resumed from the final checkpoint
            final_ckpt = (tempfile.mkdtemp(prefix="normstudy-ckpt-") if divergence is not None
                          else _save_checkpoint(step, module, optimizer, monitor, rank))
        Path(final_ckpt, SUMMARY_FILE).write_text(json.dumps(summary))
    session.report(summary, checkpoint_dir=final_ckpt)
    if final_ckpt:
        _cleanup(final_ckpt)
    return summary


# --------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def evaluate(module: nn.Module, data, device: torch.device, criterion: nn.Module, channels_last: bool = False,
             amp=None) -> dict[str, float]:
    """Top-1/top-5/loss on the fixed train subset and the test split, in eval mode, summed over ranks."""
    was_training = module.training
    module.eval()
    out: dict[str, float] = {}
    for prefix, loader in (("train", data.train_eval), ("test", data.test)):
        sums = torch.zeros(4, dtype=torch.float64, device=device)  # top1, top5, loss, count
        for x, y in loader:
            if len(y) == 0:
                continue
            x, y = _to(x, device, channels_last), y.to(device)
            with amp or contextlib.nullcontext():
                logits = module(x).float()
            top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
            hit = top5 == y[:, None]
            sums += torch.stack([hit[:, 0].sum(), hit.any(1).sum(), F.cross_entropy(logits, y, reduction="sum"),
                                 torch.tensor(len(y), device=device)]).to(sums)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        top1, top5, loss, n = sums.tolist()
        n = max(n, 1.0)
        out[f"{prefix}_top1"], out[f"{prefix}_top5"] = top1 / n, top5 / n
        out["train_loss_eval" if prefix == "train" else "test_loss"] = loss / n
    module.train(was_training)
    return out


def _penalty(spec: StudySpec) -> float:
    """The objective of a diverged (or not yet evaluated) trial: finite, so Optuna and ASHA can use it."""
    return 0.0 if spec.search.mode_direction == "max" else 1e9


def _summary(last_eval: dict[str, float], divergence, collapse, step: int, step_times: list[float],
             spec: StudySpec) -> dict[str, Any]:
    s: dict[str, Any] = {"steps_done": float(step),
                         "step_time_mean_s": float(np.median(step_times)) if step_times else float("nan")}
    if divergence is not None:
        # No final accuracies: a diverged model's are meaningless, and 0.0 would read as a measurement.
        s.update(diverged=1.0, collapsed=0.0, outcome="diverged", divergence_step=float(divergence.step),
                 divergence_cause=divergence.cause, divergence_layer=divergence.layer, objective=_penalty(spec))
    else:
        tr, te = last_eval.get("train_top1", 0.0), last_eval.get("test_top1", 0.0)
        s.update(diverged=0.0, objective=last_eval.get(spec.search.metric, te), final_train_top1=tr, final_test_top1=te,
                 final_test_top5=last_eval.get("test_top5", 0.0), final_gap=tr - te)
        # A collapsed model's accuracies are measured (at chance): kept, and the objective is left as is.
        s.update(collapsed=float(collapse is not None), outcome="collapsed" if collapse is not None else "stable")
        if collapse is not None:
            s.update(collapse_step=float(collapse.step), collapse_cause=collapse.cause, collapse_layer=collapse.layer)
            if collapse.dead_frac is not None:
                s["collapse_dead_frac"] = float(collapse.dead_frac)
    return s


# --------------------------------------------------------------------------------------------------
# helpers


def _batches(train, steps_per_epoch: int, start_step: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless batches continuing exactly where ``start_step`` left off (epoch, position)."""
    epoch, pos = divmod(start_step, steps_per_epoch)
    while True:
        yield from train.epoch_iter(epoch, pos)
        epoch, pos = epoch + 1, 0


def _to(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def _param_groups(model: nn.Module, weight_decay: float, exclude_1d: bool,
                  lr_mult: dict[str, float]) -> list[dict[str, Any]]:
    """SGD groups keyed by (weight decay, lr multiplier). Excluded from decay when asked: every 1-d
    parameter (biases, norm gains/shifts, WN's g, TReLU's α). ``lr_mult`` comes from the scheme."""
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            wd = 0.0 if exclude_1d and p.ndim <= 1 else weight_decay
            groups.setdefault((wd, lr_mult.get(name, 1.0)), []).append(p)
    return [{"params": ps, "weight_decay": wd, "lr_mult": m} for (wd, m), ps in groups.items()]


def _agree_on_divergence(local, world: int):
    """All ranks stop together: gather every rank's verdict and keep the earliest (one collective)."""
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return local
    verdicts: list[Any] = [None] * world
    dist.all_gather_object(verdicts, local)
    found = [v for v in verdicts if v is not None]
    return min(found, key=lambda v: v.step) if found else None


def _agree_on_collapse(local, world: int):
    """Rank 0's collapse verdict on every rank (the dead fractions are per-rank batches; one collective)."""
    if world == 1 or not (dist.is_available() and dist.is_initialized()):
        return local
    box = [local]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def _frozen_batchnorm(model: nn.Module):
    """Forward passes that must not move BN running statistics (sharpness probes; AlgoPerf's rule)."""
    saved = [(m, m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m, _, _ in saved:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _save_checkpoint(step: int, module: nn.Module, optimizer, monitor: DivergenceMonitor, rank: int) -> str | None:
    if rank != 0:
        return None
    d = tempfile.mkdtemp(prefix="normstudy-ckpt-")
    torch.save({"step": step, "model": module.state_dict(), "optimizer": optimizer.state_dict(),
                "monitor": monitor.state_dict(), "torch_rng": torch.get_rng_state(),
                "numpy_rng": np.random.get_state(), "python_rng": random.getstate()},
               os.path.join(d, CHECKPOINT_FILE))
    return d


def _load_checkpoint(path: Path, module: nn.Module, optimizer, monitor: DivergenceMonitor) -> int:
    state = torch.load(path, map_location="cpu", weights_only=False)
    module.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    monitor.load_state_dict(state["monitor"])
    torch.set_rng_state(state["torch_rng"])
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
    return int(state["step"])


def _cleanup(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


__all__ = ["train_loop_per_worker", "evaluate", "LocalSession"]
