"""The feedback loop, unattended: drifted traffic gets a better model promoted; poisoned feedback
gets its challenger rejected. Real servers, real stores: the drift scenario on SQLite and on
PostgreSQL (the whole loop on each store), the poisoning scenario on SQLite (what it checks is the
gate's, the same on either store), two servers sharing one PostgreSQL."""

from __future__ import annotations

import shutil
import threading

import httpx
import numpy as np
import pytest
import yaml

from modelloop.data.builtin import seed_case_traffic
from modelloop.feedback import FeedbackStore
from tests.conftest import cli_json

pytestmark = pytest.mark.slow
NAMES = ["even", "odd"]


@pytest.fixture(scope="module")
def seed_v1(tmp_path_factory):
    """A seed-case project with its first champion, trained once for this module (CNN, short search)."""
    project = tmp_path_factory.mktemp("scenario") / "seed"
    cli_json("init", project, "--data", "builtin:seed-case")
    spec_path = project / "modelloop.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["selection"] = {"candidates": ["cnn"], "trials": 1}
    spec["training"] = {"max_epochs": 30}
    spec["serving"] = {"backends": ["torch", "onnxruntime"]}
    spec_path.write_text(yaml.safe_dump(spec))
    res = cli_json("run", project)
    assert res["champion"] is True
    return project


@pytest.fixture(scope="module")
def traffic():
    x, y = seed_case_traffic()
    return x, y


def _project(seed_v1, tmp_path, store_url=None):
    project = tmp_path / "proj"
    shutil.copytree(seed_v1, project)
    if store_url:
        spec_path = project / "modelloop.yaml"
        spec = yaml.safe_load(spec_path.read_text())
        spec["feedback"] = {"store_url": store_url}
        spec_path.write_text(yaml.safe_dump(spec))
        (project / "feedback.db").unlink(missing_ok=True)
    return project


def _send(server, x, labels, feedback_labels=None, chunk=50):
    """Predict x in chunks over HTTP and send feedback (by default the true labels) for each."""
    auth = server.auth()
    feedback_labels = labels if feedback_labels is None else feedback_labels
    preds = []
    for i in range(0, len(x), chunk):
        body = {"instances": [im.reshape(-1).tolist() for im in x[i : i + chunk]]}
        r = server.client.post("/predict", json=body)
        assert r.status_code == 200, r.text
        preds += r.json()["predictions"]
    for p, label in zip(preds, feedback_labels, strict=True):
        r = server.client.post("/feedback", json={"prediction_id": p["prediction_id"], "label": label}, headers=auth)
        assert r.status_code == 201, r.text
    return preds


def _shift(x, dy=5, dx=6):
    """Digits moved down and right (the pixels shifted in are background)."""
    out = np.zeros_like(x, dtype=np.float32)
    out[..., dy:, dx:] = x[..., : x.shape[-2] - dy, : x.shape[-1] - dx]
    return out


def _drift_scenario(project, serve, traffic):
    x, y = traffic
    server = serve(project)
    rng = np.random.default_rng(1)
    idx = rng.choice(len(y), 500, replace=False)
    rotated = _shift(x[idx])  # users now send digits off to one corner
    truth = [NAMES[int(t)] for t in y[idx]]
    preds = _send(server, rotated, truth)
    served_acc = np.mean([p["label"] == t for p, t in zip(preds, truth, strict=True)])

    mon = cli_json("monitor", project)
    assert mon["drift"]["detected"] is True, mon["drift"]
    assert mon["drift"]["statistic"] > mon["drift"]["threshold"]
    la = mon["live_accuracy"]
    assert la["n"] == 500 and la["low"] <= la["value"] <= la["high"]
    assert la["value"] == pytest.approx(served_acc)

    res = cli_json("watch", project, "--once")
    assert res["action"] == "retrained", res
    assert res["triggers"]["new_feedback"]["fired"] and res["triggers"]["drift"]["fired"]
    assert res["decision"] == "promoted", res["reasons"]
    assert res["champion"] == res["version"] == "v2"
    models = cli_json("models", project)
    v2 = next(v for v in models["versions"] if v["version"] == "v2")
    assert v2["gate"] == "promoted"
    manifest = yaml.safe_load((project / "registry" / "versions" / "v2" / "manifest.json").read_text())
    evidence = manifest["gate"]
    assert evidence["feedback"]["significantly_better"] is True  # much better on the shifted data
    assert evidence["test"]["significantly_worse"] is False  # and not worse on the original test split
    # The running server now answers with v2, and gets the shifted digits right more often.
    fresh = _shift(x[:200])
    again = server.client.post("/predict", json={"instances": [im.reshape(-1).tolist() for im in fresh]}).json()
    assert again["model_version"] == "v2"
    acc_v2 = np.mean([p["label"] == NAMES[int(t)] for p, t in zip(again["predictions"], y[:200], strict=True)])
    assert acc_v2 > served_acc + 0.05
    # Lineage from a prediction to everything behind it, and forward to the version it trained.
    pid = preds[0]["prediction_id"]
    lin = cli_json("lineage", project, "--prediction", pid)
    assert lin["model_version"] == "v1" and lin["parent"] is None and lin["run"]
    assert lin["dataset_fingerprint"] and lin["feedback"][0]["label"] == truth[0]
    lin2 = cli_json("lineage", project, "--version", "v2")
    used = lin2["feedback_ids"] + lin2["feedback_validation_ids"] + lin2["feedback_holdout_ids"]
    assert lin2["parent"] == "v1" and len(used) == len(set(used)) == 500
    assert lin["trained_into"] == (["v2"] if pid in lin2["feedback_ids"] else [])


def _poison_scenario(project, serve, traffic):
    x, y = traffic
    server = serve(project)
    rng = np.random.default_rng(2)
    idx = rng.choice(len(y), 400, replace=False)
    truth = [NAMES[int(t)] for t in y[idx]]
    # 30% of the feedback is wrong, all of it pushing even digits towards 'odd'.
    evens = [i for i, t in enumerate(truth) if t == "even"]
    poisoned = set(rng.choice(evens, size=int(0.3 * len(truth)), replace=False).tolist())
    given = ["odd" if i in poisoned else t for i, t in enumerate(truth)]
    _send(server, x[idx].astype(np.float32), truth, feedback_labels=given)

    res = cli_json("watch", project, "--once")
    assert res["action"] == "retrained", res
    assert res["decision"] == "rejected", res
    assert any("feedback looks unreliable" in r or "recall drops" in r or "worse" in r for r in res["reasons"])
    assert res["champion"] == "v1"
    assert server.client.get("/health").json()["model_version"] == "v1"
    r = server.client.post("/predict", json={"pixels": x[0].reshape(-1).tolist()})
    assert r.json()["model_version"] == "v1"  # the champion keeps serving
    models = cli_json("models", project)
    assert models["champion"] == "v1" and models["versions"][-1]["gate"] == "rejected"


def test_drifted_traffic_sqlite(seed_v1, serve, traffic, tmp_path):
    _drift_scenario(_project(seed_v1, tmp_path), serve, traffic)


def test_poisoned_feedback_sqlite(seed_v1, serve, traffic, tmp_path):
    _poison_scenario(_project(seed_v1, tmp_path), serve, traffic)


def test_drifted_traffic_postgresql(seed_v1, serve, traffic, tmp_path, postgres):
    _drift_scenario(_project(seed_v1, tmp_path, postgres.create_database("drift")), serve, traffic)


def test_two_servers_one_postgresql_lose_nothing(seed_v1, serve, traffic, tmp_path, postgres):
    url = postgres.create_database("shared")
    project = _project(seed_v1, tmp_path, url)
    a, b = serve(project), serve(project)
    x, _ = traffic
    per_server = 150

    def hammer(server, offset):
        auth = server.auth()
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for i in range(per_server):
                r = c.post("/predict", json={"pixels": x[offset + i].reshape(-1).tolist()})
                assert r.status_code == 200
                f = c.post("/feedback", json={"prediction_id": r.json()["prediction_id"], "label": "odd"},
                           headers=auth)
                assert f.status_code == 201

    threads = [threading.Thread(target=hammer, args=(s, k * 1000)) for s in (a, b) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = FeedbackStore(url)
    try:
        counts = store.counts()
    finally:
        store.close()
    assert counts == {"predictions": 4 * per_server, "feedback": 4 * per_server,
                      "labelled_predictions": 4 * per_server}
