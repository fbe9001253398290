"""The stall rule (docs/design.md §7): a run that stays finite to the end but does not fit. Plain Python.

A trial *stalls* when its final train loss is still near where it started:

    stalled  ⇔  L_final > f · min(L_0, ln C)

with ``L_0`` the trial's eval-mode cross-entropy on the fixed train subset before its first step, ``L_final``
the same measurement after its last step, ``C`` the number of classes and ``f`` the spec's
``divergence.stall_loss_frac``. Both ends are measured identically (same subset, eval mode, no label
smoothing: ``trainers.evaluation``), so the ratio is free of the train/eval-mode gap a batch loss would carry.
``ln C`` caps the reference: a large init scale can start far above a uniform guess's loss, and falling to
that guess is not fitting. A stalled trial is a failure beside *diverged* and
*collapsed* (``trainers.outcome``): a learning rate at which a scheme stays finite but learns nothing is not a
stable one. Collapse is the narrower verdict (at chance, with a cause) and wins when both hold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["STALL_LOSS_FRAC", "Stall", "stall_verdict"]

# Default f, from the quick default's finite trials (docs/design.md §7): every run that fitted ended at
# <= 0.51 of ln C (the slowest, WN lr 0.1 seed 2, at 0.60 train top-1), every run that did not at >= 0.83
# (WN lr 1: 0.30 train top-1; BN lr 10: 0.18-0.23 train top-1 at 0.92-0.98). 0.65 is the gap's geometric middle.
STALL_LOSS_FRAC = 0.65


@dataclass(frozen=True)
class Stall:
    reference_loss: float  # min(L_0, ln C)
    final_loss: float  # L_final
    ratio: float  # L_final / min(L_0, ln C)


def stall_verdict(initial_loss: float | None, final_loss: float | None, num_classes: int | None = None,
                  loss_frac: float = STALL_LOSS_FRAC) -> Stall | None:
    """The stall of a run that ended finite, or None (it fitted, or either end is unmeasured or not finite).
    ``num_classes`` None: no cap (the reference is ``L_0``)."""
    if initial_loss is None or final_loss is None:
        return None
    if not (math.isfinite(initial_loss) and math.isfinite(final_loss)):
        return None
    reference = min(initial_loss, math.log(num_classes)) if num_classes and num_classes >= 2 else initial_loss
    if reference <= 0:
        return None
    ratio = final_loss / reference
    return Stall(reference, final_loss, ratio) if ratio > loss_frac else None
