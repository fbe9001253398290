"""Where a step's time goes: each scheme's step time and, where profiled, normalization's and convolution's
share of it (claim 3's figure; the profile's provenance is printed beside the verdict)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from matplotlib.patches import Patch

from analysis.plots import new_figure, save_figure, scheme_color
from analysis.summarize import SchemeSummary


def plot_step_time(summaries: Mapping[str, SchemeSummary], path: Path) -> Path | None:
    rows = [s for s in summaries.values() if s.step_time_s.mean is not None]
    if not rows:
        return None
    shared = [s for s in summaries.values() if s.norm_share is not None or s.conv_share is not None]
    fig, axes = new_figure(11.0 if shared else 6.5, 4.3, ncols=2 if shared else 1)
    ax = axes[0, 0]
    for i, s in enumerate(rows):
        st = s.step_time_s
        ax.bar(
            i,
            st.mean * 1e3,
            0.6,
            yerr=(st.std or 0) * 1e3,
            capsize=4,
            color=scheme_color(s.name),
            edgecolor="black",
            linewidth=0.6,
            label=s.name,
        )
        ax.annotate(
            f"{st.mean * 1e3:.1f}",
            (i, (st.mean + (st.std or 0)) * 1e3),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(range(len(rows)), [s.name for s in rows])
    ax.set_ylabel("mean training step time (ms)")
    ax.set_title("Step time per scheme (mean ± std over trials)", fontsize=10)
    ax.margins(y=0.12)
    ax.legend(fontsize=8, title="scheme", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if shared:
        ax = axes[0, 1]
        for i, s in enumerate(shared):
            for dx, v, hatch in ((-0.2, s.norm_share, None), (0.2, s.conv_share, "//")):
                if v is not None:
                    ax.bar(
                        i + dx,
                        v * 100,
                        0.38,
                        color=scheme_color(s.name),
                        hatch=hatch,
                        edgecolor="black",
                        alpha=1.0 if hatch is None else 0.55,
                        linewidth=0.6,
                    )
                    ax.text(i + dx, v * 100, f"{v * 100:.0f}%", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(shared)), [s.name for s in shared])
        ax.set_ylim(0, 100)
        ax.set_ylabel("share of a profiled step (%)")
        ax.set_title(
            "Where a profiled step goes: normalization vs convolution ops\n(schemes with a profile only)",
            fontsize=10,
        )
        ax.legend(
            handles=[
                Patch(facecolor="#999999", edgecolor="black", label="normalization"),
                Patch(facecolor="#999999", alpha=0.55, hatch="//", edgecolor="black", label="convolution"),
            ],
            fontsize=8,
        )
    return save_figure(fig, path)
