"""95% intervals for the report's comparisons, and the rule that turns an interval into a verdict.

* A difference of means over seeds (or profiler repeats), from each side's mean, sample std and n:
  Welch's t interval, d ± t_{0.975, ν} · √(s₁²/n₁ + s₂²/n₂), ν by Welch–Satterthwaite. Needs n ≥ 2 on
  both sides (no std otherwise): with fewer seeds there is no interval.
* A mean over seeds (learning-rate sensitivity, analysis/sensitivity.py): Student's t interval,
  x̄ ± t_{0.975, n−1} · s/√n; none below two values.
* A rate (failures of a kind out of finished trials): Wilson's score interval.
* A difference of two rates (diverged-or-collapsed trials out of tried ones): Newcombe's hybrid score
  interval (Newcombe 1998, method 10), built from each rate's Wilson interval; it stays inside [−1, 1]
  and behaves at 0/n and n/n, where the Wald interval collapses to a point.

The verdict rule (docs/report.md): an effect the paper predicts in a direction is *confirmed* when the
whole interval lies on that side of 0, *not confirmed* when the whole interval lies on the other side,
and *inconclusive* when it contains 0 — then the study cannot tell the effect from seed noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy import stats

LEVEL = 0.95
CONFIRMED, NOT_CONFIRMED, INCONCLUSIVE = "confirmed", "not confirmed", "inconclusive"


@dataclass(frozen=True)
class Interval:
    estimate: float
    lo: float
    hi: float
    method: str

    def as_dict(self) -> dict[str, float | str]:
        return {"estimate": self.estimate, "lo": self.lo, "hi": self.hi, "level": LEVEL, "method": self.method}

    def text(self, scale: float = 100.0, unit: str = " pts") -> str:
        return f"{self.estimate * scale:+.1f}{unit} [{self.lo * scale:+.1f}, {self.hi * scale:+.1f}]"


def iv_dict(iv: Interval | None) -> dict[str, float | str] | None:
    """An interval as report.json writes it (None stays None)."""
    return None if iv is None else iv.as_dict()


def welch(mean1: float | None, sd1: float | None, n1: int, mean2: float | None, sd2: float | None,
          n2: int) -> Interval | None:
    """Interval for mean1 − mean2; None without two values and a std on each side."""
    if None in (mean1, mean2, sd1, sd2) or n1 < 2 or n2 < 2:
        return None
    v1, v2 = sd1 * sd1 / n1, sd2 * sd2 / n2
    d = mean1 - mean2
    se = math.sqrt(v1 + v2)
    if se == 0:
        return Interval(d, d, d, "welch-t")
    df = (v1 + v2) ** 2 / ((v1 * v1 / (n1 - 1) if v1 else 0.0) + (v2 * v2 / (n2 - 1) if v2 else 0.0))
    t = float(stats.t.ppf(0.5 + LEVEL / 2, df))
    return Interval(d, d - t * se, d + t * se, "welch-t")


def t_mean(values: list[float]) -> Interval | None:
    """Interval for the mean of ``values`` (seeds); None with fewer than two."""
    n = len(values)
    if n < 2:
        return None
    m = sum(values) / n
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(m, m - half, m + half, "t")


def wilson(k: int, n: int) -> tuple[float, float]:
    z = float(stats.norm.ppf(0.5 + LEVEL / 2))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate_difference(k1: int, n1: int, k2: int, n2: int) -> Interval | None:
    """Newcombe's interval for k1/n1 − k2/n2; None when a side has no trials."""
    if n1 < 1 or n2 < 1:
        return None
    p1, p2 = k1 / n1, k2 / n2
    (l1, u1), (l2, u2) = wilson(k1, n1), wilson(k2, n2)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return Interval(d, lo, hi, "newcombe-wilson")


def direction(iv: Interval | None, expected: int) -> str:
    """``expected`` +1: the paper predicts a positive difference; −1: a negative one."""
    if iv is None:
        return INCONCLUSIVE
    if (iv.lo > 0 and expected > 0) or (iv.hi < 0 and expected < 0):
        return CONFIRMED
    if (iv.lo > 0 and expected < 0) or (iv.hi < 0 and expected > 0):
        return NOT_CONFIRMED
    return INCONCLUSIVE


def combine(verdicts: list[str]) -> str:
    """A claim over several schemes: not confirmed if any scheme contradicts it, confirmed if all confirm it."""
    if not verdicts:
        return INCONCLUSIVE
    if NOT_CONFIRMED in verdicts:
        return NOT_CONFIRMED
    return CONFIRMED if all(v == CONFIRMED for v in verdicts) else INCONCLUSIVE
