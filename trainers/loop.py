"""The training loop every trial runs: ``train_loop_per_worker(config)``, in four public pieces.

``train_loop_per_worker`` reads as what it does::

    run = setup(config, session)            # data, model, data-dependent init or resume, DDP, optimizer
    while steps remain:
        train_step(run, *run.next_batch())  # one optimizer step; never a host-device sync
        (a sharpness probe when due)
        if report due: stop = report_interval(run)   # flush, divergence, curves, eval, checkpoint, report
    return finish(run)                      # final eval, collapse, summary, final checkpoint, last report

A :class:`TrainingRun` holds what the pieces share: ``run.model`` is what the optimizer trains (DDP and/or
compiled), ``run.module`` the unwrapped network that evaluation, the monitor, checkpoints and AGC inspect,
``run.eager_model`` the uncompiled one detailed steps run. It runs in a Ray Train worker (DDP: gloo on CPU,
NCCL on GPU) or, for one CPU worker, in the Tune trial process (docs/design.md §2).

``config`` keys: ``trial`` (a :class:`trainers.config.TrainerConfig` — a trial's ``TrialConfig`` —
validated once where it was built and trusted here), ``session`` ('train' | 'tune' | 'local'),
``tracking_uri`` and ``run_id`` (rank 0 logs curves there; None = no MLflow), and optionally
``max_steps`` (overrides the config; 0 = set up and stop).

Report intervals: a report every ``training.report_every`` steps and at every evaluation
(``training.eval_every``, default once an epoch, and the last step). At a report the monitor flushes its
buffered steps (the interval's one sync), all ranks agree on the earliest divergence, rank 0 logs the
per-step curves (cut where the run diverged), then — while the run is finite — it evaluates when due and
checkpoints when due (``training.checkpoint_every``, default at each evaluation, and always at the last
step), and reports to the session. The last step reports nothing itself: the summary replaces it.

The summary (trainers/summary.py; the outcome by the one rule, trainers/outcome.py) is reported last, always
with a checkpoint from rank 0 (Ray Train V2's ``Result.metrics`` are the latest report's that carried one):
the final weights, or for a diverged run only ``summary.json`` (trainers/checkpoint.py). Host–device syncs:
one per report interval (the monitor's ``flush``) plus evaluation; the step never calls ``.item()``.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from trainers import norms
from trainers.checkpoint import (
    CHECKPOINT_FILE,
    SUMMARY_FILE,
    gather_rng_states,
    load_checkpoint,
    remove_checkpoint,
    resume_file,
    save_checkpoint,
    summary_only_checkpoint,
    write_summary,
)
from trainers.config import TrainerConfig, TrainingSpec
from trainers.data import DataBundle, build_data
from trainers.divergence import DivergenceMonitor
from trainers.evaluation import evaluate
from trainers.inputs import batches, prepare_device, seed_everything, shared_init_seed, to_device
from trainers.models import build_model, data_dependent_init
from trainers.optim import build_optimizer
from trainers.rank_agreement import agree_on_collapse, agree_on_divergence
from trainers.run_logger import create_logger
from trainers.schedule import base_lr, lr_multiplier, warmup_length
from trainers.session import LocalSession, Session, create_session
from trainers.sharpness import edge_ratio, frozen_batchnorm
from trainers.stall import stall_verdict
from trainers.summary import summary_of

if TYPE_CHECKING:
    from trainers.divergence import Divergence, MonitorReport


def train_loop_per_worker(config: dict[str, Any], session: Session | None = None) -> dict[str, Any]:
    """Train one trial; returns (and reports last) the summary metrics. A divergence is a result."""
    run = setup(config, session)
    while run.step < run.total_steps:
        x, y = run.next_batch()
        train_step(run, x, y)
        if run.sharpness_due():
            probe_sharpness(run, x, y)
        if run.report_due() and report_interval(run):
            break  # diverged
    return finish(run)


# --------------------------------------------------------------------------------------------------
# the run


@dataclass
class TrainingRun:
    """One worker's training run: what :func:`setup` builds and the other pieces read and advance."""

    config: TrainerConfig
    session: Session
    data: DataBundle
    scheme: norms.NormScheme
    module: nn.Module  # the unwrapped network: evaluation, the monitor, checkpoints and AGC inspect it
    model: nn.Module  # what the optimizer trains: DDP-wrapped and/or compiled (``module`` when neither)
    eager_model: nn.Module  # ``model`` uncompiled (DDP or ``module``): detailed steps run it
    optimizer: torch.optim.Optimizer
    monitor: DivergenceMonitor
    criterion: nn.Module
    amp: contextlib.AbstractContextManager  # bf16 autocast or a no-op
    logger: Any  # trainers.run_logger: MLflow on rank 0, else a null logger
    total_steps: int
    warmup_steps: int
    batches: Iterator[tuple[torch.Tensor, torch.Tensor]]
    step: int = 0  # optimizer steps done (after a resume: counted from the start of the trial)
    divergence: Divergence | None = None  # agreed across ranks at a report
    last_eval: dict[str, float] = field(default_factory=dict)  # the latest evaluation's metrics
    initial_eval: dict[str, float] = field(default_factory=dict)  # train subset before the first step (stall rule)
    step_times: list[float] = field(default_factory=list)  # mean seconds a step, one per report interval
    final_checkpoint: str | None = None  # the last step's checkpoint: it goes out with the summary
    checkpointed_step: int = -1  # the step of the latest checkpoint (every rank knows it; rank 0 holds it)
    interval_start: float = field(default_factory=time.perf_counter)
    interval_steps: int = 0

    @property
    def training(self) -> TrainingSpec:
        return self.config.training

    @property
    def device(self) -> torch.device:
        return self.session.device

    @property
    def eval_every(self) -> int:
        return self.training.eval_every or self.data.steps_per_epoch

    @property
    def checkpoint_every(self) -> int:
        return self.training.checkpoint_every or self.eval_every

    def lr_at(self, s: int) -> float:
        """The learning rate of step ``s + 1`` (``s`` steps done), before the scheme's per-group multiplier."""
        t = self.training
        return base_lr(t.lr, t.batch_size, t.lr_reference_batch) * lr_multiplier(
            s, self.total_steps, kind=t.schedule, warmup_steps=self.warmup_steps,
            steps_per_epoch=self.data.steps_per_epoch, step_epochs=t.step_epochs, step_gamma=t.step_gamma,
            poly_power=t.poly_power)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training batch on the device (copies queued, not waited for)."""
        x, y = next(self.batches)
        return to_device(x, self.device, self.training.channels_last), y.to(self.device, non_blocking=True)

    def eval_due(self) -> bool:
        return self.step % self.eval_every == 0 or self.step == self.total_steps

    def checkpoint_due(self) -> bool:
        return self.step % self.checkpoint_every == 0 or self.step == self.total_steps

    def report_due(self) -> bool:
        return self.step % self.training.report_every == 0 or self.eval_due()

    def sharpness_due(self) -> bool:
        every = self.config.divergence.hessian_every
        return bool(every) and self.step % every == 0

    def evaluate(self) -> dict[str, float]:
        return evaluate(self.module, self.data, self.device, self.criterion, self.training.channels_last, self.amp)


# --------------------------------------------------------------------------------------------------
# set-up


def setup(config: dict[str, Any], session: Session | None = None) -> TrainingRun:
    """Everything before the first step: seeds, device settings, logger, data, scheme, model, optimizer,
    monitor, then resume from the session's checkpoint or (fresh) the scheme's data-dependent init on the
    first training batch, then DDP and compile."""
    spec: TrainerConfig = config["trial"]
    t = spec.training
    session = session or create_session(config.get("session", "local"))
    rank, world, device = session.world_rank, session.world_size, session.device
    if t.torch_threads:
        torch.set_num_threads(t.torch_threads)
    prepare_device(device)
    seed_everything(t.seed + rank)  # this rank's streams (CPU and CUDA): dropout masks differ by rank
    logger = create_logger(rank, config.get("tracking_uri"), config.get("run_id"))
    data = build_data(spec.data, batch_size=t.batch_size // world, rank=rank, world_size=world, seed=t.seed,
                      device=device)
    scheme = norms.create(spec.scheme.name, **spec.scheme.options)
    module = build_module(spec, scheme, data.num_classes, device)
    total_steps = int(config["max_steps"]) if config.get("max_steps") is not None else (
        t.max_steps if t.max_steps is not None else math.ceil(t.epochs * data.steps_per_epoch))
    optimizer = build_optimizer(module, scheme, t)
    monitor = DivergenceMonitor(module, spec.divergence)
    state = resume_file(session.checkpoint_dir())
    extra: dict[str, Any] = {}
    step = 0
    if state is not None:
        step, extra = load_checkpoint(state, module, optimizer, monitor, rank)
    stream = batches(data.train, data.steps_per_epoch, start_step=step)
    if state is None:
        # Data-dependent init (WN) on the first training batch, which step 1 then trains on: taken from the
        # one stream, so a loader that keeps its pipeline across epochs (DALI) is not restarted for it.
        # DDP's broadcast then makes the init identical on all ranks.
        first = next(stream)
        data_dependent_init(module, scheme, to_device(first[0], device, t.channels_last))
        stream = itertools.chain([first], stream)
    eager_model = module
    if world > 1 and dist.is_available() and dist.is_initialized():
        eager_model = nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda"
                                                          else None)
    model = torch.compile(eager_model) if t.compile else eager_model
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if t.amp == "bf16" else contextlib.nullcontext()
    run = TrainingRun(
        config=spec, session=session, data=data, scheme=scheme, module=module, model=model, eager_model=eager_model,
        optimizer=optimizer, monitor=monitor, criterion=nn.CrossEntropyLoss(label_smoothing=t.label_smoothing),
        amp=amp, logger=logger, total_steps=total_steps,
        warmup_steps=warmup_length(t.warmup_steps, t.warmup_fraction, total_steps),
        batches=stream, step=step,
        initial_eval=dict(extra.get("initial_eval") or {}))
    if state is None:
        _initial_evaluation(run)
    run.model.train()
    run.interval_start = time.perf_counter()
    return run


def build_module(spec: TrainerConfig, scheme: norms.NormScheme, num_classes: int, device: torch.device) -> nn.Module:
    """The network on ``device``, with identical initial weights on every rank (DDP also broadcasts rank 0's),
    drawn from the CPU generator seeded by ``training.seed`` alone (:func:`trainers.inputs.shared_init_seed`):
    the per-rank streams, CPU and CUDA, still drive what follows (dropout masks differ by rank)."""
    t, m = spec.training, spec.model
    with shared_init_seed(t.seed):
        module = build_model(m.arch, scheme, num_classes, dropout=t.dropout, cifar_width=m.cifar_width,
                             cifar_blocks=m.cifar_blocks).to(device)
    return module.to(memory_format=torch.channels_last) if t.channels_last else module


# --------------------------------------------------------------------------------------------------
# one step


def train_step(run: TrainingRun, x: torch.Tensor, y: torch.Tensor) -> None:
    """One optimizer step on a batch already on the device: lr, forward, backward, the monitor's per-step
    statistics, the scheme's and the config's gradient clipping, the update. No host-device sync."""
    t, monitor = run.training, run.monitor
    run.step += 1
    for group in run.optimizer.param_groups:
        group["lr"] = run.lr_at(run.step - 1) * group["lr_mult"]
    detailed = run.step % t.report_every == 0
    monitor.start_step(run.step, detailed)
    with run.amp:
        # Compiled code skips forward hooks added after compilation (torch._dynamo.config.
        # skip_nnmodule_hook_guards) and the monitor arms its activation hooks on detailed steps only:
        # those steps run eagerly, so training.compile keeps the activation statistics.
        loss = run.criterion((run.eager_model if detailed and monitor.enabled else run.model)(x), y)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    monitor.record(loss)
    run.scheme.clip_gradients(run.module)
    if t.grad_clip_norm:
        nn.utils.clip_grad_norm_(run.module.parameters(), t.grad_clip_norm)
    run.optimizer.step()
    monitor.end_step()
    run.interval_steps += 1


def probe_sharpness(run: TrainingRun, x: torch.Tensor, y: torch.Tensor) -> None:
    """The loss Hessian's top eigenvalue on this step's batch (``divergence.hessian_every``; Lanczos steps
    warm-started from the last probe: trainers/sharpness.py), logged as ``sharpness``, and ``sharpness_lr`` =
    η·λ_max / 2(1+β), SGD-with-momentum's edge of stability at 1 (η: the next step's rate). BN running
    statistics do not move. A sync: every ``hessian_every`` steps only."""
    with frozen_batchnorm(run.module):
        sharp = run.monitor.hessian_top_eigenvalue(lambda: run.criterion(run.module(x), y),
                                                   run.config.divergence.hessian_iters)
    t = run.training
    run.logger.log_metrics({"sharpness": sharp,
                            "sharpness_lr": edge_ratio(sharp, run.lr_at(run.step), t.momentum, t.nesterov)},
                           run.step)


def _initial_evaluation(run: TrainingRun) -> None:
    """The train subset's loss and top-1 before the first step (after the data-dependent init): the stall
    rule's ``L_0`` (trainers/stall.py), measured exactly as the final one is; logged at step 0."""
    ev = evaluate(run.module, run.data, run.device, run.criterion, run.training.channels_last, run.amp,
                  splits=("train",))
    run.initial_eval = {"initial_train_loss": ev["train_loss_eval"], "initial_train_top1": ev["train_top1"]}
    run.logger.log_metrics(run.initial_eval, 0)


def _checkpoint(run: TrainingRun) -> str | None:
    """Called on every rank: the ranks' generator states are gathered (one collective) so that each
    resumes its own streams; rank 0 writes the checkpoint and gets its directory, the others None."""
    run.checkpointed_step = run.step
    return save_checkpoint(run.step, run.module, run.optimizer, run.monitor, run.session.world_rank,
                           extra={"initial_eval": run.initial_eval},
                           rank_rngs=gather_rng_states(run.session.world_size))


# --------------------------------------------------------------------------------------------------
# a report interval


def report_interval(run: TrainingRun) -> bool:
    """At a report step: flush the monitor and agree on divergence across ranks, log the interval's curves,
    evaluate when due, checkpoint when due, report to the session (every step but the last). Returns
    whether the run must stop (it diverged)."""
    report, step_time = _close_interval(run)
    if run.divergence is None:
        metrics = {**report.latest, "step": run.step, "lr": run.lr_at(run.step - 1), "step_time_s": step_time,
                   "diverged": 0.0, **run.last_eval}
        checkpoint = None
        if run.eval_due():
            run.last_eval = run.evaluate()
            run.logger.log_metrics(run.last_eval, run.step)
            metrics.update(run.last_eval)
            metrics["objective"] = run.last_eval.get(run.config.objective_metric, run.last_eval["test_top1"])
            if run.checkpoint_due():
                checkpoint = _checkpoint(run)
        metrics.setdefault("objective", run.last_eval.get(run.config.objective_metric, run.config.penalty()))
        _hand_over(run, metrics, checkpoint)
    else:
        run.logger.flush()  # the curve up to the divergence; the summary follows
    # evaluation, checkpoint and MLflow writes are not step time: the next interval starts here
    run.interval_start, run.interval_steps = time.perf_counter(), 0
    return run.divergence is not None


def _close_interval(run: TrainingRun) -> tuple[MonitorReport, float]:
    """The monitor's flush (the one sync of the interval), the interval's step time, the divergence verdict
    agreed across ranks, and rank 0's curves up to it. Returns (the monitor's report, seconds a step)."""
    report = run.monitor.flush()
    step_time = (time.perf_counter() - run.interval_start) / max(1, run.interval_steps)
    run.step_times.append(step_time)
    run.divergence = agree_on_divergence(report.divergence, run.session.world_size)
    for s, metrics in report.per_step.items():
        if run.divergence is None or s <= run.divergence.step:  # the curve ends where the run diverged
            run.logger.log_metrics({**metrics, "lr": run.lr_at(s - 1)}, s)
    run.logger.log_metrics({"step_time_s": step_time}, run.step)
    return report, step_time


def _hand_over(run: TrainingRun, metrics: dict[str, Any], checkpoint: str | None) -> None:
    """Send a finite interval's results out: the curve up to a checkpoint is in the store before the
    checkpoint is reported (``close`` drains the logger's queue); every step but the last reports (and drops
    its checkpoint once the session has it); the last step's checkpoint is kept for the summary."""
    if checkpoint:
        run.logger.close()
    else:
        run.logger.flush()
    if run.step < run.total_steps:
        run.session.report(metrics, checkpoint_dir=checkpoint)
        if checkpoint:
            remove_checkpoint(checkpoint)
    else:
        run.final_checkpoint = checkpoint



# --------------------------------------------------------------------------------------------------
# the summary


def finish(run: TrainingRun) -> dict[str, Any]:
    """After the last step (or the divergence): the final evaluation where none is fresh, the collapse
    and stall verdicts, the summary (logged, written into the final checkpoint), and the last report, which
    carries it."""
    if run.divergence is None and run.step > 0 and not run.last_eval:  # resumed from the final checkpoint
        run.last_eval = run.evaluate()
    collapse = None
    if run.divergence is None and run.last_eval:
        verdict = run.monitor.collapse(run.last_eval.get("train_top1"), run.last_eval.get("train_loss_eval"),
                                       run.data.num_classes)
        collapse = agree_on_collapse(verdict, run.session.world_size)
    stall = None
    if run.divergence is None and run.last_eval:  # the same numbers on every rank: no agreement needed
        stall = stall_verdict(run.initial_eval.get("initial_train_loss"), run.last_eval.get("train_loss_eval"),
                              run.data.num_classes, run.config.divergence.stall_loss_frac)
    summary = summary_of(run.last_eval, run.divergence, collapse, run.step, run.step_times, run.config,
                         initial_eval=run.initial_eval, stall=stall)
    run.logger.log_metrics({k: v for k, v in summary.items() if isinstance(v, float)}, max(run.step, 1))
    run.logger.close()  # every curve point is in the store before the trial reports its end
    checkpoint = run.final_checkpoint
    if run.divergence is None and run.checkpointed_step != run.step:  # max_steps 0, or resumed from the final one
        checkpoint = _checkpoint(run)  # on every rank, as everywhere (a collective); rank 0 gets the directory
    if run.session.world_rank == 0:
        if checkpoint is None:  # diverged: the summary without weights
            checkpoint = summary_only_checkpoint()
        write_summary(checkpoint, summary)
    run.session.report(summary, checkpoint_dir=checkpoint)
    if checkpoint:
        remove_checkpoint(checkpoint)
    return summary


__all__ = ["CHECKPOINT_FILE", "SUMMARY_FILE", "LocalSession", "TrainingRun", "batches", "evaluate", "finish",
           "load_checkpoint", "report_interval", "save_checkpoint", "seed_everything", "setup", "summary_of",
           "to_device", "train_loop_per_worker", "train_step"]
