"""normstudy's saved view of the MLflow runs table: which columns, in which order and width, sorted how.

MLflow's UI keeps a shareable runs-table view as an experiment tag ``mlflow.sharedViewState.<key>`` (JSON
of the view's search facets and UI state) and opens it with ``?viewStateShareKey=<key>`` in the runs
table's URL (study.tracking.runs_table_url). The view here puts first what compares schemes and trials:

- the trial's ``outcome`` tag (stable / diverged / collapsed / stalled: trainers/outcome.py) and its final
  top-1 accuracies — filled on trial rows;
- the scheme run's comparison metrics (analysis/scheme_metrics.py) and ``norm_share`` — filled on scheme rows;
- the run's description (its one line on what happened) last, as it is the widest.

Rows are sorted by ``best_test_top1``, highest first, so the schemes read ranked; the trials under a
scheme follow MLflow's own order (newest first), as its runs table sorts children by the same key, which
they lack. Widths are set so the whole view fits a 1600 px window with MLflow's side panels open
(tests/study/test_mlflow_ui.py measures it). What MLflow 3.17's view cannot hold: rows expanded (the UI
drops ``runsExpanded`` from a shared view), a number format (metrics show as logged: the scheme metrics
are logged rounded), the compare view's default axes (it is not part of the runs-table view).
"""

from __future__ import annotations

import json

from analysis.scheme_metrics import KEYS as SCHEME_METRICS

TRIAL_COLUMNS = ("tags.`outcome`", "metrics.`final_test_top1`", "metrics.`final_train_top1`")
# The scheme metrics a screen has room for (the interval's ends are in the run's metrics page)
SCHEME_COLUMNS = tuple(f"metrics.`{k}`" for k in (*SCHEME_METRICS, "norm_share")
                       if k not in ("lr_sensitivity_lo", "lr_sensitivity_hi"))
DESCRIPTION = "attributes.`Description`"
COLUMNS = (*TRIAL_COLUMNS, *SCHEME_COLUMNS, DESCRIPTION)
SORT_KEY = "metrics.`best_test_top1`"
NUMBER_WIDTH, OUTCOME_WIDTH, DESCRIPTION_WIDTH = 92, 90, 320  # px


def view_state() -> dict:
    """The shared view's state, as MLflow's UI reads it (its search facets and UI state keys)."""
    widths = {c: NUMBER_WIDTH for c in COLUMNS} | {"tags.`outcome`": OUTCOME_WIDTH, DESCRIPTION: DESCRIPTION_WIDTH}
    return {"selectedColumns": list(COLUMNS), "columnWidths": widths,
            "orderByKey": SORT_KEY, "orderByAsc": False}


VIEW_STATE = json.dumps(view_state(), separators=(",", ":"))
