"""The report read at the size it is shown: markdown rendered in the HTML, each number of a claim said once,
stability maps whose partly failed cells are greyed and whose boundary lines sit on cell edges, never on a
cell's number."""

from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from analysis import plots
from analysis.claims import claim_generalization, claim_stability
from analysis.render import _inline
from analysis.stability_map import Cell
from analysis.summarize import summarize_scheme
from tests.analysis.synth import study, trial
from tests.analysis.test_claims import summaries


def test_html_renders_the_markdown_the_texts_carry():
    assert _inline("A trial *failed* when `diverged=1` or **stalled**") == \
        "A trial <em>failed</em> when <code>diverged=1</code> or <strong>stalled</strong>"
    assert _inline("2*3*4 and `a*b*c` stay as they are") == "2*3*4 and <code>a*b*c</code> stay as they are"
    assert _inline("the [runs table](#/experiments/1/runs?a=1&b=2) <x>") == \
        'the <a href="#/experiments/1/runs?a=1&amp;b=2">runs table</a> &lt;x&gt;'
    assert _inline("a lone ` tick") == "a lone ` tick"


def _numbers(text: str) -> list[str]:
    return re.findall(r"[+-]?\d+\.\d+", text)


def test_each_number_of_a_claim_is_said_once():
    c = claim_generalization(summaries(bn_test=0.76, wn_test=0.71, seeds=(0, 1, 2, 3), spread=0.005))
    said = _numbers(c.reason)
    assert "-5.0" in said and said.count("-5.0") == 1, c.reason  # the test difference, not again in its interval
    same = claim_generalization(summaries(bn_train=1.0, wn_train=1.0, seeds=(0, 1)))  # train: no spread at all
    assert "train +0.0 pts (the same on every seed)" in same.reason, same.reason
    c2 = claim_stability(summaries(seeds=(0, 1, 2)))
    diff = re.search(r"difference ([+-]\d+\.\d) pts \[[^]]+\] \(95% CI\)", c2.reason)
    assert diff and c2.reason.count(diff.group(1)) == 1, c2.reason


@pytest.mark.parametrize("failed, n, veiled", [(0, 3, False), (1, 3, True), (2, 3, True), (3, 3, False)])
def test_a_partly_failed_cell_is_greyed_the_more_the_more_failed(failed, n, veiled):
    cell = Cell(1.0, None, n, 0.9 if failed < n else None, {"diverged": failed})
    assert (plots._veil(cell) > 0) == veiled
    if veiled:
        assert plots._veil(Cell(1.0, None, 3, 0.9, {"diverged": 2})) > plots._veil(Cell(1.0, None, 3, 0.9,
                                                                                          {"diverged": 1}))


def test_boundary_lines_sit_on_cell_edges_not_on_numbers(tmp_path):
    lrs = (0.01, 0.1, 1.0, 10.0)
    ts = [trial("wn", lr, s, diverged=True, step=3) if lr >= 1.0 and (lr > 1.0 or s == 0)
          else trial("wn", lr, s, train=0.9, test=0.8) for lr in lrs for s in (0, 1, 2)]
    s = summarize_scheme(study({"wn": ts}).schemes[0], 10)
    xe = plots._log_edges(list(lrs))
    moved = plots._on_edges({"stable_lr": 0.1, "diverged_lr": 1.0}, xe)
    # each line inside its own cell, next to the edge the two cells share: far from either centre
    assert 0.1 < moved["stable_lr"] < xe[2] < moved["diverged_lr"] < 1.0
    assert moved["stable_lr"] > 0.9 * xe[2] and moved["diverged_lr"] < 1.1 * xe[2]
    png = plots.plot_stability_map(s, tmp_path / "map.png", plots.accuracy_range({"wn": s}))
    with Image.open(png) as im:  # drawn, and the grey of a failed cell is on it
        rgb = np.asarray(im.convert("RGB")).astype(float) / 255
    assert np.abs(rgb - np.asarray(to_rgb(plots.NO_STABLE))).sum(axis=2).min() < 0.05
