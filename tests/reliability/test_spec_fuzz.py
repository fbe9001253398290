"""Issue 9 §3: a property-based fuzz of the spec loader — whatever the file or the ``--set`` overrides
hold, ``study.spec.load`` returns a StudySpec or raises SpecError with one line, never anything else.

Documents are built three ways: YAML-ish token soup (keys of real fields, values, flow lists/maps,
anchors, tags, bad indentation), random mutations of the bundled quick.yaml, and arbitrary text, plus
the inputs this fuzz once broke the loader with: non-UTF-8 bytes, a line break inside ``--set``, and
nesting deeper than Python's recursion limit.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from study import spec as spec_mod
from study.spec import SpecError, StudySpec, load

QUICK = (Path(spec_mod.__file__).parent / "specs" / "quick.yaml").read_text()
SECTIONS = list(StudySpec.model_fields)
FIELDS = sorted({f for s in SECTIONS for f in getattr(StudySpec.model_fields[s].annotation, "model_fields", {})})
WORDS = SECTIONS + FIELDS + ["name", "options", "bn", "wn", "nope", "init_scale", "folder", "grid", "optuna"]
SCALARS = ["0", "-1", "1e-3", "1e400", ".inf", ".nan", "~", "null", "true", "no", "''", '"x"', "abc", "[]", "{}",
           "2001-12-14", "0x1F", "0o17", "!!binary aGk=", "!!set {a}", "!!python/object/apply:os.system [true]",
           "!!python/name:os.system", "&a 1", "*a", "*undefined", "|\n  text", "- 1", ": :", "%", "@", "`", "\t"]

token = st.one_of(st.sampled_from(WORDS), st.sampled_from(SCALARS), st.text(max_size=4))
line = st.builds(lambda ind, k, sep, v: " " * ind + k + sep + v,
                 st.integers(0, 6), token, st.sampled_from([": ", ":", " ", ": [", ": {", ", ", "- "]),
                 st.one_of(token, st.builds(lambda a, b: f"[{a}, {b}]", token, token),
                           st.builds(lambda a, b: f"{{{a}: {b}}}", token, token)))
yamlish = st.lists(line, max_size=12).map("\n".join)


@st.composite
def mutated_quick(draw) -> str:
    lines = QUICK.splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(st.sampled_from(["drop", "dup", "replace_value", "insert", "indent"]))
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "replace_value" and ":" in lines[i]:
            lines[i] = lines[i].split(":", 1)[0] + ": " + draw(st.one_of(st.sampled_from(SCALARS), token))
        elif op == "insert":
            lines.insert(i, draw(line))
        elif op == "indent":
            lines[i] = " " * draw(st.integers(1, 5)) + lines[i]
        if not lines:
            lines = [""]
    return "\n".join(lines) + "\n"


documents = st.one_of(yamlish, mutated_quick(), st.text(max_size=200))
one_line = st.text(st.characters(blacklist_characters="\n\r"), max_size=8)  # a shell argument, usually
override = st.builds(lambda k, v: f"{k}={v}",
                     st.one_of(st.lists(st.sampled_from(WORDS + ["", "x"]), min_size=1, max_size=3).map(".".join),
                               one_line),
                     st.one_of(st.sampled_from(SCALARS), st.sampled_from(WORDS), one_line))
overrides = st.lists(st.one_of(override, one_line), max_size=3)


def _load_text(text: str | bytes, items: list[str] = ()) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "spec.yaml"
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        try:
            result = load(path, items)
        except SpecError as err:
            msg = str(err)
            assert msg and "\n" not in msg, f"not one line: {msg!r}"
        else:
            assert isinstance(result, StudySpec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=documents)
def test_load_of_any_text_raises_only_spec_error(text):
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        text = text.encode("utf-8", "replace").decode()  # lone surrogates cannot be written as UTF-8 at all
    _load_text(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(mutated_quick(), st.just("")), items=overrides)
def test_set_overrides_raise_only_spec_error(text, items):
    _load_text(text, items)


@settings(max_examples=200, deadline=None)
@given(raw=st.dictionaries(st.sampled_from(SECTIONS), st.dictionaries(st.sampled_from(FIELDS), st.sampled_from(SCALARS),
                                                                    max_size=3), max_size=3),
       items=overrides)
def test_apply_override_on_any_mapping_raises_only_spec_error(raw, items):
    import yaml

    try:
        raw = yaml.safe_load(yaml.safe_dump(raw))  # plain data
        for item in items:
            spec_mod.apply_override(raw, item)
        spec_mod.from_dict(raw)
    except SpecError as err:
        assert "\n" not in str(err)


@settings(max_examples=50, deadline=None)
@given(blob=st.binary(min_size=1, max_size=64))
def test_load_of_any_bytes_raises_only_spec_error(blob):
    _load_text(b"\xff" + blob)


@pytest.mark.parametrize("item", ["training.lr\n", "training.lr=[\n"])
def test_a_line_break_in_set_still_gives_one_line(item):
    _load_text("", [item])


@pytest.mark.parametrize("where", ["file", "set"])
def test_absurdly_deep_nesting_is_a_spec_error(where):
    deep = "[" * 5000
    if where == "file":
        _load_text(f"training: {deep}\n")
    else:
        _load_text("", [f"training.lr={deep}"])
