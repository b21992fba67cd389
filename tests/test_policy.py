"""The watch policy's automatic rollback, on a real registry and a real SQLite store."""

from __future__ import annotations

import numpy as np

from modelloop.loop import Loop
from modelloop.models import build_model
from modelloop.project import Project

CONFIG = {"family": "linear", "input_shape": [1, 2, 2], "num_classes": 2, "params": {}}


def _register(loop: Loop) -> str:
    manifest = {"model": CONFIG, "class_names": ["even", "odd"], "metrics": {"test": {"accuracy": 1.0,
                "f1_macro": 1.0}}, "dataset": {"fingerprint": "f", "base_fingerprint": "f", "source": "x"},
                "requirements": {"passed": True}, "run_id": "r", "parent": None}
    pre = {"format": {"channels": 1, "height": 2, "width": 2}, "normalizer": {"mean": [0.0], "std": [1.0]},
           "class_names": ["even", "odd"]}
    return loop.registry.register(manifest, build_model(CONFIG), pre)


def _traffic(loop: Loop, version: str, n: int, right: int) -> None:
    for i in range(n):
        pid = loop.store.log_prediction(model_version=version, x=np.zeros((1, 2, 2), np.uint8), label="even",
                                        scores={"even": 0.9, "odd": 0.1}, latency_ms=1.0)
        loop.store.add_feedback(pid, "even" if i < right else "odd", client="c1")


def test_a_worse_new_champion_is_rolled_back(tmp_path):
    Project.init(tmp_path / "p", data="builtin:seed-case")
    loop = Loop(tmp_path / "p")
    v1, v2 = _register(loop), _register(loop)
    loop.registry.promote(v1)
    _traffic(loop, v1, 60, 57)  # 95% live accuracy
    loop.registry.promote(v2)
    _traffic(loop, v2, 60, 39)  # 65%: significantly worse
    res = loop.watch_once()
    assert res["action"] == "rolled_back"
    assert res["champion"] == v1 == loop.registry.champion()
    rb = res["rollback"]
    assert rb["champion"] == v2 and rb["predecessor"] == v1 and rb["p_value"] < 0.05
    assert any(e["event"] == "auto_rollback" for e in loop.registry.events())


def test_no_rollback_without_enough_evidence_or_difference(tmp_path):
    Project.init(tmp_path / "p", data="builtin:seed-case")
    loop = Loop(tmp_path / "p")
    v1, v2 = _register(loop), _register(loop)
    loop.registry.promote(v1)
    _traffic(loop, v1, 60, 57)
    loop.registry.promote(v2)
    _traffic(loop, v2, 10, 2)  # bad, but too little feedback yet
    check = loop._rollback_check()
    assert check["rollback"] is False and check["p_value"] is None
    _traffic(loop, v2, 50, 50)  # now 52/60: not significantly worse than 57/60
    check = loop._rollback_check()
    assert check["rollback"] is False and check["p_value"] > 0.05


def test_untrusted_clients_are_left_out(tmp_path):
    Project.init(tmp_path / "p", data="builtin:seed-case")
    loop = Loop(tmp_path / "p")
    v1 = _register(loop)
    loop.registry.promote(v1)
    _traffic(loop, v1, 10, 10)
    pid = loop.store.log_prediction(model_version=v1, x=np.ones((1, 2, 2), np.uint8), label="even",
                                    scores={"even": 0.9, "odd": 0.1}, latency_ms=1.0)
    loop.store.add_feedback(pid, "odd", client="mallory")
    assert len(loop.store.labelled(["even", "odd"])) == 11
    assert len(loop.store.labelled(["even", "odd"], exclude_clients=["mallory"])) == 10
    split = loop.feedback_split(["even", "odd"], (1, 2, 2))
    assert len(split["train"][2]) + len(split["holdout"][2]) == 11
    loop.spec.feedback.untrusted_clients = ["mallory"]
    split = loop.feedback_split(["even", "odd"], (1, 2, 2))
    assert pid not in split["train"][2] + split["holdout"][2]


def test_a_regression_champion_with_larger_live_errors_is_rolled_back(tmp_path):
    """Regression: live squared errors (served value vs the value fed back) of the new champion
    against its predecessor's, by a one-sided Welch t-test."""
    Project.init(tmp_path / "p", task="tabular-regression", data="builtin:diabetes")
    loop = Loop(tmp_path / "p")
    config = {"family": "linear", "input_shape": [3], "num_classes": 1, "params": {},
              "target": {"mean": 150.0, "std": 70.0}}
    manifest = {"model": config, "class_names": ["target"], "metrics": {"test": {"rmse": 50.0, "r2": 0.5}},
                "dataset": {"fingerprint": "f", "base_fingerprint": "f", "source": "x"},
                "requirements": {"passed": True}, "run_id": "r", "parent": None}
    pre = {"featurizer": {"kind": "tabular"}, "class_names": ["target"]}
    v1 = loop.registry.register(manifest, build_model(config), pre)
    v2 = loop.registry.register(manifest, build_model(config), pre)
    rng = np.random.default_rng(0)

    def traffic(version: str, n: int, noise: float) -> None:
        for truth in rng.uniform(50, 300, n):
            pid = loop.store.log_prediction(model_version=version, x=np.zeros(1, np.float32),
                                            label=f"{truth + rng.normal(0, noise):.6g}", scores={}, latency_ms=1.0)
            loop.store.add_feedback(pid, f"{truth:.6g}", client="c1")

    loop.registry.promote(v1)
    traffic(v1, 40, 20.0)
    loop.registry.promote(v2)
    traffic(v2, 10, 80.0)
    assert loop._rollback_check()["p_value"] is None  # too little feedback yet
    traffic(v2, 30, 80.0)  # four times the error
    res = loop.watch_once()
    assert res["action"] == "rolled_back" and loop.registry.champion() == v1
    rb = res["rollback"]
    assert rb["measure"] == "live RMSE" and rb["champion_live"] > 2 * rb["predecessor_live"] and rb["p_value"] < 0.05
