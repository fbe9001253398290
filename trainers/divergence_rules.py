"""The rules that call a run diverged, and the layer named for it (docs/design.md §7): plain Python on the
host-side floats that ``DivergenceMonitor.flush`` gets from the recorder, no torch. Each rule object keeps
its state across report intervals and checkpoints (``state_dict``/``load_state_dict``).

Divergence rules (:class:`DivergenceRules`), evaluated per step in this order (the first that fires names
the cause):

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

``loss_ema`` is the EMA after this step (equal to the one before on spiking steps).

Which parameter "moved most" at the divergence step (``Divergence.layer``, :class:`LayerAttribution`):

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

from trainers.config import DivergenceSpec

__all__ = ["Divergence", "DivergenceRules", "LayerAttribution", "LossVerdict", "multiplicative"]


@dataclass
class Divergence:
    cause: str  # "non_finite_loss" | "non_finite_grad" | "loss_explosion" | "loss_spike"
    step: int  # the optimizer step (as passed to start_step) where it was decided
    layer: str  # parameter name (model.named_parameters()) that moved most; "" only if the monitor is off


class LossVerdict(NamedTuple):
    cause: str | None  # the first rule that fired at this step, None if none did
    loss_ema: float  # the EMA after this step (NaN before the first finite loss)
    spike_ratio: float  # loss / the EMA before this step


class DivergenceRules:
    """The four divergence rules (module docstring) fed one step at a time, in order. State: the loss EMA,
    the initial-loss estimate and the spike counter."""

    def __init__(self, spec: DivergenceSpec) -> None:
        self.spec = spec
        self.ema: float | None = None
        self.init_sum = 0.0
        self.init_count = 0
        self.spike_count = 0

    def observe(self, loss: float, grad_norms: Sequence[float] | None = None) -> LossVerdict:
        """One step: its loss, and its per-parameter gradient norms (None: not measured, monitor off)."""
        verdict = self._loss_rules(loss)
        if grad_norms is not None and math.isfinite(loss) and not all(map(math.isfinite, grad_norms)):
            return verdict._replace(cause="non_finite_grad")  # outranks explosion/spike
        return verdict

    def _loss_rules(self, loss: float) -> LossVerdict:
        """Update EMA/initial-loss/spike state with one loss; the loss-based cause, if any."""
        sp = self.spec
        if not math.isfinite(loss):
            ema = self.ema if self.ema is not None else float("nan")
            ratio = float("nan") if self.ema is None or self.ema <= 0 else loss / self.ema
            return LossVerdict("non_finite_loss", ema, ratio)
        ema_before = loss if self.ema is None else self.ema
        ratio = loss / ema_before if ema_before > 0 else (1.0 if loss == ema_before else float("nan"))
        spiking = ratio > sp.spike_ratio
        self.spike_count = self.spike_count + 1 if spiking else 0
        if not spiking:
            self.ema = loss if self.ema is None else sp.ema_decay * self.ema + (1 - sp.ema_decay) * loss
        cause = None
        if self.init_count >= sp.initial_steps:
            if loss > sp.loss_multiple * (self.init_sum / self.init_count):
                cause = "loss_explosion"
        else:
            self.init_sum += loss
            self.init_count += 1
        if cause is None and self.spike_count >= sp.spike_patience:
            cause = "loss_spike"
        return LossVerdict(cause, self.ema, ratio)

    def state_dict(self) -> dict:
        return {"ema": self.ema, "init_sum": self.init_sum, "init_count": self.init_count,
                "spike_count": self.spike_count}

    def load_state_dict(self, state: dict) -> None:
        self.ema = state["ema"]
        self.init_sum = float(state["init_sum"])
        self.init_count = int(state["init_count"])
        self.spike_count = int(state["spike_count"])


def multiplicative(param_names: Sequence[str], ndims: Sequence[int]) -> list[bool]:
    """Which parameters are multiplicative (module docstring); all of them when none is."""
    cand = [d >= 2 or n.rsplit(".", 1)[-1] in ("weight", "g") for n, d in zip(param_names, ndims, strict=True)]
    return cand if any(cand) else [True] * len(cand)


class LayerAttribution:
    """The parameter that moved most (module docstring), from per-parameter gradient and weight norms.

    Per report interval: :meth:`begin_interval`, then per step in order :meth:`observe_weights` (detailed
    steps), :meth:`layer` (a divergence at this step) and :meth:`observe_grads`, then :meth:`end_interval`.
    State across intervals: the weight-norm reference and the layer of the latest all-finite step.
    """

    def __init__(self, param_names: Sequence[str], ndims: Sequence[int]) -> None:
        self.param_names = list(param_names)
        self.candidates = multiplicative(self.param_names, ndims)
        self.wnorm_ref: list[float] | None = None  # ‖w‖ per parameter at the latest detailed step (finite)
        self.last_finite_layer = ""  # largest grad/weight ratio at the latest all-finite-grad step
        self._seen: list[float] | None = None  # the latest ‖w‖ measured, finite or not (fallback)
        # (grad norms, weight reference) of the latest all-finite-gradient step of this interval; a ratio
        # argmax is computed only for a divergence and once at the end of the interval
        self._last_finite: tuple[list[float], list[float] | None] | None = None

    def begin_interval(self, start_wnorm: list[float] | None) -> None:
        """``start_wnorm``: ‖w‖ at the first step the monitor saw, when the recorder took it."""
        if start_wnorm is not None and self.wnorm_ref is None and all(map(math.isfinite, start_wnorm)):
            self.wnorm_ref = list(start_wnorm)
        self._seen = start_wnorm if start_wnorm is not None else self.wnorm_ref
        self._last_finite = None

    def observe_weights(self, wnorm: list[float]) -> None:
        """‖w‖ per parameter before a detailed step's update."""
        if self.param_names and all(map(math.isfinite, wnorm)):
            self.wnorm_ref = list(wnorm)
        self._seen = wnorm

    def observe_grads(self, grad_norms: list[float]) -> None:
        """A step's gradient norms, after :meth:`layer` for that step."""
        if all(map(math.isfinite, grad_norms)):
            self._last_finite = (grad_norms, self.wnorm_ref)

    def end_interval(self) -> None:
        if self._last_finite is not None:
            self.last_finite_layer = self.largest_ratio(*self._last_finite) or self.last_finite_layer

    def layer(self, cause: str, grad_norms: list[float]) -> str:
        """The layer named for a divergence of ``cause`` at the current step."""
        g = grad_norms
        layer = ""
        if cause == "non_finite_grad":
            layer = self.param_names[max(j for j, v in enumerate(g) if not math.isfinite(v))]
        elif cause != "non_finite_loss" and all(map(math.isfinite, g)):
            layer = self.largest_ratio(g, self.wnorm_ref)
        if not layer:
            last = self._last_finite
            layer = (self.largest_ratio(*last) if last else "") or self.last_finite_layer
        return layer or self.fallback_layer(g, self._seen)

    def largest_ratio(self, gn: list[float], wref: list[float] | None) -> str:
        if wref is None:
            return ""
        return self.argmax_name([b / a if a > 0 else float("nan") for a, b in zip(wref, gn, strict=True)])

    def fallback_layer(self, g: list[float], w: list[float] | None) -> str:
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
        best = self.largest_ratio(g, w) if w is not None else ""
        return best or next((n for n, c in zip(self.param_names, self.candidates, strict=True) if c), "")

    def argmax_name(self, ratio: list[float]) -> str:
        """Name of the candidate parameter with the largest finite ratio; "" if none."""
        best, name = -math.inf, ""
        for r, c, n in zip(ratio, self.candidates, self.param_names, strict=True):
            if c and math.isfinite(r) and r > best:
                best, name = r, n
        return name

    def state_dict(self) -> dict:
        return {"param_names": list(self.param_names), "last_finite_layer": self.last_finite_layer,
                "wnorm_ref": None if self.wnorm_ref is None else list(self.wnorm_ref)}

    def load_state_dict(self, state: dict) -> None:
        """The weight reference is kept only for the same parameter names."""
        self.last_finite_layer = state.get("last_finite_layer", "")
        wref = state.get("wnorm_ref")
        same = state.get("param_names") == self.param_names
        self.wnorm_ref = [float(v) for v in wref] if wref is not None and same else None
