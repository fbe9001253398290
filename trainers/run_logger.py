"""Metric logging from the training loop: rank 0 writes to its MLflow run, other ranks get a null logger.

Logging calls in the loop stay unconditional (nanochat style); the logger decides. Writes are
buffered and sent with ``MlflowClient.log_batch`` once per report interval: one SQLite ``log_metric``
costs ~8 ms here, 500 metrics in one batch ~0.3 s.
"""

from __future__ import annotations

import math
import time
from typing import Any

MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch


class NullLogger:
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class MlflowRunLogger:
    """Buffers metrics for one existing MLflow run and writes them in batches."""

    def __init__(self, tracking_uri: str, run_id: str) -> None:
        from mlflow import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.run_id = run_id
        self._buffer: list[Any] = []
        self._pending: list[Any] = []
        # A trial restored from a checkpoint replays the steps between that checkpoint and the crash;
        # those steps are already in the run (same values: the replay is deterministic), so they are not
        # written twice and the run keeps one continuous history. Per (metric, step), not "up to the
        # last step": the queued writes run on MLflow's thread pool, so a kill can leave step k missing
        # and k+1 written — the replay must fill k (and a summary the kill cut off must still land).
        history = with_retries(lambda: self.client.get_metric_history(run_id, "loss"))
        self._logged: set[tuple[str, int]] = set()
        if history:  # a restored trial (one query per metric, once)
            keys = with_retries(lambda: self.client.get_run(run_id)).data.metrics
            for key in keys:
                past = with_retries(lambda key=key: self.client.get_metric_history(run_id, key))
                self._logged.update((key, m.step) for m in past)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        for key, value in metrics.items():
            value = float(value)
            if math.isnan(value) or (key, step) in self._logged:  # NaN: charts and comparisons choke on it
                continue
            self._buffer.append(Metric(key, value, now, step))

    def flush(self) -> None:
        """Hand the buffered metrics to MLflow's async queue: training does not wait for the write
        (synchronous log_batch costs ~6% of a small CPU trial's time). ``close`` waits for them."""
        while self._buffer:
            chunk, self._buffer = self._buffer[:MAX_BATCH], self._buffer[MAX_BATCH:]
            op = with_retries(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk,
                                                                        synchronous=False))
            if op is not None:
                self._pending.append((op, chunk))

    def close(self) -> None:
        """Flush and wait until every queued write has reached the store (raises if one failed)."""
        self.flush()
        pending, self._pending = self._pending, []
        for op, chunk in pending:
            try:
                op.wait()
            except Exception:  # noqa: BLE001 - MLflow's writer threads do not retry ('database is locked')
                # Written again, synchronously, with the retries: MLflow drops exact duplicates (same key,
                # step, value and timestamp), so a chunk that did land is not doubled.
                with_retries(lambda chunk=chunk: self.client.log_batch(self.run_id, metrics=chunk))


def with_retries(fn, attempts: int = 8, delay: float = 0.2):
    """Retry ``fn`` on SQLite's 'database is locked' (concurrent trials share one file)."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as err:  # noqa: BLE001 - MLflow wraps the SQLAlchemy error in several types
            if "locked" not in str(err).lower() or i == attempts - 1:
                raise
            time.sleep(delay * (2**i))
    return None


def create_logger(rank: int, tracking_uri: str | None, run_id: str | None) -> NullLogger | MlflowRunLogger:
    if rank != 0 or not tracking_uri or not run_id:
        return NullLogger()
    return MlflowRunLogger(tracking_uri, run_id)
