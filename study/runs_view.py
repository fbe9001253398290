"""normstudy's saved view of the MLflow runs table: which columns, in which order and width, sorted how.

MLflow's UI keeps a shareable runs-table view as an experiment tag ``mlflow.sharedViewState.<key>`` (JSON
of the view's search facets and UI state) and opens it with ``?viewStateShareKey=<key>`` in the runs
table's URL (study.tracking.runs_table_url). The view here puts first what compares schemes and trials:

- the trial's ``outcome`` tag (stable / diverged / collapsed / stalled: trainers/outcome.py) beside its name
  (scheme, lr, init scale, seed: study/run_names.py), then its final test top-1 — filled on trial rows;
- the scheme run's comparison metrics (analysis/scheme_metrics.py) — filled on scheme rows — the ones
  a 1600 px window shows beside MLflow's assistant panel first, the rest after them;
- then the run's description (its one line on what happened), the creation time and the duration.

Rows are in creation order, oldest first: the study, its schemes in the spec's order (BN first), each
scheme's trials in the grid's order. Why not sorted by a metric: MLflow 3.17 nests child runs under their
parent only while the table is sorted by creation time (sorted by anything else, the 60 trials and the
scheme rows interleave in one flat list). The columns' order and widths are ag-grid column state
(``columnOrder`` names every column placed, ``columnWidths`` their widths); MLflow applies them when the
view opens. Widths are set so the first columns fit a 1600 px window with the assistant panel open
(tests/study/test_mlflow_ui.py measures it). What MLflow 3.17's view cannot hold: rows expanded (the UI
drops ``runsExpanded`` from a shared view), a number format (metrics show as logged: the scheme metrics are
logged rounded, a trial's accuracies are exact fractions of its test set), the compare view's default axes
(not part of the runs-table view).
"""

from __future__ import annotations

import json

from trainers.outcome import FAILURE_KINDS

RUN_NAME, CREATED, DURATION = "attributes.`Run Name`", "runDateAndNestInfo", "duration"  # MLflow's column ids
OUTCOME, DESCRIPTION = "tags.`outcome`", "attributes.`Description`"
FIRST = ("final_test_top1", "best_test_top1", *(f"{k}_rate" for k in FAILURE_KINDS), "largest_stable_lr",
         "lr_sensitivity")  # what a 1600 px window shows beside the assistant
MORE = ("best_train_top1", "best_gap", "final_train_top1", "failure_rate", "step_time_s", "norm_share")
METRICS = tuple(f"metrics.`{k}`" for k in (*FIRST, *MORE))
COLUMNS = (OUTCOME, *METRICS, DESCRIPTION)  # the columns chosen (MLflow shows name, created, duration always)
ORDER = (RUN_NAME, OUTCOME, *METRICS, DESCRIPTION, CREATED, DURATION)
SORT_KEY = "attributes.start_time"  # creation time: the only order MLflow nests child runs in
# px. The name: "wn_trelu lr=0.316 init=1 seed=2" after two levels of nesting; Created (pinned by MLflow
# beside the name, and said by the rows' order) only its status icon; a number: "0.8115" and a header's
# first 8 characters (the whole name in its tooltip).
WIDTHS = {RUN_NAME: 265, OUTCOME: 75, DESCRIPTION: 320, CREATED: 36, DURATION: 80}
NUMBER_WIDTH = 66


def view_state() -> dict:
    """The shared view's state, as MLflow's UI reads it (its search facets and UI state keys)."""
    return {"selectedColumns": list(COLUMNS), "columnOrder": list(ORDER),
            "columnWidths": {c: WIDTHS.get(c, NUMBER_WIDTH) for c in ORDER},
            "orderByKey": SORT_KEY, "orderByAsc": True}


# The schemes compared: a second view of only the scheme runs (flat, so sortable by a metric: the best first),
# whose chart view draws one bar a scheme for each metric (the chart view shows the table's first rows).
SCHEMES_VIEW = "normstudy-schemes"
SCHEMES_FILTER = "tags.`normstudy.role` = 'scheme'"


def schemes_view_state() -> dict:
    """The schemes view: the scheme rows only, sorted by ``best_test_top1`` (highest first)."""
    order = [c for c in ORDER if c not in (OUTCOME, "metrics.`final_test_top1`", "metrics.`final_train_top1`")]
    return {"selectedColumns": [c for c in COLUMNS if c in order], "columnOrder": order,
            "columnWidths": {c: WIDTHS.get(c, NUMBER_WIDTH) for c in order} | {RUN_NAME: 150},
            "searchFilter": SCHEMES_FILTER, "orderByKey": "metrics.`best_test_top1`", "orderByAsc": False}


VIEW_STATE = json.dumps(view_state(), separators=(",", ":"))
SCHEMES_VIEW_STATE = json.dumps(schemes_view_state(), separators=(",", ":"))
