"""Search spaces are data: every bundled file validates, targets exist, and bad files fail with one line."""

from __future__ import annotations

import pytest

import search_spaces
from study.spec import StudySpec
from trainers import norms
from trainers.config import SpecError

FAMILIES = sorted(p.stem for p in search_spaces.HERE.glob("*.yaml"))


@pytest.mark.parametrize("family", FAMILIES)
def test_bundled_space_validates_and_defaults_are_paper_values(family):
    space = search_spaces.load(family)
    assert space["lr"].default == 0.1 and space["lr"].scaling == "log"
    assert space["weight_decay"].default == 1e-4


@pytest.mark.parametrize("scheme", norms.names())
def test_every_scheme_has_a_space_whose_targets_apply(scheme):
    spec = StudySpec.model_validate({"schemes": [scheme]})
    space = search_spaces.for_scheme(scheme)
    values = {name: d.default for name, d in space.items()}
    out = search_spaces.apply(spec.trainer_config(scheme), values, space)
    assert out.training.lr == pytest.approx(0.1)
    assert out.hp == {name: pytest.approx(v) for name, v in values.items()}
    if norms.get(scheme).has_init_scale:
        assert "init_scale" in space
        assert out.scheme.options["init_scale"] == 1.0
    else:
        assert "init_scale" not in space


def test_apply_writes_sampled_values_and_rounds_ints():
    spec = StudySpec()
    space = search_spaces.for_scheme("wn")
    out = search_spaces.apply(spec.trainer_config("wn"), {"lr": 0.5, "init_scale": 2.0, "warmup_steps": 3.6,
                                                          "seed": 7}, space, optuna_trial_number=3)
    assert out.training.lr == 0.5 and out.training.warmup_steps == 4 and out.training.seed == 7
    assert out.scheme.options == {"init_scale": 2.0}
    assert out.hp == {"lr": 0.5, "init_scale": 2.0, "warmup_steps": 4, "seed": 7} and out.optuna_trial_number == 3
    assert spec.training.lr == 0.1 and spec.scheme("wn").options == {}  # the study spec itself is untouched


def test_apply_refuses_a_value_its_field_refuses_in_one_line():
    space = search_spaces.for_scheme("wn")
    with pytest.raises(SpecError) as err:
        search_spaces.apply(StudySpec().trainer_config("wn"), {"lr": -1.0}, space)
    assert "training.lr: must be > 0" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("body, fragment", [
    ("lr: {min: 1.0, max: 0.1, default: 0.5, target: training.lr}", "min 1.0 > max 0.1"),
    ("lr: {min: 0, max: 1, scaling: log, default: 0.5, target: training.lr}", "log scaling needs min > 0"),
    ("lr: {min: 0.1, max: 1, default: 5, target: training.lr}", "outside"),
    ("lr: {min: 0.1, max: 1, default: 0.5, target: model.lr}", "target must be"),
    ("lr: {min: 0.1, max: 1, default: 0.5, target: training.lr, step: 3}", "lr.step"),
    ("{}", "empty search space"),
])
def test_bad_space_file_is_one_line_error(tmp_path, body, fragment):
    (tmp_path / "bn.yaml").write_text(body)
    with pytest.raises(SpecError) as err:
        search_spaces.load("bn", tmp_path)
    assert fragment in str(err.value) and "\n" not in str(err.value)
