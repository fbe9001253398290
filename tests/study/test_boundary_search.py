"""The Tune adapter of the boundary search (study/boundary_search.py), driven by hand: no Ray started."""

from __future__ import annotations

import pytest
from ray.tune.search import Searcher

from study import spec as spec_mod
from study.boundary import within
from study.boundary_search import BoundarySearch, classify
from study.trial_configs import TrialConfigs, trial_of
from trainers.config import TrialConfig

STABLE = {"diverged": 0.0, "collapsed": 0.0, "final_test_top1": 0.4, "objective": 0.4}
DIVERGED = {"diverged": 1.0, "objective": 0.0, "divergence_cause": "non_finite_loss"}
COLLAPSED = {"diverged": 0.0, "collapsed": 1.0, "final_test_top1": 0.1, "objective": 0.1}


def _configs(*overrides: str) -> TrialConfigs:
    return TrialConfigs(spec_mod.load(None, ["schemes=[bn, wn]", "search.grid_init_scale=[1.0]", *overrides]))


def _searcher(**kw) -> BoundarySearch:
    args = dict(low=0.01, high=1.0, tolerance=2**0.5, max_points=12, seeds=[0, 1])
    args.update(kw)
    return BoundarySearch(_configs(), **args)


def _point(cfg: dict) -> dict:
    """A suggestion's trial config as a plain point: scheme, lr, seed and (where the scheme has one) init_scale."""
    trial = trial_of(cfg)
    assert isinstance(trial, TrialConfig) and set(cfg) == {"trial"}
    return {"scheme": trial.scheme_name, **trial.hp}


def _result(point: dict, boundaries: dict) -> dict:
    return DIVERGED if point["lr"] > boundaries[(point["scheme"], point.get("init_scale"))] else STABLE


def _run(searcher: BoundarySearch, boundaries: dict) -> None:
    """Like Tune: take suggestions until none comes, then complete the oldest running trial; until FINISHED."""
    n, live = 0, {}
    while True:
        cfg = searcher.suggest(f"t{n}")
        if cfg == Searcher.FINISHED:
            return
        if cfg is not None:
            live[f"t{n}"] = _point(cfg)
            n += 1
            continue
        assert live, "the searcher waits with nothing running"
        tid = next(iter(live))
        searcher.on_trial_complete(tid, _result(live.pop(tid), boundaries))


def test_spec_gives_one_bracket_per_scheme_and_init_scale_and_grid_shaped_configs():
    spec = spec_mod.load(None, ["schemes=[bn, wn]", "search.mode=boundary", "search.grid_init_scale=[1.0, 3.0]",
                                "search.seeds=[0, 1]"])
    assert TrialConfigs(spec).bracket_keys() == [("bn", None, None), ("wn", 1.0, None), ("wn", 3.0, None)]
    s = BoundarySearch.from_configs(TrialConfigs(spec))
    assert s.upper_bound_trials() == 3 * spec.search.boundary_max_points * 2
    configs = [s.suggest(f"t{i}") for i in range(3)]
    # brackets in turn, each config every mode's {"trial": TrialConfig} shape, its values applied
    points = [_point(c) for c in configs]
    assert [p["scheme"] for p in points] == ["bn", "wn", "wn"]
    assert "init_scale" not in points[0] and {p.get("init_scale") for p in points[1:]} == {1.0, 3.0}
    assert set(points[0]) == {"scheme", "lr", "seed"}
    wn = trial_of(configs[1])
    assert wn.training.lr == wn.hp["lr"] and wn.scheme.options["init_scale"] == wn.hp["init_scale"]


def test_search_finishes_with_every_bracket_within_tolerance():
    s = _searcher()
    boundaries = {("bn", None): 0.37, ("wn", 1.0): 0.021}
    _run(s, boundaries)
    rows = {(r["scheme"], r["init_scale"]): r for r in s.summary()}
    for key, b in boundaries.items():
        r = rows[key]
        assert r["status"] == "converged" and r["stable_lr"] <= b < r["diverged_lr"]
        assert within(r["stable_lr"], r["diverged_lr"], 2**0.5)
    assert s.suggest("after") == Searcher.FINISHED and not s.running


def test_concurrency_limit_and_waiting():
    s = _searcher(max_concurrent=3)
    got = [s.suggest(f"t{i}") for i in range(4)]
    assert all(g is not None for g in got[:3]) and got[3] is None  # the limit, not the end
    assert s.set_max_concurrency(5) and s.suggest("t4") is not None
    s2 = BoundarySearch(_configs("schemes=[bn]"), low=0.01, high=1.0, tolerance=2.0, max_points=12, seeds=[0])
    a, b = _point(s2.suggest("a")), _point(s2.suggest("b"))
    assert {a["lr"], b["lr"]} == {0.01, 1.0}
    assert s2.suggest("c") is None  # both ends running: nothing to start, but not finished
    s2.on_trial_complete("a", STABLE if a["lr"] == 0.01 else DIVERGED)
    s2.on_trial_complete("b", DIVERGED if b["lr"] == 1.0 else STABLE)
    assert _point(s2.suggest("d"))["lr"] == 0.1


@pytest.mark.parametrize("result,error,expected", [
    (STABLE, False, "stable"), (DIVERGED, False, "diverged"), (COLLAPSED, False, "collapsed"),
    (None, True, "errored"), (None, False, "errored"),
    ({"diverged": 0.0, "objective": 0.0}, False, "errored"),  # stopped before its summary: not a stable run
    (STABLE, True, "errored"),
])
def test_classify(result, error, expected):
    assert classify(result, error) == expected


def test_save_restore_mid_search_continues_and_accepts_running_trials(tmp_path):
    boundaries = {("bn", None): 0.37, ("wn", 1.0): 0.021}
    whole = _searcher()
    _run(whole, boundaries)
    part = _searcher()
    live = {}
    for i in range(6):
        cfg = part.suggest(f"t{i}")
        if cfg is not None:
            live[f"t{i}"] = _point(cfg)
    first = next(iter(live))
    part.on_trial_complete(first, _result(live.pop(first), boundaries))
    path = tmp_path / "searcher.pkl"
    part.save(str(path))
    restored = _searcher(max_points=3)  # whatever it was built with, the saved state wins
    restored.restore(str(path))
    assert restored.get_state() == part.get_state()
    for tid, point in live.items():  # trials running at the kill finish under their ids after the restore
        restored.on_trial_complete(tid, _result(point, boundaries))
    n = 100
    while (cfg := restored.suggest(f"r{n}")) != Searcher.FINISHED:
        assert cfg is not None
        restored.on_trial_complete(f"r{n}", _result(_point(cfg), boundaries))
        n += 1
    assert [(r["stable_lr"], r["diverged_lr"]) for r in restored.summary()] == \
        [(r["stable_lr"], r["diverged_lr"]) for r in whole.summary()]


def test_an_error_stops_only_its_bracket_and_a_rerun_of_it_is_recorded():
    s = BoundarySearch(_configs(), low=0.01, high=1.0, tolerance=2.0, max_points=12, seeds=[0])
    cfgs = {f"t{i}": _point(s.suggest(f"t{i}")) for i in range(4)}
    for tid, p in cfgs.items():
        if p["scheme"] == "bn" and p["lr"] == 0.01:
            s.on_trial_complete(tid, None, error=True)
            errored = tid
        else:
            s.on_trial_complete(tid, STABLE if p["lr"] == 0.01 else DIVERGED)
    rows = {r["scheme"]: r for r in s.summary()}
    assert rows["bn"]["status"] == "error" and rows["wn"]["status"] == "running"
    assert _point(s.suggest("n0"))["scheme"] == "wn"  # the other bracket goes on
    s.on_trial_complete(errored, STABLE)  # the errored trial re-run on --resume, same id
    assert {r["scheme"]: r for r in s.summary()}["bn"]["status"] == "running"
    s.on_trial_complete("unknown", STABLE)  # not one of ours: ignored


def test_a_collapse_bounds_the_bracket_like_a_divergence():
    """The searcher's bracket and the report's rules agree: a collapsed trial fails its rate (trainers.outcome)."""
    s = BoundarySearch(_configs("schemes=[bn]"), low=0.01, high=1.0, tolerance=2.0, max_points=12, seeds=[0])
    a, b = _point(s.suggest("a")), _point(s.suggest("b"))
    for tid, p in (("a", a), ("b", b)):
        s.on_trial_complete(tid, COLLAPSED if p["lr"] == 1.0 else STABLE)
    assert s.summary()[0]["diverged_lr"] == 1.0 and s.summary()[0]["stable_lr"] == 0.01
    assert _point(s.suggest("c"))["lr"] == 0.1  # it bisects below the collapse, not above it
