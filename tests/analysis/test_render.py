"""The written report: valid, non-blank PNGs; a self-contained HTML page with every section; Markdown
and JSON that agree with it."""

from __future__ import annotations

import json
import re
from html import escape

import numpy as np
import pytest
from PIL import Image

from analysis import render
from analysis.plots import FALLBACK_COLORS, SCHEME_COLORS, scheme_color

SECTIONS = {
    "study": "Study",
    "claims": "The paper's claims on this study's data",
    "paper": "Side by side with the paper",
    "schemes": "Per-scheme results",
    "stability": "Stability maps",
    "divergence": "Divergence and collapse",
    "early-warning": "Early warning",
    "curves": "Loss and gradient-norm curves",
    "signal-propagation": "Signal propagation",
    "step-time": "Step time and the cost of normalization",
}
PLOTS = [
    "accuracy.png",
    "divergence_vs_lr.png",
    "curves.png",
    "signal_propagation.png",
    "step_time.png",
    *(f"stability_{s}.png" for s in ("bn", "wn", "normprop", "wn_trelu")),
]


def test_every_png_is_a_valid_non_blank_image(demo_report):
    pngs = sorted(p.name for p in demo_report.glob("*.png"))
    assert pngs == sorted(PLOTS)
    for name in pngs:
        with Image.open(demo_report / name) as im:
            im.verify()
        with Image.open(demo_report / name) as im:
            assert im.width > 300 and im.height > 200
            assert np.asarray(im.convert("L"), dtype=float).std() > 5, name


def test_html_is_self_contained_with_every_section(demo_report):
    html = (demo_report / "report.html").read_text(encoding="utf-8")
    for sid, title in SECTIONS.items():
        assert f'<section id="{sid}"><h2>{escape(title)}</h2>' in html
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) == len(PLOTS)
    assert all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "<script" not in html and "<link" not in html and "@import" not in html
    data = json.loads((demo_report / "report.json").read_text())
    for claim in data["claims"]:  # each claim's verdict, in bold (the verdicts themselves: test_claims.py)
        assert f"<strong>{claim['verdict']}</strong>" in html


def test_markdown_links_the_png_files_and_json_lists_them(demo_report):
    md = (demo_report / "report.md").read_text(encoding="utf-8")
    for title in SECTIONS.values():
        assert f"## {title}" in md
    linked = set(re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", md))
    assert linked == set(PLOTS)
    data = json.loads((demo_report / "report.json").read_text())
    listed = {v for v in data["plots"].values() if isinstance(v, str)} | set(data["plots"]["stability_maps"].values())
    assert listed == set(PLOTS)


def test_json_top_level_schema(demo_report):
    data = json.loads((demo_report / "report.json").read_text())
    assert set(data) == {
        "schema_version",
        "generated_at",
        "study",
        "schemes",
        "claims",
        "paper_comparison",
        "early_warning",
        "plots",
    }
    assert list(data["schemes"]) == ["bn", "wn", "normprop", "wn_trelu"]
    assert [c["id"] for c in data["claims"]] == [1, 2, 3]
    assert all(isinstance(c["verdict"], str) and c["verdict"] for c in data["claims"])
    wn = data["schemes"]["wn"]
    assert len(wn["stability_map"]["cells"]) == 15 and wn["stability_map"]["init_scales"] == [0.5, 1.0, 2.0]
    assert {c["status"] for c in wn["stability_map"]["cells"]} == {"stable", "mixed", "diverged"}
    trelu = data["schemes"]["wn_trelu"]
    assert {c["status"] for c in trelu["stability_map"]["cells"]} == {"stable", "mixed", "diverged", "collapsed"}
    assert (wn["n_collapsed"], trelu["n_collapsed"], data["schemes"]["bn"]["n_collapsed"]) == (1, 2, 0)
    assert trelu["n_failed"] == trelu["n_diverged"] + 2 and trelu["collapse_causes"] == {"dead_relu": 2}
    assert trelu["failure_rate"] == pytest.approx(trelu["n_failed"] / trelu["n_finished"])
    assert [(t["lr"], t["init_scale"], t["layer"]) for t in trelu["collapsed_trials"]] == [(1.0, 0.5, "layer2")] * 2
    # the collapse at (lr 0.3, init 2) makes 0.1 wn's largest stable lr there
    assert {"init_scale": 2.0, "lr": 0.1} in wn["stability_map"]["largest_stable_lr"]
    assert data["schema_version"] == 2
    assert data["early_warning"]["thresholds"]["grad_norm_rel"] == 10.0
    assert data["early_warning"]["recommended"]["all"] in {"grad_norm", "update_ratio_max", "sharpness_lr"}


def test_the_divergence_table_lists_collapses_with_cause_step_and_stage(demo_report):
    md = (demo_report / "report.md").read_text(encoding="utf-8")
    section = md.split("## Divergence and collapse")[1].split("\n## ")[0]
    rows = [r for r in section.splitlines() if r.startswith("| wn") and "| collapsed |" in r]
    assert len(rows) == 3
    assert all("| dead_relu | layer2 |" in r for r in rows)
    assert "| wn | wn_lr0.3_is2.0_s1 | 0.3 | 2 | 1 | collapsed | 30 |" in section
    assert "diverged and 3 collapsed" in section
    schemes = md.split("## Per-scheme results")[1].split("\n## ")[0]
    assert "2/30 (6.7%): dead_relu ×2" in schemes


def test_the_stability_map_marks_collapsed_cells_apart_from_diverged_ones(monkeypatch, tmp_path):
    from analysis import plots
    from analysis.summarize import summarize_scheme
    from tests.analysis.synth import study, trial

    ts = [
        trial("wn", 0.1, 0, train=0.8, test=0.7),
        trial("wn", 0.3, 0, collapsed=True),
        trial("wn", 0.3, 1, train=0.8, test=0.6),
        trial("wn", 1.0, 0, diverged=True, step=3),
        trial("wn", 1.0, 1, collapsed=True),
    ]
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figs.append(fig) or path)
    plots.plot_stability_map(summarize_scheme(study({"wn": ts}).schemes[0]), tmp_path / "m.png", (0.0, 100.0))
    (fig,) = figs
    ax = fig.axes[0]
    marks = [(line.get_marker(), line.get_color()) for line in ax.lines]
    assert marks.count(("o", plots.COLLAPSED_INK)) == 2 and marks.count(("x", plots.DIVERGED_INK)) == 1
    texts = {t.get_text() for t in ax.texts}
    assert "1/2 collapsed" in texts and "1/2 div., 1/2 coll." in texts
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert any("collapsed" in t for t in legend) and any("diverged" in t for t in legend)


def test_scheme_colours_are_fixed_and_unknown_names_get_a_stable_fallback():
    assert set(SCHEME_COLORS) == {"bn", "wn", "normprop", "wn_trelu", "gn", "ws_gn", "nf", "fixup", "none"}
    assert len(set(SCHEME_COLORS.values())) == len(SCHEME_COLORS)
    assert scheme_color("bn") == SCHEME_COLORS["bn"]
    assert scheme_color("my_norm") in FALLBACK_COLORS and scheme_color("my_norm") == scheme_color("my_norm")


def test_html_escapes_text_and_marks_verdicts(tmp_path):
    sec = render.Section("x", "A <b>", ["**bold** & <i>", render.Table(["h"], [["not measured"], ["1 < 2"]])])
    html = render.to_html("T", [sec])
    assert "A &lt;b&gt;" in html and "<strong>bold</strong> &amp; &lt;i&gt;" in html
    assert '<td class="na">not measured</td>' in html and "<td>1 &lt; 2</td>" in html
    md = render.to_markdown("T", [render.Section("x", "X", [render.Table(["a|b"], [["c"]])])])
    assert "| a\\|b |" in md


@pytest.mark.parametrize("section", ["signal-propagation", "step-time"])
def test_sections_say_not_measured_when_the_data_is_missing(tmp_path, section):
    from analysis.report import render_report, summarize_all
    from tests.analysis.synth import study, trial

    st = study({"bn": [trial("bn", 0.1, 0, train=0.8, test=0.7)]})
    if section == "step-time":
        st.schemes[0].trials[0].metrics.pop("step_time_mean_s")
    render_report(st, summarize_all(st), tmp_path)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    body = html.split(f'<section id="{section}">')[1].split("</section>")[0]
    assert "not measured" in body.lower() or "Not measured" in body


def test_curve_axis_is_cut_above_exploding_diverged_curves():
    from analysis.curve_plots import _curve_limits

    stable = np.array([2.0, 1.5, 1.0])
    exploded = np.array([2.0, 1e30, np.nan])
    lo, hi, cut = _curve_limits([stable, exploded], [stable])
    assert cut and lo == pytest.approx(0.8) and hi == pytest.approx(2000.0)
    assert _curve_limits([stable], [stable]) == (pytest.approx(0.8), pytest.approx(2.5), False)
