"""Search spaces are data: every bundled file validates, targets exist, and bad files fail with one line."""

from __future__ import annotations

import pytest

import search_spaces
from study.spec import SpecError, StudySpec
from trainers import norms

FAMILIES = sorted(p.stem for p in search_spaces.HERE.glob("*.yaml"))


@pytest.mark.parametrize("family", FAMILIES)
def test_bundled_space_validates_and_defaults_are_paper_values(family):
    space = search_spaces.load(family)
    assert space["lr"].default == 0.1 and space["lr"].scaling == "log"
    assert space["weight_decay"].default == 1e-4


@pytest.mark.parametrize("scheme", norms.names())
def test_every_scheme_has_a_space_whose_targets_apply(scheme):
    spec = StudySpec.model_validate({"schemes": [scheme]})
    space = search_spaces.for_scheme(spec, scheme)
    values = {name: d.default for name, d in space.items()}
    out = search_spaces.apply(spec, scheme, values, space)
    assert out.training.lr == pytest.approx(0.1)
    if norms.get(scheme).has_init_scale:
        assert "init_scale" in space
        assert out.scheme(scheme).options["init_scale"] == 1.0
    else:
        assert "init_scale" not in space


def test_apply_writes_sampled_values_and_rounds_ints():
    spec = StudySpec()
    space = search_spaces.for_scheme(spec, "wn")
    out = search_spaces.apply(spec, "wn", {"lr": 0.5, "init_scale": 2.0, "warmup_steps": 3.6, "seed": 7}, space)
    assert out.training.lr == 0.5 and out.training.warmup_steps == 4 and out.training.seed == 7
    assert out.scheme("wn").options == {"init_scale": 2.0}
    assert spec.training.lr == 0.1  # the study spec itself is untouched


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
