"""Tabular classification through the whole loop: init -> run -> serve -> feedback -> retrain -> gate.

Real data (scikit-learn's breast-cancer table) written as a CSV with a categorical column derived
from a feature and blank cells, the real CLI, a real server on loopback.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import cli, cli_json, feedback_and_retrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def table():
    from sklearn.datasets import load_breast_cancer

    b = load_breast_cancer()
    frame = pd.DataFrame(b.data, columns=list(b.feature_names))
    frame["size band"] = pd.cut(frame["mean radius"], [0, 12, 16, 100], labels=["small", "medium", "large"]
                                ).astype(str)
    rng = np.random.default_rng(0)
    for col in ("mean texture", "worst smoothness", "size band"):
        frame.loc[rng.random(len(frame)) < 0.05, col] = None  # blank cells in the CSV
    frame["diagnosis"] = [str(b.target_names[i]) for i in b.target]
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


def _row(series: pd.Series) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in series.items()
            if k != "diagnosis"}


def test_tabular_project_runs_serves_and_learns_from_feedback(tmp_path, serve, table):
    data = tmp_path / "cells.csv"
    table.iloc[:420].to_csv(data, index=False)
    traffic = table.iloc[420:]
    proj = tmp_path / "proj"
    out = cli_json("init", str(proj), "--task", "tabular-classification", "--data", str(data),
                   "--label-column", "diagnosis", "--target", "0.9", "--time-budget-s", "300")
    assert out["spec_content"]["task"] == "tabular-classification"
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec["selection"]["candidates"] = ["linear", "mlp", "hgb"]
    spec["selection"]["trials"] = 2
    spec["training"]["max_epochs"] = 20
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))

    res = cli_json("run", str(proj), timeout=600)
    assert res["champion"] and res["passed"] and res["metrics"]["accuracy"] >= 0.9
    m = json.loads((proj / "registry" / "versions" / res["version"] / "manifest.json").read_text())
    pre = json.loads((proj / "registry" / "versions" / res["version"] / "preprocessing.json").read_text())
    assert pre["featurizer"]["kind"] == "tabular"
    cats = {c["name"]: c["categories"] for c in pre["featurizer"]["categorical"]}
    assert cats == {"size band": ["large", "medium", "small"]}
    assert {r["candidate"] for r in m["selection"]["leaderboard"]} == {"linear", "mlp", "hgb"}

    server = serve(proj)
    info = server.client.get("/info")
    if info.status_code == 200:
        assert "size band" in info.json().get("categorical", {})
    rows = [_row(r) for _, r in traffic.iterrows()]
    one = server.client.post("/predict", json={"row": rows[0]})
    assert one.status_code == 200, one.text
    assert set(one.json()["scores"]) == {"benign", "malignant"}
    # An unseen category is not an error: it goes to the '(other)' bucket.
    r = server.client.post("/predict", json={"row": {**rows[0], "size band": "enormous"}})
    assert r.status_code == 200, r.text
    bad_row = dict(rows[0])
    del bad_row["mean area"]
    for bad, needle in (({"row": bad_row}, "'mean area' missing"),
                        ({"row": {**rows[0], "mean radius": "big"}}, "column 'mean radius'"),
                        ({"instances": [rows[0], 3]}, "instances[1]"), ({"pixels": [1]}, "'row'")):
        r = server.client.post("/predict", json=bad)
        assert r.status_code == 422, (needle, r.text)
        assert needle in r.json()["detail"]
    batch = server.client.post("/predict", json={"instances": rows})
    assert batch.status_code == 200, batch.text
    preds = batch.json()["predictions"]
    assert len(preds) == len(rows)
    right = sum(p["label"] == t for p, t in zip(preds, traffic["diagnosis"], strict=True))
    assert right / len(rows) >= 0.85

    feedback_and_retrain(server, proj, preds, traffic["diagnosis"], timeout=600)


def test_tabular_bad_sources_are_clear(tmp_path):
    r = cli("init", str(tmp_path / "p"), "--task", "tabular-classification", "--data", str(tmp_path / "none.csv"))
    assert r.returncode == 2 and "none.csv" in r.stderr
    one = tmp_path / "one.csv"
    one.write_text("x,label\n1,a\n2,a\n3,a\n")
    cli_json("init", str(tmp_path / "q"), "--task", "tabular-classification", "--data", str(one))
    r = cli("run", str(tmp_path / "q"))
    assert r.returncode == 2 and "1 class" in r.stderr and "one.csv" in r.stderr
