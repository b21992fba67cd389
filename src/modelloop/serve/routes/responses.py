"""Documented answers besides 200, shared by the routes' OpenAPI descriptions (FastAPI documents
422 for routes with a declared body)."""

from __future__ import annotations

__all__ = ["ERRORS", "LIMITED", "NO_MODEL", "STORE_DOWN"]

ERRORS = {"application/json": {"schema": {"type": "object", "properties": {"detail": {}}}}}
STORE_DOWN = {503: {"description": "The feedback store cannot be reached right now; nothing was stored, send "
                                   "again after Retry-After seconds.", "content": ERRORS}}
NO_MODEL = {503: {"description": "No champion model to serve yet (run 'modelloop run DIR'), or the feedback "
                                 "store cannot be reached right now (Retry-After).", "content": ERRORS}}
LIMITED = {413: {"description": "The request body is larger than serving.max_body_bytes.", "content": ERRORS}}
