"""The study specification: every knob of a normstudy run, typed and validated in one place.

A spec is YAML with nine top-level sections (``model``, ``schemes``, ``data``, ``training``,
``search``, ``scaling``, ``tracking``, ``divergence``, ``scale``). Defaults follow Gitman & Ginsburg (2017,
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
from pydantic import Field, ValidationError, field_validator, model_validator

from study.scale_spec import ScaleSpec, variant_models
from trainers.config import (
    SEED_LIMIT,
    DataSpec,
    DivergenceSpec,
    ModelSpec,
    SchemeEntry,
    Section,
    SpecError,
    TrainerConfig,
    TrainingSpec,
    distinct,
    one_line_error,
)

PAPER_SCHEMES = ("bn", "wn", "normprop", "wn_trelu")


class DuplicateKey(yaml.MarkedYAMLError):
    """A mapping that gives one key twice (YAML's last-one-wins would silently drop the first)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no ``!!python`` tags) that refuses a key repeated in one mapping — a repeated
    field or a whole repeated section. Merge keys (``<<: *anchor``) may still be overridden, as YAML means."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
            if first is not None:
                raise DuplicateKey(f"while constructing a mapping (key {key!r} first at line "
                                   f"{first.start_mark.line + 1})", node.start_mark,
                                   f"key {key!r} repeated", key_node.start_mark)
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str) -> Any:
    """YAML as ``yaml.safe_load`` reads it, but a key repeated in a mapping is an error (:class:`DuplicateKey`)."""
    loader = UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _repeated(err: DuplicateKey) -> str:
    """'key 'lr' repeated at line 7 (first at line 3)' from a DuplicateKey."""
    first = (err.context or "").rpartition("first at ")[2].rstrip(")")
    return f"{err.problem} at line {err.problem_mark.line + 1} ({first and 'first at ' + first}); keep one"


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
    optuna_seed: int = Field(0, ge=0, lt=SEED_LIMIT)
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
    # optuna: each scheme's best configuration re-run on these seeds, tuned and with its regularization at
    # the search space's defaults (study/reruns.py; the report's regularization claim). Empty: no re-runs.
    rerun_seeds: list[int] = Field(default_factory=list)

    @field_validator("grid_lr", "grid_init_scale", "boundary_lr")
    @classmethod
    def _positive(cls, v: list[float]) -> list[float]:
        if any(x <= 0 for x in v):
            raise ValueError(f"every value must be > 0, got {v}")
        return v

    @field_validator("grid_lr", "grid_init_scale", "seeds", "rerun_seeds")
    @classmethod
    def _distinct(cls, v: list[Any]) -> list[Any]:
        return distinct(v)

    @field_validator("seeds", "rerun_seeds")
    @classmethod
    def _seed_range(cls, v: list[int]) -> list[int]:
        if any(not 0 <= x < SEED_LIMIT for x in v):
            raise ValueError(f"seeds must be in [0, 2**32), got {v}")
        return v

    @model_validator(mode="after")
    def _reruns_follow_optuna(self) -> SearchSpec:
        if self.rerun_seeds and self.mode != "optuna":  # re-runs of the best configuration Optuna found
            raise ValueError(f"rerun_seeds: re-runs follow an Optuna search, but search.mode is {self.mode}; set "
                             "search.mode: optuna, or remove search.rerun_seeds")
        return self


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

    @field_validator("resources_per_worker")
    @classmethod
    def _custom_resources(cls, v: dict[str, float]) -> dict[str, float]:
        for name, amount in v.items():
            if name in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(f"'{name}' is set by scaling.cpus_per_worker / scaling.use_gpu (or is Ray's own); "
                                 "list only custom resources here")
            if not amount > 0:
                raise ValueError(f"'{name}': {amount} is not a positive amount; give an amount > 0 or remove it")
        return v


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
    scale: ScaleSpec = Field(default_factory=ScaleSpec)  # model variants (study/scale_spec.py)

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

    @model_validator(mode="after")
    def _trains_something(self) -> StudySpec:
        if self.training.max_steps == 0:  # the loop's "set up and stop", which no study means
            raise ValueError("training.max_steps: 0 steps train nothing, so no trial would have a result; give "
                             "a number of steps > 0, or remove it to train training.epochs")
        return self

    @model_validator(mode="after")
    def _scale_models(self) -> StudySpec:
        variant_models(self.model, self.scale)  # each variant builds a valid, distinct model
        return self

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
    if path.is_dir():
        raise SpecError(f"--spec: '{path}' is a folder; give the path of a YAML spec file in it")
    if not path.is_file():
        raise SpecError(f"--spec: file '{path}' not found; give the path of a YAML spec")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    except DuplicateKey as err:
        raise SpecError(f"{path}: {_repeated(err)}") from None
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
    if not all(p.strip() for p in parts):
        raise SpecError(f"--set {shown}: no field name before '=' (or an empty part in it); expected "
                        "section.field=value, e.g. training.lr=0.3")
    try:
        value = parse_yaml(text)
    except DuplicateKey as err:
        raise SpecError(f"--set {key_shown}: in the value, {_repeated(err)}") from None
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
