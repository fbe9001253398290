"""The scale section's figure: each scheme's stability boundary against depth, on log–log axes.

Per scheme (its colour): every depth's bracket as a vertical bar from the largest stable rate S (dot) to
the smallest failed rate D (cross); the fitted power law lr* = a·depth^b (:mod:`analysis.power_law`) as a
solid line over the fitted depths, continued dashed to ResNet-50's depth as an extrapolation, with its
95% prediction interval there as an error bar. A straight line on these axes is a power law; its slope is b.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.ticker import NullFormatter

from analysis.plots import new_figure, save_figure, scheme_color
from analysis.scale import TARGET_DEPTH, ScaleResult


def plot_scale(result: ScaleResult, path: Path) -> Path | None:
    """Draw the figure into ``path``; None when no scheme has a bracket with a known depth."""
    rows = [r for r in result.rows if r.depth is not None and (r.stable_lr or r.diverged_lr)]
    if not rows:
        return None
    fig, axes = new_figure(7.5, 4.8)
    ax = axes[0][0]
    schemes = list(dict.fromkeys(r.scheme for r in rows))
    for i, scheme in enumerate(schemes):
        color = scheme_color(scheme)
        offset = 1 + 0.02 * (i - (len(schemes) - 1) / 2)  # side by side at one depth
        for r in (r for r in rows if r.scheme == scheme):
            x = r.depth * offset
            if r.stable_lr and r.diverged_lr:
                ax.plot([x, x], [r.stable_lr, r.diverged_lr], color=color, lw=2, alpha=0.6)
            if r.stable_lr:
                ax.plot(x, r.stable_lr, "o", color=color, ms=5)
            if r.diverged_lr:
                ax.plot(x, r.diverged_lr, "x", color=color, ms=6)
        law = result.laws.get(scheme)
        label = scheme
        if law is not None and law.b is not None:
            lo, hi = min(law.depths), max(law.depths)
            xs = np.geomspace(lo, hi, 20)
            ax.plot(xs, law.a * xs**law.b, color=color, lw=1.5)
            ext = np.geomspace(hi, TARGET_DEPTH, 20)
            ax.plot(ext, law.a * ext**law.b, color=color, lw=1.2, ls="--")
            iv = result.extrapolation.get(scheme)
            if iv is not None:
                ax.errorbar([TARGET_DEPTH * offset], [iv.estimate], yerr=[[iv.estimate - iv.lo], [iv.hi - iv.estimate]],
                            color=color, capsize=3, fmt="s", ms=4)
            ci = law.b_interval
            label += f": b = {law.b:+.2f}" + (f" [{ci.lo:+.2f}, {ci.hi:+.2f}]" if ci else "")
        ax.plot([], [], color=color, lw=2, label=label)
    ax.axvline(TARGET_DEPTH, color="#999999", lw=0.8, ls=":")
    ax.annotate(f"extrapolation to depth {TARGET_DEPTH}\n(ResNet-50)", (TARGET_DEPTH, 0),
                xycoords=("data", "axes fraction"), xytext=(-4, 4), textcoords="offset points", ha="right",
                va="bottom", fontsize=8, color="#555555")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ticks = sorted({r.depth for r in rows} | {TARGET_DEPTH})
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("depth (weight layers)")
    ax.set_ylabel("learning rate")
    ax.set_title("Stability boundary vs depth: • largest stable lr, × first failed lr; fit lr* = a·depth^b")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(True, which="both", alpha=0.25)
    return save_figure(fig, path)
