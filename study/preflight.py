"""Checks run before a study writes anything: a refused study leaves no runs, files or directories.

Each failure is a :class:`SpecError` with one line naming the field and the fix. ``preflight(spec)`` is
called by ``run_study`` and ``normstudy train`` after Ray is initialized and before the first MLflow
write. The checks, cheapest first (docs/reliability.md lists the faults each one covers):

- every number is finite (YAML's ``.inf``/``.nan`` pass pydantic's ``gt=0`` bounds);
- names and paths (``check_paths``, no Ray needed; the CLI runs it before it takes the study's driver
  lock, and ``check_report_folder`` unless ``--no-report``): :mod:`study.preflight_paths`;
- ``tracking``: the store can be reached and written: :mod:`study.preflight_tracking`;
- ``search``: every scheme's search space loads (no empty file, no ``min > max``); a grid study's space
  has the dimensions its grid writes (``lr``, and ``init_scale`` where the scheme has one); an Optuna
  study's space has at least one dimension; ``search.space_dir`` and ``data.path`` are absolute (trials
  run in their own working directories, where a relative path is missing); ``search.metric`` is a
  metric the loop reports, optimised in a sensible direction.
- ``training``/``data``: the global batch splits evenly over the workers, every rank gets at least one
  full batch an epoch; a ``folder`` data path exists with ``train_dir``/``val_dir`` holding the same
  non-empty class folders, and every image file starts like an image (``scan_folder(verify=True)``:
  a corrupt or mislabelled file is named here, not in the middle of a trial).
- ``data``: a folder data set has at least two classes, none with more than ``data.max_class_imbalance``
  times the training images of another (links are counted once: trainers.data.folder); its images per
  class are returned as a note the CLI prints;
- the run's length: a warm-up shorter than the run, ``divergence.initial_steps`` shorter than the run;
- ``scaling``: the cluster can place one trial (needs Ray): CPUs, GPUs, the custom resources of
  ``resources_per_worker``, and for STRICT_SPREAD/STRICT_PACK enough nodes that each hold a worker (or
  one node that holds them all); then what one worker needs against the largest node
  (:mod:`study.preflight_resources`: threads, loader processes, memory).

This module holds ``preflight`` (the order of the checks) and the checks of the spec's content; the path
and tracking checks live in the two modules above and are re-exported here (``study.cli`` calls
``preflight.check_paths``, ``preflight.check_report_folder`` and ``preflight.report_folder``).
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import ray
import yaml

import search_spaces
from study.preflight_paths import (
    MAX_EXPERIMENT_NAME,
    MAX_STUDY_NAME,
    _check_absolute,
    check_data_paths,
    check_names,
    check_paths,
    check_report_folder,
    check_storage,
    report_folder,
)
from study.preflight_resources import check_machine
from study.preflight_tracking import check_tracking
from study.spec import SpecError, StudySpec
from trainers import norms
from trainers.data.base import steps_per_epoch
from trainers.data.folder import FolderSplits, scan_folder

__all__ = [
    "EVAL_METRICS", "MAX_EXPERIMENT_NAME", "MAX_STUDY_NAME", "check_batches", "check_classes", "check_data",
    "check_data_paths", "check_finite", "check_length", "check_machine", "check_names", "check_paths",
    "check_placeable", "check_report_folder", "check_search", "check_storage", "check_tracking", "preflight",
    "report_folder",
]

EVAL_METRICS = {"train_top1": "max", "train_top5": "max", "test_top1": "max", "test_top5": "max",
                "train_loss_eval": "min", "test_loss": "min"}  # what trainers.loop.evaluate reports


def preflight(spec: StudySpec, *, paths: bool = True) -> list[str]:
    """All checks, in order; call after Ray is initialized (placement needs the cluster's resources).
    ``paths=False``: the caller already ran :func:`check_paths` on the spec as given (``normstudy run``).
    Returns one-line notes for the user (a folder data set's images per class)."""
    check_finite(spec)
    if paths:
        check_paths(spec)
    check_tracking(spec)
    check_search(spec)
    check_batches(spec)
    splits = check_data(spec)
    notes = [check_classes(spec, splits)] if splits is not None else []
    check_length(spec, len(splits.train) if splits is not None else
                 spec.data.train_size if spec.data.kind == "generated" else None)
    check_placeable(spec)
    check_machine(spec, len(splits.classes) if splits is not None else None)
    return notes


def check_finite(spec: StudySpec) -> None:
    """YAML's ``.inf``/``.nan`` pass ``gt=0`` bounds (``training.epochs: .inf`` would overflow the step count
    in every worker): refuse any non-finite number."""

    def walk(value, path: str) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(f"{path}: must be a finite number, got {value}; give a number")
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(value, list | tuple):
            for i, v in enumerate(value):
                walk(v, f"{path}.{i}")

    walk(spec.model_dump(), "")


# --------------------------------------------------------------------------------------------------
# search


def check_search(spec: StudySpec) -> None:
    """Load every scheme's space now (a bad file fails here, not in the first trial of that scheme)."""
    s = spec.search
    if s.metric not in EVAL_METRICS:
        raise SpecError(f"search.metric: {s.metric!r} is not reported by the trainer; use one of "
                        f"{', '.join(EVAL_METRICS)}")
    if EVAL_METRICS[s.metric] != s.mode_direction:
        raise SpecError(f"search.mode_direction: {s.metric} should be {EVAL_METRICS[s.metric]}imized, not "
                        f"{s.mode_direction}imized; set search.mode_direction: {EVAL_METRICS[s.metric]}")
    _check_absolute("search.space_dir", s.space_dir)
    if s.space_dir is not None and not Path(s.space_dir).is_dir():
        raise SpecError(f"search.space_dir: folder '{s.space_dir}' not found; give a folder of <family>.yaml "
                        "search spaces or remove the key to use the bundled ones")
    for entry in spec.schemes:
        try:
            space = search_spaces.for_scheme(entry.name, s.space_dir)
        except SpecError as err:
            raise SpecError(f"search.space_dir: {err}") from None
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise SpecError(f"search.space_dir: the space of scheme '{entry.name}'{where} is not valid YAML; "
                            "fix its syntax") from None
        except (OSError, UnicodeDecodeError) as err:
            raise SpecError(f"search.space_dir: cannot read the space of scheme '{entry.name}' ({err}); "
                            "fix the file") from None
        if s.mode in ("grid", "boundary"):
            need = ["lr"] + (["init_scale"] if norms.get(entry.name).has_init_scale else [])
            missing = [d for d in need if d not in space]
            if missing:
                raise SpecError(f"search.space_dir: the space of scheme '{entry.name}' has no "
                                f"{', '.join(missing)}, which the grid sets; add {missing[0]}: "
                                "{min, max, default, target}")
        elif not space:
            raise SpecError(f"search.space_dir: the space of scheme '{entry.name}' has no dimension to search; "
                            "add one, e.g. lr: {min: 0.01, max: 1, scaling: log, default: 0.1, target: training.lr}")


# --------------------------------------------------------------------------------------------------
# training and data


def check_batches(spec: StudySpec) -> None:
    t, w = spec.training, spec.scaling.num_workers
    if t.batch_size < w:
        raise SpecError(f"training.batch_size: a global batch of {t.batch_size} cannot feed {w} workers; "
                        f"use a batch of at least {w} or fewer workers")
    if t.batch_size % w:
        raise SpecError(f"training.batch_size: {t.batch_size} does not split evenly over {w} workers "
                        f"(the lr is scaled for the global batch); use a multiple of {w}")
    if spec.data.kind == "generated" and _steps(spec.data.train_size, t.batch_size, w) < 1:
        raise SpecError(f"data.train_size: {spec.data.train_size} samples give no full batch of "
                        f"{t.batch_size // w} per worker on {w} worker(s); raise data.train_size or lower "
                        "training.batch_size")


def _steps(samples: int, global_batch: int, workers: int) -> int:
    return steps_per_epoch(samples, global_batch // workers, workers)


def check_data(spec: StudySpec) -> FolderSplits | None:
    """A folder data set: scanned and its image headers checked now (see trainers.data.folder)."""
    if spec.data.kind != "folder":
        return None
    _check_absolute("data.path", spec.data.path)
    try:
        splits = scan_folder(spec.data, verify=True)
    except (OSError, ValueError) as err:
        msg = str(err).strip("'\"").replace("\n", " ")
        raise SpecError(msg if msg.startswith(("data.", "data:")) else f"data.path: {msg}") from None
    t, w = spec.training, spec.scaling.num_workers
    if _steps(len(splits.train), t.batch_size, w) < 1:
        raise SpecError(f"data.path: {len(splits.train)} training images give no full batch of "
                        f"{t.batch_size // w} per worker on {w} worker(s); lower training.batch_size or add images")
    return splits


def check_classes(spec: StudySpec, splits: FolderSplits) -> str:
    """At least two classes, and no training class more than ``data.max_class_imbalance`` times another;
    returns the one-line note of the images per class."""
    counts = splits.class_counts("train")
    if len(counts) < 2:
        raise SpecError(f"data.path: one class folder ({_names(counts)}) leaves nothing to tell apart; a study needs "
                        "at least two classes")
    small, big = min(counts, key=counts.__getitem__), max(counts, key=counts.__getitem__)
    ratio = counts[big] / counts[small]
    limit = spec.data.max_class_imbalance
    if ratio > limit:
        raise SpecError(f"data.path: class '{big}' has {counts[big]} training images, {ratio:.1f}x the {counts[small]} "
                        f"of class '{small}' (data.max_class_imbalance {limit:g}); balance the classes (is one linked "
                        "in twice?) or raise data.max_class_imbalance")
    val = splits.class_counts("val")
    note = (f"data: {len(counts)} classes, {len(splits.train)} train / {len(splits.val)} val images; per class: "
            f"train {counts[small]}-{counts[big]} (median {statistics.median(counts.values()):g}; fewest '{small}', "
            f"most '{big}'), val {min(val.values())}-{max(val.values())}")
    return note + (f"; {splits.duplicates} linked duplicates counted once" if splits.duplicates else "")


def _names(counts: dict[str, int]) -> str:
    return ", ".join(f"'{n}'" for n in list(counts)[:3])


def check_length(spec: StudySpec, samples: int | None) -> None:
    """What a run of the study's length cannot mean: a warm-up as long as the run, a divergence rule that
    is never armed. ``samples``: training samples (None: not known before the study, not checked)."""
    if samples is None:
        return
    t, w = spec.training, spec.scaling.num_workers
    per_epoch = _steps(samples, t.batch_size, w)
    total = t.max_steps if t.max_steps is not None else math.ceil(t.epochs * per_epoch)
    if t.warmup_steps >= total:
        raise SpecError(f"training.warmup_steps: {t.warmup_steps} warm-up steps cover the whole run of {total} steps, "
                        "so it never trains at its learning rate; use fewer (or training.warmup_fraction)")
    if spec.divergence.initial_steps >= total:
        raise SpecError(f"divergence.initial_steps: the initial loss is averaged over {spec.divergence.initial_steps} "
                        f"steps but the run has {total}, so the loss-explosion rule is never armed; use fewer "
                        "initial steps or a longer run")


# --------------------------------------------------------------------------------------------------
# scaling


def check_placeable(spec: StudySpec) -> None:
    """Refuse a trial shape the cluster can never place (it would wait forever)."""
    res, s = ray.cluster_resources(), spec.scaling
    need_cpu = s.cpus_per_worker * s.num_workers
    if need_cpu > res.get("CPU", 0):
        raise SpecError(f"scaling.num_workers: {s.num_workers} workers × {s.cpus_per_worker:g} CPUs need {need_cpu:g} "
                        f"CPUs but the cluster has {res.get('CPU', 0):g}; lower num_workers or cpus_per_worker")
    if s.use_gpu and s.num_workers > res.get("GPU", 0):
        raise SpecError(f"scaling.use_gpu: {s.num_workers} GPU workers but the cluster has "
                        f"{res.get('GPU', 0):g} GPUs; lower scaling.num_workers or set use_gpu: false")
    for name, amount in s.resources_per_worker.items():
        if amount * s.num_workers > res.get(name, 0):
            raise SpecError(f"scaling.resources_per_worker: {s.num_workers} workers × {amount:g} '{name}' need "
                            f"{amount * s.num_workers:g} but the cluster has {res.get(name, 0):g}; start nodes with "
                            f"--resources='{{\"{name}\": N}}' or lower the amount")
    if s.placement_strategy in ("STRICT_SPREAD", "STRICT_PACK") and s.num_workers > 1:
        bundle = {"CPU": s.cpus_per_worker, **({"GPU": 1} if s.use_gpu else {}), **s.resources_per_worker}
        per_node = [min(int(n["Resources"].get(k, 0) // v) for k, v in bundle.items() if v > 0)
                    for n in ray.nodes() if n.get("Alive")]
        if s.placement_strategy == "STRICT_SPREAD" and sum(1 for k in per_node if k >= 1) < s.num_workers:
            raise SpecError(f"scaling.placement_strategy: STRICT_SPREAD puts each of the {s.num_workers} workers on "
                            f"its own node, but only {sum(1 for k in per_node if k >= 1)} node(s) can hold one "
                            f"({bundle}); add nodes, lower num_workers or use SPREAD")
        if s.placement_strategy == "STRICT_PACK" and max(per_node, default=0) < s.num_workers:
            raise SpecError(f"scaling.placement_strategy: STRICT_PACK puts all {s.num_workers} workers on one node, "
                            f"but no node can hold them ({bundle} each); lower num_workers or use PACK")
