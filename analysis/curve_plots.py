"""The report's curve figures: loss and gradient norm of representative trials, and signal propagation
(per-stage activation std over steps). Same conventions as :mod:`analysis.plots`: Agg canvas, one colour
per scheme, log y axes with plain-number ticks."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.ticker import FuncFormatter

from analysis.collect import ACT_STD_PREFIX, TrialData
from analysis.plots import new_figure, save_figure, scheme_color
from analysis.summarize import SchemeSummary

Trials = Mapping[tuple[str, str], TrialData]  # (scheme, trial_id) -> trial


def _finite(values) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return np.where(np.isfinite(a) & (a > 0), a, np.nan)


def _curve_limits(all_values: list[np.ndarray], stable: list[np.ndarray]) -> tuple[float | None, float, bool]:
    """Log-axis limits that keep the stable curves readable: the top is cut at 1000x the stable curves'
    peak when a diverged curve explodes past it (returns lo, hi, whether it was cut)."""
    vals = np.concatenate([v[np.isfinite(v)] for v in all_values]) if all_values else np.array([])
    if not len(vals):
        return None, 1.0, False
    # A diverged curve can reach float64's top (1.7e308): a margin on it would overflow to inf.
    top = float(np.finfo(float).max) / 1e4
    lo, hi = float(vals.min()) * 0.8, min(float(vals.max()) * 1.25, top)
    peaks = [float(np.nanmax(v)) for v in stable if np.isfinite(v).any()]
    if peaks and hi > 1e3 * max(peaks):
        return lo, min(1e3 * max(peaks), top), True
    return lo, hi, False


def plot_curves(summaries: Mapping[str, SchemeSummary], trials: Trials, path: Path) -> Path | None:
    picks = []
    for s in summaries.values():
        for tid, style, kind in (
            (s.representative_stable, "-", "stable"),
            (s.representative_diverged, "--", "diverged"),
        ):
            if tid is not None and (s.name, tid) in trials:
                picks.append((s.name, trials[(s.name, tid)], style, kind))
    if not any("loss" in t.curves or "grad_norm" in t.curves for _, t, _, _ in picks):
        return None
    fig, axes = new_figure(12.5, 4.6, ncols=2)
    for ax, key, ylabel in (
        (axes[0, 0], "loss", "training loss (nats, log scale)"),
        (axes[0, 1], "grad_norm", "global gradient norm (L2, log scale)"),
    ):
        drawn = [
            (name, t, style, kind, _finite(t.curves[key].values))
            for name, t, style, kind in picks
            if key in t.curves and len(t.curves[key])
        ]
        lo, hi, cut = _curve_limits([v for *_, v in drawn], [v for _, t, *_, v in drawn if not t.diverged])
        for name, t, style, kind, values in drawn:
            c = t.curves[key]
            extra = f", diverged at step {t.divergence_step}" if t.diverged and t.divergence_step else ""
            label = f"{name} {kind} (lr {t.lr:g}{extra})" if t.lr is not None else f"{name} {kind}"
            ax.plot(c.steps, np.minimum(values, hi * 10), ls=style, color=scheme_color(name), lw=1.6, label=label)
            # The divergence: at its step, on the curve's last finite value up to it (cut to the axis).
            at = t.divergence_step or c.steps[-1]
            finite = [i for i, st in enumerate(c.steps) if st <= at and np.isfinite(values[i])]
            if t.diverged and finite:
                y = min(values[finite[-1]], hi)
                ax.plot([at], [y], marker="x", color=scheme_color(name), markersize=11, mew=2.5, clip_on=False)
        _log_y(ax)
        if lo is not None:
            ax.set_ylim(lo, hi)
        if cut:
            ax.text(
                0.99,
                0.98,
                "↑ diverged curves run off the top",
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=8,
                color="#555555",
            )
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_title("Training loss", fontsize=10)
    axes[0, 1].set_title("Gradient norm", fontsize=10)
    fig.suptitle(
        "Representative trials per scheme — solid: best configuration; dashed: the diverged trial at the "
        "smallest lr; × marks the divergence",
        fontsize=10,
    )
    axes[0, 1].legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="scheme · trial")
    return save_figure(fig, path)


def _log_y(ax) -> None:
    """Log y axis with plain-number tick labels (0.5, 1, 2 rather than 5×10⁻¹)."""
    ax.set_yscale("log")

    def minor(v: float, _pos) -> str:
        lo, hi = ax.get_ylim()
        span = hi / lo if lo > 0 else math.inf
        shown = "23456789" if span < 3 else "235" if span < 10 else "25"  # fewer labels on wider axes
        return f"{v:g}" if f"{v:.0e}"[0] in shown else ""

    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _stage_key(stage: str) -> tuple[int, int, str]:
    if stage == "stem":
        return (0, 0, stage)
    m = re.fullmatch(r"layer(\d+)", stage)
    return (1, int(m.group(1)), stage) if m else (2, 0, stage)


def plot_signal_propagation(summaries: Mapping[str, SchemeSummary], trials: Trials, path: Path) -> Path | None:
    picks = []
    for s in summaries.values():
        tid = s.representative_stable or s.representative_diverged
        if tid is not None and (s.name, tid) in trials:
            picks.append((s.name, trials[(s.name, tid)]))
    stages = sorted(
        {k[len(ACT_STD_PREFIX) :] for _, t in picks for k in t.curves if k.startswith(ACT_STD_PREFIX)},
        key=_stage_key,
    )
    if not stages:
        return None
    ncols = 2 if len(stages) == 4 else min(3, len(stages))
    nrows = math.ceil(len(stages) / ncols)
    fig, axes = new_figure(4.3 * ncols + 1.8, 3.3 * nrows + 0.6, ncols=ncols, nrows=nrows)
    for k, ax in enumerate(axes.flat):
        if k >= len(stages):
            ax.set_visible(False)
            continue
        for name, t in picks:
            c = t.curves.get(ACT_STD_PREFIX + stages[k])
            if c is not None and len(c):
                kind = "diverged" if t.diverged else "stable"
                ax.plot(
                    c.steps,
                    _finite(c.values),
                    color=scheme_color(name),
                    lw=1.6,
                    marker=".",
                    label=f"{name} ({kind}, lr {t.lr:g})" if t.lr is not None else name,
                )
        _log_y(ax)
        ax.set_title(f"stage {stages[k]}", fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("activation std (log scale)")
        ax.grid(alpha=0.3, which="both")
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), title="scheme")
    fig.suptitle(
        "Signal propagation: per-stage activation std over training, one representative trial per scheme\n"
        "(the paper saw WN's last stage blow up and its first vanish)",
        fontsize=10,
    )
    return save_figure(fig, path)
