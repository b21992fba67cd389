"""The HTTP API of ``modelloop serve``: a real uvicorn process on loopback over the demo project."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from modelloop.data.builtin import seed_case_traffic
from modelloop.feedback import FeedbackStore
from tests.conftest import cli, cli_json

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def traffic():
    x, y = seed_case_traffic()
    return x, y


def _counts(directory):
    store = FeedbackStore(f"sqlite:///{directory / 'feedback.db'}")
    try:
        return store.counts()
    finally:
        store.close()


def test_predict_and_feedback_are_stored(demo_run, serve, traffic):
    directory, res = demo_run
    server = serve(directory)
    x, y = traffic
    before = _counts(directory)
    names = ["even", "odd"]

    flat = server.client.post("/predict", json={"pixels": x[0].reshape(-1).tolist()})
    assert flat.status_code == 200, flat.text
    body = flat.json()
    assert set(body) >= {"prediction_id", "label", "scores", "model_version"}
    assert body["model_version"] == res["champion"]
    assert set(body["scores"]) == set(names)
    assert sum(body["scores"].values()) == pytest.approx(1.0, abs=1e-4)
    assert body["label"] == max(body["scores"], key=body["scores"].get)

    nested = server.client.post("/predict", json=x[0].reshape(28, 28).tolist())  # a bare [H][W] array
    assert nested.status_code == 200
    assert nested.json()["scores"] == pytest.approx(body["scores"])

    png = io.BytesIO()
    Image.fromarray(x[1][0]).save(png, format="PNG")
    up = server.client.post("/predict", files={"file": ("digit.png", png.getvalue(), "image/png")})
    assert up.status_code == 200, up.text
    # A PNG of a colour, larger version of the same digit is brought to the model's format.
    big = io.BytesIO()
    Image.fromarray(x[1][0]).convert("RGB").resize((56, 56)).save(big, format="JPEG", quality=95)
    up2 = server.client.post("/predict", files={"file": ("digit.jpg", big.getvalue(), "image/jpeg")})
    assert up2.status_code == 200, up2.text
    assert up2.json()["label"] == up.json()["label"]

    fb = server.client.post("/feedback", json={"prediction_id": body["prediction_id"], "label": names[int(y[0])]},
                            headers=server.auth())
    assert fb.status_code == 201, fb.text
    assert fb.json()["label"] == names[int(y[0])]

    after = _counts(directory)
    assert after["predictions"] == before["predictions"] + 4
    assert after["feedback"] == before["feedback"] + 1
    # The stored input is exactly what the model saw, ready to retrain on.
    store = FeedbackStore(f"sqlite:///{directory / 'feedback.db'}")
    row = store.get_prediction(body["prediction_id"])
    store.close()
    stored = np.frombuffer(row["input_data"], dtype=row["input_dtype"]).reshape(1, 28, 28)
    assert np.array_equal(stored, x[0].astype(stored.dtype))
    assert row["model_version"] == res["champion"]

    models = server.client.get("/models").json()
    assert models["champion"] == res["champion"]
    assert [v["version"] for v in models["versions"]] == [v["version"] for v in res["versions"]]
    health = server.client.get("/health").json()
    assert health["status"] == "ok" and health["predictions"] == after["predictions"]


BAD_PREDICT = [
    ({"pixels": [1, 2, 3]}, "shape [3]"),
    ({"pixels": [[0] * 28] * 27}, "shape [27, 28]"),
    ({"pixels": ["a"] * 784}, "non-numeric"),
    ({"pixels": [[1, 2], [3]]}, "ragged"),
    ({"pixels": [300] * 784}, "0 to 255"),
    ({"pixels": [-1] * 784}, "0 to 255"),
    ({"pixels": "0,0,0"}, "expected a JSON array"),
    ({"image": [0] * 784}, "expected a field 'pixels'"),
    ({"instances": []}, "expected a list of 1 to"),
    ({"instances": [[0] * 784, [0] * 10]}, "instances[1]"),
    (17, "expected a JSON array"),
]


def test_bad_requests_get_clear_errors_and_lose_nothing(demo_run, serve):
    directory, _ = demo_run
    server = serve(directory)
    good = server.client.post("/predict", json=[0.0] * 300 + [200.0] * 184 + [0.0] * 300)
    assert good.status_code == 200
    pid = good.json()["prediction_id"]
    auth = server.auth()
    r = server.client.post("/feedback", json={"prediction_id": pid, "label": "even"}, headers=auth)
    assert r.status_code == 201
    before = _counts(directory)

    for payload, reason in BAD_PREDICT:
        r = server.client.post("/predict", json=payload)
        assert r.status_code == 422, (payload, r.text)
        assert reason in r.json()["detail"], (reason, r.json())
    r = server.client.post("/predict", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["detail"]
    r = server.client.post("/predict", content=b"0,0,0", headers={"content-type": "text/plain"})
    assert r.status_code == 415 and "text/plain" in r.json()["detail"]
    r = server.client.post("/predict", files={"file": ("broken.png", b"\x89PNG\r\n\x1a\nnot really", "image/png")})
    assert r.status_code == 422 and "broken.png" in r.json()["detail"]
    r = server.client.post("/predict", files={"file": ("empty.png", b"", "image/png")})
    assert r.status_code == 422 and "empty.png" in r.json()["detail"] and "0 bytes" in r.json()["detail"]
    r = server.client.post("/predict", files={"other": ("x.png", b"123", "image/png")})
    assert r.status_code == 422 and "'file'" in r.json()["detail"]

    r = server.client.post("/feedback", json={"prediction_id": "doesnotexist", "label": "even"}, headers=auth)
    assert r.status_code == 404 and "doesnotexist" in r.json()["detail"]
    r = server.client.post("/feedback", json={"prediction_id": pid, "label": "cat"}, headers=auth)
    assert r.status_code == 422 and "'cat'" in r.json()["detail"] and "even, odd" in r.json()["detail"]
    r = server.client.post("/feedback", json={"label": "even"}, headers=auth)
    assert r.status_code == 422 and "prediction_id" in r.text
    r = server.client.post("/feedback", json={"prediction_id": pid, "label": "odd", "extra": 1}, headers=auth)
    assert r.status_code == 422

    assert _counts(directory) == before  # nothing stored, nothing lost
    assert server.client.get("/openapi.json").json()["paths"].keys() >= {"/predict", "/feedback", "/models",
                                                                         "/health"}


def _npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=True)
    return buf.getvalue()


NPY = {"content-type": "application/x-npy"}


def test_binary_bodies_answer_as_json_does(demo_run, serve, traffic):
    """A .npy array (one image or a batch, any numeric dtype) and an image file as the whole body
    give the JSON body's answer; a bad one is a 422 naming the body and what was expected."""
    directory, _ = demo_run
    server = serve(directory)
    x, _ = traffic
    c = server.client
    ref = c.post("/predict", json={"instances": x[:3].reshape(3, -1).tolist()}).json()["predictions"]
    one = c.post("/predict", content=_npy(x[0]), headers=NPY)  # (1, 28, 28) uint8
    assert one.status_code == 200, one.text
    assert one.json()["scores"] == pytest.approx(ref[0]["scores"], abs=1e-6)
    assert one.json()["ood_score"] == pytest.approx(ref[0]["ood_score"], rel=1e-5)
    for array in (x[0][0], x[0].reshape(-1).astype(np.float64)):  # (28, 28) gray; flat float64
        r = c.post("/predict", content=_npy(array), headers=NPY)
        assert r.status_code == 200 and r.json()["scores"] == pytest.approx(ref[0]["scores"], abs=1e-6)
    batch = c.post("/predict", content=_npy(x[:3].astype(np.float32)), headers=NPY)
    assert batch.status_code == 200, batch.text
    got = batch.json()["predictions"]
    assert [p["label"] for p in got] == [p["label"] for p in ref]
    png = io.BytesIO()
    Image.fromarray(x[1][0]).save(png, format="PNG")
    r = c.post("/predict", content=png.getvalue(), headers={"content-type": "image/png"})
    assert r.status_code == 200 and r.json()["label"] == ref[1]["label"]

    before = _counts(directory)
    bad = [
        (_npy(x[0][:, :27]), "shape [1, 27, 28]"),
        (_npy(np.full(784, 300.0)), "0 to 255"),
        (_npy(np.array(["a"] * 784)), "dtype <U1"),
        (_npy(np.array([object()] * 784, dtype=object)), "not a readable .npy array"),
        (_npy(x[0])[:40], "not a readable .npy array"),
        (_npy(np.zeros((0, 784))), "a batch of 0 images"),
        (b"", "empty"),
    ]
    for body, reason in bad:
        r = c.post("/predict", content=body, headers=NPY)
        assert r.status_code == 422, (reason, r.text)
        assert "request body" in r.json()["detail"] and reason in r.json()["detail"], (reason, r.json())
    r = c.post("/predict", content=b"\x89PNG\r\n\x1a\nnot really", headers={"content-type": "image/png"})
    assert r.status_code == 422 and "request body" in r.json()["detail"]
    assert _counts(directory) == before
    schema = c.get("/openapi.json").json()["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data", "application/x-npy", "image/png"} <= set(schema)


def test_promote_and_rollback_swap_the_served_model(demo_run, serve, tmp_path, traffic):
    directory, res = demo_run
    copy = tmp_path / "copy"
    shutil.copytree(directory, copy)
    server = serve(copy)
    x, _ = traffic
    pixels = {"pixels": x[5].reshape(-1).tolist()}
    assert server.client.post("/predict", json=pixels).json()["model_version"] == res["champion"]

    other = "v1" if res["champion"] == "v2" else "v2"
    assert cli_json("promote", str(copy), other)["champion"] == other
    assert server.client.post("/predict", json=pixels).json()["model_version"] == other
    assert cli_json("rollback", str(copy))["champion"] == res["champion"]
    assert server.client.post("/predict", json=pixels).json()["model_version"] == res["champion"]
    assert server.client.get("/health").json()["model_version"] == res["champion"]

    bad = cli("promote", str(copy), "v9")
    assert bad.returncode == 2 and "v9" in bad.stderr and "v1" in bad.stderr
