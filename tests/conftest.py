"""Shared fixtures: one local Ray per test session (docs/design.md §11: a second Ray on the host can strand
placement groups), started only by tests that ask for it."""

from __future__ import annotations

import os

import pytest

# Ray's new output engine prints tables; the legacy one honours verbose=0.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray with 2 CPUs for the whole session; yields its GCS address."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=True,
                 logging_level="ERROR")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
