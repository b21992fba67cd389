"""An image model transferred from EfficientNet-Lite0 through the whole loop:
init -> run -> serve -> feedback -> retrain -> gate, on a real few-shot image folder."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import cli, cli_json, write_digit_folder

pytestmark = pytest.mark.slow


def test_transfer_model_runs_serves_and_retrains(tmp_path, serve, mnist):
    data = write_digit_folder(tmp_path / "digits", mnist, digits=(3, 5, 8), per_class=24, size=32, colour=False)
    proj = tmp_path / "proj"
    cli_json("init", str(proj), "--data", str(data), "--target", "0.5", "--time-budget-s", "400")
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec["selection"]["candidates"] = ["efficientnet"]
    spec["training"]["max_epochs"] = 20
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    res = cli_json("run", str(proj), timeout=900)
    assert res["champion"] and res["family"] == "efficientnet"
    assert res["metrics"]["accuracy"] >= 0.5
    m = json.loads((proj / "registry" / "versions" / res["version"] / "manifest.json").read_text())
    assert m["model"]["featurizer"]["kind"] == "efficientnet"
    assert m["selection"]["leaderboard"][0]["pretrained"] is True
    # The artifact stores only the trained head; the frozen ImageNet weights come from their package.
    assert (proj / "registry" / "versions" / res["version"] / "weights.safetensors").stat().st_size < 100_000

    server = serve(proj)
    more = write_digit_folder(tmp_path / "traffic", mnist, digits=(3, 5, 8), per_class=20, size=32, colour=False,
                              offset=24)
    auth = server.auth("client")
    sent = 0
    for cls in ("digit3", "digit5", "digit8"):
        for f in sorted((more / cls).iterdir()):
            r = server.client.post("/predict", files={"file": (f.name, f.read_bytes(), "image/png")})
            assert r.status_code == 200, r.text
            fb = server.client.post("/feedback", json={"prediction_id": r.json()["prediction_id"], "label": cls},
                                    headers=auth)
            assert fb.status_code == 201
            sent += 1
    # A 1x1 image is brought to the model's input size by the decoder; a JSON array of the wrong
    # shape is refused with the shape expected.
    tiny = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tiny, format="PNG")
    r = server.client.post("/predict", files={"file": ("tiny.png", tiny.getvalue(), "image/png")})
    assert r.status_code in (200, 422)
    r = server.client.post("/predict", json={"pixels": [[0]]})
    assert r.status_code == 422 and "32" in r.json()["detail"]
    server.stop()

    proc = cli("retrain", str(proj), "--json", timeout=900)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    rt = json.loads(proc.stdout)
    assert rt["feedback_examples"] + rt["feedback_validation"] + rt["feedback_holdout"] == sent
    assert rt["decision"] in ("promoted", "rejected")
