"""``modelloop serve DIR --workers 2`` on PostgreSQL: two real server processes on one port.

One server (two uvicorn worker processes) serves a tiny tabular project whose feedback store is
a real PostgreSQL database. Client threads open a new connection per request, so the kernel
hands requests to both processes; every answer names its process (``X-Modelloop-Worker``).
The tests check that every acknowledged row is in the database, that a promotion made by
another process reaches both workers, that the admin retrain job runs once whichever process
gets the request (the other answers 409) and that its status reads the same from both, that a
job whose process is killed does not stay ``running``, and that no process is left behind, even
when the supervising process itself is killed.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from modelloop.feedback import FeedbackStore
from modelloop.project import Project
from tests.conftest import Server, cli

pytestmark = pytest.mark.slow

WORKER = "x-modelloop-worker"


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, ppid in parents.items() if ppid in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie runs nothing; its parent (or init) reaps it


def _assert_gone(pids, what: str, timeout: float = 30) -> None:
    """Wait until none of ``pids`` runs; kill and name the ones still running after ``timeout``."""
    deadline = time.time() + timeout
    while any(_alive(p) for p in pids) and time.time() < deadline:
        time.sleep(0.1)
    left = [p for p in pids if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, f"{what}: {left}"


def _rows(project: Path) -> list[tuple[dict, str]]:
    """(request row, true label) pairs from the project's own data file."""
    spec = yaml.safe_load((project / "modelloop.yaml").read_text())
    frame = pd.read_csv(spec["data"]["source"])
    label = spec["data"]["label_column"]
    features = [c for c in frame.columns if c != label]
    return [({c: (r[c] if isinstance(r[c], str) else float(r[c])) for c in features}, str(r[label]))
            for _, r in frame.iterrows()]


def _workers_seen(url: str, want: int = 2, timeout: float = 90) -> set[int]:
    """Poll /health on new connections until ``want`` different processes answered."""
    seen: set[int] = set()
    deadline = time.time() + timeout
    while len(seen) < want and time.time() < deadline:
        try:
            r = httpx.get(f"{url}/health", timeout=5)
            if r.status_code == 200:
                assert int(r.headers[WORKER]) == r.json()["worker_pid"]
                seen.add(r.json()["worker_pid"])
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    assert len(seen) >= want, f"only worker processes {seen} answered within {timeout} s"
    return seen


@pytest.fixture(scope="module")
def served(tiny_project, postgres, tmp_path_factory):
    """(project, server, database URL, request rows): a tiny tabular project with two versions
    and a PostgreSQL store, served by ``--workers 2``; stopped by its pid at the end, and no process
    of it may be left running."""
    url = postgres.create_database("workers")
    project = tiny_project("tabular-classification", tmp_path_factory.mktemp("workers") / "proj")
    spec = yaml.safe_load((project / "modelloop.yaml").read_text())
    spec["feedback"]["store_url"] = url
    (project / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    Project(project).run()  # a second version, to promote and demote
    server = Server(project, ("--workers", "2"))
    _workers_seen(server.url)
    yield project, server, url, _rows(project)
    processes = _descendants(server.proc.pid) | {server.proc.pid}
    assert len(processes) >= 3, processes  # the supervisor and its two workers (at least)
    server.stop()
    _assert_gone(processes, "server processes left running after the server stopped")


def _keys(project: Path) -> dict[str, list[str]]:
    return json.loads((project / ".modelloop" / "keys.json").read_text())


def _predict_and_feedback(server: Server, rows: list[tuple[dict, str]], n: int, threads: int = 8) -> dict:
    """``threads`` clients send ``n`` predictions in all, each followed by its feedback, each
    request on a new connection. Returns what was acknowledged, and by which process."""
    auth = {"Authorization": f"Bearer {_keys(server.project)['client'][0]}"}
    out = {"predictions": {}, "feedback": {}, "workers": set(), "errors": []}
    lock = threading.Lock()
    todo = iter(range(n))

    def client() -> None:
        while True:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            row, label = rows[i % len(rows)]
            r = httpx.post(f"{server.url}/predict", json={"row": row}, timeout=60)
            with lock:
                out["workers"].add(int(r.headers[WORKER]))
                if r.status_code != 200:
                    out["errors"].append(("predict", r.status_code, r.text[:200]))
                    continue
                pid = r.json()["prediction_id"]
                out["predictions"][pid] = r.json()["model_version"]
            f = httpx.post(f"{server.url}/feedback", json={"prediction_id": pid, "label": label}, headers=auth,
                           timeout=60)
            with lock:
                out["workers"].add(int(f.headers[WORKER]))
                if f.status_code != 201:
                    out["errors"].append(("feedback", f.status_code, f.text[:200]))
                else:
                    out["feedback"][f.json()["feedback_id"]] = pid

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(timeout=300)
    return out


def test_every_acknowledged_row_is_stored_and_both_workers_answer(served):
    project, server, url, rows = served
    sent = _predict_and_feedback(server, rows, n=100)  # 200 requests
    assert not sent["errors"], sent["errors"][:5]
    assert len(sent["predictions"]) == 100 and len(sent["feedback"]) == 100
    assert len(sent["workers"]) == 2, f"answered by {sent['workers']}; expected both worker processes"
    store = FeedbackStore(url)
    try:
        with store.engine.connect() as c:
            predictions = {r[0] for r in c.exec_driver_sql("select id from predictions")}
            feedback = {int(r[0]): r[1] for r in c.exec_driver_sql("select id, prediction_id from feedback")}
    finally:
        store.close()
    missing = set(sent["predictions"]) - predictions
    assert not missing, f"{len(missing)} acknowledged predictions are not in the database"
    assert all(feedback.get(fid) == pid for fid, pid in sent["feedback"].items()), "acknowledged feedback missing"


def test_a_promotion_reaches_every_worker(served):
    project, server, _, rows = served
    models = json.loads(cli("models", str(project), "--json", check=True).stdout)
    assert len(models["versions"]) >= 2
    target = next(v["version"] for v in models["versions"] if v["version"] != models["champion"])
    cli("promote", str(project), target, check=True)  # another process moves the alias
    workers = _workers_seen(server.url)
    answered: dict[int, str] = {}
    deadline = time.time() + 60
    while time.time() < deadline:
        r = httpx.post(f"{server.url}/predict", json={"row": rows[0][0]}, timeout=30)
        assert r.status_code == 200, r.text
        answered[int(r.headers[WORKER])] = r.json()["model_version"]
        if workers <= set(answered) and all(answered[w] == target for w in workers):
            break
    assert {answered.get(w) for w in workers} == {target}, f"after promoting {target}, workers answered {answered}"
    for _ in range(20):  # and they stay on it
        r = httpx.post(f"{server.url}/predict", json={"row": rows[1][0]}, timeout=30)
        assert r.json()["model_version"] == target, (r.headers[WORKER], r.json())


def _post_at_once(url: str, path: str, headers: dict[str, str], n: int = 2) -> list[httpx.Response]:
    """``n`` POSTs released together, each on its own connection."""
    barrier = threading.Barrier(n)
    answers: list[httpx.Response] = []
    clients = [httpx.Client(base_url=url, timeout=60) for _ in range(n)]
    for c in clients:
        assert c.get("/health").status_code == 200  # connected before the barrier

    def post(c: httpx.Client) -> None:
        barrier.wait()
        answers.append(c.post(path, headers=headers))

    threads = [threading.Thread(target=post, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for c in clients:
        c.close()
    return answers


def _job_until_done(url: str, job_id: str, admin: dict[str, str], timeout: float = 300) -> tuple[dict, dict[int, set]]:
    """Poll the job on new connections until it ended and both workers answered its final state.
    Returns the final record and, by worker, the statuses it answered."""
    seen: dict[int, set] = {}
    deadline = time.time() + timeout
    while time.time() < deadline:
        r = httpx.get(f"{url}/admin/jobs/{job_id}", headers=admin, timeout=30)
        assert r.status_code == 200, (r.headers.get(WORKER), r.text)
        job = r.json()
        assert job["id"] == job_id
        seen.setdefault(int(r.headers[WORKER]), set()).add(job["status"])
        ended = {w for w, s in seen.items() if s - {"running"}}
        if job["status"] != "running" and len(ended) >= 2:
            return job, seen
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end, or was not read from both workers, in {timeout} s: {seen}")


def test_one_retrain_job_for_all_workers(served):
    project, server, _, rows = served
    _predict_and_feedback(server, rows[::3], n=40)  # new feedback: the retrain trains
    admin = {"Authorization": f"Bearer {_keys(project)['admin'][0]}"}
    answers = _post_at_once(server.url, "/admin/retrain", admin)
    codes = sorted(a.status_code for a in answers)
    assert codes == [202, 409], [(a.status_code, a.headers.get(WORKER), a.text) for a in answers]
    started = next(a for a in answers if a.status_code == 202).json()
    refused = next(a for a in answers if a.status_code == 409)
    assert "already running" in refused.json()["detail"]
    # while it runs, a third request is refused too, whichever worker takes it
    again = httpx.post(f"{server.url}/admin/retrain", headers=admin, timeout=30)
    job, seen = _job_until_done(server.url, started["id"], admin)
    assert len(seen) == 2, seen  # both workers read the job
    if again.status_code == 202:  # allowed only once the first job had ended
        assert job["finished_at"] <= again.json()["started_at"], (job, again.json())
        _job_until_done(server.url, again.json()["id"], admin)
    else:
        assert again.status_code == 409, again.text
    assert job["status"] == "done", job
    assert job["result"]["decision"] in ("promoted", "rejected")
    versions = json.loads(cli("models", str(project), "--json", check=True).stdout)["versions"]
    assert job["result"]["version"] == versions[-1]["version"]
    assert sum(1 for v in versions if v["parent"]) == 1, "more than one retrain ran"


def test_a_job_whose_worker_dies_is_not_left_running(served):
    project, server, _, rows = served
    _predict_and_feedback(server, rows[1::3], n=40)
    admin = {"Authorization": f"Bearer {_keys(project)['admin'][0]}"}
    r = httpx.post(f"{server.url}/admin/retrain", headers=admin, timeout=30)
    assert r.status_code == 202, r.text
    job = r.json()
    os.kill(job["pid"], signal.SIGKILL)  # the worker running it, mid-job
    deadline = time.time() + 60
    while True:
        try:
            j = httpx.get(f"{server.url}/admin/jobs/{job['id']}", headers=admin, timeout=30)
        except httpx.TransportError:  # the killed worker's connection
            continue
        if j.status_code == 200 and j.json()["status"] != "running":
            break
        assert time.time() < deadline, f"job still {j.json()} 60 s after its worker was killed"
        time.sleep(0.1)
    assert j.json()["status"] == "failed" and "interrupted" in j.json()["error"], j.json()
    # the slot is free again: the next job starts (on a surviving or restarted worker)
    r = httpx.post(f"{server.url}/admin/watch", headers=admin, timeout=30)
    assert r.status_code == 202, r.text
    _workers_seen(server.url)  # uvicorn replaced the killed worker


def test_workers_stop_when_their_supervisor_is_killed(served):
    project = served[0]
    other = Server(project, ("--workers", "2"))  # a second server of the same project, on its own port
    try:
        workers = _workers_seen(other.url)
        assert workers <= _descendants(other.proc.pid)
    finally:
        os.kill(other.proc.pid, signal.SIGKILL)  # no chance to stop its workers itself
        other.proc.wait()
        other.log.close()
    _assert_gone(workers, "workers went on serving after their supervisor was killed")


def test_several_workers_refuse_sqlite_and_bad_counts(tiny_project, tmp_path):
    project = tiny_project("tabular-classification", tmp_path / "proj")
    proc = cli("serve", str(project), "--workers", "2", "--port", "1", timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "feedback.store_url" in proc.stderr and "SQLite" in proc.stderr and "postgresql://" in proc.stderr
    assert "--workers 2" in proc.stderr and "Traceback" not in proc.stderr
    for bad in ("0", "-3", "two", "65"):
        proc = cli("serve", str(project), "--workers", bad, "--port", "1", timeout=120)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "--workers" in proc.stderr and repr(int(bad) if bad.lstrip("-").isdigit() else bad) in proc.stderr
        assert "expected an integer from 1 to 64" in proc.stderr and "Traceback" not in proc.stderr
    # the spec's serving.workers is checked the same way
    spec = yaml.safe_load((project / "modelloop.yaml").read_text())
    spec["serving"]["workers"] = 2
    (project / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    proc = cli("serve", str(project), "--port", "1", timeout=120)
    assert proc.returncode == 2 and "serving.workers: 2" in proc.stderr and "SQLite" in proc.stderr, proc.stderr
    proc = cli("serve", str(project), "--workers", "2", "--json", "--port", "1", timeout=120)
    assert proc.returncode == 2 and json.loads(proc.stdout)["type"] == "InputError"
