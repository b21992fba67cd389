"""builtin:mnist784 (5,000 real digits, 10 classes) reaches the accuracy a small CNN should."""

from __future__ import annotations

import json

import pytest
import yaml

from modelloop import Project

pytestmark = pytest.mark.slow


def test_mnist784_reaches_what_a_small_cnn_should(tmp_path):
    # A small CNN trained on 3,500 of these digits reaches about 97-98%. The 750 test images
    # measure that to about ±1.2% (95%), so the test asks for 0.96: asking for 0.97 would fail on
    # sampling noise alone about one run in five (it did: 727 of 750 right, one image short).
    # "best" rather than the default "cheapest": the cheapest candidate that just clears the target
    # on validation lands on either side of it on test by construction.
    # A generous time budget: this checks what the loop reaches, not how a slow machine cuts it short.
    project = Project.init(tmp_path / "mnist", data="builtin:mnist784", target=0.96, time_budget_s=1800)
    spec_path = project.path / "modelloop.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["selection"]["choose"] = "best"
    spec_path.write_text(yaml.safe_dump(spec))
    res = Project(project.path).run()
    assert res["metrics"]["n"] == 750
    assert res["metrics"]["accuracy"] >= 0.96, res["metrics"]
    assert res["champion"] is True and res["passed"] is True
    assert len(res["metrics"]["per_class"]) == 10
    # The leaderboard compared every family, and the best of them is the convolutional network.
    state = json.loads((project.path / ".modelloop" / "runs" / res["run_id"] / "state.json").read_text())
    assert {r["family"] for r in state["selection"]["leaderboard"]} == {"linear", "mlp", "cnn"}
    assert res["family"] == "cnn"
