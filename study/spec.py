"""The study specification: every knob of a normstudy run, typed and validated in one place.

A spec is YAML with eight top-level sections (``model``, ``schemes``, ``data``, ``training``,
``search``, ``scaling``, ``tracking``, ``divergence``). Defaults follow Gitman & Ginsburg (2017,
arXiv 1709.08145), who trained ResNet-50 on ImageNet with the standard He et al. (2016) recipe, where
that setup applies; each default names its source. Unknown keys and bad values raise
:class:`SpecError` with one line that names the field path and the fix. ``flatten`` turns a spec into
``section.field=value`` pairs so every value is logged with its run.

The sections a trainer reads (model, schemes, data, training, divergence) are defined with the trainer
(``trainers/config.py``, the bottom of the import graph); this module adds search, scaling and tracking,
and is the one place that parses YAML and ``--set``. ``StudySpec.trainer_config(scheme)`` hands a trainer
its part.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from trainers.config import (
    DataSpec,
    DivergenceSpec,
    ModelSpec,
    SchemeEntry,
    Section,
    SpecError,
    TrainerConfig,
    TrainingSpec,
    one_line_error,
)

PAPER_SCHEMES = ("bn", "wn", "normprop", "wn_trelu")


class SearchSpec(Section):
    # grid: every (lr x init_scale) point x seeds — the stability map needs a full grid.
    # optuna: TPE over the scheme family's space in search_spaces/, the same budget per scheme.
    # boundary: per (scheme, init scale), bracket then bisect log lr for the largest stable rate.
    mode: Literal["grid", "optuna", "boundary"] = "optuna"
    num_samples: int = Field(16, gt=0)  # optuna: trials per scheme
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    grid_lr: list[float] = Field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0], min_length=1)
    grid_init_scale: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    space_dir: str | None = None  # override the bundled search_spaces/ folder
    optuna_seed: int = 0
    scheduler: Literal["none", "asha"] = "none"
    asha_grace_period: int = Field(1, gt=0)  # in reports
    max_concurrent_trials: int | None = Field(None, gt=0)  # None = from the resources
    metric: str = "test_top1"
    mode_direction: Literal["max", "min"] = "max"
    # boundary mode: the starting bracket [low, high] on lr (widened until low is stable and high
    # diverges), the stop rule (diverged/stable lr within this factor) and a cap on lr points per init scale.
    boundary_lr: list[float] = Field(default_factory=lambda: [0.01, 1.0], min_length=2, max_length=2)
    boundary_tolerance: float = Field(2**0.5, gt=1)
    boundary_max_points: int = Field(12, ge=2)

    @field_validator("grid_lr", "grid_init_scale", "boundary_lr")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError(f"every value must be > 0, got {v}")
        return v


class ScalingSpec(Section):
    num_workers: int = Field(1, gt=0)  # DDP workers per trial (the paper: 8 GPUs)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    # 'auto': one CPU worker trials run the loop inside the Tune trial process (no worker-group start-up);
    # 'always' forces a Ray Train TorchTrainer for every trial.
    torch_trainer: Literal["auto", "always"] = "auto"
    max_failures: int = Field(1, ge=0)  # worker-group restarts from the last checkpoint
    # Ray placement of a trial's DDP workers: STRICT_SPREAD puts each worker on its own node.
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    # Extra (custom) Ray resources each worker needs, e.g. {"trainer_node": 1} to pin workers to nodes.
    resources_per_worker: dict[str, float] = Field(default_factory=dict)
    ray_address: str | None = None  # None: the job's cluster, or a local Ray


class TrackingSpec(Section):
    # MLflow on SQLite in the working directory by default; an http(s):// mlflow server on a cluster.
    # MLflow's own MLFLOW_TRACKING_URI replaces this default when the spec leaves the field out.
    tracking_uri: str = Field(default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlruns.db")
    experiment: str = "normstudy"
    study_name: str = "study"
    storage_path: str = "normstudy_results"  # Ray Tune experiment storage (for --resume)
    report_dir: str = "normstudy_report"


class StudySpec(Section):
    model: ModelSpec = Field(default_factory=ModelSpec)
    schemes: list[SchemeEntry] = Field(default_factory=lambda: [SchemeEntry(name=n) for n in PAPER_SCHEMES])
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    search: SearchSpec = Field(default_factory=SearchSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)
    divergence: DivergenceSpec = Field(default_factory=DivergenceSpec)

    @field_validator("schemes", mode="before")
    @classmethod
    def _schemes_form(cls, v: Any) -> Any:
        # Accept a list of names, a list of {name, options}, or a mapping name -> options.
        if isinstance(v, Mapping):
            for k, o in v.items():
                if o is not None and not isinstance(o, Mapping):
                    raise ValueError(f"options of scheme '{k}' must be a mapping of option: value, got {o!r}")
            return [{"name": k, "options": dict(o or {})} for k, o in v.items()]
        if isinstance(v, list):
            return [{"name": e} if isinstance(e, str) else e for e in v]
        return v

    @field_validator("schemes")
    @classmethod
    def _distinct_schemes(cls, v: list[SchemeEntry]) -> list[SchemeEntry]:
        # Each entry's options were checked against its scheme when the entry was built (SchemeEntry).
        if not v:
            raise ValueError("list at least one scheme, e.g. [bn, wn]")
        seen = set()
        for entry in v:
            if entry.name in seen:
                raise ValueError(f"scheme '{entry.name}' listed twice")
            seen.add(entry.name)
        return v

    def scheme(self, name: str) -> SchemeEntry:
        for entry in self.schemes:
            if entry.name == name:
                return entry
        raise SpecError(f"schemes: '{name}' is not in this study; add it to schemes")

    def trainer_config(self, scheme: str) -> TrainerConfig:
        """What a trainer of ``scheme`` reads: the trainer sections of this spec (no new validation)."""
        return TrainerConfig.model_construct(
            scheme=self.scheme(scheme), model=self.model, data=self.data, training=self.training,
            divergence=self.divergence, objective_metric=self.search.metric,
            objective_direction=self.search.mode_direction)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------------------------------
# Loading, overrides, errors


def from_dict(raw: Mapping[str, Any] | None) -> StudySpec:
    """Validate a spec mapping; raise :class:`SpecError` with a one-line message."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SpecError(f"spec: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return StudySpec.model_validate(dict(raw))
    except ValidationError as err:
        raise SpecError(one_line_error(err)) from None
    except SpecError:
        raise
    except (KeyError, TypeError, ValueError) as err:  # e.g. a scheme's option check
        raise SpecError(str(err).strip("'\"").replace("\n", "\\n")) from None


def load(path: str | os.PathLike[str] | None = None, overrides: Iterable[str] = ()) -> StudySpec:
    """Load a YAML spec (``None``: the bundled quick default) and apply ``a.b=value`` overrides."""
    if path is None:
        path = Path(__file__).parent / "specs" / "quick.yaml"
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"--spec: file '{path}' not found; give the path of a YAML spec")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise SpecError(f"{path}: not UTF-8 text (byte {err.start}); save the spec as UTF-8 YAML") from None
    except RecursionError:
        raise SpecError(f"{path}: nested too deeply to parse; flatten the YAML") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}:{where} is not valid YAML; fix its syntax") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: the top level must be a mapping of sections (model:, training:, ...)")
    raw = expand_env(raw, str(path))
    for item in overrides:
        apply_override(raw, item)
    return from_dict(raw)


_ENV_REF = re.compile(r"\$\{(\w+)\}")


def expand_env(node: Any, where: str = "spec") -> Any:
    """``${VAR}`` in a spec file's string values becomes the variable's value (data paths, tracking URIs
    differ per cluster); an unset variable is a one-line SpecError."""
    if isinstance(node, dict):
        return {k: expand_env(v, where) for k, v in node.items()}
    if isinstance(node, list):
        return [expand_env(v, where) for v in node]
    if isinstance(node, str):
        for name in _ENV_REF.findall(node):
            if name not in os.environ:
                raise SpecError(f"{where}: environment variable {name} (in {node!r}) is not set; export it "
                                "or give the value with --set")
        return _ENV_REF.sub(lambda m: os.environ[m.group(1)], node)
    return node


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Apply one ``section.field=value`` override (value parsed as YAML) to a raw spec mapping."""
    shown = item.encode("unicode_escape").decode("ascii")  # the message stays one line
    if "=" not in item:
        raise SpecError(f"--set {shown}: expected section.field=value, e.g. training.lr=0.3")
    key, _, text = item.partition("=")
    key_shown = key.encode("unicode_escape").decode("ascii")
    parts = key.strip().split(".")
    try:
        value = yaml.safe_load(text)
    except RecursionError:
        raise SpecError(f"--set {key_shown}: value nested too deeply to parse") from None
    except yaml.YAMLError:
        raise SpecError(f"--set {key_shown}: value '{text.encode('unicode_escape').decode('ascii')}' "
                        "is not valid YAML") from None
    node = raw
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise SpecError(f"--set {key_shown}: '{p}' is not a section")
        node = nxt
    node[parts[-1]] = value


def flatten(spec: StudySpec | Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{'training.lr': '0.1', ...}``: every value of the spec, as MLflow params."""
    data = spec.to_dict() if isinstance(spec, StudySpec) else spec
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key == "schemes" and not prefix:
            for entry in value:
                out[f"schemes.{entry['name']}"] = str(entry.get("options") or {})
        elif isinstance(value, Mapping) and value:
            out.update(flatten(value, prefix=f"{name}."))
        else:
            out[name] = str(value)
    return out


def flatten_trial(trial: TrainerConfig) -> dict[str, str]:
    """A trainer config's values under the same names as :func:`flatten` (``training.lr``, ``schemes.wn``)."""
    out = flatten(trial.model_dump(mode="json", include={"model", "data", "training", "divergence"}))
    out[f"schemes.{trial.scheme.name}"] = str(trial.scheme.options or {})
    return out


def dump(spec: StudySpec) -> str:
    return yaml.safe_dump(spec.to_dict(), sort_keys=False)
