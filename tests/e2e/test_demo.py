"""The founding case end to end, through ``modelloop demo`` (real data, real server, real SQLite)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import cli_json

pytestmark = pytest.mark.slow


def test_demo_runs_the_whole_loop(demo_run):
    directory, res = demo_run
    versions = {v["version"]: v for v in res["versions"]}
    assert list(versions) == ["v1", "v2"]
    first, second = versions["v1"], versions["v2"]
    # The founding case's requirement.
    assert first["test_accuracy"] >= 0.95
    assert first["parent"] is None and first["feedback_examples"] == 0
    # The retrained version descends from the first and learned from feedback.
    assert second["parent"] == "v1"
    assert second["feedback_examples"] > 0
    assert res["decision"] in ("promoted", "rejected")
    assert res["champion"] == ("v2" if res["decision"] == "promoted" else "v1")
    # The running server picked up whatever the gate decided.
    assert res["served_after_retrain"] == res["champion"]
    assert res["traffic"]["requests"] == 400
    # Feedback is split by prediction id: most trains the challenger, the rest is held out for the gate.
    v2 = json.loads((directory / "registry" / "versions" / "v2" / "manifest.json").read_text())
    assert res["traffic"]["feedback"] == (second["feedback_examples"] + v2["feedback_validation"]
                                          + v2["feedback_holdout"])
    assert v2["feedback_holdout"] > 0
    for report in res["reports"]:
        text = Path(report).read_text()
        assert "Confusion matrix" in text or "data:image/png;base64" in text
        assert "<table>" in text


def test_demo_records_lineage_and_decision(demo_run):
    directory, res = demo_run
    models = cli_json("models", str(directory))
    rows = {m["version"]: m for m in models["versions"]}
    assert models["champion"] == res["champion"]
    assert rows["v2"]["gate"] == res["decision"]
    assert rows["v1"]["dataset"] != rows["v2"]["dataset"]  # feedback changes the training data fingerprint
    manifest = json.loads((directory / "registry" / "versions" / "v2" / "manifest.json").read_text())
    assert manifest["parent"] == "v1"
    assert manifest["gate"]["test_examples"] == 100
    assert manifest["gate"]["champion_value"] == pytest.approx(rows["v1"]["accuracy"])
    # Which feedback rows went into v2 is kept with its training run.
    ids = json.loads((directory / ".modelloop" / "runs" / manifest["run_id"] / "feedback_ids.json").read_text())
    assert len(ids) == manifest["feedback_examples"]
    events = [json.loads(line) for line in (directory / "registry" / "events.jsonl").read_text().splitlines()]
    assert any(e["event"] == "gate" and e["version"] == "v2" and e["decision"] == res["decision"] for e in events)
    # No pickle anywhere in the artifacts; an ONNX file only when that backend serves.
    files = {p.name for p in (directory / "registry" / "versions" / "v1").iterdir()}
    assert {"manifest.json", "weights.safetensors", "preprocessing.json"} <= files
    assert files <= {"manifest.json", "weights.safetensors", "preprocessing.json", "model.onnx", "model.int8.onnx",
                     "ood.safetensors"}  # the out-of-distribution calibration
    v1 = json.loads((directory / "registry" / "versions" / "v1" / "manifest.json").read_text())
    assert v1["serving"]["backend"] in ("torch", "torch-bf16", "onnxruntime", "onnxruntime-int8")
    assert ("model.onnx" in files) == v1["serving"]["backend"].startswith("onnxruntime")


def test_demo_tabular_case_runs_the_whole_loop(tmp_path):
    """``modelloop demo --task tabular-classification``: 70% of breast-cancer to train on, the rest as traffic."""
    directory = tmp_path / "cells"
    res = cli_json("demo", str(directory), "--task", "tabular-classification", timeout=600)
    assert res["task"] == "tabular-classification"
    versions = {v["version"]: v for v in res["versions"]}
    assert list(versions) == ["v1", "v2"]
    assert versions["v1"]["test_accuracy"] >= 0.9
    assert versions["v2"]["parent"] == "v1" and versions["v2"]["feedback_examples"] > 0
    assert res["decision"] in ("promoted", "rejected")
    assert res["champion"] == ("v2" if res["decision"] == "promoted" else "v1")
    assert res["served_after_retrain"] == res["champion"]
    # The project trained on the rows written into DIR; every other row of the 569 was live traffic.
    with (directory / "data" / "cells.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) + res["traffic"]["requests"] == 569
    assert {r["label"] for r in rows} == {"malignant", "benign"}
    assert 0 < res["traffic"]["feedback"] <= res["traffic"]["requests"]
    assert str((directory / "data" / "cells.csv").resolve()) in (directory / "modelloop.yaml").read_text()
    v2 = json.loads((directory / "registry" / "versions" / "v2" / "manifest.json").read_text())
    assert res["traffic"]["feedback"] == (versions["v2"]["feedback_examples"] + v2["feedback_validation"]
                                          + v2["feedback_holdout"])



def test_demo_regression_case_runs_the_whole_loop(tmp_path):
    """``modelloop demo --task tabular-regression``: 70% of the diabetes patients to train on, the rest
    as traffic; users report the measured progression."""
    directory = tmp_path / "patients"
    res = cli_json("demo", str(directory), "--task", "tabular-regression", timeout=600)
    versions = {v["version"]: v for v in res["versions"]}
    assert list(versions) == ["v1", "v2"]
    assert versions["v1"]["test_r2"] >= 0.3 and versions["v1"]["test_accuracy"] is None
    assert versions["v2"]["parent"] == "v1" and versions["v2"]["feedback_examples"] > 0
    assert res["champion"] == ("v2" if res["decision"] == "promoted" else "v1")
    assert res["served_after_retrain"] == res["champion"]
    # Live error on unseen patients is within the spread of the outcome (a model, not a constant).
    assert res["traffic"]["requests"] == 442 - 309 and res["traffic"]["live_rmse"] < 77.0
    v2 = json.loads((directory / "registry" / "versions" / "v2" / "manifest.json").read_text())
    assert v2["gate"]["kind"] == "regression"
    assert res["traffic"]["feedback"] == (versions["v2"]["feedback_examples"] + v2["feedback_validation"]
                                          + v2["feedback_holdout"])
