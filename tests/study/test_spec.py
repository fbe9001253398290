"""The study spec: paper defaults, YAML loading, overrides, one-line errors, flattening."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from study import spec
from study.spec import SpecError, StudySpec, apply_override, flatten, from_dict, load
from trainers import norms

QUICK = Path(spec.__file__).parent / "specs" / "quick.yaml"


def spec_error(raw) -> str:
    with pytest.raises(SpecError) as info:
        from_dict(raw)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and msg, f"not one line: {msg!r}"
    return msg


# --------------------------------------------------------------------------------------------------
# Defaults


def test_defaults_are_the_papers():
    s = StudySpec()
    assert s.model.arch == "resnet50"
    assert s.training.lr == 0.1
    assert s.training.momentum == 0.9
    assert s.training.weight_decay == 1e-4
    assert s.training.batch_size == 256
    assert s.training.epochs == 90
    assert s.training.optimizer == "sgd"
    assert [e.name for e in s.schemes] == ["bn", "wn", "normprop", "wn_trelu"]
    assert all(e.options == {} for e in s.schemes)
    assert s.data.image_size == 224


def test_empty_mapping_and_none_give_the_defaults():
    assert from_dict({}) == StudySpec()
    assert from_dict(None) == StudySpec()


@pytest.mark.skipif(not QUICK.is_file(), reason="study/specs/quick.yaml (the quick default) not written yet")
def test_load_without_a_path_is_the_bundled_quick_default():
    s = load()
    assert s == load(QUICK)
    assert s.schemes  # validated, with at least one scheme
    assert s == from_dict(yaml.safe_load(QUICK.read_text()))


# --------------------------------------------------------------------------------------------------
# YAML


def test_yaml_round_trip(tmp_path):
    s = from_dict({
        "model": {"arch": "resnet_cifar", "cifar_blocks": [2, 2]},
        "schemes": {"bn": {"momentum": 0.2}, "wn": {"init_scale": 2.0}},
        "data": {"kind": "folder", "path": "/data/imagenet"},
        "training": {"lr": 0.3, "max_steps": 10, "step_epochs": [1.5, 2.5]},
        "search": {"mode": "grid", "seeds": [0, 1]},
    })
    path = tmp_path / "s.yaml"
    path.write_text(spec.dump(s))
    assert load(path) == s
    assert from_dict(yaml.safe_load(spec.dump(s))).to_dict() == s.to_dict()


def test_load_applies_overrides(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("training:\n  lr: 0.2\n")
    s = load(path, overrides=["training.lr=0.4", "model.arch=resnet18", "schemes=[wn]"])
    assert s.training.lr == 0.4 and s.model.arch == "resnet18" and [e.name for e in s.schemes] == ["wn"]


def test_empty_file_is_the_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load(path) == StudySpec()


def test_missing_spec_file(tmp_path):
    with pytest.raises(SpecError, match=r"^--spec: .*nope\.yaml.* not found"):
        load(tmp_path / "nope.yaml")


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  lr: [0.1\n  momentum: 0.9\n")
    with pytest.raises(SpecError) as info:
        load(path)
    msg = str(info.value)
    assert msg.startswith(str(path)) and "line" in msg and "YAML" in msg and "\n" not in msg


def test_non_mapping_top_level(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- model\n- training\n")
    with pytest.raises(SpecError, match=r"top level must be a mapping") as info:
        load(path)
    assert str(info.value).startswith(str(path))
    assert spec_error(["model"]).startswith("spec: the top level must be a mapping")
    assert spec_error("training").startswith("spec:")


# --------------------------------------------------------------------------------------------------
# Overrides


def test_override_sets_a_field():
    raw = {"training": {"lr": 0.1, "momentum": 0.9}}
    apply_override(raw, "training.lr=0.3")
    assert raw == {"training": {"lr": 0.3, "momentum": 0.9}}
    assert from_dict(raw).training.lr == 0.3


def test_override_values_are_parsed_as_yaml():
    raw: dict = {}
    apply_override(raw, "search.grid_lr=[0.1, 1]")
    apply_override(raw, "training.nesterov=true")
    apply_override(raw, "tracking.experiment=my run")
    apply_override(raw, "training.max_steps=null")
    assert raw == {"search": {"grid_lr": [0.1, 1]}, "training": {"nesterov": True, "max_steps": None},
                   "tracking": {"experiment": "my run"}}


def test_override_creates_nested_new_keys():
    raw: dict = {}
    apply_override(raw, "schemes.wn.init_scale=2")
    assert raw == {"schemes": {"wn": {"init_scale": 2}}}
    s = from_dict(raw)
    assert s.scheme("wn").options == {"init_scale": 2}


@pytest.mark.parametrize("item", ["training.lr", "training.lr 0.3", ""])
def test_override_without_equals_is_refused(item):
    with pytest.raises(SpecError, match=r"^--set .*expected section\.field=value"):
        apply_override({}, item)


def test_override_with_invalid_yaml_value():
    with pytest.raises(SpecError, match=r"^--set training\.lr: value .* is not valid YAML"):
        apply_override({}, "training.lr=[0.1,")


def test_override_through_a_non_section():
    raw = {"training": {"lr": 0.1}}
    with pytest.raises(SpecError, match=r"^--set training\.lr\.x: 'lr' is not a section"):
        apply_override(raw, "training.lr.x=1")
    assert raw == {"training": {"lr": 0.1}}


def test_override_of_an_unknown_key_fails_at_validation():
    raw: dict = {}
    apply_override(raw, "training.lrr=0.3")
    assert spec_error(raw).startswith("training.lrr:")


# --------------------------------------------------------------------------------------------------
# Errors: one line, naming the field path and the fix


def test_bound_violation():
    msg = spec_error({"training": {"lr": -1}})
    assert re.fullmatch(r"training\.lr: must be > 0(\.0)?, got -1", msg), msg


@pytest.mark.parametrize("raw, path", [
    ({"training": {"momentum": 1.0}}, "training.momentum: must be < 1"),
    ({"training": {"weight_decay": -0.1}}, "training.weight_decay: must be >= 0"),
    ({"divergence": {"loss_multiple": 1}}, "divergence.loss_multiple: must be > 1"),
    ({"search": {"seeds": []}}, "search.seeds: must not be empty"),
    ({"search": {"grid_lr": [0.1, -1]}}, "search.grid_lr: every value must be > 0"),
    ({"model": {"cifar_blocks": [1, 0]}}, "model.cifar_blocks: every stage needs >= 1 block"),
])
def test_bounds_name_the_field(raw, path):
    assert spec_error(raw).startswith(path)


def test_unknown_key():
    msg = spec_error({"training": {"lrr": 0.3}})
    assert msg.startswith("training.lrr:") and "unknown key" in msg
    assert spec_error({"trainig": {}}).startswith("trainig: unknown key")
    # a key with a line break still gives a one-line message (spec_error checks)
    assert spec_error({"training": {"l\nr": 1}}).startswith("training.l\\nr: unknown key")


def test_unknown_scheme_names_it_and_the_known_ones():
    msg = spec_error({"schemes": ["bn", "batchnorm2"]})
    assert msg.startswith("schemes") and "batchnorm2" in msg
    for name in norms.names():
        assert name in msg


def test_folder_data_needs_a_path():
    msg = spec_error({"data": {"kind": "folder"}})
    assert msg.startswith("data.path:") and "folder" in msg
    assert from_dict({"data": {"kind": "folder", "path": "/x"}}).data.path == "/x"


def test_wrong_type():
    msg = spec_error({"training": {"batch_size": "abc"}})
    assert msg.startswith("training.batch_size:") and "integer" in msg and "'abc'" in msg


def test_bad_literal_lists_the_choices():
    msg = spec_error({"model": {"arch": "resnet9000"}})
    assert msg.startswith("model.arch: must be one of") and "resnet9000" in msg
    for arch in ("resnet50", "resnet18", "resnet_cifar"):
        assert arch in msg


def test_a_section_that_is_not_a_mapping():
    assert spec_error({"training": 5}).startswith("training:")


@pytest.mark.parametrize("raw, start", [
    ({"schemes": {"wn": {"init_scale": -1}}}, "schemes.wn.init_scale:"),
    ({"schemes": [{"name": "wn", "options": {"bogus": 1}}]}, "schemes.wn.bogus: unknown option"),
    ({"schemes": {"wn": 5}}, "schemes:"),
    ({"schemes": []}, "schemes:"),
])
def test_scheme_option_errors_name_the_scheme_and_option(raw, start):
    assert spec_error(raw).startswith(start)


# --------------------------------------------------------------------------------------------------
# Scheme forms


def test_three_scheme_forms_are_equivalent():
    as_names = from_dict({"schemes": ["bn", "wn"]})
    as_entries = from_dict({"schemes": [{"name": "bn"}, {"name": "wn", "options": {}}]})
    as_mapping = from_dict({"schemes": {"bn": None, "wn": {}}})
    assert as_names.schemes == as_entries.schemes == as_mapping.schemes
    assert [e.name for e in as_names.schemes] == ["bn", "wn"]

    with_opts = [from_dict({"schemes": [{"name": "wn", "options": {"init_scale": 3.0}}, "bn"]}),
                 from_dict({"schemes": {"wn": {"init_scale": 3.0}, "bn": None}})]
    for s in with_opts:
        assert [e.name for e in s.schemes] == ["wn", "bn"]
        assert s.scheme("wn").options == {"init_scale": 3.0}
        assert s.scheme("bn").options == {}


def test_duplicate_scheme_is_rejected():
    msg = spec_error({"schemes": ["wn", "bn", {"name": "wn", "options": {"init_scale": 2}}]})
    assert msg.startswith("schemes:") and "'wn'" in msg and "twice" in msg


def test_scheme_lookup():
    s = StudySpec()
    assert s.scheme("wn").name == "wn"
    with pytest.raises(SpecError, match=r"^schemes: 'gn' is not in this study"):
        s.scheme("gn")


# --------------------------------------------------------------------------------------------------
# flatten


def _leaf_paths(obj: BaseModel, prefix: str = "") -> set[str]:
    """Every leaf field of a spec, from its pydantic fields (not from flatten's own walk)."""
    out: set[str] = set()
    for name in type(obj).model_fields:
        value = getattr(obj, name)
        if isinstance(value, BaseModel):
            out |= _leaf_paths(value, f"{prefix}{name}.")
        elif name == "schemes" and not prefix:
            out |= {f"schemes.{e.name}" for e in value}
        else:
            out.add(f"{prefix}{name}")
    return out


def test_flatten_values():
    flat = flatten(StudySpec())
    assert flat["training.lr"] == "0.1"
    assert flat["training.batch_size"] == "256"
    assert flat["training.momentum"] == "0.9"
    assert flat["training.weight_decay"] == "0.0001"
    assert flat["model.arch"] == "resnet50"
    assert flat["training.max_steps"] == "None"
    assert flat["schemes.wn"] == "{}"
    assert all(isinstance(v, str) for v in flat.values())
    s = from_dict({"schemes": {"wn": {"init_scale": 2.0}}})
    assert flatten(s)["schemes.wn"] == str({"init_scale": 2.0})


WITH_OPTIONS = {"schemes": {"bn": None, "wn": {"init_scale": 2}}, "data": {"kind": "folder", "path": "/x"}}


@pytest.mark.parametrize("raw", [{}, WITH_OPTIONS], ids=["defaults", "options"])
def test_flatten_covers_every_leaf_field_of_every_section(raw):
    s = from_dict(raw)
    expected = _leaf_paths(s)
    # all eight sections contribute, so a dropped section is caught too
    assert {p.split(".")[0] for p in expected} == set(StudySpec.model_fields)
    assert set(flatten(s)) == expected
    assert len(expected) > 60


def test_flatten_of_a_mapping_matches_flatten_of_the_spec():
    s = StudySpec()
    assert flatten(s.to_dict()) == flatten(s)


# --------------------------------------------------------------------------------------------------
# Fuzz: from_dict only ever raises SpecError


def _field_names() -> list[str]:
    names: set[str] = set()
    for f in StudySpec.model_fields.values():
        if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel):
            names |= set(f.annotation.model_fields)
    return sorted(names)


SECTIONS = sorted(StudySpec.model_fields)
FIELDS = _field_names()
SCHEME_WORDS = ["name", "options", *norms.names(), "init_scale", "slope", "eps", "momentum", "nope"]
keys = st.one_of(st.sampled_from(SECTIONS + FIELDS + SCHEME_WORDS + ["", "\n", "a.b"]), st.text(max_size=6),
                 st.integers(-2, 2), st.booleans(), st.none())
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=10**300), st.floats(), st.text(max_size=8),
    st.binary(max_size=4),
    st.sampled_from(["bn", "wn", "folder", "generated", "resnet_cifar", "grid", "1e-3"]),
)
values = st.recursive(
    leaves, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
sections = st.dictionaries(st.sampled_from(FIELDS + SCHEME_WORDS), values, max_size=4)
scheme_names = st.sampled_from(norms.names() + ["nope"])
scheme_entries = st.fixed_dictionaries({"name": scheme_names},
                                       optional={"options": st.one_of(sections, values)})
schemes = st.one_of(
    st.lists(st.one_of(scheme_names, scheme_entries, values), max_size=3),
    st.dictionaries(scheme_names, st.one_of(st.none(), sections, values), max_size=3),
)
raw_specs = st.one_of(
    values,
    st.dictionaries(st.sampled_from(SECTIONS), st.one_of(sections, values), max_size=4),
    st.fixed_dictionaries({}, optional={s: schemes if s == "schemes" else sections for s in SECTIONS}),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=raw_specs)
def test_from_dict_raises_only_spec_error(raw):
    try:
        result = from_dict(raw)
    except SpecError as err:
        msg = str(err)
        assert msg and "\n" not in msg, f"not one line: {msg!r}"
        assert ": " in msg, f"names no field: {msg!r}"
    else:
        assert isinstance(result, StudySpec)


def test_env_references_in_a_spec_file_expand_and_an_unset_one_is_a_one_line_error(tmp_path, monkeypatch):
    path = tmp_path / "s.yaml"
    path.write_text("data: {kind: folder, path: '${NS_TEST_DATA}/imagenet'}\n")
    monkeypatch.setenv("NS_TEST_DATA", "/datasets")
    assert spec.load(path).data.path == "/datasets/imagenet"
    monkeypatch.delenv("NS_TEST_DATA")
    with pytest.raises(SpecError, match=r"environment variable NS_TEST_DATA .* is not set") as err:
        spec.load(path)
    assert "\n" not in str(err.value)


def test_mlflow_tracking_uri_env_replaces_only_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert spec.from_dict({}).tracking.tracking_uri == "http://127.0.0.1:5999"
    given = spec.from_dict({"tracking": {"tracking_uri": "sqlite:///x.db"}})
    assert given.tracking.tracking_uri == "sqlite:///x.db"


def test_a_repeated_key_is_refused_at_any_depth_but_a_merge_key_may_be_overridden(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("schemes: [bn]\ntraining:\n  lr: 0.1\nsearch:\n  seeds: [0]\n  grid_lr: [0.1]\n  seeds: [1]\n")
    with pytest.raises(SpecError) as err:
        spec.load(path)
    assert str(err.value) == f"{path}: key 'seeds' repeated at line 7 (first at line 5); keep one"
    # YAML's merge key is an override by design: allowed (and the explicit value wins)
    assert spec.parse_yaml("base: &b {lr: 0.3, batch_size: 64}\ntraining: {<<: *b, lr: 0.2}\n")["training"] == \
        {"lr": 0.2, "batch_size": 64}
    with pytest.raises(spec.DuplicateKey):
        spec.parse_yaml("a: {b: {c: 1, c: 2}}")
    with pytest.raises(spec.yaml.constructor.ConstructorError):  # still a safe loader: no Python objects
        spec.parse_yaml("!!python/object/apply:os.getcwd []")
