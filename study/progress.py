"""Study progress instead of Ray's status tables: one line per finished trial, and on a terminal a
progress bar with the time left under them.

Where stdout is not a terminal (a log file, ``ray job submit``'s output, a pipe) only the lines are
written, exactly as they read on a terminal. The bar is tqdm's; it is drawn from the first Tune step of
each experiment (not while the driver still profiles the schemes) and closed at the experiment's end.
Trials a restored experiment already holds (``--resume``) count as done without a line.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from ray.tune import Callback

from study.trial_configs import trial_of
from trainers.outcome import COLLAPSED, DIVERGED, STALLED, UNFINISHED, outcome_of

DONE_STATES = ("TERMINATED", "ERROR")
REFRESH_S = 1.0  # the bar's clock (elapsed, time left) ticks this often between finished trials


def is_terminal(out: TextIO) -> bool:
    try:
        return bool(out.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _columns(out: TextIO) -> int:
    try:
        return os.get_terminal_size(out.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return 0


class TrialProgress(Callback):
    def __init__(self, total: int, out: TextIO | None = None) -> None:
        # sys.stdout as it is now, not as it was at import (a default argument would freeze that one)
        out = sys.stdout if out is None else out
        self.total, self.out, self.done, self.scheme = total, out, 0, ""
        self.started = time.time()
        self.diverged = self.collapsed = self.stalled = 0
        self.terminal = is_terminal(out)
        self.bar: Any = None  # tqdm, on a terminal, while an experiment runs
        self._counted: set[str] = set()  # trial ids already in ``done``
        self._refreshed = 0.0

    # Tune pickles its callbacks with the experiment (tuner.pkl): the stream and the bar stay behind; a
    # restored copy writes to sys.stdout.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "out": None, "bar": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.out = sys.stdout
        self.terminal = is_terminal(self.out)

    # --- the bar ----------------------------------------------------------------------------------
    def _open_bar(self) -> None:
        from tqdm import tqdm

        # A terminal that reports no width (a pty nobody sized) would get an empty bar: 100 columns then.
        sized = _columns(self.out) > 0
        self.bar = tqdm(total=max(self.total, self.done), initial=self.done, file=self.out, unit="trial",
                        desc=self.scheme or "trials", dynamic_ncols=sized, ncols=None if sized else 100,
                        leave=True, smoothing=0.1)
        self._update_postfix()

    def _update_postfix(self) -> None:
        if self.bar is not None:
            others = "".join(f", {n} {kind}" for n, kind in ((self.collapsed, "collapsed"), (self.stalled, "stalled"))
                             if n)
            self.bar.set_postfix_str(f"{self.diverged} diverged{others}", refresh=False)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # --- Tune's callbacks -------------------------------------------------------------------------
    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        # Trials a restored experiment already finished: done, but no line (they were reported before).
        for t in trials:
            if t.status in DONE_STATES and t.trial_id not in self._counted:
                self._counted.add(t.trial_id)
                self.done += 1
                if self.bar is not None:
                    self.bar.update(1)
        if not self.terminal:
            return
        if self.bar is None:
            self._open_bar()
        elif time.monotonic() - self._refreshed > REFRESH_S:
            self._refreshed = time.monotonic()
            self.bar.refresh()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._close_bar()

    def _line(self, trial: Any, note: str) -> None:
        new = trial.trial_id not in self._counted  # Tune calls back while the trial is still RUNNING
        self._counted.add(trial.trial_id)
        self.done += new
        config = trial_of(trial.config)
        scheme = config.scheme_name if config else self.scheme
        cfg = {k: v for k, v in (config.hp if config else {}).items() if isinstance(v, int | float | str)}
        hp = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(cfg.items()))
        line = f"[{self.done:3d}/{self.total}] {time.time() - self.started:6.0f}s  {scheme:9s} {hp:45s} {note}"
        if self.bar is None:
            print(line, file=self.out, flush=True)
            return
        self.bar.write(line, file=self.out)  # above the bar, which is redrawn under it
        self._update_postfix()
        self.bar.update(int(new))
        self.bar.refresh()  # update() redraws only every 0.1 s; a finished trial always shows

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        outcome = outcome_of(r)
        nan = float("nan")
        if outcome == DIVERGED:
            self.diverged += 1
            note = f"diverged at step {int(r.get('divergence_step', -1))}: {r.get('divergence_cause', '?')}"
        elif outcome == UNFINISHED:  # stopped before its summary (a scheduler, a shutdown)
            note = "stopped before the end"
        else:
            note = f"train {r.get('final_train_top1', nan):.3f}  test {r.get('final_test_top1', nan):.3f}"
            if outcome == COLLAPSED:  # finite, but at chance
                self.collapsed += 1
                note += f"  collapsed: {r.get('collapse_cause', '?')}"
            elif outcome == STALLED:  # finite, but it did not fit
                self.stalled += 1
                note += f"  stalled: loss {r.get('stall_loss_ratio', nan):.2f} of its start"
        self._line(trial, note)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "ERROR (see the trial's MLflow run for the reason)")
