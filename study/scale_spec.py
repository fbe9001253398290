"""The scale axis of a study (``scale:`` in a spec): model variants that every scheme is searched on.

    scale:
      variants:
        - {name: d8,  cifar_blocks: [1, 1, 1]}
        - {name: d14, cifar_blocks: [2, 2, 2]}
        - {name: r50, arch: resnet50}

Each variant names a model: the spec's ``model`` section with the variant's overrides (``arch``,
``cifar_width``, ``cifar_blocks``) applied, validated like ``model`` itself. Depth and parameter count are
computed from that model (:mod:`trainers.model_size`), never typed. No variants (the default) is the
single-model study of every spec before this section. A study with variants runs every scheme's search —
boundary brackets, grid points, Optuna trials — once per variant, in the same study (docs/design.md §13);
each trial carries its variant as ``hp.variant`` (a param) and ``variant`` (a tag), so the runs table
groups by variant and scheme and the report's scale section (:mod:`analysis.scale`) reads it back.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, ValidationError, field_validator

from trainers.config import ModelSpec, Section, SpecError, one_line_error

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")  # a tag value, a Tune experiment name, a file stem


class ScaleVariant(Section):
    name: str
    arch: Literal["resnet50", "resnet34", "resnet18", "resnet_cifar"] | None = None
    cifar_width: int | None = Field(None, gt=0)
    cifar_blocks: list[int] | None = Field(None, min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError(f"'{v}' is not a usable name; use letters, digits, '_', '.', '-' (at most 40), e.g. d8")
        return v

    def overrides(self) -> dict[str, object]:
        return {k: v for k, v in (("arch", self.arch), ("cifar_width", self.cifar_width),
                                  ("cifar_blocks", self.cifar_blocks)) if v is not None}


class ScaleSpec(Section):
    variants: list[ScaleVariant] = Field(default_factory=list)

    @field_validator("variants")
    @classmethod
    def _distinct_names(cls, v: list[ScaleVariant]) -> list[ScaleVariant]:
        names = [x.name for x in v]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"variant '{name}' listed twice; give each variant its own name")
        for x in v:
            if not x.overrides():
                raise ValueError(f"variant '{x.name}' changes nothing; give arch, cifar_width or cifar_blocks")
        return v


def variant_models(model: ModelSpec, scale: ScaleSpec) -> dict[str | None, ModelSpec]:
    """Each variant's model (the spec's ``model`` with its overrides), by name; ``{None: model}`` without
    variants. Two variants that build the same model, or a CIFAR override on a torchvision arch, are a
    one-line :class:`SpecError` naming the variant."""
    if not scale.variants:
        return {None: model}
    out: dict[str | None, ModelSpec] = {}
    seen: dict[str, str] = {}
    for i, v in enumerate(scale.variants):
        try:
            built = ModelSpec.model_validate({**model.model_dump(), **v.overrides()})
        except ValidationError as err:
            raise SpecError(f"scale.variants.{i}: {one_line_error(err)}") from None
        if built.arch != "resnet_cifar" and (v.cifar_width is not None or v.cifar_blocks is not None):
            raise SpecError(f"scale.variants.{i}: cifar_width/cifar_blocks apply to arch resnet_cifar only, but "
                            f"variant '{v.name}' builds {built.arch}; remove them or set arch: resnet_cifar")
        # The fields that shape the network: a torchvision arch ignores the cifar ones.
        key = built.arch if built.arch != "resnet_cifar" else f"{built.arch}/{built.cifar_width}/{built.cifar_blocks}"
        if key in seen:
            raise SpecError(f"scale.variants.{i}: variant '{v.name}' builds the same model as '{seen[key]}'; "
                            "remove one or change its overrides")
        seen[key] = v.name
        out[v.name] = built
    return out
