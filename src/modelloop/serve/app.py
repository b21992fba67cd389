"""The HTTP API over a project: predict with the champion, take feedback, list models, admin.

Routes stay thin: they check the key, parse and validate the request, then hand over to the
micro-batcher (predict), the feedback store or the loop. Each concern is a module of
:mod:`.routes` building its router from the app's :class:`~.deps.ServeContext`; the project's
task adds routes of its own (``Task.routes``), and answers what differs between tasks (how a
model is loaded, what a prediction's label is, which feedback labels count), so the server never
branches on the task. The champion is re-read when the registry's aliases change, so a promotion
or rollback takes effect on the next batch without a restart; every batch runs on one model, and
each answer names the version that computed it. Every limit a request meets is a 422 naming the
file or field; an oversized body is a 413.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..data.image import parse_pixels
from ..errors import ModelloopError
from ..tasks.serving import json_safe
from .deps import ServeContext
from .middleware import GuardMiddleware
from .routes import admin, feedback, label, predict, status, ui

__all__ = ["create_app", "app_from_environment", "PROJECT_ENV", "OVERRIDES_ENV", "parse_pixels"]

#: how ``modelloop serve --workers N`` tells each server process what to serve: the project folder,
#: and ``create_app``'s keyword arguments as a JSON object
PROJECT_ENV, OVERRIDES_ENV = "MODELLOOP_SERVE_PROJECT", "MODELLOOP_SERVE_OVERRIDES"

log = logging.getLogger(__name__)


async def _modelloop_error(_: Request, exc: ModelloopError) -> JSONResponse:
    status = 503 if type(exc) is ModelloopError else exc.http_status
    retry = getattr(exc, "retry_after_s", None)
    return JSONResponse(status_code=status, content={"detail": str(exc)},
                        headers={"Retry-After": str(retry)} if retry else None)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        # FastAPI's answer to a declared JSON body that is not UTF-8: a bad input like any other
        return JSONResponse(status_code=422, content={"detail": "request body: not valid JSON or not UTF-8; "
                                                                "expected a JSON object"})
    return await http_exception_handler(request, exc)


async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422, but never a 500: what the client sent is echoed only when JSON can carry
    it (NaN and Infinity by name) and when it is short."""
    errors = []
    for e in list(exc.errors())[:20]:
        item = {"type": e.get("type"), "loc": [json_safe(p) for p in e.get("loc", ())],
                "msg": str(e.get("msg", ""))[:500]}
        if "input" in e:
            item["input"] = json_safe(e["input"])
        if e.get("ctx"):
            item["ctx"] = json_safe(e["ctx"])
        errors.append(item)
    return JSONResponse(status_code=422, content={"detail": errors})


def create_app(project_dir: str | Path, *, max_batch_size: int | None = None, max_wait_ms: float | None = None,
               backend: str | None = None) -> FastAPI:
    """The FastAPI app for a project folder. Keyword arguments override the spec's ``serving``."""
    ctx = ServeContext.for_project(project_dir, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                                   backend=backend)
    cfg = ctx.config

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        ctx.open()
        # Everything loaded so far lives as long as the server: keep it out of the garbage
        # collector's full passes, which otherwise stall requests for milliseconds under load.
        gc.collect()
        gc.freeze()
        yield
        await ctx.close()

    app = FastAPI(title="modelloop", version=__version__, lifespan=lifespan,
                  description=f"Serving project {ctx.spec.name!r} ({ctx.spec.task}). Keys: 'Authorization: "
                              "Bearer KEY' or 'X-API-Key: KEY'.")
    app.state.ctx = ctx
    app.state.loop, app.state.holder, app.state.keys, app.state.metrics = ctx.loop, ctx.holder, ctx.keys, ctx.metrics
    app.state.batcher = ctx.batcher
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "x-api-key", "content-type"])
    app.add_middleware(GuardMiddleware, metrics=ctx.metrics, max_body_bytes=cfg.max_body_bytes)
    app.add_exception_handler(ModelloopError, _modelloop_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)

    for module in (predict, feedback, label, status, admin, ui):
        app.include_router(module.router(ctx))
    own = ctx.task.routes(ctx)  # the task's own routes (recommendation: /recommend, /similar), if any
    if own is not None:
        app.include_router(own)
        ctx.metrics.add_endpoints(r.path for r in own.routes)
    app.mount("/ui", ui.static(), name="ui")

    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """The OpenAPI document, with /predict's JSON body as the served model takes it."""
        doc = build_openapi()
        predict.document(ctx, doc)
        return doc

    app.openapi = openapi
    return app


def app_from_environment() -> FastAPI:
    """The app factory each server process of ``modelloop serve --workers N`` calls (uvicorn's
    ``factory=True``): :func:`create_app` for the folder in ``MODELLOOP_SERVE_PROJECT`` with the
    keyword arguments in ``MODELLOOP_SERVE_OVERRIDES`` (a JSON object).

    Raises:
        ModelloopError: the variable is missing, or the overrides are not a JSON object.
    """
    project = os.environ.get(PROJECT_ENV)
    if not project:
        raise ModelloopError(f"environment variable {PROJECT_ENV}: missing; expected the project folder to serve")
    raw = os.environ.get(OVERRIDES_ENV) or "{}"
    try:
        overrides = json.loads(raw)
    except ValueError:
        overrides = None
    if not isinstance(overrides, dict):
        raise ModelloopError(f"environment variable {OVERRIDES_ENV}: received {raw[:200]!r}; expected a JSON object "
                             "of create_app's keyword arguments")
    app = create_app(project, **overrides)
    _stop_with_parent()
    return app


def _stop_with_parent(interval_s: float = 1.0) -> None:
    """Stop this server process (SIGTERM to itself: uvicorn's graceful shutdown) once the
    supervisor that started it is gone. uvicorn stops its workers when the supervisor is asked to
    stop; a supervisor killed outright (SIGKILL, the OOM killer) cannot, and its workers would
    go on serving the port unsupervised."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        log.warning("the supervising process %d is gone; stopping server process %d", parent, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="modelloop-parent-watch", daemon=True).start()
