"""Divergence statistics of a training run (docs/design.md §7) and the rules that call a run diverged
or collapsed: :class:`DivergenceMonitor`, a thin composition of four pieces, each usable and tested alone:

* ``trainers.monitor_recorder`` (:class:`~trainers.monitor_recorder.StepRecorder`): the device side —
  hooks, per-step device tensor buffers, weight snapshots, activation statistics and the one device→host
  copy per report interval; its docstring has the activation statistics' definitions and the cost;
* ``trainers.divergence_rules`` (:class:`~trainers.divergence_rules.DivergenceRules`,
  :class:`~trainers.divergence_rules.LayerAttribution`, :class:`Divergence`): the divergence rules and the
  layer named for a divergence, plain Python on the host-side floats;
* ``trainers.collapse`` (:class:`CollapseRule`, :class:`Collapse`, the ``COLLAPSE_*`` constants): the
  collapse rule, decided once after the final evaluation;
* ``trainers.sharpness`` (:class:`~trainers.sharpness.SharpnessProbe`): the sharpness probe, warm-started
  from one probe to the next (Lanczos on Hessian-vector products; the edge-of-stability ratio).

The training loop drives a :class:`DivergenceMonitor` around every optimizer step::

    mon.start_step(step, detailed)   # before forward: snapshot weights, arm activation hooks (detailed)
    loss.backward()
    mon.record(loss)                 # after backward, before clipping: loss and per-parameter grad norms
    optimizer.step()
    mon.end_step()                   # after the step: ‖Δw‖, ‖w‖, activation stats (detailed); disarm
    ...
    report = mon.flush()             # once per report interval: the ONE host-device sync

Every per-step quantity stays a device tensor in the recorder's buffers until :meth:`~DivergenceMonitor.flush`,
which has the recorder copy them to the CPU in one transfer, then applies the rules there, step by step in
order, and derives the metrics of each step (:class:`MonitorReport`). ``record``/``end_step``/the hooks never
call ``.item()``, ``bool(tensor)`` or ``.cpu()``.

Metrics per step: ``loss``, ``loss_ema``, ``spike_ratio`` (``trainers.divergence_rules``) and, with the
monitor enabled, ``grad_norm`` (global) and ``grad_norm_max`` (largest per-parameter norm). Detailed steps
add ``update_ratio``, ``update_ratio_max``, ``weight_norm``, ``wn_g_norm`` (models with WN gains ``g``) and
the activation statistics ``act_mean/<stage>``, ``act_std/<stage>``, ``dead_frac/<stage>``
(``trainers.monitor_recorder``).

Update ratio of a parameter: ‖w_after − w_before‖ / ‖w_before‖ (the weights the step was applied to);
``weight_norm`` is likewise ‖w_before‖, so every detailed statistic describes the model as seen by that
step's forward pass. ``update_ratio`` and ``weight_norm`` are global over every parameter;
``update_ratio_max`` and its layer (``MonitorReport.latest_update_ratio_layer``) are taken over the
multiplicative parameters only (``trainers.divergence_rules``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from trainers.collapse import (
    COLLAPSE_CHANCE_MULTIPLE,
    COLLAPSE_DEAD_FRAC,
    COLLAPSE_LOSS_FRAC,
    Collapse,
    CollapseRule,
)
from trainers.config import DivergenceSpec
from trainers.divergence_rules import Divergence, DivergenceRules, LayerAttribution
from trainers.monitor_recorder import DetailStats, HostInterval, StepRecorder
from trainers.sharpness import SharpnessProbe

__all__ = ["COLLAPSE_CHANCE_MULTIPLE", "COLLAPSE_DEAD_FRAC", "COLLAPSE_LOSS_FRAC", "Collapse", "CollapseRule",
           "Divergence", "DivergenceMonitor", "MonitorReport"]


@dataclass
class MonitorReport:
    per_step: dict[int, dict[str, float]]  # step -> metrics for MLflow curves (docs/mlflow_layout.md)
    latest: dict[str, float]  # the most recent value of every metric (for ray.train.report)
    divergence: Divergence | None  # the first divergence found in this interval, or None
    latest_update_ratio_layer: str  # layer with the largest update ratio at the last detailed step


class DivergenceMonitor:
    """Per-step loss/gradient statistics, detailed statistics on chosen steps, and divergence rules.

    See the module docstring for the pieces and the definitions of every metric.
    """

    def __init__(self, model: nn.Module, spec: DivergenceSpec, *, enabled: bool | None = None) -> None:
        """``model``: the UNWRAPPED module (not DDP). ``enabled`` defaults to ``spec.monitor``; when False
        only the loss and its rules run (no grad norms, no hooks, no snapshots)."""
        self.model = model
        self.spec = spec
        self.enabled = spec.monitor if enabled is None else bool(enabled)
        self.recorder = StepRecorder(model, enabled=self.enabled)
        self.param_names: list[str] = self.recorder.param_names
        self._g_mask = [n.rsplit(".", 1)[-1] == "g" for n in self.param_names]

        # rule state (plain Python, survives flushes; state_dict/load_state_dict)
        self.rules = DivergenceRules(spec)
        self.attribution = LayerAttribution(self.param_names, [p.dim() for p in self.recorder.params])
        self.collapse_rule = CollapseRule(spec.collapse_chance_multiple, spec.collapse_dead_frac,
                                          spec.collapse_loss_frac)
        self.sharpness = SharpnessProbe()  # keeps its vector between probes (not checkpointed)
        self._last_step = 0
        self.latest_update_ratio_layer = ""
        self.divergence: Divergence | None = None  # the first divergence ever found

    # ------------------------------------------------------------------ per step (no host-device sync)
    def start_step(self, step: int, detailed: bool) -> None:
        """Before forward. On detailed steps: snapshot the weights (for Δw) and arm the activation hooks.
        Until a detailed step gives a weight reference, also ‖w‖ (a device tensor, copied at flush)."""
        self.recorder.start_step(step, detailed, weight_norms=self.attribution.wnorm_ref is None)

    def record(self, loss: torch.Tensor) -> None:
        """After backward (DDP-averaged grads), before clipping and ``optimizer.step``. No sync."""
        self.recorder.record(loss)

    def end_step(self) -> None:
        """After ``optimizer.step``. On detailed steps: ‖Δw‖, ‖w‖ and activation statistics. No sync."""
        self.recorder.end_step()

    @property
    def last_grad_norm(self) -> torch.Tensor | None:
        """The global gradient norm of the last ``record`` as a device tensor (no sync), e.g. for clipping
        without recomputing the norms; None when the monitor is disabled or nothing was recorded yet."""
        return self.recorder.last_grad_norm

    # ------------------------------------------------------------------ report (the one sync)
    def flush(self) -> MonitorReport:
        """Copy the buffers to the CPU in one transfer, apply the rules to the buffered steps in order
        and return their metrics. Clears the buffers."""
        host = self.recorder.flush()  # the ONE host-device sync
        if host is None:
            return MonitorReport({}, {}, None, self.latest_update_ratio_layer)
        per_step, found = self._apply_rules(host)
        self._last_step = host.steps[-1]
        latest: dict[str, float] = {}
        for step in host.steps:
            latest.update(per_step[step])
        if found is not None and self.divergence is None:
            self.divergence = found
        return MonitorReport(per_step, latest, found, self.latest_update_ratio_layer)

    def _apply_rules(self, host: HostInterval) -> tuple[dict[int, dict[str, float]], Divergence | None]:
        """The rules and the metrics of every step of the interval, in order; the first divergence."""
        per_step: dict[int, dict[str, float]] = {}
        found: Divergence | None = None
        self.attribution.begin_interval(host.start_wnorm)
        for step, loss, grads in zip(host.steps, host.losses, host.grad_norms, strict=True):
            m = per_step.setdefault(step, {})
            m["loss"] = loss
            verdict = self.rules.observe(loss, grads if self.enabled else None)
            m["loss_ema"], m["spike_ratio"] = verdict.loss_ema, verdict.spike_ratio
            if step in host.detail:
                self._detailed_metrics(step, host.detail[step], m)
            if self.enabled:
                m["grad_norm"] = math.sqrt(math.fsum(v * v for v in grads))
                m["grad_norm_max"] = _nanmax(grads) if grads else 0.0
            if verdict.cause is not None and found is None:
                layer = self.attribution.layer(verdict.cause, grads) if self.enabled else ""
                found = Divergence(verdict.cause, step, layer)
            if self.enabled:
                self.attribution.observe_grads(grads)
        self.attribution.end_interval()
        return per_step, found

    def _detailed_metrics(self, step: int, d: DetailStats, m: dict[str, float]) -> None:
        if d.wnorm:
            self._weight_metrics(d.wnorm, d.dnorm, m)
        self.attribution.observe_weights(d.wnorm)
        for name, (mean, rms, dead) in zip(self.recorder.stage_names, d.acts, strict=True):
            if not math.isnan(mean):
                m[f"act_mean/{name}"] = mean
                m[f"act_std/{name}"] = math.sqrt(max(rms * rms - mean * mean, 0.0))
            if not math.isnan(dead):
                m[f"dead_frac/{name}"] = dead
                self.collapse_rule.observe(step, name, dead)

    def _weight_metrics(self, wn: list[float], dw: list[float], m: dict[str, float]) -> None:
        wtot = math.sqrt(math.fsum(v * v for v in wn))
        dtot = math.sqrt(math.fsum(v * v for v in dw))
        m["update_ratio"] = dtot / wtot if wtot > 0 else float("nan")
        ratio = [b / a if a > 0 else float("nan") for a, b in zip(wn, dw, strict=True)]
        cand = [r for r, c in zip(ratio, self.attribution.candidates, strict=True) if c and not math.isnan(r)]
        m["update_ratio_max"] = max(cand) if cand else float("nan")
        layer = self.attribution.argmax_name(ratio)
        if layer:
            self.latest_update_ratio_layer = layer
        m["weight_norm"] = wtot
        if any(self._g_mask):
            gains = [v for v, g in zip(wn, self._g_mask, strict=True) if g]
            m["wn_g_norm"] = math.sqrt(math.fsum(v * v for v in gains))

    # ------------------------------------------------------------------ collapse
    def collapse(self, final_train_top1: float | None, final_train_loss: float | None,
                 num_classes: int) -> Collapse | None:
        """The collapse verdict of a run that ended finite (``trainers.collapse``), from the final train
        accuracy and loss and the dead fractions seen on the detailed steps; pure Python, no sync."""
        return self.collapse_rule.verdict(final_train_top1, final_train_loss, num_classes, self._last_step)

    # ------------------------------------------------------------------ sharpness
    def hessian_top_eigenvalue(self, loss_fn: Callable[[], torch.Tensor], iters: int | None = None) -> float:
        """Top eigenvalue of the loss Hessian w.r.t. the trainable parameters (``trainers.sharpness``:
        ``iters`` Lanczos steps on Hessian-vector products, warm-started from this monitor's last probe;
        deterministic). ``loss_fn`` recomputes the loss on a fixed batch; ``iters`` defaults to
        ``spec.hessian_iters``. Cost: one gradient with its graph and ``iters`` products; two syncs a
        product (it is called every ``hessian_every`` steps only). Activation hooks are disarmed meanwhile;
        ``loss_fn`` is responsible for model mode (BN running stats, dropout)."""
        iters = self.spec.hessian_iters if iters is None else int(iters)
        with self.recorder.hooks_paused():
            return self.sharpness(loss_fn, self.recorder.params, iters)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Plain-Python rule state for a checkpoint. Steps recorded but not yet flushed are not in it:
        take it right after :meth:`flush`."""
        return {
            "version": 2,
            **self.rules.state_dict(),  # ema, init_sum, init_count, spike_count
            "last_step": self._last_step,
            "latest_update_ratio_layer": self.latest_update_ratio_layer,
            **self.attribution.state_dict(),  # param_names, last_finite_layer, wnorm_ref
            "divergence": None if self.divergence is None else asdict(self.divergence),
            "collapse": self.collapse_rule.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rules.load_state_dict(state)
        self._last_step = int(state.get("last_step", 0))
        self.latest_update_ratio_layer = state.get("latest_update_ratio_layer", "")
        self.attribution.load_state_dict(state)
        div = state.get("divergence")
        self.divergence = Divergence(**div) if div else None
        self.collapse_rule.load_state_dict(state.get("collapse", {}))  # version 1: no collapse state
        self.sharpness.reset()  # the warm-start vector is not checkpointed: the next probe starts cold
        self.recorder.discard_pending()

    @property
    def last_step(self) -> int:
        """The last step flushed (0 before any)."""
        return self._last_step


def _nanmax(xs: list[float]) -> float:
    """max() that returns NaN when any element is NaN (Python's max depends on the order then)."""
    if any(math.isnan(x) for x in xs):
        return float("nan")
    return max(xs)
