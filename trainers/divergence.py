"""Divergence statistics of a training run (docs/design.md §7) and the rules that call a run diverged
or collapsed.

The training loop drives a :class:`DivergenceMonitor` around every optimizer step::

    mon.start_step(step, detailed)   # before forward: snapshot weights, arm activation hooks (detailed)
    loss.backward()
    mon.record(loss)                 # after backward, before clipping: loss and per-parameter grad norms
    optimizer.step()
    mon.end_step()                   # after the step: ‖Δw‖, ‖w‖, activation stats (detailed); disarm
    ...
    report = mon.flush()             # once per report interval: the ONE host-device sync

Every per-step quantity stays a device tensor in a buffer until :meth:`~DivergenceMonitor.flush`, which
concatenates the buffers, copies them to the CPU in one transfer and applies the rules there, step by
step in order. ``record``/``end_step``/the hooks never call ``.item()``, ``bool(tensor)`` or ``.cpu()``.

Divergence rules, evaluated per step in this order (the first that fires names the cause):

1. ``non_finite_loss``: the loss is NaN or ±inf.
2. ``non_finite_grad``: the loss is finite but some parameter's gradient norm is not (monitor enabled).
3. ``loss_explosion``: loss > ``loss_multiple`` × initial loss, the initial loss being the mean of the
   first ``initial_steps`` finite losses (checked only once that estimate is complete).
4. ``loss_spike``: spike ratio = loss / EMA (the EMA *before* this step's loss, started at the first
   loss) above ``spike_ratio`` for ``spike_patience`` consecutive steps; reported at the step where the
   patience is reached. Spiking steps (and non-finite losses) do **not** update the EMA, so the EMA stays
   the pre-spike baseline and a loss that jumps to a new, higher plateau is a sustained spike. (Were
   spikes folded into the EMA, a decay-0.9 EMA would catch up with a 5× plateau within 3 steps and a
   sustained spike could never reach a patience of 5.)

Which parameter "moved most" at the divergence step (``Divergence.layer``):

* ``loss_explosion`` / ``loss_spike``: the parameter with the largest ‖grad‖ / ‖w‖ at that step.
* ``non_finite_grad``: the parameter with a non-finite gradient that is *last* in
  ``model.named_parameters()`` order (registration order ≈ forward order for the ResNets here).
  Back-propagation carries a NaN/inf from where it appears toward the input, so every parameter
  before its origin is non-finite too; the last non-finite one is the origin.
* ``non_finite_loss``: the gradients of a NaN loss are all NaN and say nothing; the layer is the one
  with the largest ‖grad‖ / ‖w‖ at the latest earlier step whose gradients were all finite (normally
  the step just before, whose update produced the weights that blew up), in this report interval or
  an earlier one.
* No earlier all-finite step to learn from (a NaN at the very first step the monitor sees, or no
  finite ratio anywhere), the fallback, in this order: the first parameter in forward order whose
  weights were non-finite (the forward pass turns NaN there; ‖w‖ as below), else the first whose
  gradient is non-finite at that step, else the largest finite ‖grad‖ / ‖w‖ at that step, else the
  first multiplicative parameter. A diverged run of an enabled monitor therefore always names a layer.
* Disabled monitor (no gradient statistics): ``""``.

‖w‖ in these ratios is the weight norm measured at the latest detailed step at or before the step in
question (the pre-update snapshot); before the first detailed step it is the norm of the weights at the
first step the monitor saw (taken in ``start_step`` as a device tensor and copied in the next flush's
one transfer, so no extra sync). A snapshot taken before the blow-up stays finite where the weights at
flush time are already NaN: a NaN loss inside the first report interval still gets a layer. Weight
norms drift slowly over one report interval, so the ratios' ranking barely depends on which snapshot.

The ratios that pick a layer (the divergence layer, ``update_ratio_max`` and its layer) are taken over
*multiplicative* parameters only: tensors with ≥ 2 dims (conv/linear weights, WN's ``v``) and 1-d
parameters named ``weight`` or ``g`` (BN's γ, WN's gains). Additive shifts (biases, WN's ``b``, TReLU's
``α``) start at 0, so their ratio is undefined at first and huge for a long while — they would be named
every time. (A model with no multiplicative parameter at all uses all of them.) Global norms
(``grad_norm``, ``update_ratio``, ``weight_norm``) and ``grad_norm_max`` include every parameter.

Update ratio of a parameter: ‖w_after − w_before‖ / ‖w_before‖ (the weights the step was applied to);
``weight_norm`` is likewise ‖w_before‖, so every detailed statistic describes the model as seen by that
step's forward pass. ``loss_ema`` is the EMA after this step (equal to the one before on spiking steps).

Activation statistics (detailed steps, models with a ``.stages`` attribute such as ``trainers.resnet``):
``act_mean/<stage>`` and ``act_std/<stage>`` over every element of the stage output (``stem`` = output of
the stem's ``act1``); ``dead_frac/<stage>`` = fraction of channels whose activation output is constant
over batch and positions (max == min; a dead ReLU is constant 0, a dead TReLU constant α), averaged over
the activation modules of the stage (submodules named ``act<k>``). Several forwards in one step (gradient
accumulation) are pooled. The std is √(E[y²] − E[y]²) from a mean and a root-mean-square: two fast
passes where ``torch.std_mean`` costs ~100× more on CPU.

Collapse (``Collapse``, :class:`CollapseRule`): a run that stays finite to the end but ends at chance is
neither stable nor diverged. Decided once, after the final evaluation (``DivergenceMonitor.collapse``),
from the final train top-1 / train loss (fixed train subset, eval mode) and the ``dead_frac/<stage>``
values of the detailed steps; the thresholds are this module's ``COLLAPSE_*`` constants:

* a trial is a candidate when its final train top-1 ≤ ``COLLAPSE_CHANCE_MULTIPLE`` × chance
  (1 / number of classes); above that it learned something and is not collapsed;
* ``dead_relu``: some stage's ``dead_frac`` reached ``COLLAPSE_DEAD_FRAC`` at a detailed step (most of
  its channels constant over batch and positions). ``layer`` = that stage (the earliest to cross; ties:
  the larger fraction, then forward order), ``step`` = the first detailed step at which it crossed,
  ``dead_frac`` = the largest fraction that stage reached;
* ``chance_accuracy``: no stage crossed, but the final train loss is ≥ ``COLLAPSE_LOSS_FRAC`` × ln(classes)
  — the model predicts no better than a uniform guess. ``step`` = the last step, ``layer`` = the stage
  with the largest ``dead_frac`` seen (``""`` without activation statistics).
* A candidate that neither lost a stage nor sits at the uniform guess's loss (it is at chance but its
  loss fell: a slow learner) is not collapsed.

Cost (resnet_cifar, 16 px, batch 64, one CPU thread, detailed every 10th step): ≈ 2 % of the step. Per
step: one ``_foreach_norm`` over the gradients and one ``stack`` (until a finite weight reference exists,
also one over the weights per report interval). Detailed steps: a weight snapshot (one extra copy of the
parameters, kept allocated between detailed steps), three ``_foreach_norm`` and a few reductions per
hooked activation. The hooks are registered in ``start_step`` and removed in
``end_step``; compiled code skips hooks added after compilation, so with ``training.compile`` the loop
runs detailed steps on the uncompiled model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from study.spec import DivergenceSpec

__all__ = ["Collapse", "CollapseRule", "Divergence", "DivergenceMonitor", "MonitorReport"]

_ACT_NAME = re.compile(r"act\d*")
_F32 = torch.float32

# Collapse thresholds (module docstring). Constants for now; proposed as DivergenceSpec fields
# collapse_chance_multiple / collapse_dead_frac / collapse_loss_frac. Measured on the quick model (WN with
# the classifier's DDI, 40 steps): collapsed runs end at 0.086-0.094 train top-1 (chance 0.10) with a
# stage 63-96 % dead, healthy and slow-but-learning runs (lr 0.003) at >= 0.20 with 0 % dead.
COLLAPSE_CHANCE_MULTIPLE = 1.5  # final train top-1 <= 1.5 x chance is "at chance"
COLLAPSE_DEAD_FRAC = 0.5  # "most of a stage's channels dead" (its dead_frac at a detailed step)
COLLAPSE_LOSS_FRAC = 0.99  # final train loss >= 0.99 ln(classes): no better than a uniform guess


@dataclass
class Divergence:
    cause: str  # "non_finite_loss" | "non_finite_grad" | "loss_explosion" | "loss_spike"
    step: int  # the optimizer step (as passed to start_step) where it was decided
    layer: str  # parameter name (model.named_parameters()) that moved most; "" only if the monitor is off


@dataclass
class Collapse:
    cause: str  # "dead_relu" | "chance_accuracy"
    step: int  # first detailed step at which the stage crossed COLLAPSE_DEAD_FRAC; the last step otherwise
    layer: str  # the stage ("stem", "layer1", ...); "" when no activation statistics were measured
    dead_frac: float | None = None  # the largest dead fraction that stage reached (None: not measured)


class CollapseRule:
    """The collapse rule (module docstring), plain Python: ``observe`` each stage's dead fraction on the
    detailed steps in order, then ``verdict`` once with the final train accuracy and loss."""

    def __init__(self, chance_multiple: float = COLLAPSE_CHANCE_MULTIPLE, dead_frac: float = COLLAPSE_DEAD_FRAC,
                 loss_frac: float = COLLAPSE_LOSS_FRAC) -> None:
        self.chance_multiple, self.dead_threshold, self.loss_frac = chance_multiple, dead_frac, loss_frac
        self.first_dead: dict[str, tuple[int, float]] = {}  # stage -> (first step >= threshold, its fraction)
        self.peak: dict[str, float] = {}  # stage -> largest dead fraction seen
        self.order: list[str] = []  # stages in the order first seen (forward order)

    def observe(self, step: int, stage: str, dead_frac: float) -> None:
        if not math.isfinite(dead_frac):
            return
        if stage not in self.peak:
            self.order.append(stage)
            self.peak[stage] = dead_frac
        self.peak[stage] = max(self.peak[stage], dead_frac)
        if dead_frac >= self.dead_threshold and stage not in self.first_dead:
            self.first_dead[stage] = (int(step), dead_frac)

    def verdict(self, final_train_top1: float | None, final_train_loss: float | None, num_classes: int,
                last_step: int) -> Collapse | None:
        """The collapse of a run that ended finite, or None (it learned, or its ending is unmeasured)."""
        if final_train_top1 is None or not math.isfinite(final_train_top1) or num_classes < 2:
            return None
        if final_train_top1 > self.chance_multiple / num_classes * (1 + 1e-9):  # 'at most', float-safe
            return None
        if self.first_dead:
            stage = min(self.first_dead, key=lambda n: (self.first_dead[n][0], -self.first_dead[n][1],
                                                        self.order.index(n)))
            return Collapse("dead_relu", self.first_dead[stage][0], stage, self.peak[stage])
        uniform = math.log(num_classes)
        if final_train_loss is not None and final_train_loss >= self.loss_frac * uniform:  # NaN: not >=
            stage = max(self.order, key=lambda n: (self.peak[n], -self.order.index(n)), default="")
            return Collapse("chance_accuracy", int(last_step), stage, self.peak.get(stage))
        return None

    def state_dict(self) -> dict:
        return {"first_dead": {k: list(v) for k, v in self.first_dead.items()}, "peak": dict(self.peak),
                "order": list(self.order)}

    def load_state_dict(self, state: dict) -> None:
        self.first_dead = {k: (int(v[0]), float(v[1])) for k, v in state.get("first_dead", {}).items()}
        self.peak = {k: float(v) for k, v in state.get("peak", {}).items()}
        self.order = list(state.get("order", self.peak))


@dataclass
class MonitorReport:
    per_step: dict[int, dict[str, float]]  # step -> metrics for MLflow curves (docs/mlflow_layout.md)
    latest: dict[str, float]  # the most recent value of every metric (for ray.train.report)
    divergence: Divergence | None  # the first divergence found in this interval, or None
    latest_update_ratio_layer: str  # layer with the largest update ratio at the last detailed step


@dataclass
class _Stage:
    name: str
    out: nn.Module  # the module whose output gives act_mean/act_std
    acts: list[nn.Module]  # activation modules whose outputs give dead_frac


class DivergenceMonitor:
    """Per-step loss/gradient statistics, detailed statistics on chosen steps, and divergence rules.

    See the module docstring for the rules and the definitions of every metric.
    """

    def __init__(self, model: nn.Module, spec: DivergenceSpec, *, enabled: bool | None = None) -> None:
        """``model``: the UNWRAPPED module (not DDP). ``enabled`` defaults to ``spec.monitor``; when False
        only the loss and its rules run (no grad norms, no hooks, no snapshots)."""
        self.model = model
        self.spec = spec
        self.enabled = spec.monitor if enabled is None else bool(enabled)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.param_names: list[str] = [n for n, _ in named]
        self._params: list[nn.Parameter] = [p for _, p in named]
        self._all_f32 = all(p.dtype == _F32 for p in self._params)
        cand = [p.dim() >= 2 or n.rsplit(".", 1)[-1] in ("weight", "g") for n, p in named]
        if not any(cand):
            cand = [True] * len(named)
        self._cand: list[bool] = cand
        self._g_mask = [n.rsplit(".", 1)[-1] == "g" for n in self.param_names]
        self._stages = self._find_stages(model)

        # rule state (plain Python, survives flushes; state_dict/load_state_dict)
        self._ema: float | None = None
        self._init_sum = 0.0
        self._init_count = 0
        self._spike_count = 0
        self._last_step = 0
        self._last_finite_layer = ""  # largest grad/weight ratio at the latest all-finite-grad step
        self._wnorm_ref: list[float] | None = None  # ‖w‖ per parameter at the latest detailed step
        self._wnorm_start: torch.Tensor | None = None  # ‖w‖ at the first step while there is no reference
        self.collapse_rule = CollapseRule(spec.collapse_chance_multiple, spec.collapse_dead_frac,
                                          spec.collapse_loss_frac)
        self.latest_update_ratio_layer = ""
        self.divergence: Divergence | None = None  # the first divergence ever found

        # per-step buffers (device tensors)
        self._steps: list[int] = []
        self._vecs: list[torch.Tensor] = []  # [loss, grad norms...] per recorded step
        self._detail: dict[int, torch.Tensor] = {}  # step -> [‖w‖..., ‖Δw‖..., act stats...]

        # the step in progress
        self._step = 0
        self._detailed = False
        self._recorded = False
        self._snap: list[torch.Tensor] | None = None
        self._handles: list[Any] = []
        self._act: dict[tuple[int, str], list[torch.Tensor]] = {}
        self._last_vec: torch.Tensor | None = None  # [loss, grad norms...] of the last record

    # ------------------------------------------------------------------ per step (no host-device sync)
    def start_step(self, step: int, detailed: bool) -> None:
        """Before forward. On detailed steps: snapshot the weights (for Δw) and arm the activation hooks."""
        self._disarm()
        self._step = int(step)
        self._recorded = False
        self._detailed = bool(detailed) and self.enabled
        self._act = {}
        if self.enabled and self._wnorm_ref is None and self._wnorm_start is None and self._params:
            # ‖w‖ before this step's forward, until a detailed step gives a reference: a device tensor,
            # copied with the next flush's transfer (no sync here)
            with torch.no_grad():
                self._wnorm_start = torch.stack(torch._foreach_norm(self._params, 2, dtype=_F32))
        if not self._detailed:
            return
        with torch.no_grad():
            if self._snap is None or len(self._snap) != len(self._params):
                self._snap = [torch.empty_like(p) for p in self._params]
            torch._foreach_copy_(self._snap, self._params)
        self._arm()

    def record(self, loss: torch.Tensor) -> None:
        """After backward (DDP-averaged grads), before clipping and ``optimizer.step``. No sync."""
        loss = loss.detach().reshape(()).to(_F32)
        if not self.enabled:
            vec = loss.reshape(1)
        else:
            grads = [p.grad for p in self._params]
            if all(g is not None for g in grads):
                norms = torch._foreach_norm(grads, 2, dtype=None if self._all_f32 else _F32)
            else:
                present = [g for g in grads if g is not None]
                it = iter(torch._foreach_norm(present, 2, dtype=_F32) if present else ())
                zero = loss.new_zeros(())
                norms = [next(it) if g is not None else zero for g in grads]
            vec = torch.stack([loss, *norms])
            self._last_vec = vec
        self._steps.append(self._step)
        self._vecs.append(vec)
        self._recorded = True

    def end_step(self) -> None:
        """After ``optimizer.step``. On detailed steps: ‖Δw‖, ‖w‖ and activation statistics. No sync."""
        try:
            if self._detailed and self._recorded and self._snap is not None:
                with torch.no_grad():
                    wnorm = torch._foreach_norm(self._snap, 2, dtype=_F32)
                    torch._foreach_sub_(self._snap, self._params)  # the snapshot now holds -Δw
                    dnorm = torch._foreach_norm(self._snap, 2, dtype=_F32)
                    acts = self._act_vector(self._vecs[-1])
                    self._detail[self._step] = torch.stack([*wnorm, *dnorm, *acts])
        finally:
            self._disarm()
            self._detailed = False
            self._act = {}

    @property
    def last_grad_norm(self) -> torch.Tensor | None:
        """The global gradient norm of the last ``record`` as a device tensor (no sync), e.g. for clipping
        without recomputing the norms; None when the monitor is disabled or nothing was recorded yet."""
        if self._last_vec is None:
            return None
        return torch.linalg.vector_norm(self._last_vec[1:])

    # ------------------------------------------------------------------ report (the one sync)
    def flush(self) -> MonitorReport:
        """Copy the buffers to the CPU in one transfer, apply the rules to the buffered steps in order
        and return their metrics. Clears the buffers."""
        steps, vecs, detail = self._steps, self._vecs, self._detail
        self._steps, self._vecs, self._detail = [], [], {}
        start, self._wnorm_start = self._wnorm_start, None
        per_step: dict[int, dict[str, float]] = {}
        if not steps:
            return MonitorReport(per_step, {}, None, self.latest_update_ratio_layer)

        n_par = len(self._params)
        detail_steps = [s for s in steps if s in detail]
        parts = [torch.stack(vecs).reshape(-1)]
        parts += [detail[s].reshape(-1) for s in detail_steps]
        if start is not None:
            parts.append(start)
        dev = parts[0].device
        flat = torch.cat([p.to(dev, _F32) for p in parts]).cpu()  # the ONE host-device sync

        # the rest is plain Python on small lists (torch ops on 30-element CPU tensors cost more)
        vals = flat.tolist()
        width = vecs[0].numel()
        rows = [vals[i * width: (i + 1) * width] for i in range(len(steps))]
        off = len(steps) * width
        d_width = 2 * n_par + 3 * len(self._stages)
        dvecs = {}
        for s in detail_steps:
            dvecs[s] = vals[off: off + d_width]
            off += d_width
        start_wnorm = vals[off: off + n_par] if start is not None else None
        if start_wnorm is not None and self._wnorm_ref is None and all(map(math.isfinite, start_wnorm)):
            self._wnorm_ref = list(start_wnorm)
        # the latest weight norms measured at or before the step in question, finite or not (fallback)
        w_seen = start_wnorm if start_wnorm is not None else self._wnorm_ref

        # layer attribution is lazy: (grad norms, weight norms) of the latest all-finite-gradient step are
        # kept, and a ratio argmax is computed only for a divergence and once at the end of the flush
        last_finite: tuple[list[float], list[float] | None] | None = None
        found: Divergence | None = None
        for i, step in enumerate(steps):
            m = per_step.setdefault(step, {})
            loss = rows[i][0]
            m["loss"] = loss
            cause = self._loss_rules(loss, m)
            if step in dvecs:
                self._detailed_metrics(step, dvecs[step], m)
                w_seen = dvecs[step][:n_par]
            if not self.enabled:
                if cause is not None and found is None:
                    found = Divergence(cause, step, "")
                continue
            g = rows[i][1:]
            finite = all(map(math.isfinite, g))
            m["grad_norm"] = math.sqrt(math.fsum(v * v for v in g))
            m["grad_norm_max"] = _nanmax(g) if g else 0.0
            wref = self._wnorm_ref
            if math.isfinite(loss) and not finite:  # outranks explosion/spike
                cause = "non_finite_grad"
            if cause is not None and found is None:
                layer = ""
                if cause == "non_finite_grad":
                    layer = self.param_names[max(j for j, v in enumerate(g) if not math.isfinite(v))]
                elif cause != "non_finite_loss" and finite:
                    layer = self._largest_ratio(g, wref)
                if not layer:
                    layer = (self._largest_ratio(*last_finite) if last_finite else "") or self._last_finite_layer
                found = Divergence(cause, step, layer or self._fallback_layer(g, w_seen))
            if finite:
                last_finite = (g, wref)
        self._last_step = steps[-1]
        if last_finite is not None:
            self._last_finite_layer = self._largest_ratio(*last_finite) or self._last_finite_layer

        latest: dict[str, float] = {}
        for step in steps:
            latest.update(per_step[step])
        if found is not None and self.divergence is None:
            self.divergence = found
        return MonitorReport(per_step, latest, found, self.latest_update_ratio_layer)

    def _loss_rules(self, loss: float, m: dict[str, float]) -> str | None:
        """Update EMA/initial-loss/spike state with one loss; return the loss-based cause, if any."""
        sp = self.spec
        if not math.isfinite(loss):
            m["loss_ema"] = self._ema if self._ema is not None else float("nan")
            m["spike_ratio"] = float("nan") if self._ema is None or self._ema <= 0 else loss / self._ema
            return "non_finite_loss"
        ema_before = loss if self._ema is None else self._ema
        ratio = loss / ema_before if ema_before > 0 else (1.0 if loss == ema_before else float("nan"))
        spiking = ratio > sp.spike_ratio
        self._spike_count = self._spike_count + 1 if spiking else 0
        if not spiking:
            self._ema = loss if self._ema is None else sp.ema_decay * self._ema + (1 - sp.ema_decay) * loss
        m["loss_ema"] = self._ema
        m["spike_ratio"] = ratio
        cause = None
        if self._init_count >= sp.initial_steps:
            if loss > sp.loss_multiple * (self._init_sum / self._init_count):
                cause = "loss_explosion"
        else:
            self._init_sum += loss
            self._init_count += 1
        if cause is None and self._spike_count >= sp.spike_patience:
            cause = "loss_spike"
        return cause

    def _detailed_metrics(self, step: int, d: list[float], m: dict[str, float]) -> None:
        n = len(self._params)
        wn, dw, act = d[:n], d[n: 2 * n], d[2 * n:]
        if n:
            wtot = math.sqrt(math.fsum(v * v for v in wn))
            dtot = math.sqrt(math.fsum(v * v for v in dw))
            m["update_ratio"] = dtot / wtot if wtot > 0 else float("nan")
            ratio = [b / a if a > 0 else float("nan") for a, b in zip(wn, dw, strict=True)]
            cand = [r for r, c in zip(ratio, self._cand, strict=True) if c and not math.isnan(r)]
            m["update_ratio_max"] = max(cand) if cand else float("nan")
            layer = self._argmax_name(ratio)
            if layer:
                self.latest_update_ratio_layer = layer
            m["weight_norm"] = wtot
            if any(self._g_mask):
                gains = [v for v, g in zip(wn, self._g_mask, strict=True) if g]
                m["wn_g_norm"] = math.sqrt(math.fsum(v * v for v in gains))
            if all(map(math.isfinite, wn)):
                self._wnorm_ref = list(wn)
        for k, st in enumerate(self._stages):
            mean, rms, dead = act[3 * k: 3 * k + 3]
            if not math.isnan(mean):
                m[f"act_mean/{st.name}"] = mean
                m[f"act_std/{st.name}"] = math.sqrt(max(rms * rms - mean * mean, 0.0))
            if not math.isnan(dead):
                m[f"dead_frac/{st.name}"] = dead
                self.collapse_rule.observe(step, st.name, dead)

    def _largest_ratio(self, gn: list[float], wref: list[float] | None) -> str:
        if wref is None:
            return ""
        return self._argmax_name([b / a if a > 0 else float("nan") for a, b in zip(wref, gn, strict=True)])

    def _fallback_layer(self, g: list[float], w: list[float] | None) -> str:
        """A layer when no earlier all-finite step names one (module docstring): the first parameter whose
        weights, else gradient, is non-finite; else the largest finite grad/weight ratio; else the first
        multiplicative parameter. "" only for a model without parameters."""
        if w is not None:
            for name, v in zip(self.param_names, w, strict=True):
                if not math.isfinite(v):
                    return name
        for name, v in zip(self.param_names, g, strict=True):
            if not math.isfinite(v):
                return name
        best = self._largest_ratio(g, w) if w is not None else ""
        return best or next((n for n, c in zip(self.param_names, self._cand, strict=True) if c), "")

    def _argmax_name(self, ratio: list[float]) -> str:
        """Name of the candidate parameter with the largest finite ratio; "" if none."""
        best, name = -math.inf, ""
        for r, c, n in zip(ratio, self._cand, self.param_names, strict=True):
            if c and math.isfinite(r) and r > best:
                best, name = r, n
        return name

    # ------------------------------------------------------------------ activation hooks
    @staticmethod
    def _find_stages(model: nn.Module) -> list[_Stage]:
        names = getattr(model, "stages", None)
        if not names:
            return []
        stages = []
        stem = getattr(model, "act1", None)
        if isinstance(stem, nn.Module):
            stages.append(_Stage("stem", stem, [stem]))
        for name in names:
            mod = getattr(model, name)
            acts = [m for n, m in mod.named_modules() if n and _ACT_NAME.fullmatch(n.rsplit(".", 1)[-1])]
            stages.append(_Stage(name, mod, acts))
        return stages

    def _arm(self) -> None:
        for k, st in enumerate(self._stages):
            self._handles.append(st.out.register_forward_hook(self._moments_hook(k)))
            for a in st.acts:
                self._handles.append(a.register_forward_hook(self._dead_hook(k)))

    def _disarm(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _moments_hook(self, k: int) -> Callable[..., None]:
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                with torch.no_grad():
                    # mean and root-mean-square (two fast passes); std = √(rms² − mean²) is computed at
                    # flush. std_mean's Welford pass costs ~100× more on CPU.
                    y = out.detach()
                    mean = y.mean(dtype=_F32)
                    rms = torch.linalg.vector_norm(y, dtype=_F32).mul_(1.0 / math.sqrt(max(y.numel(), 1)))
                self._act.setdefault((k, "mean"), []).append(mean)
                self._act.setdefault((k, "rms"), []).append(rms)

        return hook

    def _dead_hook(self, k: int) -> Callable[..., None]:
        def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.dim() >= 2:
                with torch.no_grad():
                    # reduce the batch dim first (contiguous, fast on CPU), then the positions
                    y = out.detach()
                    hi, lo = y.amax(0), y.amin(0)  # (torch.aminmax is ~10× slower here on CPU)
                    if hi.dim() > 1:
                        hi, lo = hi.reshape(hi.shape[0], -1).amax(1), lo.reshape(lo.shape[0], -1).amin(1)
                    dead = (hi == lo).mean(dtype=_F32)
                self._act.setdefault((k, "dead"), []).append(dead)

        return hook

    def _act_vector(self, like: torch.Tensor) -> list[torch.Tensor]:
        """[mean, rms, dead] per stage, pooled over the forwards of this step; NaN where not seen."""
        out = []
        nan = None
        for k in range(len(self._stages)):
            for key in ("mean", "rms", "dead"):
                vals = self._act.get((k, key))
                if not vals:
                    if nan is None:
                        nan = torch.full((), float("nan"), dtype=_F32, device=like.device)
                    out.append(nan)
                elif len(vals) == 1:
                    out.append(vals[0])
                elif key == "rms":  # pooled second moment
                    out.append(torch.stack(vals).square().mean().sqrt())
                else:
                    out.append(torch.stack(vals).mean())
        return out

    # ------------------------------------------------------------------ collapse
    def collapse(self, final_train_top1: float | None, final_train_loss: float | None,
                 num_classes: int) -> Collapse | None:
        """The collapse verdict of a run that ended finite (module docstring), from the final train
        accuracy and loss and the dead fractions seen on the detailed steps; pure Python, no sync."""
        return self.collapse_rule.verdict(final_train_top1, final_train_loss, num_classes, self._last_step)

    # ------------------------------------------------------------------ sharpness
    def hessian_top_eigenvalue(self, loss_fn: Callable[[], torch.Tensor], iters: int | None = None) -> float:
        """Top eigenvalue of the loss Hessian w.r.t. the trainable parameters, by power iteration with
        Hessian-vector products (double backward). ``loss_fn`` recomputes the loss on a fixed batch.

        Power iteration converges to the eigenvalue of largest *magnitude*; the value returned is the
        Rayleigh quotient vᵀHv of the final unit vector (signed). The start vector is seeded, so the
        result is deterministic; iteration stops early once the estimate changes by < 1e-4 relatively.
        Syncs once per iteration (it is called every ``hessian_every`` steps only). Activation hooks are
        disarmed meanwhile; ``loss_fn`` is responsible for model mode (BN running stats, dropout)."""
        iters = self.spec.hessian_iters if iters is None else int(iters)
        armed = bool(self._handles)
        self._disarm()
        try:
            loss = loss_fn()
            grads = torch.autograd.grad(loss, self._params, create_graph=True, allow_unused=True)
            pairs = [(p, g) for p, g in zip(self._params, grads, strict=True)
                     if g is not None and g.requires_grad]
            if not pairs:
                return 0.0
            ps, gs = [p for p, _ in pairs], [g for _, g in pairs]
            gen = torch.Generator().manual_seed(0)
            v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in ps]
            _normalize_(v)
            eig = float("nan")
            for _ in range(max(1, iters)):
                hv = torch.autograd.grad(gs, ps, grad_outputs=v, retain_graph=True, allow_unused=True)
                hv = [h.detach() if h is not None else torch.zeros_like(p)
                      for h, p in zip(hv, ps, strict=True)]
                new = torch.stack([torch.vdot(a.flatten(), b.flatten()) for a, b in zip(v, hv, strict=True)])
                new_eig = new.sum().item()
                if _normalize_(hv) == 0.0:
                    return 0.0
                v = hv
                converged = math.isfinite(eig) and abs(new_eig - eig) <= 1e-4 * abs(new_eig)
                eig = new_eig
                if converged or not math.isfinite(eig):
                    break
            return eig
        finally:
            if armed:
                self._arm()

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """Plain-Python rule state for a checkpoint. Steps recorded but not yet flushed are not in it:
        take it right after :meth:`flush`."""
        return {
            "version": 2,
            "ema": self._ema,
            "init_sum": self._init_sum,
            "init_count": self._init_count,
            "spike_count": self._spike_count,
            "last_step": self._last_step,
            "last_finite_layer": self._last_finite_layer,
            "latest_update_ratio_layer": self.latest_update_ratio_layer,
            "param_names": list(self.param_names),
            "wnorm_ref": None if self._wnorm_ref is None else list(self._wnorm_ref),
            "divergence": None if self.divergence is None else asdict(self.divergence),
            "collapse": self.collapse_rule.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self._ema = state["ema"]
        self._init_sum = float(state["init_sum"])
        self._init_count = int(state["init_count"])
        self._spike_count = int(state["spike_count"])
        self._last_step = int(state.get("last_step", 0))
        self._last_finite_layer = state.get("last_finite_layer", "")
        self.latest_update_ratio_layer = state.get("latest_update_ratio_layer", "")
        wref = state.get("wnorm_ref")
        same = state.get("param_names") == self.param_names
        self._wnorm_ref = [float(v) for v in wref] if wref is not None and same else None
        div = state.get("divergence")
        self.divergence = Divergence(**div) if div else None
        self.collapse_rule.load_state_dict(state.get("collapse", {}))  # version 1: no collapse state
        self._steps, self._vecs, self._detail = [], [], {}
        self._wnorm_start = None

    @property
    def last_step(self) -> int:
        """The last step flushed (0 before any)."""
        return self._last_step


def _nanmax(xs: list[float]) -> float:
    """max() that returns NaN when any element is NaN (Python's max depends on the order then)."""
    if any(math.isnan(x) for x in xs):
        return float("nan")
    return max(xs)


def _normalize_(vs: list[torch.Tensor]) -> float:
    """Scale the list of tensors to unit global norm in place; return the norm before."""
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(vs))).item()
    if norm > 0 and math.isfinite(norm):
        torch._foreach_div_(vs, norm)
    return norm
