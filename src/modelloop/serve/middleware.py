"""A pure ASGI middleware: request metrics, the request-body size limit (413), and the header
naming the server process that answered (``X-Modelloop-Worker``)."""

from __future__ import annotations

import json
import os
import time

from .metrics import ServerMetrics

__all__ = ["GuardMiddleware", "SMALL_ROUTES", "SMALL_BODY_BYTES", "WORKER_HEADER"]

#: every answer names the server process that gave it (its pid): with ``serve --workers N`` several
#: processes share the port, and what one process counts (``/metrics``, ``/stats``) is its own
WORKER_HEADER = b"x-modelloop-worker"

# Routes whose body is a small JSON object (feedback, admin calls): FastAPI parses and validates it
# on the event loop before the route checks the caller's key, so it is kept small for everyone.
SMALL_ROUTES = ("/feedback", "/admin/")
SMALL_BODY_BYTES = 64 * 1024


class _TooLarge(Exception):
    pass


class GuardMiddleware:
    """Counts and times every HTTP request; names the answering process (``X-Modelloop-Worker``:
    its pid) on every answer; answers 413 to a body over ``max_body_bytes`` (over
    ``small_body_bytes`` on ``small_routes``), whether announced by Content-Length or sent chunked
    without one, on every route.

    A chunked body is read here, up to the limit, before the app runs (the app would hold it
    whole anyway). Should a body still pass the limit while the app reads it, the error raised
    inside the app may be turned by the framework into a 400 ("error parsing the body") or a
    500: once the limit is passed, the middleware answers 413 itself and drops whatever response
    the app then tries to send.
    """

    def __init__(self, app, metrics: ServerMetrics, max_body_bytes: int,
                 small_routes: tuple[str, ...] = SMALL_ROUTES, small_body_bytes: int = SMALL_BODY_BYTES) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.small_routes = small_routes
        self.small_body = min(small_body_bytes, max_body_bytes)
        self._worker = (WORKER_HEADER, str(os.getpid()).encode())

    def limit(self, path: str) -> tuple[int, str]:
        """The body limit of a route, and where it comes from."""
        if path.startswith(self.small_routes):
            return self.small_body, "the limit of routes that take a small JSON object"
        return self.max_body, "serving.max_body_bytes"

    async def _reject(self, send, received: int | None, limit: tuple[int, str]) -> None:
        got = f"{received} bytes" if received is not None else f"more than {limit[0]} bytes"
        body = json.dumps({"detail": f"request body: received {got}; expected at most {limit[0]} bytes "
                                     f"({limit[1]})"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close"), self._worker]})
        await send({"type": "http.response.body", "body": body})

    async def _read_all(self, receive, max_body: int) -> list[dict] | None:
        """Every message of a body of unknown length, or None as soon as it passes the limit."""
        messages, size = [], 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return messages
            size += len(message.get("body", b""))
            if size > max_body:
                return None
            if not message.get("more_body", False):
                return messages

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        endpoint = self.metrics.endpoint_of(scope["path"])
        limit = self.limit(scope["path"])
        status = [500]
        started = [False]
        too_large = [False]

        async def send_wrapper(message) -> None:
            if too_large[0]:  # the app's answer to a body it could not finish reading: ours goes instead
                if not started[0] and message["type"] == "http.response.start":
                    started[0] = True
                    status[0] = 413
                    await self._reject(send, None, limit)
                return
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                started[0] = True
                message = {**message, "headers": [*message.get("headers", ()), self._worker]}
            await send(message)

        try:
            length = next((int(v) for k, v in scope["headers"] if k == b"content-length"), None)
        except ValueError:
            length = None
        if length is not None and length > limit[0]:
            status[0] = 413
            await self._reject(send, length, limit)
            self.metrics.observe(endpoint, scope["method"], 413, time.perf_counter() - t0)
            return

        source = receive
        if length is None and any(k == b"transfer-encoding" for k, _ in scope["headers"]):
            # A chunked body announces no length: read it here, up to the limit, before any route
            # runs, so it is refused the same way on every route (even one that never reads it).
            messages = await self._read_all(receive, limit[0])
            if messages is None:
                status[0] = 413
                await self._reject(send, None, limit)
                self.metrics.observe(endpoint, scope["method"], 413, time.perf_counter() - t0)
                return
            if messages[-1]["type"] == "http.request":
                messages = [{"type": "http.request", "body": b"".join(m.get("body", b"") for m in messages),
                             "more_body": False}]
            replay = iter(messages)

            async def source():
                message = next(replay, None)
                return message if message is not None else await receive()

        seen = [0]

        async def receive_wrapper():
            if too_large[0]:
                raise _TooLarge
            message = await source()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > limit[0]:
                    too_large[0] = True
                    raise _TooLarge
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except Exception:
            if not too_large[0]:
                raise
            # _TooLarge itself, or whatever the app or framework made of it (a group of errors, ...)
        finally:
            if too_large[0] and not started[0]:
                started[0] = True
                status[0] = 413
                await self._reject(send, None, limit)
            self.metrics.observe(endpoint, scope["method"], status[0], time.perf_counter() - t0)
