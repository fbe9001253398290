"""The one builder of a Ray Train ``TorchTrainer`` for a trial: ``normstudy run``'s multi-worker and GPU
trials and ``normstudy train`` both use it, so they place and restart workers the same way.

Workers run ``trainers.loop.train_loop_per_worker`` (DDP over gloo on CPU, NCCL on GPU), each reserving
``scaling.cpus_per_worker`` CPUs, a GPU with ``scaling.use_gpu`` and any custom resources
(``scaling.resources_per_worker``), placed by ``scaling.placement_strategy``. The run name is stable (a
restored trial resumes from its own checkpoints) and ``scaling.max_failures`` bounds worker-group
restarts: a group that can never start would otherwise retry forever (docs/design.md §11).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import ray.train
from ray.train.torch import TorchTrainer

from study.spec import ScalingSpec
from trainers.loop import train_loop_per_worker


def uses_torch_trainer(scaling: ScalingSpec) -> bool:
    """Multi-worker, GPU, or forced trials run a TorchTrainer; one CPU worker runs in the trial process."""
    return scaling.torch_trainer == "always" or scaling.num_workers > 1 or scaling.use_gpu


def worker_resources(scaling: ScalingSpec) -> dict[str, float]:
    return {"CPU": scaling.cpus_per_worker, **({"GPU": 1} if scaling.use_gpu else {}), **scaling.resources_per_worker}


def build_torch_trainer(loop_config: dict[str, Any], scaling: ScalingSpec, *, name: str, storage_path: str,
                        callbacks: Sequence[Any] = ()) -> TorchTrainer:
    """A TorchTrainer that runs ``loop_config`` (``trainers.loop``'s config; its session is set to 'train')."""
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=dict(loop_config, session="train"),
        scaling_config=ray.train.ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                               resources_per_worker=worker_resources(scaling),
                                               placement_strategy=scaling.placement_strategy),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=os.path.abspath(storage_path),
            callbacks=list(callbacks),
            failure_config=ray.train.FailureConfig(max_failures=scaling.max_failures),
        ),
    )
