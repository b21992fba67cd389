"""The labelling queue: ``GET /label/next?n=K`` (client key) leases up to K logged predictions to
the caller (its most informative unlabelled ones, and a uniformly random audit sample); labels
come back through ``POST /feedback`` with the item's ``origin``. ``GET /label`` is the labelling page."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from ...errors import InputError
from ...loop.labelling import MAX_ITEMS, check_applicable, next_items
from ..deps import ServeContext
from .responses import ERRORS, STORE_DOWN
from .ui import UI_DIR

__all__ = ["router"]


def router(ctx: ServeContext) -> APIRouter:
    r = APIRouter()
    loop = ctx.loop

    @r.get("/label", include_in_schema=False)
    def label_page() -> FileResponse:
        return FileResponse(UI_DIR / "label.html")

    @r.get("/label/next", responses={422: {"description": "n out of range, or a task without a labelling queue.",
                                           "content": ERRORS}, **STORE_DOWN})
    def label_next(request: Request, n: str = "1") -> dict[str, Any]:
        """Lease up to ``n`` (1-100) predictions to label (client key). Each item says its
        ``origin`` (``audit``: uniformly random; ``active``: out of distribution, uncertain and
        diverse), carries the stored input and the served answer, and stays reserved for this
        caller for ``feedback.lease_seconds``. Send its label to ``POST /feedback`` with that origin."""
        ctx.keys.require(request, "client")
        check_applicable(loop)
        try:
            count = int(n)
        except ValueError:
            raise InputError(f"query parameter 'n': received {n[:40]!r}; expected an integer from 1 to "
                             f"{MAX_ITEMS}") from None
        if not 1 <= count <= MAX_ITEMS:
            raise InputError(f"query parameter 'n': received {count}; expected an integer from 1 to {MAX_ITEMS}")
        ctx.writer.flush()  # what was just answered is in the store before we choose
        model = ctx.holder.get()
        items = next_items(loop, count, ctx.client_of(request), model=model)
        fb = loop.spec.feedback
        return {"items": items, "requested": count, "model_version": model.version,
                "class_names": None if getattr(model, "regression", False) else model.class_names,
                "audit_fraction": fb.audit_fraction, "lease_seconds": fb.lease_seconds}

    return r
