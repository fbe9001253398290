"""The boundary bracket of a scheme's trials (analysis/boundary.py) and its drawing on a stability map; the
boundary, the stability map and report.json agree because all follow trainers/outcome.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import to_rgb

from analysis.boundary import DIVERGED_COLOR, STABLE_COLOR, draw_boundary, groups_boundary, scheme_boundary
from analysis.plots import _log_edges, new_figure
from analysis.report import render_report, summarize_all, write_report
from analysis.summarize import group_configs, stability_map, summarize_scheme
from tests.analysis.synth import study, trial, write_mlflow


def _wn(lr: float, seed: int, scale: float, diverged: bool):
    return trial("wn", lr, seed, init_scale=scale, train=0.5, test=0.4, diverged=diverged, step=3)


def _wn_trials():
    # init 1: diverges above 0.3 (seed 1 already at 0.3); init 3: above 0.03, and stable again at 1.0
    out = []
    for lr in (0.03, 0.1, 0.3, 1.0):
        out += [_wn(lr, 0, 1.0, lr > 0.3), _wn(lr, 1, 1.0, lr >= 0.3)]
        out += [_wn(lr, s, 3.0, 0.03 < lr < 1.0) for s in (0, 1)]
    return out


def test_bracket_per_init_scale_needs_every_seed_stable_and_ignores_stable_rates_above():
    b = scheme_boundary(_wn_trials())
    assert b == [
        {"init_scale": 1.0, "stable_lr": 0.1, "diverged_lr": 0.3, "trials": 8},
        {"init_scale": 3.0, "stable_lr": 0.03, "diverged_lr": 0.1, "trials": 8},
    ]


def test_open_brackets_and_a_scheme_without_init_scale():
    bn = [trial("bn", lr, 0, train=0.6, test=0.5) for lr in (0.1, 1.0)]
    assert scheme_boundary(bn) == [{"init_scale": None, "stable_lr": 1.0, "diverged_lr": None, "trials": 2}]
    bad = [trial("bn", lr, 0, diverged=True, step=2) for lr in (0.1, 1.0)]
    assert scheme_boundary(bad) == [{"init_scale": None, "stable_lr": None, "diverged_lr": 0.1, "trials": 2}]
    assert scheme_boundary([]) == []


def test_an_unfinished_trial_keeps_its_rate_from_counting_as_stable():
    ts = [trial("bn", 0.1, 0, train=0.6, test=0.5), trial("bn", 1.0, 0, diverged=True, step=2),
          trial("bn", 0.3, 0, train=0.6, test=0.5)]
    killed = dataclasses.replace(trial("bn", 0.3, 1, train=0.6, test=0.5), status="KILLED",
                                 metrics={"step_time_mean_s": 0.03})  # no final accuracy: not finished
    assert scheme_boundary(ts)[0]["stable_lr"] == 0.3
    assert scheme_boundary([*ts, killed])[0] == {"init_scale": None, "stable_lr": 0.1, "diverged_lr": 1.0,
                                                 "trials": 4}
    # a divergence decides a rate even while another of its seeds is unfinished
    assert scheme_boundary([*ts, killed, trial("bn", 0.3, 2, diverged=True, step=4)])[0]["diverged_lr"] == 0.3


def test_groups_boundary_matches_the_trials_when_every_trial_finished():
    ts = _wn_trials()
    assert groups_boundary(group_configs(ts)) == scheme_boundary(ts)


def _map_axes(trials):
    """Axes laid out like analysis.plots.plot_stability_map: log lr edges, one row per init scale."""
    smap = stability_map(trials)
    fig, axes = new_figure(6, 4)
    ax = axes[0, 0]
    grid = np.zeros((len(smap.init_scales), len(smap.lrs)))
    ax.pcolormesh(_log_edges(smap.lrs), np.arange(len(smap.init_scales) + 1), grid)
    ax.set_xscale("log")
    return fig, ax, smap


def test_draw_boundary_puts_each_bracket_in_its_row_between_its_rates():
    ts = _wn_trials()
    fig, ax, smap = _map_axes(ts)
    before = len(ax.collections)
    boundary = scheme_boundary(ts) + [{"init_scale": 9.0, "stable_lr": 1.0, "diverged_lr": 2.0, "trials": 2}]
    handles = draw_boundary(ax, boundary, smap.init_scales)
    assert [h.get_label() for h in handles] == ["boundary bracket", "boundary: stable lr",
                                                "boundary: first failed lr"]
    bands = [c for c in ax.collections[before:] if isinstance(c, PolyCollection)]
    lines = [c for c in ax.collections[before:] if isinstance(c, LineCollection)]
    assert len(bands) == 2 and len(lines) == 4  # init scale 9 is not a row of this map: skipped
    for r, b in enumerate(boundary[:2]):
        verts = bands[r].get_paths()[0].vertices
        assert np.isclose(verts[:, 0].min(), b["stable_lr"]) and np.isclose(verts[:, 0].max(), b["diverged_lr"])
        assert r < verts[:, 1].min() and verts[:, 1].max() < r + 1
    colors = [tuple(c.get_colors()[0][:3]) for c in lines]
    assert colors.count(to_rgb(STABLE_COLOR)) == 2 and colors.count(to_rgb(DIVERGED_COLOR)) == 2
    fig.canvas.draw()  # renders


def test_draw_boundary_widens_the_axis_for_an_edge_outside_and_draws_nothing_without_brackets():
    ts = _wn_trials()
    fig, ax, smap = _map_axes(ts)
    lo, hi = ax.get_xlim()
    handles = draw_boundary(ax, [{"init_scale": 1.0, "stable_lr": hi * 3, "diverged_lr": None, "trials": 1}],
                            smap.init_scales)
    assert handles and ax.get_xlim()[1] > hi * 3 and ax.get_xlim()[0] == pytest.approx(lo)
    assert draw_boundary(ax, [{"init_scale": 1.0, "stable_lr": None, "diverged_lr": None, "trials": 0}],
                         smap.init_scales) == []


# --------------------------------------------------------------------------------------------------
# One rule (trainers/outcome.py): a collapse fails its rate in the map and in the boundary alike


def _collapsing(scheme: str, scale: float | None, lrs, collapse_lr: float, diverge_lr: float):
    """Two seeds a rate: stable up to ``collapse_lr``, where seed 1 collapses (seed 0 stays stable: the
    highest "stable-looking" rate), both diverged at ``diverge_lr``."""
    out = []
    for lr in lrs:
        for seed in (0, 1):
            if lr >= diverge_lr:
                out.append(trial(scheme, lr, seed, init_scale=scale, diverged=True, step=5))
            else:
                out.append(trial(scheme, lr, seed, init_scale=scale, train=0.6, test=0.5,
                                 collapsed=seed == 1 and lr == collapse_lr))
    return out


def _bn_collapsing_at_10():
    # the measured disagreement: bn's largest stable lr 3.16 in the map, 10 in the boundary
    return _collapsing("bn", None, (0.1, 0.316, 1.0, 3.16, 10.0, 31.6), 10.0, 31.6)


def test_a_collapse_bounds_the_bracket_where_the_map_stops_being_stable():
    ts = _bn_collapsing_at_10()
    assert stability_map(ts).largest_stable_lr == [{"init_scale": None, "lr": 3.16}]
    expected = [{"init_scale": None, "stable_lr": 3.16, "diverged_lr": 10.0, "trials": 12}]
    assert scheme_boundary(ts) == expected
    assert groups_boundary(group_configs(ts)) == expected
    s = summarize_scheme(study({"bn": ts}).schemes[0])
    assert groups_boundary(s.groups) == expected


def test_map_scheme_boundary_and_groups_boundary_agree_per_init_scale_with_collapses():
    ts = [*_collapsing("wn", 1.0, (0.03, 0.1, 0.3, 1.0), 0.3, 1.0),
          *_collapsing("wn", 3.0, (0.03, 0.1, 0.3, 1.0), 0.1, 0.3)]
    smap = stability_map(ts)
    from_map = {e["init_scale"]: e["lr"] for e in smap.largest_stable_lr}
    assert from_map == {1.0: 0.1, 3.0: 0.03}
    for boundary in (scheme_boundary(ts), groups_boundary(group_configs(ts))):
        assert {b["init_scale"]: b["stable_lr"] for b in boundary} == from_map
        assert {b["init_scale"]: b["diverged_lr"] for b in boundary} == {1.0: 0.3, 3.0: 0.1}  # the collapses


def test_an_errored_trial_enters_no_rate():
    ok = [trial("bn", 0.1, 0, train=0.6, test=0.5), trial("bn", 1.0, 0, diverged=True, step=2)]
    # it raised (run FAILED): neither its final accuracy nor a divergence flag says anything about stability
    errored = [dataclasses.replace(trial("bn", 0.3, 0, train=0.6, test=0.5), status="FAILED"),
               dataclasses.replace(trial("bn", 0.05, 0, diverged=True, step=2), status="FAILED")]
    assert {t.outcome for t in errored} == {"errored"} and not any(t.finished or t.failed for t in errored)
    expected = [{"init_scale": None, "stable_lr": 0.1, "diverged_lr": 1.0, "trials": 4}]
    assert scheme_boundary([*ok, *errored]) == expected
    assert groups_boundary(group_configs([*ok, *errored])) == [dict(expected[0], trials=2)]  # finished only
    assert stability_map([*ok, *errored]).largest_stable_lr == [{"init_scale": None, "lr": 0.1}]


def test_report_json_stability_map_and_boundary_agree(tmp_path):
    ts = _collapsing("wn", 1.0, (0.03, 0.1, 0.3, 1.0), 0.3, 1.0)
    st = study({"bn": _bn_collapsing_at_10(), "wn": ts})
    render_report(st, summarize_all(st), tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    _assert_map_and_boundary_agree(data)
    assert data["schemes"]["bn"]["boundary"] == [{"init_scale": None, "stable_lr": 3.16, "diverged_lr": 10.0,
                                                  "trials": 12}]


def test_report_json_read_back_from_mlflow_agrees_too(store, tmp_path):
    uri, client = store
    write_mlflow(client, "normstudy", study({"bn": _bn_collapsing_at_10()}), collapse_tags=False)
    write_report(uri, tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    _assert_map_and_boundary_agree(data)
    assert data["schemes"]["bn"]["stability_map"]["largest_stable_lr"] == [{"init_scale": None, "lr": 3.16}]
    assert data["schemes"]["bn"]["boundary"][0]["diverged_lr"] == 10.0


def test_the_demo_report_with_collapses_below_divergences_agrees(demo_report):
    _assert_map_and_boundary_agree(json.loads((demo_report / "report.json").read_text()))


def _assert_map_and_boundary_agree(data: dict) -> None:
    """Each scheme is stable up to its first failure here: the map's largest stable lr is the bracket's
    stable edge, per init scale."""
    for name, s in data["schemes"].items():
        from_map = {e["init_scale"]: e["lr"] for e in s["stability_map"]["largest_stable_lr"]}
        assert {b["init_scale"]: b["stable_lr"] for b in s["boundary"]} == from_map, name
