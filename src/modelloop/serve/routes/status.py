"""What the server is doing: ``/health`` (liveness), ``/ready``, ``/models``, ``/info`` (what a
client needs to build inputs), ``/metrics`` (Prometheus) and ``/stats`` (the web UI's counters)."""

from __future__ import annotations

import os
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ...errors import ModelloopError
from ...loop.labelling import live_quality
from ..deps import ServeContext
from .responses import ERRORS

__all__ = ["router"]


def router(ctx: ServeContext) -> APIRouter:
    r = APIRouter()
    loop, holder, metrics, cfg = ctx.loop, ctx.holder, ctx.metrics, ctx.config

    def _audit(m) -> dict[str, Any] | None:
        """The served version's live quality on the audit sample (None: no labelling queue)."""
        if not ctx.task.labelling:
            return None
        return live_quality(loop, m.version, m.class_names, bool(getattr(m, "regression", False)))

    @r.get("/health", responses={503: {"description": "The prediction writer has died; restart the server.",
                                       "content": ERRORS}})
    def health() -> JSONResponse:
        """Liveness, the served version, the answering server process (``worker_pid``), the store's
        status (``ok`` | ``unavailable``), the predictions waiting in the outage spool, and the
        store's counts. 503 (``status: "failing"``) when the
        prediction writer has died: nothing more can be acknowledged, so the server should be restarted."""
        m = holder.loaded
        writer = ctx.writer.status()
        dead = writer.get("writer") == "dead"
        return JSONResponse(status_code=503 if dead else 200, content={
            "status": "failing" if dead else "ok", "model_version": loop.registry.champion(),
            "loaded_version": m and m.version, "project": loop.spec.name, "worker_pid": os.getpid(), **writer})

    @r.get("/ready", responses={503: {"description": "No model loaded yet.", "content": ERRORS}})
    def ready() -> JSONResponse:
        """200 once a model is loaded and can answer; 503 before."""
        try:
            m = holder.get()
        except ModelloopError as e:
            return JSONResponse(status_code=503, content={"ready": False, "detail": str(e)})
        return JSONResponse({"ready": True, "model_version": m.version, "backend": m.backend})

    @r.get("/models")
    def models() -> dict[str, Any]:
        """Versions with metrics, parent, dataset, serving backend; and the champion."""
        rows = loop.models()
        for row in rows:
            row["backend"] = (loop.registry.manifest(row["version"]).get("serving") or {}).get("backend", "torch")
        return {"champion": loop.registry.champion(), "versions": rows}

    @r.get("/info")
    def info() -> dict[str, Any]:
        """What a client needs to build inputs: project, classes and the input format."""
        m = ctx.model_for_parsing()
        return {"project": loop.spec.name, "task": loop.spec.task, "class_names": m.class_names,
                **ctx.task.describe_input(m), "model_version": m.version, "predict_open": cfg.open_predict}

    @r.get("/metrics")
    def prometheus() -> Response:
        """Prometheus text format. Drift gauges hold the last monitor run's figures."""
        m = holder.loaded
        if m is not None:
            metrics.set_live_accuracy(m.version, loop.store.feedback_stats(loop.spec.feedback.untrusted_clients,
                                                                           model_version=m.version,
                                                                           class_names=m.class_names),
                                      _audit(m))
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @r.get("/stats")
    def stats() -> dict[str, Any]:
        """Live counters for the web UI."""
        m = holder.loaded
        audit = _audit(m) if m is not None else None
        return {"requests": metrics.total(ctx.task.served_route), **metrics.recent_latency_ms(),
                **loop.store.feedback_stats(), "feedback": loop.store.counts()["feedback"],
                # the figure above is from all feedback (biased); this one from the audit sample (unbiased)
                "live_accuracy_audit": audit,
                "model_version": m and m.version, "backend": m and m.backend,
                "uptime_s": time.time() - metrics.started, "predict_open": cfg.open_predict}

    return r
