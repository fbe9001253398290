"""The bracketing state machine (study/boundary.py) on synthetic boundaries: no Ray, no training."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from study.boundary import Bracket, expected_points, round_lr, tolerance_grid, within

SQRT2 = 2**0.5


def drive(b: Bracket, outcome: Callable[[float, int], str], *, concurrency: int | None = None,
          rng: random.Random | None = None, max_steps: int = 1000) -> list[tuple[float, int]]:
    """Run the bracket like a Tune experiment would: start what it asks for (up to ``concurrency`` at
    once), finish one running trial at a time (in random order with ``rng``). Returns the starts, in order."""
    running: list[tuple[float, int]] = []
    started: list[tuple[float, int]] = []
    for _ in range(max_steps):
        while concurrency is None or len(running) < concurrency:
            reqs = b.requests()
            if not reqs:
                break
            b.start(*reqs[0])
            running.append(reqs[0])
            started.append(reqs[0])
        if not running:
            assert b.done, "nothing running, nothing requested, yet the bracket is not done"
            return started
        lr, seed = running.pop(rng.randrange(len(running)) if rng else 0)
        b.record(lr, seed, outcome(lr, seed))
    raise AssertionError("the bracket never finished")


def threshold(boundaries: dict[int, float]) -> Callable[[float, int], str]:
    """Seed ``s`` diverges above ``boundaries[s]``."""
    return lambda lr, seed: "diverged" if lr > boundaries[seed] else "stable"


@pytest.mark.parametrize("true_b", [0.0004, 0.013, 0.05, 0.31, 0.99, 7.0, 250.0])
@pytest.mark.parametrize("order", [None, 1, 2])
def test_converges_to_tolerance_around_the_first_seed_to_diverge(true_b, order):
    """Inside or outside the starting bracket, in any completion order: S stable, D diverged, D/S ≤ tol."""
    b = Bracket(0.01, 1.0, SQRT2, 30, (0, 1))
    # seed 1 diverges earlier: the point's boundary is the smaller one (every seed must be stable)
    rng = None if order is None else random.Random(order)
    drive(b, threshold({0: true_b * 1.3, 1: true_b}), concurrency=3, rng=rng)
    s, d = b.bracket()
    assert b.status == "converged"
    assert s <= true_b < d and within(s, d, SQRT2)
    assert b.status_of(s) == "stable" and b.status_of(d) == "failed"


def test_boundary_inside_the_start_costs_the_ends_plus_bisections():
    b = Bracket(0.01, 1.0, SQRT2, 12, (0,))
    drive(b, threshold({0: 0.137}))
    assert len(b.outcomes) == expected_points(0.01, 1.0, SQRT2) == 6  # 100 → 10 → 3.2 → 1.8 → 1.33


def test_both_ends_start_at_once_then_one_rate_at_a_time():
    b = Bracket(0.01, 1.0, SQRT2, 12, (0, 1, 2))
    first = b.requests()
    assert sorted(first) == sorted((lr, s) for lr in (0.01, 1.0) for s in (0, 1, 2))
    for lr, s in first:
        b.start(lr, s)
    assert b.requests() == []  # nothing new while the ends are pending
    for s in (0, 1, 2):
        b.record(0.01, s, "stable")
        b.record(1.0, s, "diverged")
    nxt = b.requests()
    assert {lr for lr, _ in nxt} == {0.1} and len(nxt) == 3  # all seeds of the midpoint at once


def test_a_diverged_seed_decides_the_point_and_its_other_seeds_are_not_started():
    b = Bracket(0.01, 1.0, 4.0, 12, (0, 1))
    starts = drive(b, threshold({0: 0.05, 1: 1e9}), concurrency=1)
    diverged = [lr for lr, st in b.statuses().items() if st == "failed"]
    for lr in diverged:  # seed 0 ran first (concurrency 1) and diverged: seed 1 was never needed
        assert (lr, 1) not in starts
    assert all(len(v) == 2 for lr, v in b.outcomes.items() if b.status_of(lr) == "stable")


def test_widening_uses_the_starting_bracket_width_both_ways():
    up = Bracket(0.1, 1.0, 2.0, 20, (0,))
    drive(up, threshold({0: 33.0}))
    assert {10.0, 100.0} <= set(up.outcomes)  # 1 stable → 10 stable → 100 diverged
    down = Bracket(0.1, 1.0, 2.0, 20, (0,))
    drive(down, threshold({0: 0.002}))
    assert {0.01, 0.001} <= set(down.outcomes)
    assert up.status == down.status == "converged"


def test_stops_at_max_points_with_the_bracket_so_far():
    b = Bracket(0.01, 1.0, 1.001, 4, (0,))
    drive(b, threshold({0: 0.137}))
    s, d = b.bracket()
    assert b.status == "max_points" and len(b.outcomes) == 4 and s <= 0.137 < d
    never = Bracket(0.01, 1.0, SQRT2, 3, (0,))
    drive(never, lambda lr, seed: "stable")  # never diverges: the cap ends it unbracketed
    assert never.status == "max_points" and never.bracket() == (100.0, None)


def test_a_stable_rate_above_the_first_divergence_does_not_move_the_boundary():
    """Non-monotone: a band of divergence (0.04, 0.2]; above it (at the start's high end) stable again."""
    b = Bracket(0.1, 1.0, SQRT2, 20, (0,))
    drive(b, lambda lr, seed: "diverged" if 0.04 < lr <= 0.2 else "stable")
    s, d = b.bracket()
    assert b.status_of(1.0) == "stable"
    assert s <= 0.04 < d <= 0.2 and within(s, d, SQRT2)


def test_an_error_below_the_boundary_stops_the_bracket_and_a_late_result_reopens_it():
    b = Bracket(0.01, 1.0, SQRT2, 12, (0, 1))
    for lr, s in b.requests():
        b.start(lr, s)
    b.record(1.0, 0, "diverged")
    b.record(0.01, 0, "stable")
    b.record(0.01, 1, "errored")  # an error is not a divergence: the boundary is unknown below 1.0
    assert b.status == "error" and b.requests() == [] and b.done
    b.record(0.01, 1, "stable")  # re-run on --resume
    assert b.status == "running" and {lr for lr, _ in b.requests()} == {0.1}
    b2 = Bracket(0.01, 1.0, SQRT2, 12, (0, 1))
    drive(b2, lambda lr, seed: "errored" if seed == 1 and lr > 0.5 else threshold({0: 0.2, 1: 0.2})(lr, seed))
    assert b2.status == "converged"  # the other seed diverged at 1.0: that point's error does not matter


def test_state_round_trip_continues_identically():
    outcome = threshold({0: 0.21, 1: 0.3})
    whole = Bracket(0.01, 1.0, SQRT2, 12, (0, 1))
    drive(whole, outcome)
    part = Bracket(0.01, 1.0, SQRT2, 12, (0, 1))
    for lr, s in part.requests():
        part.start(lr, s)
    for lr, s in [(1.0, 0), (0.01, 0), (0.01, 1)]:
        part.record(lr, s, outcome(lr, s))
    part.start(*part.requests()[0])  # one seed of the midpoint started when the driver died
    restored = Bracket.from_state(part.state())
    assert restored.requests() == part.requests() and restored.outcomes == part.outcomes
    restored.record(0.1, 0, outcome(0.1, 0))
    drive(restored, outcome)
    assert restored.bracket() == whole.bracket() and set(restored.outcomes) == set(whole.outcomes)


def test_tolerance_grid_is_the_coarsest_log_grid_with_that_precision():
    for low, high, tol in [(0.01, 1.0, SQRT2), (0.003, 3.0, SQRT2), (0.1, 0.5, 2.0)]:
        g = tolerance_grid(low, high, tol)
        assert g[0] == low and g[-1] == round_lr(high) and g == sorted(set(g))
        assert all(within(a, b, tol) for a, b in zip(g, g[1:], strict=False))
        # one rate fewer, however placed, leaves a gap wider than the tolerance
        assert (high / low) ** (1 / (len(g) - 2)) > tol
    assert len(tolerance_grid(0.01, 1.0, SQRT2)) == 15 and len(tolerance_grid(0.003, 3.0, SQRT2)) == 21


@pytest.mark.parametrize("args", [(1.0, 0.1, SQRT2, 12), (0.1, 1.0, 1.0, 12), (0.1, 1.0, SQRT2, 1)])
def test_invalid_brackets_are_refused_naming_the_field(args):
    with pytest.raises(ValueError, match="search.boundary_"):
        Bracket(*args, (0,))


def test_expected_points_matches_the_bisection_count():
    for low, high, tol in [(0.01, 1.0, SQRT2), (0.003, 3.0, SQRT2), (0.1, 10.0, 2.0)]:
        k = expected_points(low, high, tol) - 2
        assert (high / low) ** (1 / 2**k) <= tol < (high / low) ** (1 / 2 ** (k - 1))
    assert math.isclose(expected_points(0.003, 3.0, SQRT2), 7)
