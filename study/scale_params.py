"""What a study's scale axis logs on its study run: each variant's computed depth and parameter count.

``scale.<variant>.depth`` and ``scale.<variant>.params`` (:mod:`trainers.model_size`): the report's scale
section (:mod:`analysis.scale`) reads the depth of a variant from these params, so it needs neither torch
nor the spec's model overrides to place a variant on the depth axis.
"""

from __future__ import annotations

from study.scale_spec import variant_models
from study.spec import StudySpec
from trainers.model_size import model_depth, model_params

DEPTH, PARAMS = "depth", "params"


def scale_variants(spec: StudySpec) -> list[str | None]:
    """The study's variants by name; ``[None]`` without a scale axis."""
    return [v.name for v in spec.scale.variants] or [None]  # validated with the spec: names suffice here


def param_key(variant: str, what: str) -> str:
    return f"scale.{variant}.{what}"


def scale_params(spec: StudySpec) -> dict[str, str]:
    """``{scale.<variant>.depth: "8", scale.<variant>.params: "78042", ...}``; empty without variants."""
    out: dict[str, str] = {}
    for name, model in variant_models(spec.model, spec.scale).items():
        if name is None:
            continue
        out[param_key(name, DEPTH)] = str(model_depth(model))
        out[param_key(name, PARAMS)] = str(model_params(model, spec.data.num_classes))
    return out
