"""A project whose user sets no target: the first run must beat the task's trivial baseline,
significantly, and then it serves; labels that carry no signal cannot beat it, and nothing serves.

Real tables (breast-cancer cells, diabetes patients), the linear candidate, a few seconds each.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from modelloop.gate import beats_baseline, check_requirements
from modelloop.project import Project
from modelloop.spec import Requirements
from tests.e2e.tiny_projects import _table


def _project(root, frame, task: str, label: str):
    data = root / "data.csv"
    frame.to_csv(data, index=False)
    proj = root / "proj"
    Project.init(proj, task=task, data=str(data), label_column=label)  # no --target
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    assert spec["requirements"].get("target") is None
    spec["selection"].update(candidates=["linear"], trials=1, epochs_per_trial=1, distill=False)
    spec["training"].update(max_epochs=40, patience=5)
    spec["serving"].update(backends=["torch"])
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    return Project(proj)


def test_without_a_target_a_model_that_beats_the_majority_class_serves(tmp_path):
    from sklearn.datasets import load_breast_cancer

    frame = _table(load_breast_cancer, "diagnosis", 300)
    frame["diagnosis"] = np.where(frame["diagnosis"] == 1, "benign", "malignant")
    p = _project(tmp_path, frame, "tabular-classification", "diagnosis")
    res = p.run()
    check = res["gate"]["checks"][0]
    assert check["name"] == "test accuracy" and check["passed"] and res["champion"]
    base = check["baseline"]
    assert base["name"].startswith("majority class") and base["significantly_better"]
    assert res["metrics"]["accuracy"] > base["baseline_value"]  # the majority class's accuracy on the same test split
    assert "significantly better than the majority class" in check["target"]
    report = open(res["report"], encoding="utf-8").read()
    assert "significantly better than the majority class" in report  # stated in the report
    assert p.predict({c: frame.iloc[0][c] for c in frame.columns if c != "diagnosis"})[0]["label"] in (
        "benign", "malignant")


def test_without_a_target_labels_without_signal_do_not_serve(tmp_path):
    from sklearn.datasets import load_breast_cancer

    frame = _table(load_breast_cancer, "diagnosis", 300)
    rng = np.random.default_rng(0)
    frame["diagnosis"] = rng.choice(["a", "b"], size=len(frame), p=[0.7, 0.3])  # no relation to the cells
    p = _project(tmp_path, frame, "tabular-classification", "diagnosis")
    res = p.run()
    check = res["gate"]["checks"][0]
    assert not check["passed"] and not res["champion"] and p.loop.registry.champion() is None
    assert not check["baseline"]["significantly_better"] and check["baseline"]["p_value"] >= 0.05


def test_without_a_target_regression_beats_the_mean(tmp_path):
    from sklearn.datasets import load_diabetes

    frame = _table(load_diabetes, "progression", 300)
    p = _project(tmp_path, frame, "tabular-regression", "progression")
    res = p.run()
    check = res["gate"]["checks"][0]
    assert check["name"] == "test r2" and check["passed"] and res["champion"]
    assert check["baseline"]["name"].startswith("mean of the training targets")
    assert check["baseline"]["baseline_value"] <= 0.05  # R² of a constant is about 0


def test_a_target_the_user_sets_is_enforced_as_before():
    req = Requirements(metric="accuracy", target=0.9)
    res = check_requirements(req, {"accuracy": 0.85}, None, None)
    assert not res["passed"] and res["checks"][0]["target"] == ">= 0.9"
    # without a target, the baseline's evidence decides; both directions of the paired test
    model, base = np.array([1] * 40 + [0] * 10), np.array([1] * 25 + [0] * 25)
    good = beats_baseline(model, base, 0.95, name="majority class", baseline_value=0.5, binary=True)
    assert good["significantly_better"] and good["only_model_right"] == 15 and good["only_baseline_right"] == 0
    bad = beats_baseline(base, model, 0.95, name="majority class", baseline_value=0.8, binary=True)
    assert not bad["significantly_better"] and bad["p_value"] > 0.5
    res = check_requirements(Requirements(), {"accuracy": 0.8}, None, None, good)
    assert res["passed"] and "significantly better than the majority class" in res["checks"][0]["target"]
    with pytest.raises(ValueError):
        check_requirements(Requirements(), {"accuracy": 0.8}, None, None)
