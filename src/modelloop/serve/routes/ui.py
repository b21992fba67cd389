"""The web UI: ``/`` is its page; its static files are served under ``/ui`` (no build step)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from ..deps import ServeContext

__all__ = ["UI_DIR", "router", "static"]

UI_DIR = Path(__file__).resolve().parents[1] / "ui"


def router(ctx: ServeContext) -> APIRouter:
    r = APIRouter()

    @r.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(UI_DIR / "index.html")

    return r


def static() -> StaticFiles:
    """The UI's files, to mount at ``/ui`` (an ``APIRouter`` cannot carry a mount)."""
    return StaticFiles(directory=UI_DIR)
