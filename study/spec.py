"""The study specification: every knob of a normstudy run, typed and validated in one place.

A spec is YAML with eight top-level sections (``model``, ``schemes``, ``data``, ``training``,
``search``, ``scaling``, ``tracking``, ``divergence``). Defaults follow Gitman & Ginsburg (2017,
arXiv 1709.08145), who trained ResNet-50 on ImageNet with the standard He et al. (2016) recipe, where
that setup applies; each default names its source. Unknown keys and bad values raise
:class:`SpecError` with one line that names the field path and the fix. ``flatten`` turns a spec into
``section.field=value`` pairs so every value is logged with its run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

PAPER_SCHEMES = ("bn", "wn", "normprop", "wn_trelu")


class SpecError(ValueError):
    """A spec value is wrong; the message is one line: ``field.path: what is wrong and how to fix it``."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ModelSpec(_Section):
    # Gitman & Ginsburg 2017 §3: ResNet-50 (torchvision's architecture, He et al. 2016).
    arch: Literal["resnet50", "resnet18", "resnet_cifar"] = "resnet50"
    # resnet_cifar only: channels of the first stage and residual blocks per stage (He et al. 2016 §4.2).
    cifar_width: int = Field(16, gt=0)
    cifar_blocks: list[int] = Field(default_factory=lambda: [1, 1, 1], min_length=1)

    @field_validator("cifar_blocks")
    @classmethod
    def _positive_blocks(cls, v: list[int]) -> list[int]:
        if any(b <= 0 for b in v):
            raise ValueError(f"every stage needs >= 1 block, got {v}")
        return v


class SchemeEntry(_Section):
    """One scheme of the study and its options (validated against the scheme's own option model)."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class DataSpec(_Section):
    # 'generated' needs no files; 'folder' reads an ImageNet-layout tree (train/ and val/, a folder a class).
    # 'digits': scikit-learn's bundled handwritten digits, written once as such a folder at data.path
    # (trainers/data/digits.py), then read by the same folder loaders.
    kind: Literal["generated", "folder", "digits"] = "generated"
    path: str | None = None
    train_dir: str = "train"
    val_dir: str = "val"
    # 'auto' = DALI when a GPU is visible, else torchvision.
    loader: Literal["auto", "torchvision", "dali"] = "auto"
    # Paper: 224 px random-resized crops, eval resize 256 + centre 224 (He et al. 2016; Krizhevsky 2012).
    image_size: int = Field(224, gt=0)
    eval_resize: int = Field(256, gt=0)
    # Training augmentation of folder data (paper: flips and Inception-style crops of 8–100% of the area).
    hflip: bool = True
    crop_scale: list[float] = Field(default_factory=lambda: [0.08, 1.0], min_length=2, max_length=2)
    loader_workers: int = Field(4, ge=0)
    digits_image_size: int = Field(32, ge=8)  # 'digits': the px the 8×8 images are upsampled to on disk
    # Generated data only: size of each split, classes, noise, and its own seed.
    num_classes: int = Field(10, ge=2)
    train_size: int = Field(2048, gt=0)
    test_size: int = Field(1024, gt=0)
    noise: float = Field(0.9, ge=0)
    data_seed: int = 0
    # Train accuracy is measured in eval mode on a fixed subset of the training set this large.
    train_eval_size: int = Field(1024, gt=0)

    @model_validator(mode="after")
    def _folder_needs_path(self) -> DataSpec:
        if self.kind == "folder" and not self.path:
            raise ValueError("data.path: required when data.kind is 'folder'; give an ImageNet-layout folder")
        if self.kind == "digits" and not self.path:
            self.path = "normstudy_data/digits"  # trainers.data.digits.DEFAULT_PATH; made absolute per study
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"data.crop_scale: need 0 < min <= max <= 1, got {self.crop_scale}")
        return self


class TrainingSpec(_Section):
    optimizer: Literal["sgd"] = "sgd"
    # Paper/He et al.: lr 0.1 for batch 256, scaled linearly with the global batch (Goyal et al. 2017).
    lr: float = Field(0.1, gt=0)
    lr_reference_batch: int = Field(256, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # He et al. 2016
    nesterov: bool = False
    weight_decay: float = Field(1e-4, ge=0)  # He et al. 2016
    # Exclude biases, norm gains/shifts and WN's g from weight decay (common modern practice; paper: no).
    wd_exclude_norm_and_bias: bool = False
    batch_size: int = Field(256, gt=0)  # global batch, paper §3
    epochs: float = Field(90, gt=0)  # He et al. 2016 ImageNet schedule
    max_steps: int | None = Field(None, ge=0)  # overrides epochs when set
    schedule: Literal["step", "cosine", "poly", "constant"] = "step"
    step_epochs: list[float] = Field(default_factory=lambda: [30.0, 60.0, 80.0])  # ÷10 at each
    step_gamma: float = Field(0.1, gt=0, le=1)
    poly_power: float = Field(2.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    # Warmup as a share of the run's steps (used when warmup_steps is 0), so a shortened run keeps its shape.
    warmup_fraction: float = Field(0.0, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    grad_clip_norm: float | None = Field(None, gt=0)
    seed: int = 0
    report_every: int = Field(10, gt=0)  # steps between reports (metrics, divergence decisions)
    eval_every: int = Field(0, ge=0)  # steps between evaluations; 0 = once per epoch
    checkpoint_every: int = Field(0, ge=0)  # steps between checkpoints; 0 = at each evaluation
    amp: Literal["off", "bf16"] = "off"
    channels_last: bool = False
    compile: bool = False
    torch_threads: int = Field(0, ge=0)  # 0 = leave torch's default


class SearchSpec(_Section):
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


class ScalingSpec(_Section):
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


class TrackingSpec(_Section):
    # MLflow on SQLite in the working directory by default; an http(s):// mlflow server on a cluster.
    # MLflow's own MLFLOW_TRACKING_URI replaces this default when the spec leaves the field out.
    tracking_uri: str = Field(default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlruns.db")
    experiment: str = "normstudy"
    study_name: str = "study"
    storage_path: str = "normstudy_results"  # Ray Tune experiment storage (for --resume)
    report_dir: str = "normstudy_report"


class DivergenceSpec(_Section):
    loss_multiple: float = Field(10.0, gt=1)  # diverged when loss > this x initial loss
    initial_steps: int = Field(5, gt=0)  # steps averaged for the initial loss
    spike_ratio: float = Field(3.0, gt=1)  # loss / EMA above this is a spike
    spike_patience: int = Field(5, gt=0)  # consecutive spiking steps that count as divergence
    ema_decay: float = Field(0.9, gt=0, lt=1)
    hessian_every: int = Field(0, ge=0)  # steps between sharpness probes; 0 = off
    hessian_iters: int = Field(10, gt=0)
    monitor: bool = True  # False turns every statistic but loss/non-finite off (for overhead benchmarks)
    # Collapse (finite to the end, at chance; trainers/divergence.py CollapseRule): final train top-1 at most
    # this × chance, and a stage whose ReLUs are this dead (else a loss no better than a uniform guess).
    collapse_chance_multiple: float = Field(1.5, ge=1)
    collapse_dead_frac: float = Field(0.5, gt=0, le=1)
    collapse_loss_frac: float = Field(0.99, gt=0)


class StudySpec(_Section):
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
    def _known_schemes(cls, v: list[SchemeEntry]) -> list[SchemeEntry]:
        from trainers import norms

        if not v:
            raise ValueError("list at least one scheme, e.g. [bn, wn]")
        seen = set()
        for entry in v:
            if entry.name in seen:
                raise ValueError(f"scheme '{entry.name}' listed twice")
            seen.add(entry.name)
            norms.get(entry.name).validate_options(entry.options)
        return v

    def scheme(self, name: str) -> SchemeEntry:
        for entry in self.schemes:
            if entry.name == name:
                return entry
        raise SpecError(f"schemes: '{name}' is not in this study; add it to schemes")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------------------------------
# Loading, overrides, errors


def _format_error(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    typ, ctx, got = e["type"], e.get("ctx") or {}, e.get("input")
    if typ == "extra_forbidden":
        return f"{loc}: unknown key; remove it or check its spelling"
    if typ == "missing":
        return f"{loc}: required field is missing; add it"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if typ in bounds:
        key = {"greater_than": "gt", "greater_than_equal": "ge", "less_than": "lt", "less_than_equal": "le"}
        return f"{loc}: must be {bounds[typ]} {ctx[key[typ]]}, got {got!r}"
    if typ == "literal_error":
        return f"{loc}: must be one of {ctx.get('expected')}, got {got!r}"
    if typ == "too_short":
        return f"{loc}: must not be empty, got {got!r}"
    msg = str(e["msg"]).removeprefix("Value error, ")
    if msg.startswith(loc.split(".")[0] + ".") or msg.startswith("data.path"):
        return msg  # the validator already named the field
    return f"{loc or 'spec'}: {msg}, got {got!r}" if typ not in ("value_error",) else f"{loc}: {msg}"


def from_dict(raw: Mapping[str, Any] | None) -> StudySpec:
    """Validate a spec mapping; raise :class:`SpecError` with a one-line message."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SpecError(f"spec: the top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return StudySpec.model_validate(dict(raw))
    except ValidationError as err:
        raise SpecError(_format_error(err).replace("\n", "\\n")) from None  # one line, even for odd keys
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


def dump(spec: StudySpec) -> str:
    return yaml.safe_dump(spec.to_dict(), sort_keys=False)
