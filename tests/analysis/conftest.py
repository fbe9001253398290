"""Fixtures: an empty MLflow SQLite store made once per session (its schema migration takes seconds) and
copied for each test that writes one; the realistic synthetic report rendered once per module."""

from __future__ import annotations

import shutil

import pytest

from tests.analysis import synth


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow_template") / "m.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()  # creates and migrates the schema
    return path


def copy_store(empty_store, folder):
    """(tracking URI, MlflowClient) of a fresh, empty store in ``folder``."""
    from mlflow import MlflowClient

    path = folder / "m.db"
    shutil.copy(empty_store, path)
    uri = f"sqlite:///{path}"
    return uri, MlflowClient(tracking_uri=uri)


@pytest.fixture
def store(empty_store, tmp_path):
    return copy_store(empty_store, tmp_path)


@pytest.fixture(scope="session")
def demo_report(tmp_path_factory):
    """The realistic synthetic study rendered (no MLflow): the report folder."""
    from analysis.report import render_report, summarize_all

    out = tmp_path_factory.mktemp("demo_report")
    st = synth.realistic_study()
    render_report(st, summarize_all(st), out)
    return out
