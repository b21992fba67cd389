"""The whole loop on the founding case with nobody at the keyboard.

init on builtin:seed-case -> run -> serve on a free loopback port -> simulated users send live
traffic (digits in neither the training nor the test split) over HTTP and give feedback on part
of it -> retrain -> gate -> promote or reject.
"""

from __future__ import annotations

import logging
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvicorn

from .data.builtin import seed_case_traffic
from .errors import ModelloopError
from .loop import Progress
from .project import Project
from .serve import create_app
from .serve.security import keys_for
from .spec import SPEC_FILE

__all__ = ["run_demo", "free_port", "BackgroundServer"]

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class BackgroundServer:
    """uvicorn serving an app in a thread of this process; a context manager."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn.Config(app, host=self.host, port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise ModelloopError(f"server on {self.url} did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def run_demo(directory: str | Path, fresh: bool = False, traffic: int = 600, seed: int = 0,
             progress: Progress | None = None) -> dict[str, Any]:
    """Run the founding-case loop in ``directory``. Returns the summary (versions, decision, ...).

    Simulated users are truthful and behave as people do: nearly everyone whose prediction was
    wrong corrects it (90%), and some whose prediction was right confirm it (40%).
    """
    say = progress or (lambda m: log.info(m))
    directory = Path(directory)
    if (directory / SPEC_FILE).exists():
        if not fresh:
            raise ModelloopError(f"{directory}: already holds a modelloop project; expected a new folder "
                                 "(pass --fresh to start the demo over in it)")
        shutil.rmtree(directory)
    t0 = time.perf_counter()
    say(f"[demo] init {directory} on builtin:seed-case (accuracy >= 0.95 required)")
    project = Project.init(directory, task="image-classification", data="builtin:seed-case", name="seed-case",
                           target=0.95)
    first = project.run(progress=progress)
    if not first["champion"]:
        raise ModelloopError(f"the first version {first['version']} did not meet the requirements "
                             f"(test accuracy {first['metrics']['accuracy']:.4f}); nothing to serve")

    x, y = seed_case_traffic()
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(y), size=min(traffic, len(y)), replace=False)
    names = ["even", "odd"]
    sent = correct = feedback = 0
    app = create_app(project.path)
    keys, _ = keys_for(project.loop.spec.serving.keys, project.loop.paths.state / "keys.json")
    headers = {"Authorization": f"Bearer {(keys['client'] or keys['admin'])[0]}"}
    with BackgroundServer(app) as server, httpx.Client(base_url=server.url, timeout=30, headers=headers) as client:
        say(f"[demo] serving {first['version']} on {server.url}; {len(pick)} users send images")
        for i in pick:
            r = client.post("/predict", json={"pixels": x[i].reshape(-1).tolist()})
            r.raise_for_status()
            pred = r.json()
            sent += 1
            truth = names[int(y[i])]
            right = pred["label"] == truth
            correct += right
            if rng.random() < (0.4 if right else 0.9):
                client.post("/feedback", json={"prediction_id": pred["prediction_id"], "label": truth}
                            ).raise_for_status()
                feedback += 1
        live_accuracy = correct / max(sent, 1)
        say(f"[demo] live accuracy {live_accuracy:.3f} on {sent} requests; {feedback} feedback labels")
        second = project.retrain(progress=progress)
        served_after = client.get("/health").json()["model_version"]

    versions = [{"version": m["version"], "test_accuracy": m["accuracy"], "parent": m["parent"],
                 "feedback_examples": m["feedback_examples"], "aliases": m["aliases"]} for m in project.models()]
    return {
        "project": str(project.path), "versions": versions, "champion": project.loop.registry.champion(),
        "decision": second["decision"], "reasons": second["evidence"]["reasons"],
        "traffic": {"requests": sent, "live_accuracy": live_accuracy, "feedback": feedback},
        "served_after_retrain": served_after, "reports": [first["report"], second["report"]],
        "seconds": round(time.perf_counter() - t0, 1),
    }
