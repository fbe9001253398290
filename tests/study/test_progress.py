"""TrialProgress: one line per finished trial where stdout is not a terminal; on a terminal, the same lines
above a tqdm bar with the time left. Driven through Tune's callback methods with stand-in trials (the
study tests drive it with real Tune)."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from study import spec as spec_mod
from study.progress import TrialProgress
from study.trial_configs import TrialConfigs, tune_config

CONFIGS = TrialConfigs(spec_mod.load(None, ["schemes=[bn, wn, nf]"]))


def point(scheme: str, lr: float, init_scale: float | None = None, seed: int = 0) -> dict[str, Any]:
    """A Tune trial config as the runner makes it: {"trial": TrialConfig}."""
    return tune_config(CONFIGS.point(scheme, lr, seed, init_scale))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@dataclass
class FakeTrial:
    trial_id: str
    config: dict[str, Any]
    status: str = "RUNNING"
    last_result: dict[str, Any] = field(default_factory=dict)


def _trials() -> list[FakeTrial]:
    stable = {"diverged": 0.0, "final_train_top1": 0.97, "final_test_top1": 0.91}
    diverged = {"diverged": 1.0, "divergence_step": 37.0, "divergence_cause": "loss_spike"}
    return [FakeTrial("t1", point("bn", 0.1), last_result=stable),
            FakeTrial("t2", point("wn", 3.0, 1.0), last_result=diverged),
            FakeTrial("t3", point("wn", 0.1, 1.0))]


def _run(progress: TrialProgress, trials: list[FakeTrial]) -> None:
    progress.on_step_begin(0, trials)
    for t in trials[:2]:
        progress.on_trial_complete(1, trials, t)
        t.status = "TERMINATED"
        progress.on_step_begin(1, trials)
    progress.on_trial_error(2, trials, trials[2])
    trials[2].status = "ERROR"
    progress.on_step_begin(2, trials)
    progress.on_experiment_end(trials)


def test_not_a_terminal_one_plain_line_per_trial():
    out = io.StringIO()
    _run(TrialProgress(total=3, out=out), _trials())
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and "\r" not in out.getvalue() and "\x1b" not in out.getvalue()
    assert re.match(r"\[  1/3\] +\d+s  bn +lr=0\.1 seed=0 +train 0\.970  test 0\.910$", lines[0])
    assert lines[1].startswith("[  2/3]") and lines[1].endswith("diverged at step 37: loss_spike")
    assert "init_scale=1 lr=3 seed=0" in lines[1]
    assert lines[2].startswith("[  3/3]") and "ERROR" in lines[2]


def test_terminal_gets_the_lines_above_a_bar_with_time_left():
    out = Terminal()
    progress = TrialProgress(total=3, out=out)
    trials = _trials()
    progress.on_step_begin(0, trials)
    assert "0/3" in out.getvalue()  # the bar is up from Tune's first step
    progress.on_trial_complete(1, trials, trials[0])
    trials[0].status = "TERMINATED"
    screen = out.getvalue()
    assert "[  1/3]" in screen and "1/3 [" in screen  # the trial's line, and the bar redrawn below it
    assert re.search(r"1/3 \[\d\d:\d\d<\d\d:\d\d", screen)  # elapsed < time left
    progress.on_trial_complete(2, trials, trials[1])
    assert "1 diverged" in out.getvalue().split("[  2/3]")[-1]
    trials[1].status = "TERMINATED"
    progress.on_trial_error(3, trials, trials[2])
    progress.on_experiment_end(trials)
    assert progress.bar is None and "3/3" in out.getvalue().split("[  3/3]")[-1]
    plain = io.StringIO()
    _run(TrialProgress(total=3, out=plain), _trials())
    for line in plain.getvalue().splitlines():  # the same lines as without a terminal (clock aside)
        assert re.sub(r"\d+s ", "", line) in re.sub(r"\d+s ", "", out.getvalue())


@pytest.mark.parametrize("out", [io.StringIO(), Terminal()])
def test_trials_a_restored_experiment_already_finished_count_without_a_line(out):
    progress = TrialProgress(total=3, out=out)
    trials = _trials()
    trials[0].status = trials[1].status = "TERMINATED"  # finished before the driver was killed
    progress.on_step_begin(0, trials)
    progress.on_trial_complete(1, trials, trials[2])
    progress.on_experiment_end(trials)
    text = out.getvalue()
    assert "[  1/3]" not in text and "[  2/3]" not in text and text.count("[  3/3]") == 1


def test_pickles_without_its_stream_as_tune_stores_callbacks():
    import pickle

    class Unpicklable(io.StringIO):
        def __reduce__(self):
            raise TypeError("cannot pickle a capture stream")

    progress = TrialProgress(total=2, out=Unpicklable())
    copy = pickle.loads(pickle.dumps(progress))
    assert copy.total == 2 and copy.bar is None and copy.out is not None


def test_a_collapsed_trial_says_so_on_its_line_and_in_the_bar():
    out = Terminal()
    progress = TrialProgress(total=1, out=out)
    t = FakeTrial("t1", point("nf", 1.0),
                  last_result={"diverged": 0.0, "collapsed": 1.0, "collapse_cause": "dead_relu",
                               "final_train_top1": 0.1, "final_test_top1": 0.1})
    progress.on_step_begin(0, [t])
    progress.on_trial_complete(1, [t], t)
    assert "train 0.100  test 0.100  collapsed: dead_relu" in out.getvalue()
    assert "0 diverged, 1 collapsed" in out.getvalue()


def test_a_stalled_trial_says_so_on_its_line_and_in_the_bar():
    out = Terminal()
    progress = TrialProgress(total=1, out=out)
    t = FakeTrial("t1", point("bn", 10.0),
                  last_result={"diverged": 0.0, "collapsed": 0.0, "stalled": 1.0, "stall_loss_ratio": 0.96,
                               "final_train_top1": 0.18, "final_test_top1": 0.17})
    progress.on_step_begin(0, [t])
    progress.on_trial_complete(1, [t], t)
    assert "train 0.180  test 0.170  stalled: loss 0.96 of its start" in out.getvalue()
    assert "0 diverged, 1 stalled" in out.getvalue()


def test_an_optuna_trial_shows_its_hyperparameters_not_its_optuna_number():
    out = io.StringIO()
    trial = CONFIGS.resolve("bn", {"lr": 0.3, "weight_decay": 1e-4, "seed": 0}, optuna_trial_number=7)
    t = FakeTrial("t1", tune_config(trial), last_result={"diverged": 0.0, "final_train_top1": 0.5,
                                                       "final_test_top1": 0.4})
    TrialProgress(total=1, out=out).on_trial_complete(1, [t], t)
    assert "lr=0.3 seed=0 weight_decay=0.0001" in out.getvalue() and "optuna" not in out.getvalue()
