"""CollapseRule alone (the rule's verdicts are also covered in test_divergence.py): its checkpoint state,
what counts as an observation, and the re-exports from trainers.divergence."""

from __future__ import annotations

import json

import trainers.collapse as collapse
import trainers.divergence as divergence
from trainers.collapse import COLLAPSE_DEAD_FRAC, Collapse, CollapseRule


def test_trainers_divergence_re_exports_the_collapse_names():
    for name in ("Collapse", "CollapseRule", "COLLAPSE_CHANCE_MULTIPLE", "COLLAPSE_DEAD_FRAC", "COLLAPSE_LOSS_FRAC"):
        assert getattr(divergence, name) is getattr(collapse, name), name
        assert name in divergence.__all__


def test_defaults_are_the_module_constants():
    rule = CollapseRule()
    assert (rule.chance_multiple, rule.dead_threshold, rule.loss_frac) == (
        collapse.COLLAPSE_CHANCE_MULTIPLE, collapse.COLLAPSE_DEAD_FRAC, collapse.COLLAPSE_LOSS_FRAC)


def test_state_round_trip_through_json_resumes_the_sequence():
    """A crossing before the checkpoint is kept; the peak goes on growing after it."""
    a = CollapseRule()
    a.observe(10, "layer1", 0.1)
    a.observe(10, "layer3", 0.6)
    b = CollapseRule()
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for rule in (a, b):
        rule.observe(20, "layer1", 0.2)
        rule.observe(20, "layer3", 0.9)
    assert a.verdict(0.1, 2.3, 10, 20) == b.verdict(0.1, 2.3, 10, 20) == Collapse("dead_relu", 10, "layer3", 0.9)
    assert b.state_dict() == a.state_dict()
    assert b.order == ["layer1", "layer3"]


def test_an_empty_state_is_a_fresh_rule():
    rule = CollapseRule()
    rule.observe(10, "layer3", 0.9)
    rule.load_state_dict({})
    assert rule.verdict(0.1, 2.3, 10, 30) == Collapse("chance_accuracy", 30, "", None)


def test_non_finite_fractions_are_not_observations():
    rule = CollapseRule()
    for v in (float("nan"), float("inf")):
        rule.observe(10, "layer2", v)
    assert rule.state_dict() == {"first_dead": {}, "peak": {}, "order": []}


def test_the_first_crossing_is_the_first_at_or_above_the_threshold():
    rule = CollapseRule()
    rule.observe(10, "layer2", COLLAPSE_DEAD_FRAC - 1e-6)
    rule.observe(20, "layer2", COLLAPSE_DEAD_FRAC)
    rule.observe(30, "layer2", 0.1)  # recovered: the crossing and the peak stay
    assert rule.verdict(0.1, 2.3, 10, 30) == Collapse("dead_relu", 20, "layer2", COLLAPSE_DEAD_FRAC)
