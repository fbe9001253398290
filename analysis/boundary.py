"""The stability boundary of a scheme: per init scale, the bracket around its largest stable learning rate.

Outcomes, point statuses and the bracket are the one rule's (:mod:`trainers.outcome`: ``point_status``,
``bracket_of``), the rule ``search.mode: boundary`` bisects with and the stability map counts by.
``diverged_lr`` is the smallest rate at which a trial *failed* — of any kind of
:data:`trainers.outcome.FAILURE_KINDS`: diverged, collapsed or stalled (the key keeps its report.json
name) — and ``stable_lr`` the largest rate below it at which every trial was stable (a stable rate above
``diverged_lr`` — a non-monotone scheme — does not move the boundary); a grid's bracket is exact to its
spacing. A rate where a trial has not finished (killed, running) or errored and none failed
is not counted as stable.

``scheme_boundary`` reads a scheme's trials, ``groups_boundary`` a summary's configuration groups (for
:mod:`analysis.document` and :mod:`analysis.plots`, which hold a ``SchemeSummary``); ``draw_boundary``
draws the brackets on the stability map's axes (x: learning rate, log scale; row ``r``: y in [r, r+1]).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from analysis.collect import TrialData
from analysis.stability_map import levels
from analysis.summarize import ConfigGroup
from trainers.outcome import STABLE, bracket_of, point_status

STABLE_COLOR = "#1a9850"
DIVERGED_COLOR = "#b2182b"
BAND_COLOR = "#f7f7f7"


def _boundary(points: Iterable[tuple[float | None, float, Iterable[str | None]]]) -> list[dict[str, Any]]:
    """``points``: (init scale, lr, each trial's outcome, :func:`trainers.outcome.outcome_of`'s)."""
    pts = list(points)
    row_of = levels(s for s, _, _ in pts)  # the stability map's rows (binned like it when there are many)
    rows: dict[float | None, dict[float, list[str | None]]] = defaultdict(lambda: defaultdict(list))
    for scale, lr, outs in pts:
        rows[row_of[scale]][lr].extend(outs)
    out = []
    for scale in sorted(rows, key=lambda s: (s is not None, s or 0.0)):
        by_lr = rows[scale]
        stable, diverged = bracket_of({lr: point_status(o) for lr, o in by_lr.items()})
        out.append({"init_scale": scale, "stable_lr": stable, "diverged_lr": diverged,
                    "trials": sum(len(o) for o in by_lr.values())})
    return out


def scheme_boundary(trials: Sequence[TrialData]) -> list[dict[str, Any]]:
    """``[{init_scale, stable_lr, diverged_lr, trials}]`` per init scale (``None``: the scheme has none),
    ascending; ``trials`` counts every trial run at that init scale, whatever its outcome."""
    return _boundary((t.init_scale, t.lr, [t.outcome]) for t in trials if t.lr is not None)


def groups_boundary(groups: Sequence[ConfigGroup]) -> list[dict[str, Any]]:
    """:func:`scheme_boundary` from a ``SchemeSummary``'s groups (finished trials only: ``trials`` counts
    those, and a rate whose other trials were killed can count as stable here)."""

    def num(v: Any) -> float | None:
        return float(v) if isinstance(v, int | float) else None

    return _boundary(
        (num(g.config.get("init_scale")), float(g.config["lr"]),
         [kind for kind, n in g.failures.items() for _ in range(n)] + [STABLE] * (g.n - g.n_failed))
        for g in groups
        if num(g.config.get("lr")) is not None
    )


def draw_boundary(ax, boundary: Sequence[dict[str, Any]], rows: Sequence[float | None]) -> list:
    """Draw each bracket in its row of a stability map: a band from ``stable_lr`` (solid green edge) to
    ``diverged_lr``, the first failed rate (dashed red edge); a bracket open on one side gets an arrow that
    way. ``rows`` are the map's init scales, bottom to top (row ``r`` spans y in [r, r+1]); brackets of
    other init scales are skipped. Widens the x limits if a bracket edge lies outside them. Returns legend
    handles (none when nothing was drawn)."""
    drawn = False
    lo, hi = ax.get_xlim()
    for b in boundary:
        if b["init_scale"] not in rows:
            continue
        r = list(rows).index(b["init_scale"])
        y0, y1, ym = r + 0.06, r + 0.94, r + 0.88  # an open bracket's arrow near the top: clear of the numbers
        s, d = b.get("stable_lr"), b.get("diverged_lr")
        if s is not None and d is not None:
            ax.fill_betweenx([y0, y1], s, d, facecolor=BAND_COLOR, alpha=0.45, edgecolor="#333333", hatch="///",
                             linewidth=0, zorder=3)
        if s is not None:
            ax.vlines(s, y0, y1, colors=STABLE_COLOR, linewidth=3, zorder=4)
            if d is None:
                ax.annotate("", (s * 1.6, ym), (s, ym), arrowprops={"arrowstyle": "->", "color": STABLE_COLOR,
                                                                  "lw": 2}, zorder=4)
        if d is not None:
            ax.vlines(d, y0, y1, colors=DIVERGED_COLOR, linewidth=3, linestyles="--", zorder=4)
            if s is None:
                ax.annotate("", (d / 1.6, ym), (d, ym), arrowprops={"arrowstyle": "->", "color": DIVERGED_COLOR,
                                                                  "lw": 2}, zorder=4)
        edges = [x for x in (s, d) if x is not None]
        if edges:
            drawn = True
            lo, hi = min(lo, min(edges) / 1.25), max(hi, max(edges) * 1.25)
    if not drawn:
        return []
    ax.set_xlim(lo, hi)
    return [
        Patch(facecolor=BAND_COLOR, edgecolor="#333333", hatch="///", label="boundary bracket"),
        Line2D([], [], color=STABLE_COLOR, lw=3, label="boundary: stable lr"),
        Line2D([], [], color=DIVERGED_COLOR, lw=3, ls="--", label="boundary: first failed lr"),
    ]
