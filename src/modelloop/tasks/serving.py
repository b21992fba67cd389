"""What a task's serving hooks are given by the server, and share with it.

The server (:mod:`modelloop.serve`) builds one context per app and hands it to the task's hooks
(:meth:`~.base.Task.routes`, :meth:`~.base.Task.check_feedback`). Tasks never import the
server: :class:`ServingContext` states what they may use of that context.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

__all__ = ["ServingContext", "json_safe"]


class ServingContext(Protocol):
    """The server's shared state, as a task's routes and hooks see it (one per app).

    Attributes:
        spec: the project's spec.
        registry: the project's model registry (``manifest(version)``, ``load(...)``).
        holder: the served model: ``get()`` returns the champion as :meth:`~.base.Task.serve_model`
            built it, reloading it when the registry's aliases moved (call it off the event loop);
            ``loaded`` is the one loaded so far, or None.
        writer: the prediction writer (``commit_blocking(rows)`` from a worker thread: the
            ``X-Modelloop-Logged`` value once the rows are committed or spooled).
        cache: per-app state a task's hooks may keep (e.g. what each version knows), by a key
            the task chooses.
        store: the feedback store.
        shadow: the shadow scorer: ``active()`` (a shadow version is set) and ``submit(ids,
            inputs)`` (it answers them in the background with the task's ``serve_model`` of that
            version, ``model.run(inputs)``, and stores :meth:`~.base.Task.read_output`'s label).
    """

    spec: Any
    registry: Any
    holder: Any
    cache: dict[str, Any]

    @property
    def writer(self) -> Any: ...

    def check_predict_key(self, request: Any) -> None:
        """Refuses (401/403) a caller without a client key unless ``serving.open_predict``."""

    def served(self, version: str, n: int = 1) -> None:
        """Counts ``n`` predictions served by ``version`` (the server's metrics)."""


def json_safe(value: Any, depth: int = 0) -> Any:
    """A value echoed in an error, made safe for JSON and short: non-finite numbers as their
    names, long texts, big arrays and objects summarised."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else ("NaN" if math.isnan(value) else
                                                   "Infinity" if value > 0 else "-Infinity")
    if isinstance(value, int):
        return value if abs(value) < 10**15 else f"an integer of {len(str(abs(value)))} digits"
    if isinstance(value, str):
        return value if len(value) <= 200 else f"a text of {len(value)} characters"
    if isinstance(value, (list, tuple)):
        if len(value) > 10 or depth >= 3:
            return f"an array of {len(value)} items"
        return [json_safe(v, depth + 1) for v in value]
    if isinstance(value, dict):
        if len(value) > 10 or depth >= 3:
            return f"an object of {len(value)} fields"
        return {str(k)[:100]: json_safe(v, depth + 1) for k, v in value.items()}
    text = str(value)
    return text if len(text) <= 200 else text[:200] + "..."
