"""Search spaces as data: one YAML file per scheme family, validated like the spec.

Each entry: ``name: {min, max, scaling: log|linear, type: float|int, default, target}``. ``target`` is
the spec field the value is written to (``training.lr``) or ``scheme.<option>`` for the scheme's own
options (WN's ``init_scale``). Defaults are the paper's values; Optuna samples within [min, max].

:func:`apply` turns a scheme's :class:`~trainers.config.TrainerConfig` and one trial's sampled values into
that trial's :class:`~trainers.config.TrialConfig`, validated once. This package sits just above
``trainers.config`` and imports nothing from ``study``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from trainers import norms
from trainers.config import SpecError, TrainerConfig, TrialConfig, one_line_error

HERE = Path(__file__).parent


class Dimension(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: float
    max: float
    scaling: Literal["log", "linear"] = "linear"
    type: Literal["float", "int"] = "float"
    default: float
    target: str

    @model_validator(mode="after")
    def _range(self) -> Dimension:
        if self.min > self.max:
            raise ValueError(f"min {self.min} > max {self.max}; swap them")
        if self.scaling == "log" and self.min <= 0:
            raise ValueError(f"log scaling needs min > 0, got {self.min}")
        if not (self.min <= self.default <= self.max):
            raise ValueError(f"default {self.default} outside [{self.min}, {self.max}]")
        if not (self.target.startswith("training.") or self.target.startswith("scheme.")):
            raise ValueError(f"target must be training.<field> or scheme.<option>, got {self.target!r}")
        return self


SearchSpace = dict[str, Dimension]


def load(family: str, space_dir: str | Path | None = None) -> SearchSpace:
    """The space of a scheme family (``bn``, ``wn``, ``nf``, ``default``)."""
    path = Path(space_dir or HERE) / f"{family}.yaml"
    if not path.is_file():
        path = Path(space_dir or HERE) / "default.yaml"
    if not path.is_file():
        raise SpecError(f"search.space_dir: no {family}.yaml or default.yaml in {path.parent}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict) or not raw:
        raise SpecError(f"{path}: empty search space; give at least lr: {{min, max, default, target}}")
    space: SearchSpace = {}
    for name, body in raw.items():
        try:
            space[name] = Dimension.model_validate(body)
        except ValidationError as err:
            e = err.errors()[0]
            where = ".".join(str(p) for p in e["loc"])
            msg = str(e["msg"]).removeprefix("Value error, ")
            raise SpecError(f"{path.name}: {name}{'.' + where if where else ''}: {msg}") from None
    return space


def for_scheme(scheme: str, space_dir: str | Path | None = None) -> SearchSpace:
    """The scheme's family space, without dimensions the scheme does not have (e.g. init_scale for bn)."""
    cls = norms.get(scheme)
    space = load(cls.search_family, space_dir)
    options = cls.Options.model_fields
    return {k: d for k, d in space.items() if not d.target.startswith("scheme.") or d.target[7:] in options}


def apply(base: TrainerConfig, values: Mapping[str, Any], space: SearchSpace,
          optuna_trial_number: int | None = None) -> TrialConfig:
    """One trial's config: ``base`` with the sampled ``values`` written to their targets (``seed`` to
    ``training.seed``; ints rounded), validated once. A value its field refuses is a one-line SpecError."""
    raw = base.model_dump()
    hp: dict[str, Any] = {}
    for name, value in values.items():
        if name == "seed":
            hp[name] = raw["training"]["seed"] = int(value)
            continue
        dim = space[name]
        hp[name] = value = int(round(value)) if dim.type == "int" else float(value)
        section, _, field = dim.target.partition(".")
        if section == "training":
            raw["training"][field] = value
        else:
            raw["scheme"]["options"][field] = value
    try:
        return TrialConfig.model_validate({**raw, "hp": hp, "optuna_trial_number": optuna_trial_number})
    except ValidationError as err:
        raise SpecError(f"trial {dict(values)}: {one_line_error(err)}") from None
