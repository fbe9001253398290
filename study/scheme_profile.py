"""Claim 3's step profile, taken where the trials run: never on the study driver.

Claim 3 (docs/design.md §1) compares normalization's share of a training step across schemes. A share
measured on the driver's CPU says nothing about a GPU study: the kernels, the dtype and the memory
format all differ (and a ResNet-50 at 224 px on the head node costs minutes and gigabytes). So each
scheme's profile runs in a Ray task that reserves one trial worker's resources
(:func:`study.torch_trainer.worker_resources`: ``scaling.cpus_per_worker`` CPUs, a GPU with
``scaling.use_gpu``, ``scaling.resources_per_worker``), where Ray would place a worker of the trial, and
measures the trial's step there: on the GPU Ray assigned it (else its CPU), under the trial's
``training.amp`` and ``training.channels_last``, at the per-worker batch
(:func:`trainers.profiling.profile_on_this_worker`; capped at 64 images on a CPU). On the CPU quick default
that is the same measurement as before, in a worker process with the trial's one CPU.

What it writes on the scheme's MLflow run (:func:`record_scheme_profile`), which the report reads:

- metrics: ``norm_share``, ``conv_share``, their ``*_std`` over the profiler's windows, ``profile_repeats``,
  ``profile_step_time_s`` (:func:`trainers.profiling.profile_model_step`);
- tags, claim 3's provenance: ``normstudy.profile_device`` (``"cpu"``, ``"cuda:0 NVIDIA H100 80GB HBM3"``),
  ``normstudy.profile_dtype`` (``"float32"`` / ``"bfloat16"``), ``normstudy.profile_batch`` (images in the
  profiled step), ``normstudy.profile_where`` (``"worker"``);
- or, when the profile fails or no worker becomes free within :data:`WAIT_S`, ``normstudy.profile_error``
  (the study goes on; claim 3 is then not measured for that scheme).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import ray

from study.spec import StudySpec
from study.torch_trainer import worker_resources
from study.tracking import last_line
from trainers.profiling import WorkerProfile, profile_on_this_worker

PROFILE_DEVICE = "normstudy.profile_device"
PROFILE_DTYPE = "normstudy.profile_dtype"
PROFILE_BATCH = "normstudy.profile_batch"
PROFILE_WHERE = "normstudy.profile_where"
PROFILE_ERROR = "normstudy.profile_error"
WHERE = "worker"
WAIT_S = 600.0  # for a worker's resources to become free (a cluster may be scaling up) and the profile to run

# Pickled by reference: the worker imports trainers.profiling (torch and the model code), nothing of study/.
_profile_task = ray.remote(profile_on_this_worker)


@dataclass(frozen=True)
class SchemeProfile:
    """One scheme's profile as it goes on its scheme run: metrics (none when it failed) and tags."""

    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def error(self) -> str | None:
        return self.tags.get(PROFILE_ERROR)


def per_worker_batch(spec: StudySpec) -> int:
    """The batch one trial worker trains on: the global batch over the workers."""
    return spec.training.batch_size // spec.scaling.num_workers


def task_options(spec: StudySpec) -> dict[str, Any]:
    """Ray task options reserving exactly one trial worker's resources; no retries (a failure is recorded)."""
    resources = dict(worker_resources(spec.scaling))
    return {"num_cpus": resources.pop("CPU"), "num_gpus": resources.pop("GPU", 0), "resources": resources,
            "max_retries": 0}


def profile_tags(profile: WorkerProfile) -> dict[str, str]:
    return {PROFILE_DEVICE: profile.device, PROFILE_DTYPE: profile.dtype, PROFILE_BATCH: str(profile.batch),
            PROFILE_WHERE: WHERE}


def profile_scheme(spec: StudySpec, scheme: str, wait_s: float = WAIT_S) -> SchemeProfile:
    """Profile ``scheme``'s training step in a Ray task with one trial worker's resources (Ray must be
    initialized). Never raises for a failed profile: the error comes back as a tag. An interrupt (SIGINT,
    SIGTERM: ``study.interrupts``) cancels the task and propagates."""
    ref = _profile_task.options(**task_options(spec)).remote(spec.trainer_config(scheme), per_worker_batch(spec),
                                                             spec.scaling.use_gpu)
    try:
        profile = _wait(ref, wait_s)
    except Exception as err:  # noqa: BLE001 - a profiler failure must not stop the study
        ray.cancel(ref, force=True)
        return SchemeProfile(tags={PROFILE_ERROR: last_line(err, 500), PROFILE_WHERE: WHERE})
    except BaseException:
        ray.cancel(ref, force=True)
        raise
    return SchemeProfile(dict(profile.metrics), profile_tags(profile))


def record_scheme_profile(tracker: Any, run_id: str, spec: StudySpec, scheme: str) -> SchemeProfile:
    """:func:`profile_scheme`, written on the scheme's run ``run_id``: tags (provenance or error), metrics.
    ``tracker``: a ``study.tracking.StudyTracker`` (``set_tags``, ``log_metrics``)."""
    profile = profile_scheme(spec, scheme)
    tracker.set_tags(run_id, profile.tags)
    if profile.metrics:
        tracker.log_metrics(run_id, profile.metrics)
    return profile


def _wait(ref: Any, wait_s: float) -> WorkerProfile:
    """``ray.get`` in short waits, so the driver's signal handler runs while the task does."""
    deadline = time.monotonic() + wait_s
    while True:
        ready, _ = ray.wait([ref], timeout=max(0.0, min(1.0, deadline - time.monotonic())))
        if ready:
            return ray.get(ref)
        if time.monotonic() >= deadline:
            raise TimeoutError(f"no worker with a trial worker's resources finished the profile in {wait_s:.0f} s "
                               "(is the cluster short of them?)")
