"""Tabular regression through the whole loop: init -> run -> serve -> feedback -> retrain -> gate.

Real data (scikit-learn's diabetes table: 442 patients, disease progression after a year) written
as a CSV with a categorical column derived from a feature and blank cells, the real CLI, a real
server on loopback, numeric feedback.
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
    from sklearn.datasets import load_diabetes

    b = load_diabetes()
    frame = pd.DataFrame(b.data, columns=list(b.feature_names))
    frame["sex"] = np.where(frame["sex"] > 0, "f", "m")  # a categorical column
    rng = np.random.default_rng(0)
    for col in ("bmi", "s3", "sex"):
        frame.loc[rng.random(len(frame)) < 0.05, col] = None  # blank cells in the CSV
    frame["progression"] = b.target.astype(float)
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


def _row(series: pd.Series) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in series.items()
            if k != "progression"}


def test_regression_project_runs_serves_and_learns_from_feedback(tmp_path, serve, table):
    data = tmp_path / "patients.csv"
    table.iloc[:300].to_csv(data, index=False)
    traffic = table.iloc[300:]
    proj = tmp_path / "proj"
    out = cli_json("init", str(proj), "--task", "tabular-regression", "--data", str(data),
                   "--label-column", "progression", "--target", "0.3", "--time-budget-s", "300")
    assert out["spec_content"]["task"] == "tabular-regression"
    assert out["spec_content"]["requirements"]["metric"] == "r2"
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec["selection"]["trials"] = 4
    spec["training"]["max_epochs"] = 60
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))

    res = cli_json("run", str(proj), timeout=600)
    m = res["metrics"]
    assert res["champion"] and res["passed"], res["gate"]
    assert {"rmse", "mae", "r2"} <= set(m) and m["r2"] >= 0.3 and m["rmse"] < m["target_std"]
    manifest = json.loads((proj / "registry" / "versions" / res["version"] / "manifest.json").read_text())
    assert {r["candidate"] for r in manifest["selection"]["leaderboard"]} == {"linear", "mlp", "hgb"}
    assert manifest["class_names"] == ["progression"]
    report = (proj / "reports" / f"{res['version']}.html").read_text()
    assert "rmse" in report and "val R²" in report and "Confusion" not in report

    # Offline prediction answers a number.
    first = _row(traffic.iloc[0])
    p = cli_json("predict", str(proj), "--row", json.dumps(first))["predictions"][0]
    assert isinstance(p["value"], float) and 0 < p["value"] < 500

    server = serve(proj)
    one = server.client.post("/predict", json={"row": first})
    assert one.status_code == 200, one.text
    body = one.json()
    assert body["value"] == pytest.approx(p["value"], rel=1e-5) and "scores" not in body
    # An unseen category is not an error: it goes to the '(other)' bucket.
    assert server.client.post("/predict", json={"row": {**first, "sex": "x"}}).status_code == 200
    rows = [_row(r) for _, r in traffic.iterrows()]
    batch = server.client.post("/predict", json={"instances": rows})
    assert batch.status_code == 200, batch.text
    preds = batch.json()["predictions"]
    truth = traffic["progression"].to_numpy()
    live_rmse = float(np.sqrt(np.mean((np.array([q["value"] for q in preds]) - truth) ** 2)))
    assert live_rmse < 1.0 * float(truth.std())
    # Feedback must be a number; a class-like label is refused, naming the field.
    auth = server.auth("client")
    for bad in ("high", True, "nan"):
        r = server.client.post("/feedback", json={"prediction_id": preds[0]["prediction_id"], "label": bad},
                               headers=auth)
        assert r.status_code == 422 and "label" in r.text, (bad, r.text)

    rt = feedback_and_retrain(server, proj, preds, [float(t) for t in truth], timeout=600)
    ev = rt["evidence"]
    assert ev["kind"] == "regression" and ev["test"]["n"] == m["n"]
    assert ev["feedback"]["n"] == rt["feedback_holdout"] and ev["feedback"]["contradicted_by_both"] <= 3
    assert {"rmse", "r2"} <= set(rt["challenger_metrics"])
    mon = cli_json("monitor", str(proj))
    assert mon["live_accuracy"]["value"] is None and mon["prediction_drift"]["psi"] is not None


def test_regression_bad_sources_are_clear(tmp_path):
    flat = tmp_path / "flat.csv"
    flat.write_text("x,y\n" + "".join(f"{i},7\n" for i in range(20)))
    cli_json("init", str(tmp_path / "a"), "--task", "tabular-regression", "--data", str(flat), "--label-column", "y")
    r = cli("run", str(tmp_path / "a"))
    assert r.returncode == 2 and "constant" in r.stderr and "flat.csv" in r.stderr

    words = tmp_path / "words.csv"
    words.write_text("x,y\n" + "".join(f"{i},{i * 2}\n" for i in range(20)) + "21,lots\n")
    cli_json("init", str(tmp_path / "b"), "--task", "tabular-regression", "--data", str(words), "--label-column", "y")
    r = cli("run", str(tmp_path / "b"))
    assert r.returncode == 2 and "row 21" in r.stderr and "'lots'" in r.stderr and "number" in r.stderr

    nocol = tmp_path / "nocol.csv"
    nocol.write_text("x,z\n1,2\n")
    cli_json("init", str(tmp_path / "c"), "--task", "tabular-regression", "--data", str(nocol), "--label-column", "y")
    r = cli("run", str(tmp_path / "c"))
    assert r.returncode == 2 and "no target column 'y'" in r.stderr

    # Rows without a target are dropped and listed, not guessed.
    gaps = tmp_path / "gaps.csv"
    gaps.write_text("x,y\n" + "".join(f"{i},{'' if i % 7 == 0 else i * 3 + (i % 4)}\n" for i in range(60)))
    cli_json("init", str(tmp_path / "d"), "--task", "tabular-regression", "--data", str(gaps), "--label-column", "y",
             "--target", "0.5")
    spec = yaml.safe_load((tmp_path / "d" / "modelloop.yaml").read_text())
    spec["selection"].update(candidates=["linear"], trials=1)  # about the rows, not the search
    (tmp_path / "d" / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    res = cli_json("run", str(tmp_path / "d"), timeout=600)
    assert res["metrics"]["r2"] > 0.5
    r = cli("init", str(tmp_path / "e"), "--task", "tabular-regression", "--data", "builtin:wine")
    assert r.returncode == 2 and "builtin:diabetes" in r.stderr
    r = cli("init", str(tmp_path / "f"), "--task", "tabular-regression", "--metric", "accuracy")
    assert r.returncode == 2 and "regression metric" in r.stderr
