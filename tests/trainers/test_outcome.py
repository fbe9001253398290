"""The one outcome rule: a trial's outcome, failures, a point's status over seeds, the boundary bracket."""

from __future__ import annotations

import pytest

from trainers.outcome import bracket_of, is_failure, is_finished, outcome_of, point_status


@pytest.mark.parametrize(
    ("result", "errored", "expected"),
    [
        ({"diverged": 1.0, "final_test_top1": 0.5}, False, "diverged"),  # a divergence wins over any accuracy
        ({"diverged": 0.0, "collapsed": 1.0, "final_test_top1": 0.1}, False, "collapsed"),
        ({"diverged": 0.0, "collapsed": 0.0, "final_test_top1": 0.9}, False, "stable"),
        ({"diverged": "1"}, False, "diverged"),  # MLflow tags are strings
        ({"diverged": "0", "collapsed": "1", "final_test_top1": 0.1}, False, "collapsed"),
        ({"diverged": 0.0, "step": 10}, False, "unfinished"),  # an interval report: no summary yet
        (None, False, "unfinished"),
        ({}, False, "unfinished"),
        ({"final_test_top1": 0.9}, True, "errored"),  # it raised: never stable, never diverged
    ],
)
def test_outcome_of(result, errored, expected):
    assert outcome_of(result, errored=errored) == expected


def test_failures_are_divergences_and_collapses_only():
    assert is_failure("diverged") and is_failure("collapsed")
    assert not any(is_failure(o) for o in ("stable", "errored", "unfinished", None))
    assert is_finished("stable") and is_finished("collapsed") and not is_finished("errored")


def test_point_status():
    assert point_status(["stable", "stable"]) == "stable"
    assert point_status(["stable", None]) == "pending"
    assert point_status([None, "diverged"]) == "failed"
    assert point_status(["stable", "collapsed"]) == "failed"  # a collapse fails the point like a divergence
    assert point_status(["errored", "stable"]) == "errored" and point_status(["errored", "diverged"]) == "failed"
    assert point_status([]) == "pending"


def test_bracket_of():
    assert bracket_of({0.1: "stable", 0.3: "failed", 1.0: "stable", 0.2: "pending"}) == (0.1, 0.3)
    assert bracket_of({0.1: "stable", 0.3: "stable"}) == (0.3, None)
    assert bracket_of({0.1: "failed"}) == (None, 0.1)
    assert bracket_of({0.1: "stable", 0.2: "errored", 0.4: "failed"}) == (0.1, 0.4)
