"""The server under load and under attack: batching, hot swap, keys and roles, limits, metrics."""

from __future__ import annotations

import json
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from modelloop.data.builtin import seed_case_traffic
from modelloop.registry import LocalRegistry
from tests.conftest import cli_json

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def images():
    x, _ = seed_case_traffic()
    return x[:96].astype(np.float32)


@pytest.fixture
def project(demo_run, tmp_path):
    """A private copy of the demo project (a version per round after the first), so tests may move aliases freely."""
    directory, res = demo_run
    copy = tmp_path / "proj"
    shutil.copytree(directory, copy)
    return copy, res


def _offline(project_dir, version, x):
    """What a version answers, computed without the server (same backend as recorded)."""
    return LocalRegistry(project_dir / "registry").load(version).predict_proba(x).numpy()


def _metric(text, name):
    for fam in text_string_to_metric_families(text):
        if fam.name == name:
            return fam
    raise AssertionError(f"{name} not in /metrics")


def test_batching_gives_every_caller_its_own_answer(project, serve, images):
    directory, res = project
    server = serve(directory, "--max-wait-ms", "5")
    expected = _offline(directory, res["champion"], images)
    results: dict[int, dict] = {}

    def call(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            r = c.post("/predict", json={"pixels": images[i].reshape(-1).tolist()})
            assert r.status_code == 200, r.text
            results[i] = r.json()

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(call, range(len(images))))
    assert len(results) == len(images)
    for i, body in results.items():
        got = np.array([body["scores"]["even"], body["scores"]["odd"]])
        np.testing.assert_allclose(got, expected[i], atol=1e-5, err_msg=f"caller {i} got another's answer")
    ids = {b["prediction_id"] for b in results.values()}
    assert len(ids) == len(images)
    batches = _metric(server.client.get("/metrics").text, "modelloop_batch_size")
    samples = {s.name: s.value for s in batches.samples if not s.labels.get("le")}
    assert samples["modelloop_batch_size_sum"] == len(images) + 0  # every input went through exactly once
    assert samples["modelloop_batch_size_count"] < len(images)  # and some shared a forward pass

    # A list in one request: one answer per item, in order.
    lst = server.client.post("/predict", json={"instances": [im.reshape(-1).tolist() for im in images[:5]]})
    assert lst.status_code == 200
    preds = lst.json()["predictions"]
    assert len(preds) == 5
    for i, p in enumerate(preds):
        np.testing.assert_allclose([p["scores"]["even"], p["scores"]["odd"]], expected[i], atol=1e-5)


def test_hot_swap_under_load_without_errors(project, serve, images):
    directory, _ = project
    server = serve(directory)
    expected = {v: _offline(directory, v, images[:16]) for v in ("v1", "v2")}
    stop = threading.Event()
    seen: list[tuple[int, int, dict]] = []

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            i = 0
            while not stop.is_set():
                k = i % 16
                r = c.post("/predict", json={"pixels": images[k].reshape(-1).tolist()})
                seen.append((k, r.status_code, r.json()))
                i += 1

    threads = [threading.Thread(target=load) for _ in range(6)]
    for t in threads:
        t.start()
    admin = server.auth("admin")
    for target in ("v1", "v2", "v1", "v2", "v1", "v2"):
        r = server.client.post("/admin/promote", json={"version": target}, headers=admin)
        assert r.status_code == 200 and r.json()["champion"] == target
        threading.Event().wait(0.4)
    stop.set()
    for t in threads:
        t.join()
    assert len(seen) > 50
    assert all(status == 200 for _, status, _ in seen), [b for _, s, b in seen if s != 200][:3]
    versions = {b["model_version"] for _, _, b in seen}
    assert versions == {"v1", "v2"}
    for k, _, body in seen:  # each answer was computed by the version it names
        got = [body["scores"]["even"], body["scores"]["odd"]]
        np.testing.assert_allclose(got, expected[body["model_version"]][k], atol=1e-5)


def test_keys_and_roles(project, serve, images):
    directory, _ = project
    server = serve(directory)
    c = server.client
    pixels = {"pixels": images[0].reshape(-1).tolist()}
    pid = c.post("/predict", json=pixels).json()["prediction_id"]  # predict is open by default
    fb = {"prediction_id": pid, "label": "even"}
    assert c.post("/feedback", json=fb).status_code == 401
    r = c.post("/feedback", json=fb, headers={"Authorization": "Bearer wrong-key-wrong-key"})
    assert r.status_code == 401 and "wrong-key" not in r.text
    assert c.post("/feedback", json=fb, headers={"X-API-Key": "nope"}).status_code == 401
    assert c.post("/feedback", json=fb, headers=server.auth("client")).status_code == 201
    assert c.post("/feedback", json=fb, headers=server.auth("admin")).status_code == 201
    assert c.post("/admin/rollback").status_code == 401
    r = c.post("/admin/promote", json={"version": "v1"}, headers=server.auth("client"))
    assert r.status_code == 403
    assert c.post("/admin/promote", json={"version": "v1"}, headers=server.auth("admin")).json()["champion"] == "v1"
    assert c.post("/admin/promote", json={"version": "v7"}, headers=server.auth("admin")).status_code == 404
    # Keys are never written to the server's log.
    key = server.auth("client")["Authorization"].split()[1]
    assert key not in (directory.parent / f"serve-{server.port}.log").read_text()


def test_closed_predict_env_keys_and_body_limit(project, serve, images):
    directory, _ = project
    spec_path = directory / "modelloop.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["serving"] = {"open_predict": False, "max_body_bytes": 20000}
    spec_path.write_text(yaml.safe_dump(spec))
    client_key, admin_key = "client-key-from-env-0001", "admin-key-from-env-00001"
    server = serve(directory, env={"MODELLOOP_CLIENT_KEYS": client_key, "MODELLOOP_ADMIN_KEYS": admin_key})
    c = server.client
    pixels = {"pixels": images[0].reshape(-1).tolist()}
    assert c.post("/predict", json=pixels).status_code == 401
    assert c.post("/predict", json=pixels, headers={"X-API-Key": client_key}).status_code == 200
    assert c.post("/predict", json=pixels, headers={"X-API-Key": admin_key}).status_code == 200
    big = {"pixels": [0.123456789] * 5000}
    r = c.post("/predict", json=big, headers={"X-API-Key": client_key})
    assert r.status_code == 413 and "20000" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit holds while streaming too
        for _ in range(50):
            yield b"[" + b"0," * 500 + b"0]"

    r = c.post("/predict", content=chunks(), headers={"X-API-Key": client_key, "content-type": "application/json"})
    assert r.status_code == 413
    r = c.post("/predict", content=b"x", headers={"X-API-Key": client_key, "content-type": "application/xml"})
    assert r.status_code == 415


def test_metrics_ready_info_and_admin_retrain(project, serve, images):
    directory, res = project
    server = serve(directory)
    c = server.client
    assert c.get("/ready").json()["ready"] is True
    info = c.get("/info").json()
    assert info["format"] == {"channels": 1, "height": 28, "width": 28} and info["class_names"] == ["even", "odd"]
    for i in range(3):
        pid = c.post("/predict", json={"pixels": images[i].reshape(-1).tolist()}).json()["prediction_id"]
        c.post("/feedback", json={"prediction_id": pid, "label": "odd"}, headers=server.auth())
    text = c.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in ("modelloop_requests", "modelloop_request_duration_seconds", "modelloop_batch_size",
                 "modelloop_predictions", "modelloop_feedback", "modelloop_model_info"):
        assert name in families, name
    reqs = {(s.labels["endpoint"], s.labels["status"]): s.value for s in families["modelloop_requests"].samples}
    assert reqs[("/predict", "200")] == 3 and reqs[("/feedback", "201")] == 3
    assert next(s for s in families["modelloop_feedback"].samples).value == 3
    info_sample = families["modelloop_model_info"].samples[0]
    assert info_sample.labels["version"] == res["champion"]
    stats = c.get("/stats").json()
    assert stats["requests"] == 3 and stats["feedback"] >= 3

    admin = server.auth("admin")
    job = c.post("/admin/retrain", headers=admin)
    assert job.status_code == 202
    assert c.post("/admin/retrain", headers=admin).status_code == 409  # one at a time
    import time

    deadline = time.time() + 600
    while True:
        j = c.get(f"/admin/jobs/{job.json()['id']}", headers=admin).json()
        if j["status"] != "running" or time.time() > deadline:
            break
        time.sleep(1)
    assert j["status"] == "done", j
    after = f"v{len(res['versions']) + 1}"  # the version after the demo's
    assert j["result"]["version"] == after and j["result"]["parent"] == res["champion"]
    assert j["result"]["decision"] in ("promoted", "rejected")
    assert cli_json("models", directory)["versions"][-1]["version"] == after


def test_ready_is_503_without_a_model(tmp_path, serve):
    cli_json("init", tmp_path / "empty", "--data", "builtin:seed-case")
    server = serve(tmp_path / "empty")
    r = server.client.get("/ready")
    assert r.status_code == 503 and r.json()["ready"] is False
    r = server.client.post("/predict", json={"pixels": [0] * 784})
    assert r.status_code == 503 and "no champion" in r.json()["detail"]
    assert json.loads(server.client.get("/models").text) == {"champion": None, "versions": []}


def test_shadow_feedback_kinds_monitor_and_lineage_over_http(project, serve, images):
    directory, res = project
    server = serve(directory)
    c = server.client
    admin, client = server.auth("admin"), server.auth("client")
    other = "v1" if res["champion"] == "v2" else "v2"
    # Earlier tests may have left feedback on the champion's predictions in the demo project.
    live_before = c.get("/admin/monitor", headers=admin).json()["live_accuracy"]["n"]
    assert c.post("/admin/shadow", json={"version": res["champion"]}, headers=admin).status_code == 422
    assert c.post("/admin/shadow", json={"version": other}, headers=client).status_code == 403
    assert c.post("/admin/shadow", json={"version": other}, headers=admin).json()["shadow"] == other
    preds = c.post("/predict", json={"instances": [im.reshape(-1).tolist() for im in images[:40]]}).json()
    ids = [p["prediction_id"] for p in preds["predictions"]]
    assert preds["model_version"] == res["champion"]

    # Feedback of every kind, and the bad ones refused with the reason.
    assert c.post("/feedback", json={"prediction_id": ids[0], "kind": "thumbs", "value": 1},
                  headers=client).json()["label"] == preds["predictions"][0]["label"]
    assert c.post("/feedback", json={"prediction_id": ids[1], "kind": "thumbs", "value": -1},
                  headers=client).status_code == 201
    assert c.post("/feedback", json={"prediction_id": ids[2], "kind": "rating", "value": 4},
                  headers=client).status_code == 201
    for i in range(3, 30):
        assert c.post("/feedback", json={"prediction_id": ids[i], "label": "odd"}, headers=client).status_code == 201
    for bad, why in (({"kind": "thumbs", "value": 0}, "+1 or -1"), ({"kind": "rating", "value": 7}, "1 to 5"),
                     ({"kind": "label"}, "required"), ({"kind": "stars", "value": 1}, "kind")):
        r = c.post("/feedback", json={"prediction_id": ids[0], **bad}, headers=client)
        assert r.status_code == 422 and why in r.text, (bad, r.text)

    # The shadow scored the same inputs in the background.
    import time

    deadline = time.time() + 30
    while True:
        mon = c.get("/admin/monitor", headers=admin)
        assert mon.status_code == 200
        sh = mon.json()["shadow"]
        if sh["scored"] >= 40 or time.time() > deadline:
            break
        time.sleep(0.5)
    assert sh["version"] == other and sh["scored"] == 40 and 0 <= sh["agreement"] <= 1
    assert sh["with_feedback"] == 29  # 27 labels + 2 thumbs (the rating carries no label)
    m = mon.json()
    assert m["live_accuracy"]["n"] == live_before + 29 and m["drift"]["n_live"] >= 20
    assert c.get("/admin/monitor", headers=client).status_code == 403
    # The monitor's figures are exported to Prometheus too.
    families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
    live = {s.labels["bound"]: s.value for s in families["modelloop_live_accuracy"].samples}
    assert live["value"] == pytest.approx(m["live_accuracy"]["value"])
    assert live["low"] <= live["value"] <= live["high"]
    drift = {s.labels["quantity"]: s.value for s in families["modelloop_drift"].samples}
    assert drift["statistic"] == pytest.approx(m["drift"]["statistic"]) and drift["detected"] in (0.0, 1.0)

    lin = c.get("/admin/lineage", params={"prediction": ids[3]}, headers=admin).json()
    assert lin["model_version"] == res["champion"] and lin["feedback"][0]["label"] == "odd"
    assert lin["run"] and lin["dataset_fingerprint"]
    assert c.get("/admin/lineage", headers=admin).status_code == 422
    assert c.post("/admin/shadow", json={"version": None}, headers=admin).json()["shadow"] is None
