"""Retraining (and policy checks) started over HTTP: one job at a time per project, its status
readable by every server process of the project.

A server may run as several processes on one port (``modelloop serve --workers N``); any of
them may receive ``POST /admin/retrain`` or ``GET /admin/jobs/{id}``. So jobs live in the
project's state folder, not in one process's memory:

- **One at a time**: the job's thread holds an exclusive ``flock`` on ``DIR/.modelloop/jobs/
  running.lock`` from start to end. A second start, in this process or another, cannot take it
  and is refused (409, naming the running job). The kernel releases the lock when the holding
  process exits, ``kill -9`` included, so a dead worker never blocks the next job.
- **Status from anywhere**: each job is a small JSON record, ``jobs/<id>.json``, replaced
  atomically (write, then rename) when it starts and when it ends; the end is written before the
  lock is released.
- **No job running forever**: a record that says ``running`` while its job does not hold the lock
  belongs to a process that died mid-job. The first reader that notices marks it ``failed``
  (``error`` says so) under the lock, so that it cannot race a new start.

The lock file holds the running job's id, written at a fixed length so that a reader never sees
half of it. Only the latest :data:`KEEP` records are kept.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import HTTPException

from ..loop import Loop
from ..settings import PRIVATE_FILE, ProjectPaths, private_dir, write_private

__all__ = ["RetrainJobs", "KEEP"]

log = logging.getLogger(__name__)

#: job records kept in the jobs folder (the oldest finished ones are removed on each start)
KEEP = 50

_ID = re.compile(r"[0-9a-f]{12}")
_SLOT_BYTES = 32  # "<12 hex id> <pid>" padded: one pwrite, always the same length


class RetrainJobs:
    """Background retrains (``kind`` ``"retrain"``) and policy checks (``"watch"``) of a project,
    one at a time across every process that serves it.

    Args:
        project_dir: the project folder; records and the lock live in ``DIR/.modelloop/jobs``.
    """

    def __init__(self, project_dir: str | Path) -> None:
        self.project_dir = Path(project_dir)
        self.folder = ProjectPaths(project_dir).state / "jobs"
        self._slot = self.folder / "running.lock"

    # -- starting --------------------------------------------------------------------------------
    def start(self, kind: str = "retrain") -> dict[str, Any]:
        """Start a job in a background thread of this process and return its record.

        Raises:
            HTTPException: 409 while a job of this project runs (in any process).
        """
        fd = self._open_slot()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            running = self._slot_job(fd)
            os.close(fd)
            raise HTTPException(status_code=409, detail="a retrain is already running" + (
                f" (job {running[0]}, server process {running[1]}); expected one job at a time per project: "
                f"follow it at /admin/jobs/{running[0]}" if running else "")) from None
        try:
            job = {"id": uuid.uuid4().hex[:12], "kind": kind, "status": "running", "started_at": time.time(),
                   "result": None, "error": None, "pid": os.getpid()}
            os.pwrite(fd, f"{job['id']} {os.getpid()}".ljust(_SLOT_BYTES).encode(), 0)
            self._write(job)
            self._prune(keep=job["id"])
            threading.Thread(target=self._run, args=(job, fd), daemon=True, name="modelloop-retrain").start()
        except BaseException:
            self._release(fd)
            raise
        return dict(job)  # a copy: the thread fills in the original

    def _run(self, job: dict[str, Any], fd: int) -> None:
        try:
            loop = Loop(self.project_dir)
            if job["kind"] == "watch":
                res = loop.watch_once()
                job["result"] = {k: res.get(k) for k in ("action", "version", "decision", "reasons", "champion")}
                job["result"]["triggers"] = res["triggers"]
            else:
                res = loop.retrain()
                job["result"] = {k: res[k] for k in ("version", "parent", "feedback_examples", "decision",
                                                     "champion_version")}
                job["result"]["reasons"] = res["evidence"]["reasons"]
            job["status"] = "skipped" if job["result"].get("decision") == "skipped" else "done"
        except Exception as e:  # reported to the caller through the job
            log.exception("retrain failed")
            job["status"], job["error"] = "failed", str(e)
        job["finished_at"] = time.time()
        try:
            self._write(job)  # the end is on disk before the next job may start
        except Exception:
            log.exception("job %s: cannot write its record", job["id"])
        finally:
            self._release(fd)

    # -- reading ---------------------------------------------------------------------------------
    def get(self, job_id: str) -> dict[str, Any] | None:
        """The job's record (``status`` ``running``, ``done``, ``skipped`` or ``failed``), or None
        for an unknown id. A ``running`` job whose process died is reported, and recorded,
        ``failed``."""
        job = self._read(job_id)
        if job is None or job["status"] != "running":
            return job
        fd = self._open_slot()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                running = self._slot_job(fd)
                if running is None or running[0] == job_id:
                    return job  # it runs
                # another job holds the slot: this one's process died before it finished
                return self._mark_stale(job_id) or job
            try:
                return self._mark_stale(job_id) or job  # nobody holds the slot: its process died
            finally:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _mark_stale(self, job_id: str) -> dict[str, Any] | None:
        job = self._read(job_id)  # again: it may have ended since it was first read
        if job is None or job["status"] != "running":
            return job
        job.update(status="failed", finished_at=time.time(),
                   error=f"interrupted: the server process (pid {job.get('pid')}) running it stopped before it "
                         "finished; start it again")
        log.warning("job %s: %s", job_id, job["error"])
        self._write(job)
        return job

    # -- files -----------------------------------------------------------------------------------
    def _open_slot(self) -> int:
        private_dir(self.folder)
        return os.open(self._slot, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)

    @staticmethod
    def _slot_job(fd: int) -> tuple[str, str] | None:
        """(job id, pid) of the job holding the slot, as it wrote them; None if not readable."""
        with contextlib.suppress(OSError, ValueError):
            job_id, pid = os.pread(fd, _SLOT_BYTES, 0).decode().split()
            if _ID.fullmatch(job_id):
                return job_id, pid
        return None

    @staticmethod
    def _release(fd: int) -> None:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def _path(self, job_id: str) -> Path | None:
        return self.folder / f"{job_id}.json" if _ID.fullmatch(job_id) else None

    def _read(self, job_id: str) -> dict[str, Any] | None:
        path = self._path(job_id)
        if path is None:
            return None
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None

    def _write(self, job: dict[str, Any]) -> None:
        write_private(self.folder / f"{job['id']}.json", json.dumps(job, default=str))

    def _prune(self, keep: str) -> None:
        """Remove the oldest records beyond :data:`KEEP` (never ``keep``, the job just started)."""
        try:
            records = sorted(self.folder.glob("*.json"), key=lambda p: p.stat().st_mtime)
        except FileNotFoundError:  # removed by another process's prune meanwhile
            return
        for path in records[:max(0, len(records) - KEEP)]:
            if path.stem != keep:
                path.unlink(missing_ok=True)
