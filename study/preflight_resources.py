"""What one trial needs against what the cluster's nodes have: threads, loader processes, memory.

``check_machine(spec, classes)`` runs in the preflight after the placement check (``ray`` is up). Each
failure is a :class:`SpecError` with one line naming the field and the fix:

- ``training.torch_threads`` and ``data.loader_workers`` above the CPUs of the largest node: every worker
  would run more threads (or loader processes) than any node has cores;
- the memory of one worker (:mod:`study.memory`: weights, gradients, momentum, the activations the backward
  pass keeps, the data it holds, the process) above the largest node's memory Ray can give its tasks (Ray's
  ``memory`` resource), or, with ``scaling.use_gpu`` and ``training.amp: off``, above the memory of this
  machine's GPU where it has one (a cluster's GPUs are not visible from a driver without one; bf16's
  smaller activations are not estimated: not checked then).
"""

from __future__ import annotations

import ray

from study import memory
from study.spec import SpecError, StudySpec


def check_machine(spec: StudySpec, classes: int | None = None) -> None:
    """Refuse a trial shape no node can run (see the module docstring). ``classes``: a folder's class count."""
    # the nodes' own resources; without a connection (a test's faked cluster) the cluster as one node
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")] if ray.is_initialized() else \
        [ray.cluster_resources()]
    if not nodes:
        return
    cpus = max(n.get("CPU", 0) for n in nodes)
    t, d = spec.training, spec.data
    if t.torch_threads > cpus:
        raise SpecError(f"training.torch_threads: {t.torch_threads} threads a worker, but the largest node has "
                        f"{cpus:g} CPUs; use at most {int(cpus)} (0 = torch's default)")
    if d.kind != "generated" and d.loader_workers > cpus:
        raise SpecError(f"data.loader_workers: {d.loader_workers} loader processes a worker, but the largest node "
                        f"has {cpus:g} CPUs; use at most {int(cpus)}")
    check_memory(spec, max(n.get("memory", 0) for n in nodes), classes)


def check_memory(spec: StudySpec, node_memory: float, classes: int | None = None) -> None:
    """One worker of the study's largest trial must fit the largest node's memory (and a local GPU's)."""
    s = spec.scaling
    per_worker = spec.training.batch_size // s.num_workers
    estimates = []
    for entry in spec.schemes:
        try:
            estimates.append(memory.worker_memory(spec.trainer_config(entry.name), per_worker, classes))
        except Exception:  # noqa: BLE001 - a model the meta device cannot build is not refused for that
            continue
    if not estimates:
        return
    worst = max(estimates, key=lambda m: m.total)
    fix = ("lower training.batch_size (or use more scaling.num_workers), data.image_size or the model "
           "(model.arch, model.cifar_width)")
    if node_memory and worst.total > node_memory:
        raise SpecError(f"training.batch_size: one worker of a trial needs about {worst.text()} for a batch of "
                        f"{per_worker}, but the largest node gives its tasks {node_memory / memory.GIB:.1f} GiB; "
                        f"{fix}")
    # bf16 autocast keeps smaller activations by a factor not measured here: only fp32 runs are held to a GPU
    gpu = _local_gpu_memory() if s.use_gpu and spec.training.amp == "off" else 0
    if gpu and worst.device > gpu:
        raise SpecError(f"training.batch_size: one GPU worker needs about {worst.device / memory.GIB:.1f} GiB of GPU "
                        f"memory for a batch of {per_worker} (study.memory), but this machine's GPU has "
                        f"{gpu / memory.GIB:.1f} GiB; {fix}")


def _local_gpu_memory() -> int:
    import torch

    if not torch.cuda.is_available():
        return 0
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))
