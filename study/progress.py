"""One line per finished trial, instead of Ray's status tables."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ray.tune import Callback


class TrialProgress(Callback):
    def __init__(self, total: int, out: TextIO = sys.stdout) -> None:
        self.total, self.out, self.done, self.scheme = total, out, 0, ""
        self.started = time.time()

    def _line(self, trial: Any, note: str) -> None:
        self.done += 1
        config = dict((trial.config or {}).get("point", trial.config or {}))
        scheme = config.pop("scheme", self.scheme)
        cfg = {k: v for k, v in config.items() if isinstance(v, int | float)}
        hp = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(cfg.items()))
        print(f"[{self.done:3d}/{self.total}] {time.time() - self.started:6.0f}s  {scheme:9s} {hp:45s} {note}",
              file=self.out, flush=True)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        r = trial.last_result or {}
        if r.get("diverged", 0) >= 1:
            note = f"diverged at step {int(r.get('divergence_step', -1))}: {r.get('divergence_cause', '?')}"
        else:
            nan = float("nan")
            note = f"train {r.get('final_train_top1', nan):.3f}  test {r.get('final_test_top1', nan):.3f}"
        self._line(trial, note)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._line(trial, "ERROR (see the trial's MLflow run for the reason)")
