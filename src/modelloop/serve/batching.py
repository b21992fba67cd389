"""Adaptive micro-batching: concurrent requests share one forward pass.

Requests submit their inputs and await a future. One worker takes everything queued, and waits
for more (up to ``max_wait_ms``) only while other requests are known to be on their way (already
inside the predict handler but not yet queued). A request alone is therefore sent at once, and
under load every forward pass carries as many requests as arrived while the previous one ran.
The forward pass runs in a dedicated thread so the event loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["MicroBatcher", "BatchResult"]


@dataclass
class BatchResult:
    probs: np.ndarray  # (n, K) for this caller's n inputs
    model: Any  # the model that computed them (its version and class names go back to the caller)
    batch_size: int  # size of the whole forward pass this caller shared
    ood: np.ndarray | None = None  # (n,) out-of-distribution scores; None: the model has no calibration


class MicroBatcher:
    """Group concurrent predictions into batches.

    Args:
        forward: ``forward(x) -> (probs, model)`` for x (N, C, H, W) float32; called in one thread.
            ``probs`` may be a pair ``(probs, ood_scores (N,))``: each caller gets its rows of both.
        max_batch_size: most inputs per forward pass.
        max_wait_ms: longest time a batch waits for requests still on their way.
        on_batch: called with each batch's size and seconds (for metrics).
    """

    def __init__(self, forward: Callable[[np.ndarray], tuple[np.ndarray, Any]], max_batch_size: int = 64,
                 max_wait_ms: float = 2.0, on_batch: Callable[[int, float], None] | None = None) -> None:
        self.forward = forward
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000
        self.on_batch = on_batch
        self.pending = 0  # requests inside the handler that will submit soon
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelloop-forward")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._worker())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    def arriving(self) -> None:
        """A request entered the handler and will submit: worth waiting for."""
        self.pending += 1

    def left(self) -> None:
        """That request submitted or failed before submitting."""
        self.pending -= 1

    async def submit(self, x: np.ndarray) -> BatchResult:
        """Predict ``x`` (n, C, H, W) as part of a batch; returns this caller's rows."""
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((x, fut))
        return await fut

    async def _worker(self) -> None:
        q = self._queue
        loop = asyncio.get_running_loop()
        while True:
            items = [await q.get()]
            size = len(items[0][0])
            deadline = time.perf_counter() + self.max_wait
            while size < self.max_batch_size:
                if not q.empty():
                    item = q.get_nowait()
                    items.append(item)
                    size += len(item[0])
                    continue
                remaining = deadline - time.perf_counter()
                # `pending` counts requests that entered the handler; those already queued left it.
                if self.pending <= 0 or remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(q.get(), remaining)
                except TimeoutError:
                    break
                items.append(item)
                size += len(item[0])
            if len(items) == 1:
                xs = items[0][0]
            elif isinstance(items[0][0], list):  # texts
                xs = [t for x, _ in items for t in x]
            else:
                xs = np.concatenate([x for x, _ in items])
            t = time.perf_counter()
            try:
                probs, model = await loop.run_in_executor(self._executor, self.forward, xs)
            except Exception as e:  # every caller of this batch gets the error
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            if self.on_batch is not None:
                self.on_batch(len(xs), time.perf_counter() - t)
            ood = None
            if isinstance(probs, tuple):
                probs, ood = probs
            start = 0
            for x, fut in items:
                if not fut.done():
                    fut.set_result(BatchResult(probs[start : start + len(x)], model, len(xs),
                                               None if ood is None else ood[start : start + len(x)]))
                start += len(x)
