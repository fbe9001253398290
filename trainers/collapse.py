"""The collapse rule (docs/design.md §7): plain Python, no torch.

Collapse (``Collapse``, :class:`CollapseRule`): a run that stays finite to the end but ends at chance is
neither stable nor diverged. Decided once, after the final evaluation (``DivergenceMonitor.collapse``),
from the final train top-1 / train loss (fixed train subset, eval mode) and the ``dead_frac/<stage>``
values of the detailed steps; the thresholds are the spec's ``divergence.collapse_*`` fields (defaults: this
module's ``COLLAPSE_*`` constants):

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

``dead_frac/<stage>`` is measured by the recorder (``trainers.monitor_recorder``); the monitor
(``trainers.divergence``) feeds each detailed step's values to :meth:`CollapseRule.observe` in order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["COLLAPSE_CHANCE_MULTIPLE", "COLLAPSE_DEAD_FRAC", "COLLAPSE_LOSS_FRAC", "Collapse", "CollapseRule"]

# Default collapse thresholds (module docstring); a study sets them as DivergenceSpec's
# collapse_chance_multiple / collapse_dead_frac / collapse_loss_frac. Measured on the quick model (WN with
# the classifier's DDI, 40 steps): collapsed runs end at 0.086-0.094 train top-1 (chance 0.10) with a
# stage 63-96 % dead, healthy and slow-but-learning runs (lr 0.003) at >= 0.20 with 0 % dead.
COLLAPSE_CHANCE_MULTIPLE = 1.5  # final train top-1 <= 1.5 x chance is "at chance"
COLLAPSE_DEAD_FRAC = 0.5  # "most of a stage's channels dead" (its dead_frac at a detailed step)
COLLAPSE_LOSS_FRAC = 0.99  # final train loss >= 0.99 ln(classes): no better than a uniform guess


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
