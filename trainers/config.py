"""The config contract of a trainer: what one training run needs, typed and validated once.

The bottom of the import graph: ``trainers``, ``search_spaces``, ``study`` and ``analysis`` import it; it
imports nothing of theirs but the scheme registry (to check a scheme's options). Two levels:

- the sections a trainer reads — :class:`ModelSpec`, :class:`SchemeEntry`, :class:`DataSpec`,
  :class:`TrainingSpec`, :class:`DivergenceSpec` — whose defaults are the paper's ResNet-50/ImageNet
  setup (Gitman & Ginsburg 2017, arXiv 1709.08145; He et al. 2016), each default naming its source;
- :class:`TrainerConfig`: those sections for one scheme, plus the metric the search optimizes;
  :class:`TrialConfig`: a trainer config with one trial's sampled values applied, and the values
  themselves (``hp``: lr, init scale, seed, ...) for its records.

``study.spec.StudySpec`` composes these sections with the study's own (search, scaling, tracking) and is
the one place that parses YAML and ``--set``. A trial's config is built and validated once, on the study
driver (``study.trial_configs``); that frozen object crosses the Ray boundary and the loop trusts it.
A bad value raises :class:`SpecError` with one line naming the field (``study.spec`` formats pydantic's).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class SpecError(ValueError):
    """A spec value is wrong; the message is one line: ``field.path: what is wrong and how to fix it``."""


SEED_LIMIT = 2**32  # seeds are 32-bit: numpy's limit, and trainers.data mixes 32-bit words of them


class Section(BaseModel):
    """A spec section: unknown keys are errors, assignments are validated, numbers are finite (YAML's
    ``.inf``/``.nan`` would pass every ``gt=0`` bound)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False)


def distinct(values: list[Any]) -> list[Any]:
    """A list whose values are all different (a repeated grid value or seed would run the same trial twice)."""
    repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
    if repeated:
        raise ValueError(f"{repeated[0]!r} is listed more than once, got {values}; list each value once")
    return values


class ModelSpec(Section):
    # Gitman & Ginsburg 2017 §3: ResNet-50 (torchvision's architecture, He et al. 2016).
    arch: Literal["resnet50", "resnet34", "resnet18", "resnet_cifar"] = "resnet50"
    # resnet_cifar only: channels of the first stage and residual blocks per stage (He et al. 2016 §4.2).
    cifar_width: int = Field(16, gt=0)
    cifar_blocks: list[int] = Field(default_factory=lambda: [1, 1, 1], min_length=1)

    @field_validator("cifar_blocks")
    @classmethod
    def _positive_blocks(cls, v: list[int]) -> list[int]:
        if any(b <= 0 for b in v):
            raise ValueError(f"every stage needs >= 1 block, got {v}")
        return v


class SchemeEntry(Section):
    """One scheme and its options, validated against the scheme's own option model (``Options``)."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _options_of_the_scheme(self) -> SchemeEntry:
        # Here, not at the top: the registry imports torch, which `normstudy --help` must not pay for.
        from trainers import norms

        norms.get(self.name).validate_options(self.options)
        return self


class DataSpec(Section):
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
    data_seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    # Train accuracy is measured in eval mode on a fixed subset of the training set this large.
    train_eval_size: int = Field(1024, gt=0)
    # Folder data: the preflight refuses a training split whose largest class has more than this many times
    # the images of its smallest (ImageNet-1k: 1300 / 732 ≈ 1.8); a study of schemes compares accuracies
    # that a heavily imbalanced set (a class linked in twice, say) would bias silently.
    max_class_imbalance: float = Field(10.0, ge=1)

    @model_validator(mode="after")
    def _folder_needs_path(self) -> DataSpec:
        if self.kind == "folder" and not self.path:
            raise ValueError("data.path: required when data.kind is 'folder'; give an ImageNet-layout folder")
        if self.kind == "digits" and not self.path:
            self.path = "normstudy_data/digits"  # trainers.data.digits.DEFAULT_PATH; made absolute per study
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"data.crop_scale: need 0 < min <= max <= 1, got {self.crop_scale}")
        if self.kind == "generated":
            if self.path:
                raise ValueError(f"data.path: '{self.path}' is set but data.kind is 'generated', which reads no "
                                 "files; set data.kind: folder to train on it, or remove data.path")
            for field, size in (("train_size", self.train_size), ("test_size", self.test_size)):
                if size < self.num_classes:
                    raise ValueError(f"data.{field}: {size} samples cannot hold each of the {self.num_classes} "
                                     f"classes once; use at least {self.num_classes} or fewer data.num_classes")
        elif self.eval_resize < self.image_size:
            raise ValueError(f"data.eval_resize: {self.eval_resize} is below data.image_size {self.image_size}, so the "
                             "evaluation's centre crop would be padded with black; use eval_resize >= image_size "
                             "(the paper: 256 for 224)")
        return self


class TrainingSpec(Section):
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
    step_epochs: list[float] = Field(default_factory=lambda: [30.0, 60.0, 80.0])  # ÷10 at each (increasing)
    step_gamma: float = Field(0.1, gt=0, le=1)
    poly_power: float = Field(2.0, gt=0)
    warmup_steps: int = Field(0, ge=0)
    # Warmup as a share of the run's steps (used when warmup_steps is 0), so a shortened run keeps its shape.
    warmup_fraction: float = Field(0.0, ge=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    grad_clip_norm: float | None = Field(None, gt=0)
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    report_every: int = Field(10, gt=0)  # steps between reports (metrics, divergence decisions)
    eval_every: int = Field(0, ge=0)  # steps between evaluations; 0 = once per epoch
    checkpoint_every: int = Field(0, ge=0)  # steps between checkpoints; 0 = at each evaluation
    amp: Literal["off", "bf16"] = "off"
    channels_last: bool = False
    compile: bool = False
    torch_threads: int = Field(0, ge=0)  # 0 = leave torch's default

    @field_validator("step_epochs")
    @classmethod
    def _increasing_milestones(cls, v: list[float]) -> list[float]:
        if any(e <= 0 for e in v) or any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError(f"milestones must be > 0 and increasing, got {v}; e.g. [30, 60, 80]")
        return v

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> TrainingSpec:
        if self.nesterov and self.momentum == 0:  # torch.optim.SGD raises in every trial
            raise ValueError("training.nesterov: Nesterov momentum needs training.momentum > 0; set momentum "
                             "(e.g. 0.9) or nesterov: false")
        return self


class DivergenceSpec(Section):
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
    # Stalled (finite to the end, but did not fit; trainers/stall.py): final eval train loss above this × the
    # trial's initial one (step 0, same subset; capped at ln(classes)). Threshold: docs/design.md §7.
    stall_loss_frac: float = Field(0.65, gt=0)  # a large value turns the rule off (tests of other mechanics)


def one_line_error(err: ValidationError) -> str:
    """Pydantic's first error as one line that names the field path and the fix (:class:`SpecError`'s text)."""
    return _error_text(err).replace("\n", "\\n")  # one line, even for odd keys


def _error_text(err: ValidationError) -> str:
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
    if typ == "finite_number":
        return f"{loc}: must be a finite number, got {got}; give a number"
    msg = str(e["msg"]).removeprefix("Value error, ")
    if not loc or msg.startswith(loc.split(".")[0] + ".") or msg.startswith("data.path"):
        return msg  # the validator already named the field
    return f"{loc or 'spec'}: {msg}, got {got!r}" if typ not in ("value_error",) else f"{loc}: {msg}"


class TrainerConfig(BaseModel):
    """Everything one training run of one scheme reads (``trainers.loop``, ``trainers.profiling``).

    Frozen: built once (``study.spec.StudySpec.trainer_config`` or a trial's resolution) and trusted
    after; ``objective_metric``/``objective_direction`` are the study's ``search.metric`` and
    ``search.mode_direction`` (the value a diverged run reports is a finite penalty in that direction).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    scheme: SchemeEntry
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    divergence: DivergenceSpec = Field(default_factory=DivergenceSpec)
    objective_metric: str = "test_top1"
    objective_direction: Literal["max", "min"] = "max"

    def penalty(self) -> float:
        """The objective of a diverged (or not yet evaluated) run: finite, so Optuna and ASHA can use it."""
        return 0.0 if self.objective_direction == "max" else 1e9


HpValue = float | int | str


class TrialConfig(TrainerConfig):
    """One trial: its trainer config with the sampled values applied, and those values.

    ``hp`` holds the values as sampled (grid point, bracket rate or Optuna suggestion) including
    ``seed``; they are already written into ``training``/``scheme.options``, and kept here for the
    trial's MLflow params (``hp.<name>``), its tags and the progress lines. ``optuna_trial_number`` is
    Optuna's own number of the trial (None in grid and boundary modes): a tag, never a hyperparameter.
    """

    hp: dict[str, HpValue] = Field(default_factory=dict)
    optuna_trial_number: int | None = None
    # A seed re-run of a scheme's best configuration (study/reruns.py): "tuned" or "untuned" (regularization
    # at the search space's defaults); a tag, never a hyperparameter. None for the search's own trials.
    rerun: Literal["tuned", "untuned"] | None = None

    @property
    def scheme_name(self) -> str:
        return self.scheme.name

    def to_dict(self) -> dict[str, Any]:
        """The JSON form a trial's config takes in Tune's config (and its stored experiment state)."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialConfig:
        """Rebuild a config from :meth:`to_dict` WITHOUT validating it again: it was validated when built on
        the driver, and this is the same object after a trip through Tune's (JSON) trial state."""
        sections = {name: f.annotation for name, f in TrainerConfig.model_fields.items()
                    if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
        return cls.model_construct(**{k: sections[k].model_construct(**v) if k in sections else v
                                      for k, v in data.items()})

    @property
    def seed(self) -> int:
        return self.training.seed
