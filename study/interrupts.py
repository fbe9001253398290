"""SIGINT and SIGTERM to the study driver: the study stops, and says so.

Ray Tune's own SIGINT handler (``ray.tune.tune._setup_signal_catching``) sets an event that ends the
experiment's loop; Tune then saves the experiment state one last time (with the trials it stopped still
RUNNING, so ``Tuner.restore(resume_unfinished=True)`` runs them again), stops the trial actors and
``Tuner.fit()`` *returns* a ResultGrid of the partial results, as if the study were done. SIGTERM it does
not handle at all (the driver dies with its runs RUNNING). So the driver takes both signals itself:

- :class:`StopOnSignal` installs one handler for SIGINT and SIGTERM for the whole study (again after
  ``ray.init``, whose core replaces SIGTERM's handler with one that aborts), and sets
  ``TUNE_DISABLE_SIGINT_HANDLER=1`` so Tune leaves SIGINT to it. Outside ``Tuner.fit`` (opening runs,
  profiling, between experiments) the handler raises :class:`Interrupted` at once. Inside (``with
  stop.tune():``) it only records the signal: raising in the middle of Tune's controller could skip its
  last state save. :class:`TuneStop`, a Tune callback, sees the record at the controller's next step and
  calls Tune's own interrupt handler (Tune always installs it for SIGUSR1), which is Tune's documented way
  to end an experiment with its state saved for ``--resume``. A second signal while Tune is stopping
  raises at once (as Tune's own second Ctrl-C does).
- After ``fit`` returns, :meth:`StopOnSignal.raise_if_stopped` raises :class:`Interrupted`: an
  interrupted study never returns as if complete. The runner closes every run it opened as KILLED and
  the CLI exits ``128 + signal`` (130 for SIGINT, 143 for SIGTERM), the shell's convention.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ray.tune import Callback

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_pending: dict[str, int | None] = {"signum": None}  # module state: TuneStop copies are pickled with Tune's state


class Interrupted(KeyboardInterrupt):
    """The driver got SIGINT or SIGTERM. A KeyboardInterrupt (not an Exception) so that no ``except
    Exception`` on the way (a profiler's, a retry's) swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def pending() -> int | None:
    """The signal the driver got and has not yet acted on (None: none)."""
    return _pending["signum"]


class StopOnSignal:
    """``with StopOnSignal() as stop:`` for the life of a study; ``with stop.tune():`` around ``Tuner.fit``."""

    def __init__(self) -> None:
        self._saved: dict[int, Any] = {}
        self._env: str | None = None
        self._in_tune = False
        self._shielded = False

    def __enter__(self) -> StopOnSignal:
        _pending["signum"] = None
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may take signals (a study run from a thread: Tune's own handling)
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        for sig in SIGNALS:
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def reinstall(self) -> None:
        """Take the signals back after ``ray.init``: Ray's core installs its own SIGTERM handler in the driver
        (it prints a stack and aborts, exit -6), over any installed before."""
        for sig in self._saved:
            signal.signal(sig, self._handle)

    def __exit__(self, *exc: object) -> None:
        _pending["signum"] = None
        if not self._saved:
            return
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)
        if self._env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env

    @property
    def signum(self) -> int | None:
        return pending()

    def _handle(self, signum: int, frame: Any) -> None:
        first = _pending["signum"] is None
        if first:
            _pending["signum"] = signum
        if self._shielded:
            return  # closing the runs: a second Ctrl-C must not leave them RUNNING
        if not self._in_tune or not first:
            raise Interrupted(_pending["signum"] or signum)

    @contextmanager
    def shielded(self) -> Iterator[None]:
        """Signals are only recorded inside (the runs are being closed)."""
        self._shielded = True
        try:
            yield
        finally:
            self._shielded = False

    @contextmanager
    def tune(self) -> Iterator[None]:
        """Around ``Tuner.fit``: a signal is recorded and Tune is asked to stop (:class:`TuneStop`)."""
        self.raise_if_stopped()
        self._in_tune = True
        try:
            yield
        finally:
            self._in_tune = False

    def raise_if_stopped(self) -> None:
        if _pending["signum"] is not None:
            raise Interrupted(_pending["signum"])


class TuneStop(Callback):
    """Ends the running experiment through Tune's own interrupt once the driver got a signal."""

    def __init__(self) -> None:
        self._asked = False

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if pending() is None or self._asked:
            return
        handler = signal.getsignal(signal.SIGUSR1)  # Tune's interrupt, installed by tune.run for this experiment
        if callable(handler):
            self._asked = True
            handler(signal.SIGUSR1, None)

    def __getstate__(self) -> dict[str, Any]:
        return {"_asked": False}  # a restored experiment starts without a request
