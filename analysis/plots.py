"""The report's figures (matplotlib, Agg canvas, no pyplot state): one PNG each, titled, axes labelled
with units, learning rate on a log axis, and one fixed colour per scheme across every figure.
Each ``plot_*`` writes its PNG and returns its path, or None when the study has nothing to draw.
The curve figures (loss, gradient norm, signal propagation) are in :mod:`analysis.curve_plots`."""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

from analysis.boundary import draw_boundary, groups_boundary
from analysis.stability_map import Cell, StabilityMap
from analysis.summarize import SchemeSummary
from trainers.outcome import COLLAPSED, DIVERGED, FAILURE_KINDS, STALLED

SCHEME_COLORS = {
    "bn": "#1f77b4",
    "wn": "#ff7f0e",
    "normprop": "#2ca02c",
    "wn_trelu": "#d62728",
    "gn": "#9467bd",
    "ws_gn": "#8c564b",
    "nf": "#e377c2",
    "fixup": "#bcbd22",
    "none": "#7f7f7f",
}
FALLBACK_COLORS = ("#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173")
DPI = 110
NO_STABLE = "#d0d0d0"  # a stability-map cell with no stable trial
DIVERGED_INK = "#b2182b"  # × on a stability-map cell where a seed diverged
COLLAPSED_INK = "#6a3d9a"  # hollow ○ where a seed collapsed (finite, at chance)
STALLED_INK = "#b35806"  # hollow □ where a seed stalled (finite, did not fit)
# The stability map's mark of each failure kind (trainers.outcome.FAILURE_KINDS): marker style and legend
# text; a kind missing here is drawn with FALLBACK_MARK, so a new kind still shows.
FAILURE_MARKS = {
    DIVERGED: ({"marker": "x", "markersize": 16, "mew": 3, "color": DIVERGED_INK}, "a seed diverged (k/n)", "div."),
    COLLAPSED: ({"marker": "o", "markersize": 13, "mew": 2.5, "mfc": "none", "color": COLLAPSED_INK},
                "a seed collapsed: finite, at chance (k/n)", "coll."),
    STALLED: ({"marker": "s", "markersize": 12, "mew": 2.5, "mfc": "none", "color": STALLED_INK},
              "a seed stalled: finite, did not fit (k/n)", "stall."),
}
FALLBACK_MARK = ({"marker": "d", "markersize": 12, "mew": 2, "mfc": "none", "color": "#333333"}, "a seed failed",
                 "fail.")


def failure_mark(kind: str) -> tuple[dict, str, str]:
    """(marker style, legend text, short name) of a failure kind."""
    style, label, short = FAILURE_MARKS.get(kind, FALLBACK_MARK)
    return style, (label if kind in FAILURE_MARKS else f"{label} ({kind})"), short


def scheme_color(name: str) -> str:
    """The scheme's fixed colour; unknown names get a stable colour from a fallback palette."""
    return SCHEME_COLORS.get(name) or FALLBACK_COLORS[zlib.crc32(name.encode()) % len(FALLBACK_COLORS)]


def new_figure(w: float, h: float, ncols: int = 1, nrows: int = 1):
    fig = Figure(figsize=(w, h), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def save_figure(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, facecolor="white")
    return path


def _log_edges(values: list[float]) -> np.ndarray:
    """Cell edges on a log axis: geometric midpoints, the outer cells as wide as their neighbours."""
    logs = np.log10(np.asarray(values, dtype=float))
    half = np.diff(logs) / 2 if len(logs) > 1 else np.array([0.5])
    edges = np.concatenate([[logs[0] - half[0]], logs[:-1] + half, [logs[-1] + half[-1]]])
    return 10**edges


def _scale_label(s: float | None) -> str:
    return "-" if s is None else f"{s:g}"


def accuracy_range(summaries: Mapping[str, SchemeSummary]) -> tuple[float, float]:
    """One colour scale (test top-1, %) for every scheme's stability map."""
    accs = [c.test_top1 * 100 for s in summaries.values() for c in s.stability.cells if c.test_top1 is not None]
    if not accs:
        return 0.0, 100.0
    lo, hi = min(accs), max(accs)
    return (lo - 1, hi + 1) if hi - lo < 1 else (lo, hi)


def _map_grid(smap: StabilityMap) -> np.ndarray:
    """Mean test top-1 (%) of each cell's stable trials, rows = init scales; NaN where none was stable."""
    grid = np.full((len(smap.init_scales), len(smap.lrs)), np.nan)
    for c in smap.cells:
        if c.test_top1 is not None:
            grid[smap.init_scales.index(c.init_scale), smap.lrs.index(c.lr)] = c.test_top1 * 100
    return grid


def _failure_marks(ax, c: Cell, cx: float, cy: float, shift: float, ink: str) -> None:
    """A cell's failure marks, one per kind that occurred (side by side, log-axis offsets, when several),
    and their counts (k/n) under them."""
    marks = [(kind, n) for kind, n in c.failures.items() if n]
    for k, (kind, _) in enumerate(marks):
        mx = cx * shift ** (k - (len(marks) - 1) / 2) if len(marks) > 1 else cx
        ax.plot([mx], [cy if c.test_top1 is None else cy - 0.12], ls="", **failure_mark(kind)[0])
    if len(marks) == 1:
        kind, n = marks[0]
        ax.text(cx, cy - 0.36, f"{n}/{c.n} {kind}", ha="center", va="center", fontsize=7.5, color=ink)
    elif marks:
        parts = [f"{n}/{c.n} {failure_mark(kind)[2]}" for kind, n in marks]
        # two a line: three kinds on one line run into the cell's edges (and the boundary drawn there)
        text = "\n".join(", ".join(parts[i:i + 2]) for i in range(0, len(parts), 2))
        ax.text(cx, cy - 0.36, text, ha="center", va="center", fontsize=7.5, color=ink)


def _veil(c: Cell) -> float:
    """The grey veil's opacity over a cell where some seeds failed: the more failed, the nearer the grey of
    "no stable trial" (0: none failed; a fully failed cell is that grey already)."""
    return 0.25 + 0.6 * c.n_failed / c.n if 0 < c.n_failed < c.n else 0.0


def _veil_partial(ax, smap: StabilityMap, xe: np.ndarray) -> None:
    """Grey the cells where some but not all seeds failed, so that they never read as fully stable."""
    for c in smap.cells:
        if _veil(c) and c.test_top1 is not None:
            i, r = smap.lrs.index(c.lr), smap.init_scales.index(c.init_scale)
            ax.add_patch(Rectangle((xe[i], r), xe[i + 1] - xe[i], 1, facecolor=NO_STABLE, alpha=_veil(c),
                                   edgecolor="none", zorder=2))


def _on_edges(b: dict, xe: np.ndarray) -> dict:
    """A boundary bracket drawn on its cells' edges — the stable lr at its cell's right edge, the first failed
    lr at its cell's left edge, just inside each — so no line or hatching crosses a cell's number."""
    def edge(lr: float, right: bool) -> float:
        i = int(np.clip(np.searchsorted(xe, lr) - 1, 0, len(xe) - 2))
        inset = (xe[i + 1] / xe[i]) ** 0.03
        return float(xe[i + 1] / inset if right else xe[i] * inset)

    return b | {k: edge(b[k], k == "stable_lr") for k in ("stable_lr", "diverged_lr") if b.get(k) is not None}


def _label_cells(ax, smap: StabilityMap, xe: np.ndarray, cmap, norm: Normalize) -> None:
    """Each cell's accuracy (white on dark colours) and failure markers."""
    lrs, rows = smap.lrs, smap.init_scales
    for c in smap.cells:
        i, r = lrs.index(c.lr), rows.index(c.init_scale)
        cx, cy = math.sqrt(xe[i] * xe[i + 1]), r + 0.5
        rgb = np.asarray(cmap(norm(c.test_top1 * 100))[:3]) if c.test_top1 is not None else np.ones(3)
        dark = sum(rgb + _veil(c) * (np.asarray(to_rgb(NO_STABLE)) - rgb)) < 1.5  # the colour as shown, under its veil
        ink = "white" if dark else "black"
        if c.test_top1 is not None:
            ax.text(cx, cy + (0.18 if c.n_failed else 0), f"{c.test_top1 * 100:.1f}%", ha="center", va="center",
                    fontsize=9, color=ink, fontweight="bold")
        _failure_marks(ax, c, cx, cy, (xe[i + 1] / xe[i]) ** 0.17, ink)
    for entry in smap.largest_stable_lr:  # the pink outline: the largest stable lr of each row
        if entry["lr"] is not None:
            i, r = lrs.index(entry["lr"]), rows.index(entry["init_scale"])
            ax.add_patch(Rectangle((xe[i], r), xe[i + 1] - xe[i], 1, fill=False, edgecolor="#e7298a", lw=3.5))


def _map_title(s: SchemeSummary) -> str:
    smap = s.stability

    def lr_text(e) -> str:
        return "none" if e["lr"] is None else f"{e['lr']:g}"

    if smap.init_scales == [None]:
        stable = f"largest stable lr: {lr_text(smap.largest_stable_lr[0])}"
    else:
        stable = "largest stable lr per init scale: " + ", ".join(
            f"{_scale_label(e['init_scale'])} → {lr_text(e)}" for e in smap.largest_stable_lr
        )
    return f"{s.name}: final test top-1 per learning rate × init scale\n{stable}"


def _map_legend(fig, boundary_handles: list, kinds: list[str]) -> None:
    """The legend: a mark for each failure kind of this map (``kinds``), then the outlines and boundary."""
    marks = []
    for kind in kinds:
        style, label, _ = failure_mark(kind)
        marks.append(Line2D([], [], ls="", **(style | {"markersize": style["markersize"] * 0.7}), label=label))
    handles = [
        *marks,
        Patch(facecolor="none", edgecolor="#e7298a", lw=2.5, label="largest stable lr"),
        Patch(facecolor=NO_STABLE, label="no stable trial"),
        Patch(facecolor=np.asarray(to_rgb(NO_STABLE)) * 0.6 + np.asarray(colormaps["viridis"](0.7)[:3]) * 0.4,
              label="greyed: some seeds failed (more, greyer)"),
        *boundary_handles,
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=8, frameon=False)


def plot_stability_map(s: SchemeSummary, path: Path, vrange: tuple[float, float]) -> Path | None:
    """Test top-1 per learning rate × init scale: failure markers, each row's largest stable lr and the
    boundary bracket (:mod:`analysis.boundary`)."""
    smap = s.stability
    if not smap.cells:
        return None
    lrs, rows = smap.lrs, smap.init_scales
    fig, axes = new_figure(max(6.5, 1.15 * len(lrs) + 2.5), 1.0 * len(rows) + 2.6)
    ax = axes[0, 0]
    cmap = colormaps["viridis"].with_extremes(bad=NO_STABLE)
    norm = Normalize(*vrange)
    xe = _log_edges(lrs)
    mesh = ax.pcolormesh(xe, np.arange(len(rows) + 1), np.ma.masked_invalid(_map_grid(smap)), cmap=cmap, norm=norm,
                         edgecolors="white", linewidth=1.5)
    ax.set_xscale("log")
    _veil_partial(ax, smap, xe)
    _label_cells(ax, smap, xe, cmap, norm)
    boundary_handles = draw_boundary(ax, [_on_edges(b, xe) for b in groups_boundary(s.groups)], rows)
    ax.set_xticks(lrs, [f"{x:g}" for x in lrs])
    ax.set_xticks([], minor=True)
    ax.set_yticks(np.arange(len(rows)) + 0.5, [_scale_label(r) for r in rows])
    ax.set_xlabel("learning rate (log scale)" + (", binned" if smap.binned else ""))
    ax.set_ylabel("init scale" if rows != [None] else "init scale (none for this scheme)")
    ax.set_title(_map_title(s), fontsize=10, color=scheme_color(s.name), fontweight="bold")
    _map_legend(fig, boundary_handles, list(FAILURE_KINDS))
    fig.colorbar(mesh, ax=ax, label="final test top-1 (%)", pad=0.02)
    return save_figure(fig, path)


def plot_accuracy(summaries: Mapping[str, SchemeSummary], path: Path) -> Path | None:
    rows = [s for s in summaries.values() if s.best is not None and s.best.train_top1.mean is not None]
    if not rows:
        return None
    fig, axes = new_figure(max(6.0, 1.3 * len(rows) + 3), 4.6)
    ax = axes[0, 0]
    x = np.arange(len(rows))
    for i, s in enumerate(rows):
        b, color = s.best, scheme_color(s.name)
        for dx, st, hatch, alpha in ((-0.2, b.train_top1, None, 1.0), (0.2, b.test_top1, "//", 0.55)):
            ax.bar(
                i + dx,
                st.mean * 100,
                0.38,
                yerr=(st.std or 0) * 100,
                capsize=4,
                color=color,
                alpha=alpha,
                hatch=hatch,
                edgecolor="black",
                linewidth=0.6,
            )
            ax.text(
                i + dx,
                (st.mean + (st.std or 0)) * 100 + 1,
                f"{st.mean * 100:.1f}",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        top = max(b.train_top1.mean + (b.train_top1.std or 0), b.test_top1.mean + (b.test_top1.std or 0)) * 100
        ax.text(
            i,
            top + 6,
            f"gap {b.gap.mean * 100:+.1f} pts" if b.gap.mean is not None else "",
            ha="center",
            fontsize=8.5,
            fontweight="bold",
        )
    ax.set_xticks(x, [s.name for s in rows])
    for label, s in zip(ax.get_xticklabels(), rows, strict=True):
        label.set_color(scheme_color(s.name))
        label.set_fontweight("bold")
    ax.set_ylim(0, 115)
    ax.set_ylabel("final top-1 accuracy (%)")
    ax.set_title(
        "Best configuration per scheme: train vs test top-1 (mean ± std over seeds)\n"
        "gap = train − test, in percentage points",
        fontsize=10,
    )
    kinds = ax.legend(
        handles=[
            Patch(facecolor="#999999", edgecolor="black", label="train"),
            Patch(facecolor="#999999", alpha=0.55, hatch="//", edgecolor="black", label="test"),
        ],
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        fontsize=8,
        title="bar",
    )
    ax.add_artist(kinds)
    ax.legend(
        handles=[Patch(color=scheme_color(s.name), label=s.name) for s in rows],
        loc="upper left",
        bbox_to_anchor=(1.01, 0.6),
        fontsize=8,
        title="scheme",
    )
    return save_figure(fig, path)


def _lr_ticks(ax, lrs: list[float]) -> None:
    """Log lr axis; the lrs tried as plain-number ticks when there are few."""
    ax.set_xscale("log")
    if len(lrs) <= 12:
        ax.set_xticks(lrs, [f"{x:g}" for x in lrs])
        ax.set_xticks([], minor=True)


def plot_divergence_vs_lr(summaries: Mapping[str, SchemeSummary], path: Path) -> Path | None:
    """Share of finished trials that failed (any kind of trainers.outcome.FAILURE_KINDS) per learning rate;
    dotted, for a scheme where other kinds occurred, the share that diverged alone."""
    rows = [s for s in summaries.values() if s.failures_by_lr]
    if not rows:
        return None
    fig, axes = new_figure(7.5, 4.4)
    ax = axes[0, 0]
    any_other = False
    for k, s in enumerate(rows):
        lrs = [r["lr"] for r in s.failures_by_lr]
        # Offset overlapping lines a little so every scheme stays visible where rates coincide.
        nudge = (k - (len(rows) - 1) / 2) * 0.6
        kinds = ", ".join(f"{s.failures[kind].n} {kind}" for kind in FAILURE_KINDS if s.failures[kind].n)
        ax.plot(lrs, [r["failure_rate"] * 100 + nudge for r in s.failures_by_lr], marker="o",
                color=scheme_color(s.name), lw=2, label=f"{s.name} ({s.n_finished} trials: {kinds or 'none failed'})")
        if s.n_failed > s.failures[DIVERGED].n:  # other kinds occurred: the divergences alone, dotted
            any_other = True
            ax.plot(lrs, [r["rates"][DIVERGED] * 100 + nudge for r in s.failures_by_lr], marker="o", mfc="none",
                    ls=":", color=scheme_color(s.name), lw=2, label=f"{s.name}: diverged only")
    _lr_ticks(ax, sorted({r["lr"] for s in rows for r in s.failures_by_lr}))
    ax.set_ylim(-5, 105)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("trials failed, any kind (%)" + (" / diverged (%, dotted)" if any_other else ""))
    ax.set_title(
        "Failure rate vs learning rate (all init scales and seeds; " + ", ".join(FAILURE_KINDS) + ")\n"
        + ("dotted: diverged only\n" if any_other else "")
        + "(lines nudged apart by < 2 pts where they overlap)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(title="scheme", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


LINESTYLES = ("-", "--", ":", "-.")


def plot_lr_sensitivity(summaries: Mapping[str, SchemeSummary], path: Path) -> Path | None:
    """Left: min(final, initial) train loss per lr, mean over seeds with their range, one line per scheme
    and init scale. Right: each scheme's learning-rate sensitivity with its 95% interval over seeds."""
    rows = [s for s in summaries.values() if s.sensitivity is not None and s.sensitivity.mean is not None]
    if not rows:
        return None
    fig, axes = new_figure(12.5, 4.6, ncols=2)
    ax, bars = axes[0, 0], axes[0, 1]
    lrs: set[float] = set()
    for s in rows:
        for j, w in enumerate(w for w in s.sensitivity.sweeps if w.loss_by_lr):
            x = [r["lr"] for r in w.loss_by_lr]
            lrs.update(x)
            color = scheme_color(s.name)
            scale = "" if w.init_scale is None else f", init {w.init_scale:g}"
            ax.plot(x, [r["mean"] for r in w.loss_by_lr], marker="o", color=color, ls=LINESTYLES[j % 4], lw=2,
                    label=f"{s.name}{scale}")
            ax.fill_between(x, [r["min"] for r in w.loss_by_lr], [r["max"] for r in w.loss_by_lr], color=color,
                            alpha=0.12, lw=0)
    _lr_ticks(ax, sorted(lrs))
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("min(final, initial) train loss (nats)")
    ax.set_title("Final train loss per learning rate (diverged = initial loss)\nmean over seeds, band: min–max",
                 fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, title="scheme", loc="upper left")
    for i, s in enumerate(rows):
        sens = s.sensitivity
        iv = sens.interval
        err = [[sens.mean - iv.lo], [iv.hi - sens.mean]] if iv else None
        bars.bar(i, sens.mean, 0.6, yerr=err, capsize=5, color=scheme_color(s.name), edgecolor="black", lw=0.6)
        top = iv.hi if iv else sens.mean
        bars.text(i, top, f"{sens.mean:.2f}\n(n={sens.n_seeds})", ha="center", va="bottom", fontsize=8)
    bars.set_xticks(range(len(rows)), [s.name for s in rows])
    bars.set_ylabel("learning-rate sensitivity (nats)")
    bars.margins(y=0.15)
    bars.set_title("Learning-rate sensitivity (Wortsman et al. 2023), 95% t interval over seeds\n"
                   "lower: more of the swept rates reach the best loss", fontsize=10)
    return save_figure(fig, path)
