"""A task defined here, in the test, goes through the whole loop: init -> run -> serve -> predict
-> feedback -> retrain -> gate, with lineage, and no file under ``src/`` naming it.

The task ("toy-points"): points in 8 dimensions from two Gaussian clouds, two classes. It brings
its own data source (``toy:SEED``), its own featurizer (standardization learned on the training
split) and its own request body (``{"point": [...]}``), and reuses what every supervised task
shares (candidates of the model families, the Trainer, the gate, the registry, the server).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import yaml

from modelloop.data.dataset import DataReport, Dataset, fingerprint
from modelloop.demo import BackgroundServer
from modelloop.errors import DataError, InputError
from modelloop.project import Project
from modelloop.serve import create_app
from modelloop.serve.security import keys_for
from modelloop.tasks import Candidate, register_task, task_names
from modelloop.tasks.features import Featurizer, register_featurizer
from modelloop.tasks.supervised import SupervisedTask

DIM = 8


def points(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping clouds (class 0 around -0.6, class 1 around +0.6 in every dimension)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(size=(n, DIM)) + np.where(y[:, None] == 1, 0.6, -0.6)
    return x.astype(np.float32), y.astype(np.int64)


@register_featurizer
class Standardize(Featurizer):
    """Per-dimension standardization, learned on the training split."""

    kind = "toy-standardize"

    def __init__(self, mean: list[float] | None = None, std: list[float] | None = None) -> None:
        self.mean_ = None if mean is None else torch.tensor(mean)
        self.std_ = None if std is None else torch.tensor(std)

    def fit(self, x: torch.Tensor) -> Standardize:
        x = torch.as_tensor(x, dtype=torch.float32)
        self.mean_, self.std_ = x.mean(0), x.std(0).clamp_min(1e-6)
        return self

    def transform(self, x: Any) -> torch.Tensor:
        return (torch.as_tensor(x, dtype=torch.float32) - self.mean_) / self.std_

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean_.tolist(), "std": self.std_.tolist()}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> Standardize:
        return cls(cfg.get("mean"), cfg.get("std"))


class ToyPoints(SupervisedTask):
    name = "toy-points"
    input_kind = "vector"
    unit = "points"
    json_example = '{"point": [0.1, ...]}'
    candidates = {
        "linear": Candidate("linear", "linear", {"kind": "toy-standardize"}, about="logistic regression"),
        "mlp": Candidate("mlp", "mlp", {"kind": "toy-standardize"}, about="one hidden layer"),
    }
    default_candidates = ("linear", "mlp")
    default_data = "toy:0"

    def resolve_source(self, source: str) -> str:
        return source  # not a path

    def check_source(self, source: str, base: Path) -> None:
        if not source.startswith("toy:") or not source[4:].isdigit():
            raise DataError(f"data source {source!r}: expected toy:SEED")

    def prepare(self, data, base_dir: Path) -> Dataset:
        x, y = points(600, int(data.source[4:]))
        cut = {"train": slice(0, 360), "val": slice(360, 480), "test": slice(480, 600)}
        splits = {s: (torch.from_numpy(x[c]), torch.from_numpy(y[c])) for s, c in cut.items()}
        names = ["left", "right"]
        report = DataReport(source=data.source, found=600, kept=600,
                            class_counts={n: int((y == i).sum()) for i, n in enumerate(names)},
                            split_counts={s: {n: int((t[1] == i).sum()) for i, n in enumerate(names)}
                                          for s, t in splits.items()})
        return Dataset(splits, names, None, report, fingerprint(splits, names), kind="vector")

    def candidates_for(self, ds) -> tuple[list[str], dict[str, str]]:
        return list(self.default_candidates), {}

    def collate(self, items: list[Any], like) -> tuple[Any, list[bool]]:
        keep = [isinstance(a, np.ndarray) and a.shape == (DIM,) for a in items]
        rows = [a.astype(np.float32) for a, k in zip(items, keep, strict=True) if k]
        return torch.from_numpy(np.stack(rows) if rows else np.zeros((0, DIM), np.float32)), keep

    def parse_json(self, body: Any, model, limits=None) -> tuple[Any, bool]:
        many = isinstance(body, dict) and "instances" in body
        vals = body["instances"] if many else [body.get("point") if isinstance(body, dict) else None]
        for i, v in enumerate(vals):
            if not (isinstance(v, list) and len(v) == DIM and all(
                    isinstance(f, (int, float)) and not isinstance(f, bool) and np.isfinite(f) for f in v)):
                where = f"instances[{i}]" if many else "point"
                raise InputError(f"field {where!r}: expected {DIM} numbers")
        return torch.tensor(vals, dtype=torch.float32), many

    def predict_offline(self, model, inputs: Any) -> list[dict[str, Any]]:
        x = torch.as_tensor(np.asarray(inputs, dtype=np.float32).reshape(-1, DIM))
        return self.answers(model, model.predict_proba(x).numpy())


@pytest.fixture(scope="module", autouse=True)
def toy_task():
    register_task("toy-points", ToyPoints, replace=True)
    yield


def test_a_task_defined_in_a_test_goes_through_the_whole_loop(tmp_path):
    src = Path(__file__).resolve().parents[2] / "src"
    assert not any("toy-points" in p.read_text(errors="ignore") for p in src.rglob("*.py"))
    assert "toy-points" in task_names()

    proj = tmp_path / "toy"
    project = Project.init(proj, task="toy-points", target=0.7)
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec["selection"].update(trials=2, epochs_per_trial=3)
    spec["training"].update(max_epochs=20, patience=3)
    spec["feedback"]["holdout_fraction"] = 0.3
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    project = Project(proj)

    first = project.run()
    assert first["passed"] and first["champion"] and first["metrics"]["accuracy"] >= 0.7
    board = project.loop.registry.manifest(first["version"])["selection"]["leaderboard"]
    assert {r["candidate"] for r in board} == {"linear", "mlp"}
    x, y = points(300, 1)  # live traffic: new points of the same clouds
    offline = project.predict(x[:5])
    assert [a["label"] for a in offline] == [a["label"] for a in project.predict(x[:5])]

    keys, _ = keys_for(project.loop.spec.serving.keys, project.loop.paths.state / "keys.json")
    headers = {"Authorization": f"Bearer {(keys['client'] or keys['admin'])[0]}"}
    names = ["left", "right"]
    with BackgroundServer(create_app(proj)) as server, httpx.Client(base_url=server.url, headers=headers,
                                                                    timeout=30) as client:
        bad = client.post("/predict", json={"point": [1, 2]})
        assert bad.status_code == 422 and "8 numbers" in bad.text
        ids = []
        for i in range(len(x)):
            r = client.post("/predict", json={"point": x[i].tolist()})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model_version"] == first["version"] and body["label"] in names
            if i < 5:
                assert body["label"] == offline[i]["label"]
            ids.append(body["prediction_id"])
            fb = client.post("/feedback", json={"prediction_id": body["prediction_id"], "label": names[int(y[i])]})
            assert fb.status_code == 201, fb.text
        second = project.retrain()
        assert second["decision"] in ("promoted", "rejected") and second["evidence"]["reasons"]
        assert second["feedback_examples"] > 100 and second["feedback_holdout"] > 50
        if second["decision"] == "promoted":  # the server picks up the new champion
            import time

            deadline = time.time() + 20
            while client.get("/health").json()["model_version"] != second["version"] and time.time() < deadline:
                time.sleep(0.2)
            assert client.get("/health").json()["model_version"] == second["version"]
    lineage = project.loop.lineage(prediction_id=ids[0])
    assert lineage["model_version"] == first["version"] and lineage["data_source"] == "toy:0"
    v2 = project.loop.lineage(version=second["version"])
    assert ids[0] in v2["feedback_ids"] + v2["feedback_validation_ids"] + v2["feedback_holdout_ids"]
    assert (ids[0] in v2["feedback_ids"]) == (second["version"] in lineage["trained_into"])
    assert [m["version"] for m in project.models()] == [first["version"], second["version"]]
    assert not project.loop.check()
