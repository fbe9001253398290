"""Every registered scheme (parametrized over ``norms.names()``, so later schemes are covered too)."""

from __future__ import annotations

import inspect
import sys

import pytest
import torch
import torch.nn.functional as F

from trainers import norms
from trainers.models import build_model, data_dependent_init

SCHEMES = norms.names()


def test_the_papers_schemes_are_registered():
    assert {"bn", "wn", "normprop", "wn_trelu"} <= set(SCHEMES)


@pytest.mark.parametrize("name", SCHEMES)
def test_scheme_is_documented(name):
    cls = norms.get(name)
    assert cls.name == name
    assert cls.paper.strip(), f"{name}: empty `paper`"
    doc = sys.modules[cls.__module__].__doc__
    assert doc and doc.strip(), f"{name}: module {cls.__module__} has no docstring"
    assert isinstance(norms.create(name), norms.NormScheme)


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    scheme = norms.create(name)
    model = build_model("resnet_cifar", scheme, 10, cifar_width=8)
    data_dependent_init(model, scheme, torch.randn(8, 3, 16, 16))
    return model


@pytest.mark.parametrize("name", SCHEMES)
def test_builds_resnet_cifar_forward_and_backward(name):
    model = _model(name).train()
    logits = model(torch.randn(4, 3, 16, 16))
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert params
    for n, p in params:
        assert p.grad is not None, f"{name}: {n} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: {n} has a non-finite gradient"
    assert sum(p.grad.abs().sum().item() for _, p in params) > 0


@pytest.mark.parametrize("name", SCHEMES)
def test_batch_dependence_matches_uses_batch_statistics(name):
    model = _model(name).train()
    x = torch.randn(4, 3, 16, 16)
    others = torch.cat([x[:1], torch.randn(3, 3, 16, 16) * 3 + 1])
    with torch.no_grad():
        diff = (model(x)[0] - model(others)[0]).abs().max().item()
    if norms.get(name).uses_batch_statistics:
        assert diff > 1e-3, f"{name} says it uses batch statistics, yet a sample ignores its batch"
    else:
        assert diff < 1e-5, f"{name} says it uses no batch statistics, yet a sample depends on its batch"


def test_unknown_scheme_raises_keyerror_naming_the_known_ones():
    with pytest.raises(KeyError) as info:
        norms.get("no_such_norm")
    msg = str(info.value)
    assert "no_such_norm" in msg
    for name in SCHEMES:
        assert name in msg
    with pytest.raises(KeyError):
        norms.create("no_such_norm")


@pytest.mark.parametrize("name", SCHEMES)
def test_unknown_option_raises_valueerror_naming_scheme_and_option(name):
    with pytest.raises(ValueError, match=rf"^schemes\.{name}\.bogus_option: "):
        norms.create(name, bogus_option=1)


@pytest.mark.parametrize("name", [n for n in SCHEMES if norms.get(n).Options.model_fields])
def test_bad_option_value_raises_valueerror_naming_scheme_and_option(name):
    fields = norms.get(name).Options.model_fields
    # init_scale=-1 where the scheme has one; else its first option, given a value of no valid type
    option, bad = ("init_scale", -1) if "init_scale" in fields else (next(iter(fields)), {"not": "valid"})
    with pytest.raises(ValueError, match=rf"^schemes\.{name}\.{option}: ") as info:
        norms.create(name, **{option: bad})
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", [n for n in SCHEMES if norms.get(n).has_init_scale])
def test_has_init_scale_means_an_init_scale_option(name):
    assert "init_scale" in norms.get(name).Options.model_fields
    assert norms.create(name, init_scale=0.5).options.init_scale == 0.5


def test_register_refuses_a_second_class_under_a_taken_name():
    class Impostor(norms.NormScheme):
        name = SCHEMES[0]

    with pytest.raises(ValueError, match="registered twice"):
        norms.register(Impostor)
    assert norms.get(SCHEMES[0]) is not Impostor


def test_register_refuses_an_empty_name():
    class Nameless(norms.NormScheme):
        pass

    with pytest.raises(ValueError):
        norms.register(Nameless)


def test_module_docstrings_name_a_formula_for_paper_schemes():
    # docs/design.md §3: "Docstring: formula + paper" — each paper scheme's module states its formula.
    for name in ("bn", "wn", "normprop", "wn_trelu"):
        doc = inspect.getmodule(norms.get(name)).__doc__
        assert "=" in doc, f"{name}: module docstring has no formula"
