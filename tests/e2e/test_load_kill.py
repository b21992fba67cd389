"""An acknowledgement is a promise: kill -9 of a loaded server, and a PostgreSQL restart under it.

16 client threads send predictions and feedback to a real ``modelloop serve`` on loopback while
the server is killed with SIGKILL and started again; afterwards every prediction answered 200
and every feedback answered 201 is in the store, and no feedback on an answered prediction got
404. The project is the cheapest one there is: logistic regression on the iris table.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from modelloop.feedback import FeedbackStore
from modelloop.project import Project
from tests.conftest import MODELLOOP, free_port
from tests.test_durability import pg_ids, pg_start, pg_stop

pytestmark = pytest.mark.slow

CLIENTS = 16


@pytest.fixture(scope="module")
def iris_project(tmp_path_factory) -> Path:
    from sklearn.datasets import load_iris

    root = tmp_path_factory.mktemp("iris")
    b = load_iris()
    frame = pd.DataFrame(b.data, columns=["sepal_length", "sepal_width", "petal_length", "petal_width"])
    frame["species"] = [str(b.target_names[i]) for i in b.target]
    frame.to_csv(root / "iris.csv", index=False)
    proj = root / "proj"
    Project.init(proj, task="tabular-classification", data=str(root / "iris.csv"), label_column="species",
                 target=0.0)
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec["selection"].update(candidates=["linear"], trials=1, epochs_per_trial=1, distill=False)
    spec["training"].update(max_epochs=2, patience=1)
    spec["serving"]["backends"] = ["torch"]
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    assert Project(proj).run()["champion"]
    return proj


class Serving:
    """``modelloop serve`` on one fixed loopback port, so that restarts keep the clients' URL."""

    def __init__(self, project: Path, env: dict[str, str] | None = None) -> None:
        self.project, self.env = project, {**os.environ, **(env or {})}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log = open(self.project.parent / f"serve-{self.port}-{self.starts}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen([MODELLOOP, "serve", str(self.project), "--host", "127.0.0.1", "--port",
                                      str(self.port)], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start: {Path(log.name).read_text()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


class Load:
    """CLIENTS threads: predict, then send feedback on every second answered prediction."""

    def __init__(self, url: str, key: str, rows: list[tuple[dict, str]], max_requests: int = 4000) -> None:
        self.url, self.rows, self.max_requests = url, rows, max_requests
        self.auth = {"Authorization": f"Bearer {key}"}
        self.predictions: dict[str, str] = {}  # id -> X-Modelloop-Logged
        self.feedback: dict[int, str] = {}  # feedback id -> prediction id
        self.lost: list[tuple[str, int, str]] = []  # feedback on an answered prediction: not 201/503
        self.refused_feedback: list[str | None] = []  # 503s: their Retry-After
        self.other: list[tuple[str, int, str]] = []
        self.requests = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(CLIENTS)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _client(self, i: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            n = i
            while not self._stop.is_set() and self.requests < self.max_requests:
                row, label = self.rows[n % len(self.rows)]
                n += CLIENTS
                try:
                    r = c.post("/predict", json={"row": row})
                except httpx.TransportError:  # the server is being killed or restarted
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.requests += 1
                if r.status_code != 200:
                    self.other.append(("predict", r.status_code, r.text[:200]))
                    continue
                pid = r.json()["prediction_id"]
                with self._lock:
                    self.predictions[pid] = r.headers.get("x-modelloop-logged", "")
                if n % 2:
                    continue
                for _ in range(100):  # the same feedback until it is answered
                    try:
                        f = c.post("/feedback", json={"prediction_id": pid, "label": label}, headers=self.auth)
                    except httpx.TransportError:
                        time.sleep(0.05)
                        continue
                    if f.status_code == 201:
                        with self._lock:
                            self.feedback[f.json()["feedback_id"]] = pid
                        break
                    if f.status_code == 503:
                        self.refused_feedback.append(f.headers.get("retry-after"))
                        time.sleep(0.1)
                        continue
                    self.lost.append((pid, f.status_code, f.text[:200]))
                    break

    def run_for(self, seconds: float) -> None:
        """Let the load run ``seconds`` more (at least until a few more answers came)."""
        start = len(self.predictions)
        deadline = time.time() + seconds
        while time.time() < deadline or (len(self.predictions) < start + 20 and time.time() < deadline + 20):
            time.sleep(0.05)


def _traffic() -> list[tuple[dict, str]]:
    from sklearn.datasets import load_iris

    b = load_iris()
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    return [(dict(zip(names, map(float, x), strict=True)), str(b.target_names[y]))
            for x, y in zip(b.data, b.target, strict=True)]


def _key(project: Path) -> str:
    return json.loads((project / ".modelloop" / "keys.json").read_text())["client"][0]


def _stored(url: str) -> tuple[set[str], dict[int, str]]:
    store = FeedbackStore(url)
    try:
        with store.engine.connect() as c:
            preds = {r[0] for r in c.exec_driver_sql("select id from predictions")}
            fbs = {int(r[0]): r[1] for r in c.exec_driver_sql("select id, prediction_id from feedback")}
        return preds, fbs
    finally:
        store.close()


def _check(load: Load, url: str, project: Path) -> None:
    assert not load.lost, f"feedback on answered predictions not accepted: {load.lost[:5]}"
    assert not load.other, load.other[:5]
    preds, fbs = _stored(url)
    missing = set(load.predictions) - preds
    assert not missing, f"{len(missing)} of {len(load.predictions)} answered predictions are not stored"
    assert all(fbs.get(fid) == pid for fid, pid in load.feedback.items()), "answered feedback not stored"
    assert not list((project / ".modelloop").glob("prediction-spool-*.jsonl"))  # replayed and removed


def test_killing_a_loaded_server_loses_no_acknowledged_prediction_or_feedback(iris_project):
    server = Serving(iris_project)
    server.start()
    try:
        with Load(server.url, _key(iris_project), _traffic()) as load:
            for _ in range(2):
                load.run_for(2.0)
                server.kill()  # SIGKILL: no shutdown hook runs
                server.start()
            load.run_for(2.0)
        answered = len(load.predictions)
    finally:
        server.stop()
    assert answered > 100 and len(load.feedback) > 30, (answered, len(load.feedback))
    _check(load, f"sqlite:///{iris_project / 'feedback.db'}", iris_project)
    assert set(load.predictions.values()) == {"stored"}


def test_postgresql_restart_under_load_spools_predictions_and_refuses_feedback(iris_project, postgres, tmp_path):
    url = postgres.create_database("loadkill")
    project = tmp_path / "proj"
    subprocess.run(["cp", "-a", str(iris_project), str(project)], check=True)
    server = Serving(project, env={"MODELLOOP_STORE_URL": url})
    server.start()
    try:
        with Load(server.url, _key(project), _traffic()) as load:
            load.run_for(1.5)
            pg_stop(postgres)
            try:
                load.run_for(2.5)  # predictions answered from the spool, feedback refused
                down = dict(load.predictions)
                health = httpx.get(f"{server.url}/health", timeout=10).json()
            finally:
                pg_start(postgres)
            time.sleep(0.3)
            server.kill()  # perhaps before the spool is replayed: the next server replays it
            server.start()
            load.run_for(2.0)
        answered = len(load.predictions)
    finally:
        server.stop()
    assert health["store"] == "unavailable" and health["status"] == "ok", health
    assert "spooled" in down.values(), "no prediction was answered from the spool while PostgreSQL was down"
    assert load.refused_feedback and all(r and int(r) > 0 for r in load.refused_feedback)
    assert answered > 100 and len(load.feedback) > 30, (answered, len(load.feedback))
    _check(load, url, project)
    assert set(load.predictions) <= pg_ids(url)
