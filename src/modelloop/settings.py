"""Where a project keeps its state. Overridable with environment variables (MODELLOOP_*).

Project folders hold user data (training snapshots, inputs fed back, models trained on them)
and secrets (API keys), so what modelloop creates in them is private to its owner: folders
0700, files 0600, set explicitly (``mkdir(mode=...)`` then ``chmod``), whatever the umask.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ProjectPaths", "cache_dir", "private_dir", "write_private", "PRIVATE_DIR", "PRIVATE_FILE"]

PRIVATE_DIR, PRIVATE_FILE = 0o700, 0o600


def cache_dir() -> Path:
    """Where derived, re-creatable files go (exported ONNX encoders, measured thread choices).

    ``MODELLOOP_CACHE_DIR`` when set, else ``$XDG_CACHE_HOME/modelloop``, else ``~/.cache/modelloop``.
    Nothing in it is user data: deleting it costs only the time to rebuild what was there.
    """
    configured = os.environ.get("MODELLOOP_CACHE_DIR")
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "modelloop"


def private_dir(path: str | Path) -> Path:
    """Create ``path`` (and missing parents) readable only by its owner; tighten it if it exists."""
    path = Path(path)
    if not path.is_dir():
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != PRIVATE_DIR:
        path.chmod(PRIVATE_DIR)
    return path


def write_private(path: str | Path, data: str | bytes, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (a unique temporary file, then rename), mode 0600.

    A reader sees the old content or the new, never a part; with ``fsync`` the content is on disk
    before the rename and the rename after it, so a power cut leaves the old file or the new one.
    """
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        os.fchmod(fd, PRIVATE_FILE)
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:  # the rename itself, so that after a power cut the file has its new content
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return path


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
        #: the writer lock: one run, retrain, watch round or registry change at a time
        self.lock = self.state / "writer.lock"

    def make_private(self) -> None:
        """Create (or tighten) the folders that hold user data: ``.modelloop/`` and its runs and
        data, ``registry/``, ``reports/`` — mode 0700."""
        for folder in (self.state, self.runs, self.data, self.registry, self.reports):
            private_dir(folder)

    def store_url(self, configured: str | None = None) -> str:
        """``MODELLOOP_STORE_URL``, else the spec's ``feedback.store_url``, else SQLite in the project."""
        return os.environ.get("MODELLOOP_STORE_URL") or configured or f"sqlite:///{self.feedback_db}"
