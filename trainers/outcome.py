"""A trial's outcome, and what follows from outcomes: one definition for every part of normstudy.

The loop's summary, the trial's MLflow tags, the CLI summary, the boundary searcher and the report's
stability maps, summaries, claims and boundary all call these functions; none decides on its own.

A trial's **outcome** (:func:`outcome_of`), from its last result — the loop's summary, a Tune result, or
the same keys read back from MLflow (numbers or their strings):

- ``diverged``: a divergence rule fired (``diverged=1``; trainers/divergence.py);
- ``collapsed``: it stayed finite to the end but ended at chance (``collapsed=1``; the collapse rule);
- ``stalled``: it stayed finite to the end but did not fit: its final train loss is still above
  ``divergence.stall_loss_frac`` × its initial one (``stalled=1``; the stall rule, trainers/stall.py);
- ``stable``: it trained to the end (it has a ``final_test_top1``) and none of the above;
- ``errored``: it raised an exception (an allocation, a bug, a lost store): no statement about stability;
- ``unfinished``: no summary yet (running, killed, stopped by a scheduler).

``diverged``, ``collapsed`` and ``stalled`` are the **failures** (:data:`FAILURE_KINDS`, in that order of
precedence: a collapse is also a stall, and is called the narrower name): they count against a scheme's
stability everywhere. ``errored`` and ``unfinished`` trials are left out of every rate.

A **point** is one learning rate (at one init scale) trained once per seed; its status
(:func:`point_status`) is ``failed`` as soon as one seed failed, ``errored`` when a seed errored and none
failed, ``stable`` once every seed is stable, else ``pending``. The **stability boundary** of a set of
points (:func:`bracket_of`) is ``(S, D)``: ``D`` the smallest failed rate, ``S`` the largest stable rate
below it (a stable rate above ``D`` — a non-monotone scheme — does not move the boundary, which is the
*first* failure from below).

The *best configuration* of a scheme is defined once too, over seed groups: ``analysis.summarize.
best_config`` (the highest mean test top-1 over seeds among configurations where no seed failed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

Outcome = Literal["stable", "diverged", "collapsed", "stalled", "errored", "unfinished"]
PointStatus = Literal["stable", "failed", "errored", "pending"]

STABLE, DIVERGED, COLLAPSED, STALLED = "stable", "diverged", "collapsed", "stalled"
ERRORED, UNFINISHED = "errored", "unfinished"
OUTCOMES: tuple[str, ...] = (STABLE, DIVERGED, COLLAPSED, STALLED, ERRORED, UNFINISHED)
FAILURE_KINDS: tuple[str, ...] = (DIVERGED, COLLAPSED, STALLED)  # the order tables show them in
FAILURES: frozenset[str] = frozenset(FAILURE_KINDS)


def _flag(value: Any) -> bool:
    """A 0/1 flag as the loop writes it (1.0), as MLflow returns it (1.0 or "1"), or a bool."""
    if isinstance(value, str):
        value = value.strip()
        try:
            return float(value) >= 1
        except ValueError:
            return value.lower() == "true"
    return value is not None and float(value) >= 1


def outcome_of(result: Mapping[str, Any] | None, *, errored: bool = False) -> Outcome:
    """The outcome of a trial from its last result (``None``: nothing reported); ``errored``: it raised."""
    if errored:
        return ERRORED
    if not result:
        return UNFINISHED
    if _flag(result.get("diverged")):
        return DIVERGED
    if _flag(result.get("collapsed")):
        return COLLAPSED
    if _flag(result.get("stalled")):
        return STALLED
    return STABLE if result.get("final_test_top1") is not None else UNFINISHED


def is_failure(outcome: str | None) -> bool:
    """Diverged, collapsed or stalled: the trial counts against the scheme's stability."""
    return outcome in FAILURES


def is_finished(outcome: str | None) -> bool:
    """Stable or failed: a trial that enters the rates (errored and unfinished trials do not)."""
    return outcome == STABLE or is_failure(outcome)


def point_status(outcomes: Iterable[str | None]) -> PointStatus:
    """One point's status from its seeds' outcomes (``None``: not finished or not started)."""
    outs = list(outcomes)
    if any(is_failure(o) for o in outs):
        return "failed"
    if not outs or any(o is None or o == UNFINISHED for o in outs):
        return "pending"
    return "errored" if ERRORED in outs else "stable"


def bracket_of(statuses: Mapping[float, str]) -> tuple[float | None, float | None]:
    """``(S, D)`` from ``{lr: point status}``: the smallest failed rate and the largest stable rate below it."""
    failed = [lr for lr, st in statuses.items() if st == "failed"]
    d = min(failed) if failed else None
    stable = [lr for lr, st in statuses.items() if st == "stable" and (d is None or lr < d)]
    return (max(stable) if stable else None), d
