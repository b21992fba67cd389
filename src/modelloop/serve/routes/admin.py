"""``/admin/*`` (admin key): promote, roll back, retrain and watch as background jobs, monitor,
shadow, lineage."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, Request

from ...errors import InputError
from ..deps import ServeContext
from ..schemas import AdminPromoteIn, ShadowIn

__all__ = ["router"]


def router(ctx: ServeContext) -> APIRouter:
    r = APIRouter()
    loop, keys, jobs = ctx.loop, ctx.keys, ctx.jobs

    @r.post("/admin/promote")
    def admin_promote(body: AdminPromoteIn, request: Request) -> dict[str, Any]:
        keys.require(request, "admin")
        loop.registry.promote(body.version, reason="admin over HTTP")
        return {"champion": loop.registry.champion()}

    @r.post("/admin/rollback")
    def admin_rollback(request: Request) -> dict[str, Any]:
        keys.require(request, "admin")
        return {"champion": loop.registry.rollback()}

    @r.post("/admin/retrain", status_code=202)
    def admin_retrain(request: Request) -> dict[str, Any]:
        keys.require(request, "admin")
        return jobs.start()

    @r.post("/admin/watch", status_code=202)
    def admin_watch(request: Request) -> dict[str, Any]:
        """One policy check (retrain on triggers, auto-rollback), as a background job."""
        keys.require(request, "admin")
        return jobs.start("watch")

    @r.get("/admin/monitor")
    def admin_monitor(request: Request) -> dict[str, Any]:
        """Drift, prediction drift, live accuracy with its interval, feedback clients, shadow results."""
        keys.require(request, "admin")
        ctx.writer.flush()
        res = loop.monitor()
        ctx.metrics.set_drift(res["drift"])
        return res

    @r.post("/admin/shadow")
    def admin_shadow(body: ShadowIn, request: Request) -> dict[str, Any]:
        keys.require(request, "admin")
        return loop.shadow(body.version)

    @r.get("/admin/lineage")
    def admin_lineage(request: Request, prediction: str | None = None, version: str | None = None) -> dict[str, Any]:
        keys.require(request, "admin")
        if (prediction is None) == (version is None):
            raise InputError("query: expected exactly one of 'prediction' or 'version'")
        ctx.writer.flush()
        return loop.lineage(prediction_id=prediction, version=version)

    @r.get("/admin/jobs/{job_id}")
    def admin_job(job_id: str, request: Request) -> dict[str, Any]:
        """A job's status, from whichever server process started it (``running``, ``done``,
        ``skipped`` or ``failed``; a job whose process died is ``failed``)."""
        keys.require(request, "admin")
        job = jobs.get(job_id)
        if job is None:
            shown = job_id if len(job_id) <= 40 else job_id[:40] + "..."
            raise HTTPException(status_code=404, detail=f"job {shown!r}: not found; expected the id that "
                                                        "POST /admin/retrain or /admin/watch answered")
        return job

    return r
