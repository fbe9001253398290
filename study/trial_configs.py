"""Every trial's config, resolved and validated once, on the study driver, in one shape.

Grid points, boundary brackets and Optuna suggestions all become a :class:`trainers.config.TrialConfig`
here (``search_spaces.apply``: the scheme's trainer config with the trial's values written in, validated
once). A study with a scale axis (``scale.variants``, study/scale_spec.py) has one trainer config per
(scheme, variant): the variant's model, and ``hp["variant"]`` naming it. Tune carries a trial config to
the trial as ``config["trial"]`` (:data:`TRIAL`, :func:`tune_config`) in its JSON form, which survives
Tune's stored state on ``--resume``; the trial, the progress lines and the runner read it back with
:func:`trial_of` (no second validation), and the loop trusts it. Search spaces are read from disk once per
study, not per trial.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import search_spaces
from study.scale_spec import variant_models
from study.spec import StudySpec
from trainers import norms
from trainers.config import TrainerConfig, TrialConfig

TRIAL = "trial"  # the one key of a trial's Tune config


def tune_config(trial: TrialConfig) -> dict[str, Any]:
    """A trial's Tune config: its trial config in JSON form, so Tune's stored experiment state (``--resume``)
    and its params.json hold plain values, not pickled objects."""
    return {TRIAL: trial.to_dict()}


def trial_of(config: Mapping[str, Any] | None) -> TrialConfig | None:
    """The trial config inside a Tune trial config, rebuilt without a second validation (None where there is
    none: not one of ours)."""
    trial = (config or {}).get(TRIAL)
    if isinstance(trial, TrialConfig):
        return trial
    return TrialConfig.from_dict(trial) if isinstance(trial, Mapping) else None


class TrialConfigs:
    """The study's trial configs: each scheme's trainer config and search space, and the resolver."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec
        self._models = variant_models(spec.model, spec.scale)  # {None: spec.model} without variants
        self._bases: dict[tuple[str, str | None], TrainerConfig] = {
            (e.name, v): spec.trainer_config(e.name).model_copy(update={"model": m})
            for e in spec.schemes for v, m in self._models.items()}
        self._spaces = {e.name: search_spaces.for_scheme(e.name, spec.search.space_dir) for e in spec.schemes}

    def space(self, scheme: str) -> search_spaces.SearchSpace:
        return self._spaces[scheme]

    def variants(self) -> list[str | None]:
        """The study's model variants by name, in the spec's order; ``[None]`` without a scale axis."""
        return list(self._models)

    def resolve(self, scheme: str, values: Mapping[str, Any], optuna_trial_number: int | None = None,
                variant: str | None = None) -> TrialConfig:
        """One trial of ``scheme`` (on ``variant``'s model) with the sampled ``values`` (``lr``, ``init_scale``,
        ``seed``, ...)."""
        trial = search_spaces.apply(self._bases[scheme, variant], values, self._spaces[scheme], optuna_trial_number)
        if variant is None:
            return trial
        return trial.model_copy(update={"hp": {**trial.hp, "variant": variant}})

    def init_scales(self, scheme: str) -> list[float | None]:
        """The grid's init scales where the scheme has one (the stability map's second axis), else [None]."""
        return list(self.spec.search.grid_init_scale) if norms.get(scheme).has_init_scale else [None]

    def bracket_keys(self) -> list[tuple[str, float | None, str | None]]:
        """Every (scheme, init scale, variant) of a boundary study; init scale ``None`` where the scheme has
        none, variant ``None`` without a scale axis."""
        return [(e.name, s, v) for v in self.variants() for e in self.spec.schemes for s in self.init_scales(e.name)]

    def point(self, scheme: str, lr: float, seed: int, init_scale: float | None,
              variant: str | None = None) -> TrialConfig:
        """The trial at one (lr, init scale, seed) of a grid or a bracket."""
        values: dict[str, Any] = {"lr": lr, "seed": seed}
        if init_scale is not None:
            values["init_scale"] = init_scale
        return self.resolve(scheme, values, variant=variant)

    def grid(self) -> list[TrialConfig]:
        """Every (variant, scheme, lr, init scale, seed) of a grid study, variant- then scheme-major."""
        s = self.spec.search
        return [self.point(e.name, lr, seed, scale, v) for v in self.variants() for e in self.spec.schemes
                for lr in s.grid_lr for scale in self.init_scales(e.name) for seed in s.seeds]
