"""``search.mode: boundary`` as a Ray Tune ``Searcher``: the largest stable learning rate of every
(scheme, init scale, model variant), found by bracketing and bisecting log lr (the state machine is
:class:`study.boundary.Bracket`; the algorithm is described there).

One searcher drives every bracket of a study in one Tune experiment, like grid mode (trial actors are
reused across schemes). Its trials have every mode's config shape, ``{"trial": TrialConfig}`` (resolved
here, on the driver, by :class:`study.trial_configs.TrialConfigs`), so ``study.trial.run_trial`` trains
them, logs them to the same MLflow hierarchy (study → scheme → trial) and the progress lines read them.

- ``suggest`` hands out one (lr, seed) a call: first the pending rates' missing seeds, then new rates,
  taking the brackets in turn so that independent brackets run side by side; ``None`` while every
  bracket waits on running trials; ``FINISHED`` once every bracket has stopped.
- ``on_trial_complete`` classifies the trial's last result with the one outcome rule
  (:func:`trainers.outcome.outcome_of`): diverged and collapsed trials fail their rate; trained to the end
  otherwise → stable; an error, or a trial stopped without a summary → errored (the bracket stops there
  and its report says so: an error is not a divergence).
- ``save``/``restore`` pickle every bracket's outcomes and the running trials, so ``normstudy run
  --resume`` (``Tuner.restore``) re-runs the unfinished trials under their ids and carries on. Tune
  checkpoints the trial list and this state together, so the two agree after a driver kill.
- Concurrency is limited here (``set_max_concurrency``), not by Tune's ``ConcurrencyLimiter``, which
  would drop the result of an errored trial re-run on ``--resume``.

Known limit: an errored trial re-run on ``--resume`` after every bracket had stopped updates its
bracket's outcome, but Tune no longer asks a finished searcher for trials, so a bracket it reopened stays
where it was (start a new study, or rerun that scheme, to continue it).
"""

from __future__ import annotations

import pickle
from typing import Any

from ray.tune.search import Searcher

from study.boundary import Bracket
from study.trial_configs import TrialConfigs, tune_config
from trainers.outcome import ERRORED, UNFINISHED, outcome_of


def _key(k: tuple) -> tuple[str, float | None, str | None]:
    """A bracket's key from saved state; a state saved before the scale axis has (scheme, init scale)."""
    return (*k, None) if len(k) == 2 else tuple(k)


def classify(result: dict[str, Any] | None, error: bool) -> str:
    """A finished trial's outcome from its last reported result; one that ended without a summary (stopped
    or lost) counts as errored: it says nothing about stability, and the bracket must not wait for it."""
    outcome = outcome_of(result, errored=error)
    return ERRORED if outcome == UNFINISHED else outcome


class BoundarySearch(Searcher):
    """Tune searcher over every (scheme, init scale) bracket of a boundary study."""

    def __init__(self, configs: TrialConfigs, *, low: float, high: float, tolerance: float,
                 max_points: int, seeds: list[int], max_concurrent: int = 0, metric: str = "objective",
                 mode: str = "max") -> None:
        super().__init__(metric=metric, mode=mode)
        self.configs = configs
        self.keys = configs.bracket_keys()
        self.brackets = {k: Bracket(low, high, tolerance, max_points, tuple(seeds)) for k in self.keys}
        # trial id -> (key, lr, seed); a key is (scheme, init scale, variant)
        self.running: dict[str, tuple[tuple[str, float | None, str | None], float, int]] = {}
        self.finished: dict[str, tuple[tuple[str, float | None, str | None], float, int]] = {}
        self.max_concurrent = max_concurrent  # 0: no limit of its own
        self._turn = 0

    @classmethod
    def from_configs(cls, configs: TrialConfigs, max_concurrent: int = 0) -> BoundarySearch:
        s = configs.spec.search
        return cls(configs, low=s.boundary_lr[0], high=s.boundary_lr[1], tolerance=s.boundary_tolerance,
                   max_points=s.boundary_max_points, seeds=list(s.seeds), max_concurrent=max_concurrent,
                   mode=s.mode_direction)

    # --- Tune's Searcher interface ----------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the space is the brackets; nothing in the param space to adopt

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        self.max_concurrent = max_concurrent
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.max_concurrent and len(self.running) >= self.max_concurrent:
            return None
        n = len(self.keys)
        for i in range(n):  # brackets in turn: each gets a slot before any gets a second
            key = self.keys[(self._turn + i) % n]
            reqs = self.brackets[key].requests()
            if reqs:
                lr, seed = reqs[0]
                self.brackets[key].start(lr, seed)
                self.running[trial_id] = (key, lr, seed)
                self._turn = (self._turn + i + 1) % n
                scheme, scale, variant = key
                return tune_config(self.configs.point(scheme, lr, seed, scale, variant))
        if not self.running and all(b.done for b in self.brackets.values()):
            return Searcher.FINISHED
        return None

    def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
        where = self.running.pop(trial_id, None) or self.finished.get(trial_id)
        if where is None:
            return  # not one of ours
        key, lr, seed = where
        self.brackets[key].record(lr, seed, classify(result, error))
        self.finished[trial_id] = where

    def get_state(self) -> dict[str, Any]:
        return {"keys": self.keys, "brackets": {k: b.state() for k, b in self.brackets.items()},
                "running": self.running, "finished": self.finished, "max_concurrent": self.max_concurrent,
                "turn": self._turn}

    def set_state(self, state: dict[str, Any]) -> None:
        self.keys = [_key(k) for k in state["keys"]]
        self.brackets = {_key(k): Bracket.from_state(b) for k, b in state["brackets"].items()}
        self.running = {t: (_key(k), lr, s) for t, (k, lr, s) in state["running"].items()}
        self.finished = {t: (_key(k), lr, s) for t, (k, lr, s) in state["finished"].items()}
        self.max_concurrent, self._turn = state["max_concurrent"], state["turn"]

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            self.set_state(pickle.load(f))

    # --- results ------------------------------------------------------------------------------------

    def summary(self) -> list[dict[str, Any]]:
        """One row per bracket: scheme, init scale, variant, the bracket, its status, rates and trials."""
        return [{"scheme": k[0], "init_scale": k[1], "variant": k[2], **b.summary()} for k, b in self.brackets.items()]

    def upper_bound_trials(self) -> int:
        return sum(b.max_points * len(b.seeds) for b in self.brackets.values())
