"""The bracketing search for the largest stable learning rate of one (scheme, init scale): pure state, no Ray.

A *point* is one learning rate, trained once per seed; its status and the bracket ``(S, D)`` come from
the one outcome rule (:mod:`trainers.outcome`): **failed** as soon as one seed diverged or collapsed (the
other seeds cannot make it stable), **stable** once every seed trained to the end without failing,
**errored** when a seed raised without any failing (an infrastructure failure says nothing about
stability) and **pending** otherwise.

The bracket is ``(S, D)``: ``D`` the smallest failed rate tried, ``S`` the largest stable rate below
``D`` (:func:`bracket_of`; a stable rate above ``D`` — a non-monotone scheme — does not move the
boundary, which is the *first* divergence from below). The search, on log lr:

1. try the starting bracket ``[low, high]`` (both points at once);
2. while no rate failed, try ``max tried × w``; while no rate below ``D`` is stable, try ``D / w``
   (``w = high / low``, the starting bracket's own width);
3. bisect: try ``√(S·D)`` until ``D / S ≤ tolerance`` (rates are rounded to 4 significant digits);
4. stop early after ``max_points`` rates (status ``max_points``) or when a point below ``D`` errored
   (status ``error``: the boundary is not known there).

While a rate below ``D`` is still pending nothing new is tried (its result could move the bracket), so a
bracket runs one rate at a time after the first two; its seeds run concurrently, and independent brackets
(other init scales, other schemes) run beside it (:mod:`study.boundary_search`).

Decisions are a function of the recorded outcomes only, so a bracket restored from :meth:`Bracket.state`
continues exactly where it was, and a late outcome (an errored trial re-run on ``--resume``) reopens it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from trainers.outcome import OUTCOMES, PointStatus, bracket_of, point_status

BracketStatus = Literal["running", "converged", "max_points", "error"]
SIGNIFICANT = 4  # learning rates are rounded to 4 significant digits: readable params and axis labels
SLACK = 1e-3  # "within the tolerance" allows for that rounding (±0.05 % a rate)


def round_lr(lr: float) -> float:
    return float(f"{lr:.{SIGNIFICANT}g}")


def within(stable: float, diverged: float, tolerance: float) -> bool:
    """Are the two rates within a factor ``tolerance`` (up to their rounding)?"""
    return diverged / stable <= tolerance * (1 + SLACK)


@dataclass(frozen=True)
class Plan:
    status: BracketStatus
    new_lrs: tuple[float, ...] = ()  # rates to start now (besides pending points' missing seeds)
    waiting: tuple[float, ...] = ()  # pending rates below D whose results decide the next step


@dataclass
class Bracket:
    """The search state of one (scheme, init scale): the rates tried and each seed's outcome."""

    low: float
    high: float
    tolerance: float
    max_points: int
    seeds: tuple[int, ...]
    outcomes: dict[float, dict[int, str | None]] = field(default_factory=dict)  # lr -> seed -> outcome

    def __post_init__(self) -> None:
        if not (0 < self.low < self.high):
            raise ValueError(f"search.boundary_lr: need 0 < low < high, got [{self.low}, {self.high}]")
        if self.tolerance <= 1:
            raise ValueError(f"search.boundary_tolerance: must be > 1, got {self.tolerance}")
        if self.max_points < 2:
            raise ValueError(f"search.boundary_max_points: must be >= 2, got {self.max_points}")
        self.low, self.high = round_lr(self.low), round_lr(self.high)
        self.seeds = tuple(self.seeds)

    # --- what the outcomes say ---------------------------------------------------------------------

    def status_of(self, lr: float) -> PointStatus:
        seeds = self.outcomes.get(lr, {})
        return point_status(seeds.get(s) for s in self.seeds)

    def statuses(self) -> dict[float, PointStatus]:
        return {lr: self.status_of(lr) for lr in sorted(self.outcomes)}

    def bracket(self) -> tuple[float | None, float | None]:
        return bracket_of(self.statuses())

    @property
    def widen(self) -> float:
        return self.high / self.low

    def plan(self) -> Plan:
        """What to do next, from the outcomes so far."""
        st = self.statuses()
        s, d = bracket_of(st)
        below = [lr for lr in st if d is None or lr < d]
        if any(st[lr] == "errored" for lr in below):
            return Plan("error")
        waiting = tuple(lr for lr in below if st[lr] == "pending")
        unstarted = tuple(lr for lr in (self.low, self.high) if lr not in self.outcomes and (d is None or lr < d))
        if unstarted or waiting:  # the starting bracket's two ends always run, side by side
            return Plan("running", unstarted, waiting)
        if s is not None and d is not None:
            if within(s, d, self.tolerance):
                return Plan("converged")
            nxt = round_lr(math.sqrt(s * d))
            if not s < nxt < d:  # as close as 4 significant digits allow (a tolerance below ~1.001)
                return Plan("converged")
        elif d is None:  # everything tried was stable: widen upwards
            nxt = round_lr(max(st) * self.widen)
        else:  # nothing stable below the first divergence: widen downwards
            nxt = round_lr(d / self.widen)
        if len(self.outcomes) >= self.max_points:
            return Plan("max_points")
        return Plan("running", (nxt,))

    @property
    def status(self) -> BracketStatus:
        return self.plan().status

    @property
    def done(self) -> bool:
        return self.status != "running"

    def requests(self) -> list[tuple[float, int]]:
        """Every (lr, seed) that should start now and has not been started."""
        plan = self.plan()
        out = []
        for lr in (*plan.waiting, *plan.new_lrs):
            started = self.outcomes.get(lr, {})
            out.extend((lr, s) for s in self.seeds if s not in started)
        return out

    # --- recording ------------------------------------------------------------------------------------

    def start(self, lr: float, seed: int) -> None:
        self.outcomes.setdefault(lr, {})[seed] = None

    def record(self, lr: float, seed: int, outcome: str) -> None:
        """A seed's outcome; a later outcome for the same (lr, seed) replaces the earlier one."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {outcome!r}")
        self.outcomes.setdefault(lr, {})[seed] = outcome

    @property
    def trials(self) -> int:
        return sum(len(v) for v in self.outcomes.values())

    def summary(self) -> dict[str, Any]:
        s, d = self.bracket()
        return {"stable_lr": s, "diverged_lr": d, "status": self.status, "points": len(self.outcomes),
                "trials": self.trials}

    # --- persistence (for --resume) ------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return {"low": self.low, "high": self.high, "tolerance": self.tolerance, "max_points": self.max_points,
                "seeds": list(self.seeds),
                "outcomes": [[lr, [[s, o] for s, o in seeds.items()]] for lr, seeds in self.outcomes.items()]}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Bracket:
        b = cls(state["low"], state["high"], state["tolerance"], state["max_points"], tuple(state["seeds"]))
        b.outcomes = {float(lr): {int(s): o for s, o in seeds} for lr, seeds in state["outcomes"]}
        return b


def expected_points(low: float, high: float, tolerance: float) -> int:
    """Rates a bracket tries when the boundary lies inside ``[low, high]``: the two ends plus the bisections."""
    return 2 + max(0, math.ceil(math.log2(math.log(high / low) / math.log(tolerance))))


def tolerance_grid(low: float, high: float, tolerance: float) -> list[float]:
    """The coarsest log grid from ``low`` to ``high`` whose neighbours are within ``tolerance``: evenly
    spaced in log lr, the fewest rates that give a grid the boundary search's precision."""
    n = max(1, math.ceil(math.log(high / low) / math.log(tolerance) - 1e-9))
    step = (high / low) ** (1 / n)
    return [round_lr(low * step**k) for k in range(n + 1)]
