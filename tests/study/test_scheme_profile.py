"""Claim 3's step profile is taken on a worker with a trial worker's resources (study/scheme_profile.py), and
the scheme run gets its shares with their provenance: device, dtype, batch, where."""

from __future__ import annotations

from typing import Any

import pytest

import trainers.profiling as profiling
from study import scheme_profile
from study.scheme_profile import (
    PROFILE_BATCH,
    PROFILE_DEVICE,
    PROFILE_DTYPE,
    PROFILE_ERROR,
    PROFILE_WHERE,
    SchemeProfile,
    profile_scheme,
    record_scheme_profile,
    task_options,
)
from study.spec import load

SHARES = {"norm_share", "conv_share", "norm_share_std", "conv_share_std", "profile_repeats", "profile_step_time_s"}


class Tracker:
    def __init__(self) -> None:
        self.tags: dict[str, Any] = {}
        self.metrics: dict[str, float] = {}

    def set_tags(self, run_id: str, tags) -> None:
        self.tags.update(tags)

    def log_metrics(self, run_id: str, metrics, step: int = 0) -> None:
        self.metrics.update(metrics)


def test_the_task_reserves_one_trial_workers_resources():
    gpu = load(None, ["scaling.use_gpu=true", "scaling.num_workers=8", "scaling.cpus_per_worker=4",
                      "scaling.resources_per_worker={trainer_node: 1}", "training.batch_size=256"])
    assert task_options(gpu) == {"num_cpus": 4, "num_gpus": 1, "resources": {"trainer_node": 1}, "max_retries": 0}
    assert scheme_profile.per_worker_batch(gpu) == 32
    quick = load(None, [])
    assert task_options(quick) == {"num_cpus": 1, "num_gpus": 0, "resources": {}, "max_retries": 0}


def test_record_writes_the_provenance_tags_and_the_shares(monkeypatch):
    done = SchemeProfile({"norm_share": 0.2, "conv_share": 0.6},
                         {PROFILE_DEVICE: "cuda:0 NVIDIA H100 80GB HBM3", PROFILE_DTYPE: "bfloat16",
                          PROFILE_BATCH: "32", PROFILE_WHERE: "worker"})
    monkeypatch.setattr(scheme_profile, "profile_scheme", lambda spec, scheme: done)
    tracker = Tracker()
    assert record_scheme_profile(tracker, "run", load(None, []), "bn") is done
    assert tracker.tags == done.tags and tracker.metrics == done.metrics
    failed = SchemeProfile(tags={PROFILE_ERROR: "TimeoutError: …", PROFILE_WHERE: "worker"})
    monkeypatch.setattr(scheme_profile, "profile_scheme", lambda spec, scheme: failed)
    tracker = Tracker()
    record_scheme_profile(tracker, "run", load(None, []), "bn")
    assert tracker.tags == failed.tags and tracker.metrics == {} and failed.error == "TimeoutError: …"


@pytest.mark.integration
def test_the_profile_runs_in_a_ray_worker_not_on_the_driver(ray_cluster, monkeypatch):
    # Profiling here, in the driver's process, would fail: the result must come from another process.
    monkeypatch.setattr(profiling, "profile_step", lambda *a, **k: pytest.fail("profiled on the driver"))
    spec = load(None, ["training.batch_size=96", "training.amp=bf16"])
    done = profile_scheme(spec, "wn")
    assert done.error is None, done.tags
    assert done.tags == {PROFILE_DEVICE: "cpu", PROFILE_DTYPE: "bfloat16", PROFILE_BATCH: "64",
                         PROFILE_WHERE: "worker"}  # the quick default's CPU profile is capped at 64 images
    assert set(done.metrics) == SHARES and 0 <= done.metrics["norm_share"] < done.metrics["conv_share"] < 1

    # No node has the resource: after the wait the error is recorded and the study would go on.
    short = load(None, ["scaling.resources_per_worker={no_such_node: 1}"])
    missing = profile_scheme(short, "bn", wait_s=2)
    assert missing.metrics == {} and missing.tags[PROFILE_WHERE] == "worker"
    assert missing.error.startswith("TimeoutError: ") and "in 2 s" in missing.error
