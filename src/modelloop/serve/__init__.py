"""Serving: a FastAPI app over the project's champion model and feedback store."""

from .app import create_app

__all__ = ["create_app"]
