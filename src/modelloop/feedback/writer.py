"""Prediction logging off the request path.

The server hands each prediction row to :class:`PredictionWriter`, which commits queued rows in
one transaction every few milliseconds. A request never waits for the database; ``flush()``
waits until everything handed over so far is committed (feedback calls it before looking a
prediction up, and shutdown calls it before exiting).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from .store import TEXT_DTYPE, FeedbackStore

__all__ = ["PredictionWriter", "prediction_row"]

log = logging.getLogger(__name__)


def prediction_row(pid: str, model_version: str, x: np.ndarray | str | dict[str, Any], label: str,
                   scores: dict[str, float], latency_ms: float) -> dict[str, Any]:
    """A predictions-table row. Pixels that are whole numbers 0-255 are stored as uint8; a text
    is stored as its UTF-8 bytes with dtype ``utf-8``; a table row (dict) as its JSON text, like a text."""
    if isinstance(x, dict):
        x = json.dumps(x)
    if isinstance(x, str):
        data = x.encode("utf-8")
        shape, dtype = [len(data)], TEXT_DTYPE
    else:
        if x.dtype != np.uint8 and np.array_equal(x, np.rint(x)) and x.min() >= 0 and x.max() <= 255:
            x = x.astype(np.uint8)
        data = np.ascontiguousarray(x).tobytes()
        shape, dtype = list(x.shape), str(x.dtype)
    return {"id": pid, "created_at": time.time(), "model_version": model_version,
            "input_shape": json.dumps(shape), "input_dtype": dtype, "input_data": data,
            "input_hash": hashlib.sha256(data).hexdigest(), "label": label, "scores": json.dumps(scores),
            "latency_ms": latency_ms}


class PredictionWriter:
    """Batches prediction rows into the store from one background thread."""

    def __init__(self, store: FeedbackStore, interval_s: float = 0.02, max_rows: int = 512) -> None:
        self.store = store
        self.interval_s = interval_s
        self.max_rows = max_rows
        self._q: queue.Queue = queue.Queue()
        self._done = threading.Condition()
        self._submitted = 0
        self._committed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelloop-prediction-writer", daemon=True)
        self._thread.start()

    def put(self, rows: list[dict[str, Any]]) -> int:
        """Queue rows; returns the count of rows submitted so far, these included."""
        with self._done:
            self._submitted += len(rows)
            target = self._submitted
            for r in rows:
                self._q.put(r)
        return target

    async def commit(self, rows: list[dict[str, Any]]) -> None:
        """Queue rows and return once they are committed (many requests share one commit)."""
        target = self.put(rows)
        await asyncio.to_thread(self._wait, target)

    def _wait(self, target: int, timeout: float = 30.0) -> None:
        with self._done:
            self._done.wait_for(lambda: self._committed >= target, timeout=timeout)

    def flush(self, timeout: float = 10.0) -> None:
        """Block until every row put so far is committed."""
        with self._done:
            target = self._submitted
            self._done.wait_for(lambda: self._committed >= target, timeout=timeout)

    def close(self) -> None:
        self.flush()
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set() or not self._q.empty():
            try:
                rows = [self._q.get(timeout=self.interval_s)]
            except queue.Empty:
                continue
            deadline = time.perf_counter() + self.interval_s
            while len(rows) < self.max_rows:
                try:
                    rows.append(self._q.get(timeout=max(0.0, deadline - time.perf_counter())))
                except queue.Empty:
                    break
            for attempt in range(5):
                try:
                    self.store.log_many(rows)
                    break
                except Exception:  # a locked or briefly unavailable database: retry, never drop
                    log.exception("writing %d predictions failed (attempt %d)", len(rows), attempt + 1)
                    time.sleep(0.2 * (attempt + 1))
            with self._done:
                self._committed += len(rows)
                self._done.notify_all()
