"""A trial's summary: the metrics the loop reports last, logs to MLflow and writes into its final checkpoint.

Outcome of a trial (summary ``outcome``): ``diverged`` (a divergence rule fired; ``diverged=1``,
``divergence_step/_cause/_layer``, the objective a finite penalty), ``collapsed`` (it stayed finite but
ended at chance: trainers/divergence.py's collapse rule, decided after the final evaluation;
``collapsed=1``, ``collapse_step/_cause/_layer/_dead_frac``, and its final accuracies, which are real
measurements), ``stalled`` (finite, but its final train loss is still above ``divergence.stall_loss_frac`` ×
its initial one: trainers/stall.py; ``stalled=1``, ``stall_loss_ratio``) or ``stable`` — by the one rule,
:func:`trainers.outcome.outcome_of`. ``initial_train_loss`` / ``final_train_loss`` (the train subset's eval
loss before the first and after the last step) are kept for every trial that has them: the stall rule and
the report's learning-rate sensitivity read them. A run that was never evaluated (no step taken) reports no
final accuracies: nothing was measured. Numbers stay floats
(Tune, MLflow metrics); ``outcome`` and the cause/layer names are the summary's only strings (MLflow
tags, study/trial.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainers.config import TrainerConfig
from trainers.outcome import outcome_of


def summary_of(last_eval: dict[str, float], divergence, collapse, step: int, step_times: list[float],
               spec: TrainerConfig, initial_eval: dict[str, float] | None = None, stall=None) -> dict[str, Any]:
    """The summary from the last evaluation (``{}``: none), the divergence, collapse and stall verdicts (or
    None), the steps done, the per-interval step times (their median is ``step_time_mean_s``) and the initial
    evaluation (``initial_train_loss``/``initial_train_top1``; ``{}``: not measured)."""
    s: dict[str, Any] = {"diverged": 0.0, "steps_done": float(step),
                         "step_time_mean_s": float(np.median(step_times)) if step_times else float("nan"),
                         **{k: float(v) for k, v in (initial_eval or {}).items()}}
    if divergence is not None:
        # No final accuracies: a diverged model's are meaningless, and 0.0 would read as a measurement.
        s.update(diverged=1.0, collapsed=0.0, stalled=0.0, divergence_step=float(divergence.step),
                 divergence_cause=divergence.cause, divergence_layer=divergence.layer, objective=spec.penalty())
    elif not last_eval:  # no step taken, nothing evaluated: no accuracies to report
        s.update(collapsed=0.0, stalled=0.0, objective=spec.penalty())
    else:
        tr, te = last_eval.get("train_top1", 0.0), last_eval.get("test_top1", 0.0)
        s.update(diverged=0.0, objective=last_eval.get(spec.objective_metric, te), final_train_top1=tr,
                 final_test_top1=te, final_test_top5=last_eval.get("test_top5", 0.0), final_gap=tr - te)
        # A collapsed model's accuracies are measured (at chance): kept, and the objective is left as is.
        s["collapsed"] = float(collapse is not None)
        if collapse is not None:
            s.update(collapse_step=float(collapse.step), collapse_cause=collapse.cause, collapse_layer=collapse.layer)
            if collapse.dead_frac is not None:
                s["collapse_dead_frac"] = float(collapse.dead_frac)
        final_loss = last_eval.get("train_loss_eval")
        if final_loss is not None:
            s["final_train_loss"] = float(final_loss)
        s["stalled"] = float(stall is not None)
        if stall is not None:
            s["stall_loss_ratio"] = stall.ratio
    s["outcome"] = outcome_of(s)  # the one rule (trainers/outcome.py)
    return s
