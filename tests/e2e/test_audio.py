"""Keyword spotting through the whole loop: generator -> init -> run -> serve -> feedback -> retrain -> gate.

Real synthesized speech (espeak-ng + sox through ``modelloop data keywords``), the real Silero
VAD, a real server on loopback taking uploaded clips.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import soundfile as sf
import yaml

from tests.conftest import cli, cli_json

pytestmark = pytest.mark.slow

WORDS = "yes,no,up,down"


def test_audio_project_runs_serves_and_learns_from_feedback(tmp_path, serve):
    train_dir, live_dir = tmp_path / "keywords", tmp_path / "live"
    made = cli_json("data", "keywords", str(train_dir), "--words", WORDS, "--voices", "en-us,en+m7",
                    "--speeds", "140,210", "--pitches", "35,50,65")
    assert made["clips"] == 48 and (train_dir / "yes" / "en-us_140_35.wav").is_file()
    # Live traffic: other voices than training.
    cli_json("data", "keywords", str(live_dir), "--words", WORDS, "--voices", "en-gb,en-us+f3",
             "--speeds", "150,190", "--pitches", "40,60")

    proj = tmp_path / "proj"
    out = cli_json("init", str(proj), "--task", "audio-classification", "--data", str(train_dir), "--target", "0.6",
                   "--time-budget-s", "240")
    assert out["spec_content"]["task"] == "audio-classification"
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec["selection"].update(candidates=["cnn"], trials=1, epochs_per_trial=3)
    spec["training"]["max_epochs"] = 10
    spec["data"]["augmentation"]["copies"] = 1
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))

    res = cli_json("run", str(proj))
    assert res["champion"] and res["passed"] and res["metrics"]["accuracy"] >= 0.6
    m = json.loads((proj / "registry" / "versions" / res["version"] / "manifest.json").read_text())
    pre = json.loads((proj / "registry" / "versions" / res["version"] / "preprocessing.json").read_text())
    assert pre["input"] == "audio" and pre["featurizer"]["kind"] == "logmel" and len(pre["featurizer"]["mean"]) == 40
    assert m["model"]["input_shape"] == [1, 40, 51]

    server = serve(proj)
    clips = sorted(live_dir.rglob("*.wav"))
    one = server.client.post("/predict", files={"file": ("yes.wav", (live_dir / "yes" / "en-gb_150_40.wav")
                                                         .read_bytes(), "audio/wav")})
    assert one.status_code == 200, one.text
    assert set(one.json()["scores"]) == set(WORDS.split(","))
    # JSON samples at another rate are resampled like files.
    x, sr = sf.read(live_dir / "no" / "en-gb_190_60.wav", dtype="float32")
    up = np.interp(np.arange(0, len(x), 16_000 / 22_050), np.arange(len(x)), x)
    r = server.client.post("/predict", json={"samples": up.tolist(), "sample_rate": 22_050})
    assert r.status_code == 200, r.text
    flac = io.BytesIO()
    sf.write(flac, x, sr, format="FLAC")
    r = server.client.post("/predict", files={"file": ("no.flac", flac.getvalue(), "audio/flac")})
    assert r.status_code == 200, r.text
    aiff = io.BytesIO()
    sf.write(aiff, x, sr, format="AIFF")
    empty = io.BytesIO()
    sf.write(empty, np.zeros(0, np.float32), 16_000, format="WAV")
    for name, data, what in (("broken.wav", b"RIFF-not-really", "corrupt"), ("empty.wav", empty.getvalue(),
                             "zero-length"), ("clip.aiff", aiff.getvalue(), "unsupported format")):
        r = server.client.post("/predict", files={"file": (name, data, "application/octet-stream")})
        assert r.status_code == 422 and name in r.json()["detail"] and what in r.json()["detail"], r.text
    r = server.client.post("/predict", json={"pixels": [1, 2]})
    assert r.status_code == 422 and "samples" in r.json()["detail"]

    # The web UI in a real headless Chromium: only the upload pane, for audio clips; a clip predicts.
    from playwright.sync_api import sync_playwright

    from tests.e2e.test_ui import CHROMIUM, FLAGS

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("#pane-upload:not(.hidden)")
        assert page.is_hidden("#tab-draw") and ".wav" in page.get_attribute("#file", "accept")
        page.set_input_files("#file", str(live_dir / "yes" / "en-gb_150_40.wav"))
        page.click("#predict-file")
        page.wait_for_function("!document.querySelector('#result').classList.contains('empty')")
        assert page.text_content("#result").startswith(tuple(WORDS.split(","))) and page.is_hidden("#preview")
        browser.close()

    auth = server.auth("client")
    right = 0
    for f in clips:
        p = server.client.post("/predict", files={"file": (f.name, f.read_bytes(), "audio/wav")}).json()
        right += p["label"] == f.parent.name
        fb = server.client.post("/feedback", json={"prediction_id": p["prediction_id"], "label": f.parent.name},
                                headers=auth)
        assert fb.status_code == 201, fb.text
    assert right >= len(clips) // 4  # better than chance on unseen voices
    server.stop()

    proc = cli("retrain", str(proj), "--json")
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1: the gate rejected the challenger
    rt = json.loads(proc.stdout)
    assert rt["feedback_examples"] > 10 and rt["decision"] in ("promoted", "rejected")
    lineage = cli_json("lineage", str(proj), "--version", rt["version"])
    assert len(lineage["feedback_ids"]) == rt["feedback_examples"]

    pred = cli_json("predict", str(proj), str(live_dir / "up" / "en-gb_150_40.wav"))
    assert pred["predictions"][0]["label"] in WORDS.split(",")


def test_audio_bad_sources_are_clear(tmp_path):
    r = cli("init", str(tmp_path / "p"), "--task", "audio-classification")
    assert r.returncode == 2 and "data keywords" in r.stderr
    r = cli("init", str(tmp_path / "p"), "--task", "audio-classification", "--data", str(tmp_path / "none"))
    assert r.returncode == 2 and "none" in r.stderr and "audio clips" in r.stderr
    r = cli("data", "keywords", str(tmp_path / "k"), "--words", "yes", "--voices", "en-us")
    assert r.returncode == 2 and "--words" in r.stderr
