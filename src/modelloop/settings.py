"""Where a project keeps its state. Overridable with environment variables (MODELLOOP_*)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ProjectPaths"]


class ProjectPaths:
    """Paths inside a project folder.

    ``MODELLOOP_STORE_URL`` overrides the feedback store (default: the spec's, else a SQLite file
    in the project).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.state = self.root / ".modelloop"
        self.data = self.state / "data"
        self.runs = self.state / "runs"
        self.registry = self.root / "registry"
        self.reports = self.root / "reports"
        self.feedback_db = self.root / "feedback.db"

    def store_url(self, configured: str | None = None) -> str:
        """``MODELLOOP_STORE_URL``, else the spec's ``feedback.store_url``, else SQLite in the project."""
        return os.environ.get("MODELLOOP_STORE_URL") or configured or f"sqlite:///{self.feedback_db}"
