"""Background jobs of the server: one at a time per project, readable from every server process,
never left ``running`` by a process that died. (The same with real server processes:
tests/e2e/test_serve_workers.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import pytest
from fastapi import HTTPException

import modelloop.serve.jobs as jobs_module
from modelloop.serve.jobs import RetrainJobs


class _SlowLoop:
    """Stands in for the project's loop: a retrain that lasts until the test releases it."""

    release = threading.Event()

    def __init__(self, _project_dir) -> None:
        pass

    def retrain(self) -> dict:
        assert self.release.wait(30)
        return {"version": "v2", "parent": "v1", "feedback_examples": 3, "decision": "promoted",
                "champion_version": "v2", "evidence": {"reasons": ["better"]}}


def _wait_end(jobs: RetrainJobs, job_id: str) -> dict:
    deadline = time.time() + 30
    while (job := jobs.get(job_id))["status"] == "running":
        assert time.time() < deadline
        time.sleep(0.02)
    return job


def test_one_job_at_a_time_and_its_status_from_another_instance(tmp_path, monkeypatch):
    monkeypatch.setattr(jobs_module, "Loop", _SlowLoop)
    _SlowLoop.release.clear()
    here, there = RetrainJobs(tmp_path), RetrainJobs(tmp_path)  # two server processes' views
    job = here.start()
    with pytest.raises(HTTPException) as refused:
        there.start("watch")
    assert refused.value.status_code == 409 and job["id"] in refused.value.detail
    with pytest.raises(HTTPException):
        here.start()
    assert there.get(job["id"])["status"] == "running"
    _SlowLoop.release.set()
    done = _wait_end(there, job["id"])
    assert done["status"] == "done" and done["result"]["version"] == "v2" and done["finished_at"] >= done["started_at"]
    assert there.get("0" * 12) is None and there.get("../keys") is None
    _SlowLoop.release.clear()
    second = there.start()  # the slot is free again
    _SlowLoop.release.set()
    assert _wait_end(here, second["id"])["status"] == "done"


def test_a_job_whose_process_died_is_reported_failed(tmp_path):
    # a process starts a job, then is killed mid-job: its record says "running", nobody holds the slot
    code = ("import os, signal, sys, time\n"
            "import modelloop.serve.jobs as m\n"
            "class Hang:\n"
            "    def __init__(self, _): pass\n"
            "    def retrain(self): time.sleep(60)\n"
            "m.Loop = Hang\n"
            "print(m.RetrainJobs(sys.argv[1]).start()['id'], flush=True)\n"
            "time.sleep(0.2)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    job_id = proc.stdout.strip()
    jobs = RetrainJobs(tmp_path)
    record = json.loads((jobs.folder / f"{job_id}.json").read_text())
    assert record["status"] == "running", proc.stderr
    job = jobs.get(job_id)
    assert job["status"] == "failed" and "interrupted" in job["error"] and str(record["pid"]) in job["error"]
    assert json.loads((jobs.folder / f"{job_id}.json").read_text())["status"] == "failed"  # recorded
