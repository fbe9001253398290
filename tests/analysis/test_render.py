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
    "sensitivity": "Learning-rate sensitivity",
    "regularization": "Regularization: does tuning it close the gap to BN?",
    "failures": "Outcomes: failures of every kind, and errored trials",
    "early-warning": "Early warning",
    "curves": "Loss and gradient-norm curves",
    "signal-propagation": "Signal propagation",
    "step-time": "Step time and the cost of normalization",
}
PLOTS = [
    "accuracy.png",
    "divergence_vs_lr.png",
    "lr_sensitivity.png",
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
        "lr_sensitivity",
        "plots",
        "regularization",
    }
    assert list(data["schemes"]) == ["bn", "wn", "normprop", "wn_trelu"]
    assert [c["id"] for c in data["claims"]] == [1, 2, 3, 4]
    assert data["claims"][3]["verdict"] == "not measured"  # a grid study has no seed re-runs (claim 4)
    assert set(data["regularization"]["schemes"]) == set(data["schemes"])
    assert all(isinstance(c["verdict"], str) and c["verdict"] for c in data["claims"])
    wn = data["schemes"]["wn"]
    assert len(wn["stability_map"]["cells"]) == 15 and wn["stability_map"]["init_scales"] == [0.5, 1.0, 2.0]
    assert {c["status"] for c in wn["stability_map"]["cells"]} == {"stable", "mixed", "diverged"}
    trelu = data["schemes"]["wn_trelu"]
    assert {c["status"] for c in trelu["stability_map"]["cells"]} == {"stable", "mixed", "diverged", "collapsed"}
    bn = data["schemes"]["bn"]
    assert {c["lr"]: c["status"] for c in bn["stability_map"]["cells"]}[3.0] == "failed"  # diverged + stalled
    n = {name: {k: f["n"] for k, f in s["failures"].items()} for name, s in data["schemes"].items()}
    assert (n["wn"]["collapsed"], n["wn_trelu"]["collapsed"], n["bn"]["collapsed"]) == (1, 2, 0)
    assert (n["bn"]["stalled"], n["bn"]["diverged"]) == (1, 1)
    assert trelu["n_failed"] == sum(n["wn_trelu"].values()) and trelu["failures"]["collapsed"]["causes"] == {
        "dead_relu": 2}
    assert trelu["failure_rate"] == pytest.approx(trelu["n_failed"] / trelu["n_finished"])
    collapsed = [t for t in trelu["failed_trials"] if t["outcome"] == "collapsed"]
    assert [(t["lr"], t["init_scale"], t["layer"]) for t in collapsed] == [(1.0, 0.5, "layer2")] * 2
    # the collapse at (lr 0.3, init 2) makes 0.1 wn's largest stable lr there
    assert {"init_scale": 2.0, "lr": 0.1} in wn["stability_map"]["largest_stable_lr"]
    # errored: counted, listed with its error, in no rate
    normprop = data["schemes"]["normprop"]
    assert normprop["n_errored"] == 1 and normprop["n_finished"] == normprop["n_trials"] - 1
    assert normprop["errored_trials"][0]["error"] == "RuntimeError: CUDA out of memory"
    # lr sensitivity: which losses, per init scale and per scheme; seed 2 of normprop lacks rates
    assert data["lr_sensitivity"]["final_loss"] == "final_train_loss"
    assert data["lr_sensitivity"]["initial_loss"] == "initial_train_loss"
    sens = normprop["lr_sensitivity"]
    assert [w["init_scale"] for w in sens["sweeps"]] == [0.5, 1.0, 2.0] and sens["n_seeds"] == 2
    assert sens["sweeps"][1]["incomplete_seeds"] == [2]
    assert bn["lr_sensitivity"]["mean"] < wn["lr_sensitivity"]["mean"] < normprop["lr_sensitivity"]["mean"]
    # convergence: the demo's best configurations train to ~87%, so none is converged and claim 1 says so
    assert bn["best"]["convergence"]["converged"] is False
    assert data["claims"][0]["reason"].startswith("inconclusive: bn, wn, normprop, wn_trelu not converged")
    assert data["claims"][2]["evidence"]["measured_on"]["bn"]["device"] is None
    assert data["schema_version"] == 3  # the early-warning block's own keys: tests/analysis/test_early_warning.py


def test_the_outcome_section_shows_every_failure_kind_and_errored_trials(demo_report):
    md = (demo_report / "report.md").read_text(encoding="utf-8")
    section = md.split("## Outcomes: failures of every kind, and errored trials")[1].split("\n## ")[0]
    rows = [r for r in section.splitlines() if r.startswith("| wn") and "| collapsed |" in r]
    assert len(rows) == 3
    assert all("| dead_relu | layer2" in r for r in rows)
    assert "| wn | wn_lr0.3_is2.0_s1 | 0.3 | 2 | 1 | collapsed | 30 |" in section
    assert "| bn | bn_lr3_is-_s1 | 3 | - | 1 | stalled |" in section and "final loss 0.90 × min(L0, ln C)" in section
    header = next(r for r in section.splitlines() if r.startswith("| scheme | trials |"))
    assert all(f"{k} / finished [95% CI]" in header for k in ("diverged", "collapsed", "stalled"))
    assert "| bn | 10 | 10 | 8 | 1/10 (10.0% [2%, 40%])" in section  # bn: 1 diverged, 1 stalled of 10
    assert "| normprop | wn_lr0.1_is1.0_s2 |" not in section  # the errored trial has its own table
    assert "| normprop | normprop_lr0.1_is1.0_s2 | 0.1 | 1 | 2 | RuntimeError: CUDA out of memory |" in section
    schemes = md.split("## Per-scheme results")[1].split("\n## ")[0]
    assert "2 collapsed (dead_relu ×2)" in schemes and "**no** (train top-1" in schemes
    assert "**Not converged at this budget: bn, wn, normprop, wn_trelu**" in schemes
    sens = md.split("## Learning-rate sensitivity")[1].split("\n## ")[0]
    assert "| normprop | all init scales (mean per seed) |" in sens and "seeds 2 lack a rate" in sens


def test_the_stability_map_marks_each_failure_kind_apart(monkeypatch, tmp_path):
    from analysis import plots
    from analysis.summarize import summarize_scheme
    from tests.analysis.synth import study, trial

    ts = [
        trial("wn", 0.1, 0, train=0.8, test=0.7),
        trial("wn", 0.3, 0, collapsed=True),
        trial("wn", 0.3, 1, train=0.8, test=0.6),
        trial("wn", 1.0, 0, diverged=True, step=3),
        trial("wn", 1.0, 1, collapsed=True),
        trial("wn", 3.0, 0, stalled=True),
        trial("wn", 3.0, 1, stalled=True),
    ]
    figs = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figs.append(fig) or path)
    plots.plot_stability_map(summarize_scheme(study({"wn": ts}).schemes[0]), tmp_path / "m.png", (0.0, 100.0))
    (fig,) = figs
    ax = fig.axes[0]
    marks = [(line.get_marker(), line.get_color()) for line in ax.lines]
    assert marks.count(("o", plots.COLLAPSED_INK)) == 2 and marks.count(("x", plots.DIVERGED_INK)) == 1
    assert marks.count(("s", plots.STALLED_INK)) == 1  # the stalled cell: its own mark, not × or ○
    texts = {t.get_text() for t in ax.texts}
    assert "1/2 collapsed" in texts and "1/2 div., 1/2 coll." in texts and "2/2 stalled" in texts
    legend = [t.get_text() for lg in fig.legends for t in lg.get_texts()]
    assert all(any(k in t for t in legend) for k in ("diverged", "collapsed", "stalled"))


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
    # a diverged curve at float64's top: the margin must not overflow to inf (matplotlib refuses the limit)
    top = np.array([2.0, 1.6e308])
    lo, hi, _ = _curve_limits([top], [])
    assert np.isfinite(lo) and np.isfinite(hi) and hi > lo
