"""A pure ASGI middleware: request metrics and the request-body size limit (413)."""

from __future__ import annotations

import json
import time

from .metrics import ServerMetrics, endpoint_of

__all__ = ["GuardMiddleware"]


class _TooLarge(Exception):
    pass


class GuardMiddleware:
    """Counts and times every HTTP request; answers 413 to a body over ``max_body_bytes``, whether
    announced by Content-Length or discovered while streaming."""

    def __init__(self, app, metrics: ServerMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes

    async def _reject(self, send, received: int | None) -> None:
        body = json.dumps({"detail": f"request body: received {received if received is not None else 'more than'}"
                                     f"{'' if received is not None else ' ' + str(self.max_body)} bytes; "
                                     f"expected at most {self.max_body} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        endpoint = endpoint_of(scope["path"])
        status = [500]
        started = [False]

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                started[0] = True
            await send(message)

        try:
            length = next((int(v) for k, v in scope["headers"] if k == b"content-length"), None)
        except ValueError:
            length = None
        if length is not None and length > self.max_body:
            status[0] = 413
            await self._reject(send, length)
            self.metrics.observe(endpoint, scope["method"], 413, time.perf_counter() - t0)
            return

        seen = [0]

        async def receive_wrapper():
            message = await receive()
            if message["type"] == "http.request":
                seen[0] += len(message.get("body", b""))
                if seen[0] > self.max_body:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        except _TooLarge:
            if not started[0]:
                status[0] = 413
                await self._reject(send, None)
        finally:
            self.metrics.observe(endpoint, scope["method"], status[0], time.perf_counter() - t0)
