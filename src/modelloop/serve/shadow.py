"""Shadow scoring: a challenger answers the same live inputs as the champion, silently.

The request path only hands (prediction ids, inputs) over; a background thread runs the shadow
model in batches and stores its answers next to the champion's, so shadowing never delays a
response.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from typing import Any

import numpy as np

from ..loop import Loop
from ..registry import LoadedModel

__all__ = ["ShadowScorer"]

log = logging.getLogger(__name__)


class ShadowScorer:
    def __init__(self, loop: Loop, threads: int = 1, interval_s: float = 0.05) -> None:
        self._loop = loop
        self._threads = threads
        self._interval = interval_s
        self._q: queue.Queue = queue.Queue(maxsize=10_000)
        self._stamp: tuple[int, ...] | None = None
        self._model: LoadedModel | Any = None  # what the task serves (``Task.serve_model``)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="modelloop-shadow", daemon=True)
        self._thread.start()

    def active(self) -> bool:
        """Whether a shadow version is set (checked cheaply: the registry file's stamp)."""
        stamp = self._loop.registry.state_stamp()
        if stamp != self._stamp:
            self._stamp = stamp
            version = self._loop.registry.alias("shadow")
            if version is None:
                self._model = None
            elif self._model is None or self._model.version != version:
                try:
                    self._model = self._loop.task.serve_model(self._loop.registry, version, threads=self._threads)
                    log.info("shadowing with %s", version)
                except Exception:
                    log.exception("cannot load shadow model %s", version)
                    self._model = None
        return self._model is not None

    def submit(self, ids: list[str], x: np.ndarray) -> None:
        try:
            self._q.put_nowait((ids, x))
        except queue.Full:  # shadowing is best effort; serving never waits for it
            log.warning("shadow queue full; %d inputs not shadow-scored", len(ids))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set() or not self._q.empty():
            try:
                items = [self._q.get(timeout=self._interval)]
            except queue.Empty:
                continue
            while len(items) < 256:
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            model = self._model
            if model is None:
                continue
            ids = [i for batch, _ in items for i in batch]
            try:
                if isinstance(items[0][1], list):  # texts (or a task's own inputs, e.g. questions)
                    probs = model.run([t for _, xs in items for t in xs])
                else:
                    probs = model.run(np.ascontiguousarray(np.concatenate([xs for _, xs in items]), dtype=np.float32))
                now = time.time()
                rows = []
                for pid, p in zip(ids, probs, strict=True):
                    label, scores, _ = self._loop.task.read_output(model, p)  # as /predict stores its answers
                    rows.append({"prediction_id": pid, "model_version": model.version, "label": label,
                                 "scores": json.dumps(scores), "created_at": now})
                self._loop.store.log_many([], shadow_rows=rows)
            except Exception:
                log.exception("shadow scoring failed for %d inputs", len(ids))
