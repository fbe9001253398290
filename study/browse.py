"""Where to look at a study in MLflow: the runs table's link, with the command that serves it.

A study on an ``mlflow server`` is one absolute link. A study in a SQLite file needs a UI to serve it
first: ``mlflow ui --backend-store-uri <uri> --port 5000`` (loopback only, MLflow's default host), then the
same link on ``http://127.0.0.1:5000``. The link opens normstudy's saved runs-table view in MLflow's
model-training view (study.tracking.runs_table_url; docs/mlflow_layout.md, "The MLflow UI"), not the GenAI
overview a plain experiment link opens.
"""

from __future__ import annotations

from study.runs_view import SCHEMES_VIEW
from study.tracking import runs_table_url

UI_PORT = 5000  # `mlflow ui`'s default port


def browse_lines(tracking_uri: str, experiment: str, experiment_id: str) -> list[str]:
    """The CLI's lines on the study's MLflow store and its runs table."""
    if tracking_uri.startswith(("http://", "https://")):
        return [f"MLflow: {tracking_uri} (experiment '{experiment}')",
                f"Runs table: {runs_table_url(experiment_id, server=tracking_uri)}",
                f"Schemes compared: {runs_table_url(experiment_id, server=tracking_uri, view=SCHEMES_VIEW)}"]
    server = f"http://127.0.0.1:{UI_PORT}"
    return [f"MLflow: {tracking_uri} (experiment '{experiment}'); "
            f"browse with: mlflow ui --backend-store-uri {tracking_uri} --port {UI_PORT}",
            f"Runs table (once that serves): {runs_table_url(experiment_id, server=server)}",
            f"Schemes compared: {runs_table_url(experiment_id, server=server, view=SCHEMES_VIEW)}"]
