"""A trial run's name in MLflow: what the trial is — scheme, learning rate, init scale, seed.

``bn lr=0.1 init=1 seed=0`` (``init=`` only for schemes with an init scale; ``bn@d14 lr=...`` in a study
with a scale axis, so that the variants' trials are told apart). The name is a pure function of
the trial's configuration, never of Ray's trial id or of time, so a study resumed with ``--resume`` names
its runs as before; runs are found again by their tags, not by this name (study/tracking.py). Numbers are
written with ``%g`` (``0.0316``, ``3.16``, ``1e-05``): as short as the spec wrote them, and the same in
the run's ``lr``/``init_scale`` tags' columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# (config key, name label) in the order the name shows them
PARTS = (("lr", "lr"), ("init_scale", "init"), ("seed", "seed"))


def _number(value: Any) -> str:
    try:
        return format(float(value), "g")
    except (TypeError, ValueError):
        return str(value)


def trial_run_name(scheme: str, config: Mapping[str, Any]) -> str:
    """``<scheme>[@<variant>] lr=<lr> init=<init scale> seed=<seed>``, from the trial's hyperparameters (or its run's
    tags, which repeat them); a part the trial does not have is left out."""
    parts = [f"{label}={_number(config[key])}" for key, label in PARTS if config.get(key) not in (None, "")]
    variant = config.get("variant")
    return " ".join([f"{scheme}@{variant}" if variant not in (None, "") else scheme, *parts])
