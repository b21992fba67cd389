"""The labelling queue, the audit figure and OOD scores on the founding case, through real
servers, the real store, the CLI and a real Chromium."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelloop.data.builtin import seed_case_traffic
from modelloop.feedback import FeedbackStore
from modelloop.feedback.store import wilson_interval
from tests.conftest import cli

pytestmark = pytest.mark.slow


@pytest.fixture
def project(demo_run, tmp_path):
    directory, _ = demo_run
    copy = tmp_path / "proj"
    shutil.copytree(directory, copy)
    return copy


def _truth() -> dict[str, str]:
    """The true label of every founding-case traffic image, by the SHA-256 the store keeps."""
    x, y = seed_case_traffic()
    return {hashlib.sha256(np.ascontiguousarray(xi).tobytes()).hexdigest(): ("even", "odd")[int(t)]
            for xi, t in zip(x, y, strict=True)}


def _store(project):
    return FeedbackStore(f"sqlite:///{project / 'feedback.db'}")


def test_ood_flags_uniform_noise_not_real_digits(project, serve):
    server = serve(project)
    c = server.client
    noise = np.random.default_rng(0).integers(0, 256, 784).tolist()
    r = c.post("/predict", json={"pixels": noise})
    assert r.status_code == 200, r.text
    body = r.json()
    threshold = json.loads((project / "registry" / "versions" / body["model_version"] / "manifest.json")
                           .read_text())["ood"]["threshold"]
    assert body["ood"] is True and body["ood_score"] > threshold
    x, _ = seed_case_traffic()
    digits = c.post("/predict", json={"instances": x[:100].reshape(100, -1).tolist()}).json()["predictions"]
    flagged = sum(p["ood"] for p in digits)
    assert all(p["ood"] in (True, False) and p["ood_score"] >= 0 for p in digits)
    assert flagged <= 10  # the threshold keeps 99% of 150 validation digits in: a few percent of traffic at most
    families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
    counted = sum(s.value for s in families["modelloop_ood"].samples if s.name == "modelloop_ood_total")
    assert counted == 1 + flagged
    store = _store(project)
    try:
        assert store.get_prediction(body["prediction_id"])["ood_score"] == pytest.approx(body["ood_score"])
    finally:
        store.close()
    server.stop()
    # A version registered before calibration existed answers without the flag, and says so by null.
    version = body["model_version"]
    folder = project / "registry" / "versions" / version
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.pop("ood")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "ood.safetensors").unlink()
    old = serve(project)
    r = old.client.post("/predict", json={"pixels": noise})
    assert r.status_code == 200 and r.json()["ood"] is None and r.json()["ood_score"] is None


def test_queue_hands_each_prediction_to_one_labeller_and_labels_keep_their_origin(project, serve):
    a, b = serve(project), serve(project)  # two server processes on one store
    auth = a.auth("client")
    x, y = seed_case_traffic()
    for s in (a, b):
        assert s.client.post("/predict", json={"instances": x[400:440].reshape(40, -1).tolist()}).status_code == 200
    got: list[list[dict]] = [[] for _ in range(8)]
    barrier = threading.Barrier(8)

    def labeller(i: int) -> None:
        server = (a, b)[i % 2]
        barrier.wait()
        r = server.client.get("/label/next", params={"n": 25}, headers=auth)
        assert r.status_code == 200, r.text
        got[i] = r.json()["items"]

    threads = [threading.Thread(target=labeller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items = [it for batch in got for it in batch]
    ids = [it["prediction_id"] for it in items]
    assert len(ids) >= 50 and len(set(ids)) == len(ids)  # nobody got an item someone else holds
    assert {it["origin"] for it in items} <= {"active", "audit"} and any(it["origin"] == "audit" for it in items)
    assert all(it["input"]["kind"] == "image" and it["input"]["png"] for it in items)
    # While leased, nobody else gets them.
    more = a.client.get("/label/next", params={"n": 50}, headers=auth).json()["items"]
    assert set(ids).isdisjoint(it["prediction_id"] for it in more)

    truth = _truth()
    champion = a.client.get("/health").json()["model_version"]
    store = _store(project)
    try:
        hashes = {pid: store.get_prediction(pid)["input_hash"] for pid in ids}
        # The demo's labeller audited the champion's answers already: those labels count too.
        before = store.labelled(["even", "odd"], model_version=champion, origins=["audit"])
    finally:
        store.close()
    audit_n = len(before)
    audit_right = sum(r["label"] == r["predicted"] for r in before)
    for it in items:
        label = truth.get(hashes[it["prediction_id"]], it["predicted"])
        r = a.client.post("/feedback", json={"prediction_id": it["prediction_id"], "label": label,
                                             "origin": it["origin"]}, headers=auth)
        assert r.status_code == 201 and r.json()["origin"] == it["origin"], r.text
        if it["origin"] == "audit":
            audit_n += 1
            audit_right += label == it["predicted"]
    store = _store(project)
    try:
        origins = {r["id"]: r["origin"] for r in store.labelled(["even", "odd"])}
    finally:
        store.close()
    assert all(origins[it["prediction_id"]] == it["origin"] for it in items)

    # Bad inputs name the field.
    for n in ("0", "101", "ten"):
        r = a.client.get("/label/next", params={"n": n}, headers=auth)
        assert r.status_code == 422 and "'n'" in r.json()["detail"], r.text
    assert a.client.get("/label/next").status_code == 401
    pid = more[0]["prediction_id"]
    wrong = "audit" if more[0]["origin"] == "active" else "active"
    r = a.client.post("/feedback", json={"prediction_id": pid, "label": "odd", "origin": wrong}, headers=auth)
    assert r.status_code == 422 and "field 'origin'" in r.json()["detail"]
    r = a.client.post("/feedback", json={"prediction_id": pid, "label": "odd", "origin": "robot"}, headers=auth)
    assert r.status_code == 422 and "origin" in json.dumps(r.json()["detail"])

    # The monitor's audit figure: accuracy on the audit labels alone, with its Wilson interval.
    admin = a.auth("admin")
    mon = a.client.get("/admin/monitor", headers=admin).json()
    audit = mon["live_accuracy_audit"]
    low, high = wilson_interval(audit_right, audit_n)
    assert audit["n"] == audit_n and audit["value"] == pytest.approx(audit_right / audit_n)
    assert audit["low"] == pytest.approx(low) and audit["high"] == pytest.approx(high) and not audit["biased"]
    assert mon["live_accuracy"]["biased"] is True and mon["live_accuracy"]["source"] == "feedback"
    families = {f.name: f for f in text_string_to_metric_families(a.client.get("/metrics").text)}
    exported = {s.labels["bound"]: s.value for s in families["modelloop_live_accuracy_audit"].samples}
    assert exported["value"] == pytest.approx(audit["value"])
    stats = a.client.get("/stats").json()
    assert stats["live_accuracy_audit"]["n"] == audit_n
    a.stop()
    b.stop()
    res = cli("monitor", str(project), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["live_accuracy_audit"]["n"] == audit_n
    text = cli("monitor", str(project)).stdout
    assert "audit sample, unbiased" in text and "biased" in text


def test_label_export_import_round_trip_and_bad_files(project, tmp_path):
    out = tmp_path / "tasks.json"
    res = cli("label", str(project), "--export", str(out), "--n", "12", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["exported"] == 12
    tasks = json.loads(out.read_text())
    assert len(tasks) == 12 and all(t["data"]["image"].startswith("data:image/png;base64,") for t in tasks)
    assert all(t["predictions"][0]["result"][0]["value"]["choices"][0] in ("even", "odd") for t in tasks)
    for t in tasks[:10]:  # two left unannotated
        t["annotations"] = [{"result": [{"from_name": "label", "to_name": "image", "type": "choices",
                                         "value": {"choices": ["even"]}}]}]
    annotated = tmp_path / "annotated.json"
    annotated.write_text(json.dumps(tasks))
    res = cli("label", str(project), "--import", str(annotated), "--json")
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["imported"] == 10 and got["without_annotation"] == 2
    store = _store(project)
    try:
        rows = {r["id"]: r for r in store.labelled(["even", "odd"])}
    finally:
        store.close()
    for t in tasks[:10]:
        row = rows[t["data"]["prediction_id"]]
        assert row["label"] == "even" and row["origin"] == t["data"]["origin"]

    # Bad files: exit 2, naming what is wrong, and nothing stored.
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    res = cli("label", str(project), "--import", str(bad))
    assert res.returncode == 2 and "--import" in res.stderr
    bad.write_text(json.dumps([{"data": {}, "annotations": []}]))
    res = cli("label", str(project), "--import", str(bad))
    assert res.returncode == 2 and "tasks[0].data.prediction_id" in res.stderr
    forged = [{**tasks[0], "data": {**tasks[0]["data"], "origin": "audit" if tasks[0]["data"]["origin"] == "active"
                                    else "active"}}]
    bad.write_text(json.dumps(forged))
    res = cli("label", str(project), "--import", str(bad))
    assert res.returncode == 2 and "origin" in res.stderr
    t = dict(tasks[0], annotations=[{"result": [{"type": "choices", "value": {"choices": ["seven"]}}]}])
    bad.write_text(json.dumps([t]))
    res = cli("label", str(project), "--import", str(bad))
    assert res.returncode == 2 and "'label'" in res.stderr and "even, odd" in res.stderr
    res = cli("label", str(project))
    assert res.returncode == 2 and "--export" in res.stderr


def test_labelling_page_in_chromium(project, serve, page):
    server = serve(project)
    key = server.auth("client")["Authorization"].split()[1]
    page.goto(f"{server.url}/label#key={key}")
    page.wait_for_selector("#item-image")
    first = page.locator("#item-reason").inner_text()
    assert page.locator("#choices .choice").count() == 2
    origin = page.locator("#item-origin").inner_text()
    assert origin in ("active", "audit") and first
    page.click("#choices .choice[data-label='odd']")
    page.wait_for_function("document.querySelector('#l-done').textContent === '1'")
    page.wait_for_selector("#label-status.ok")
    store = _store(project)
    try:
        latest = max(store.labelled(["even", "odd"]), key=lambda r: r["feedback_at"])
    finally:
        store.close()
    assert latest["label"] == "odd" and latest["origin"] == origin
    page.wait_for_selector("#item-image")  # the next item is on the page
    # The main page shows the audit figure and the biased one side by side, and links here.
    page.goto(server.url + "/")
    page.wait_for_selector("#c-live-feedback")
    assert page.locator("#label-link").get_attribute("href") == "/label"
