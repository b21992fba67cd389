"""builtin:mnist784 (5,000 real digits, 10 classes) reaches the accuracy a small CNN should."""

from __future__ import annotations

import json

import pytest

from modelloop import Project

pytestmark = pytest.mark.slow


def test_mnist784_reaches_097(tmp_path):
    # A generous time budget: this checks what the loop reaches, not how a slow machine cuts it short.
    project = Project.init(tmp_path / "mnist", data="builtin:mnist784", target=0.97, time_budget_s=1800)
    res = project.run()
    assert res["metrics"]["n"] == 750
    assert res["metrics"]["accuracy"] >= 0.97, res["metrics"]
    assert res["champion"] is True and res["passed"] is True
    assert len(res["metrics"]["per_class"]) == 10
    # The leaderboard compared every family.
    state = json.loads((project.path / ".modelloop" / "runs" / res["run_id"] / "state.json").read_text())
    assert {r["family"] for r in state["selection"]["leaderboard"]} == {"linear", "mlp", "cnn"}
