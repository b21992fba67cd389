"""A user's own folder of colour PNG images (not 28x28): train, register, serve, feedback, retrain.
And an interrupted run that continues with --resume."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.conftest import MODELLOOP, cli_json, write_digit_folder

pytestmark = pytest.mark.slow


def _quick(project: Path, candidates=("linear", "mlp", "cnn"), **training) -> None:
    """Keep the search short: this test is about the loop, not about squeezing accuracy."""
    path = project / "modelloop.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["selection"] = {"trials": len(candidates), "epochs_per_trial": 2, "candidates": list(candidates)}
    spec["training"] = {"max_epochs": 12, "patience": 4, **training}
    path.write_text(yaml.safe_dump(spec))


def test_own_png_folder_through_the_loop(tmp_path, mnist, serve):
    data = write_digit_folder(tmp_path / "photos", mnist, digits=(0, 1, 7), per_class=60, size=36)
    project = tmp_path / "proj"
    cli_json("init", project, "--data", data, "--target", "0.8")
    _quick(project)
    run = cli_json("run", project)
    assert run["version"] == "v1" and run["champion"] is True
    assert run["metrics"]["accuracy"] >= 0.8
    assert set(run["metrics"]["per_class"]) == {"digit0", "digit1", "digit7"}
    assert run["metrics"]["roc_auc"] is not None  # one-vs-rest for three classes
    pre = json.loads((project / "registry" / "versions" / "v1" / "preprocessing.json").read_text())
    assert pre["format"] == {"channels": 3, "height": 36, "width": 36}
    assert Path(run["report"]).is_file()

    server = serve(project)
    labels = ["digit0", "digit1", "digit7"]
    # Fresh images of the same digits the model never saw, at another size, uploaded as files.
    x, y = mnist
    sent = []
    for k, d in enumerate((0, 1, 7)):
        for i in np.flatnonzero(y == d)[200:206]:
            buf = io.BytesIO()
            Image.fromarray(x[i]).resize((48, 48)).convert("RGB").save(buf, format="PNG")
            r = server.client.post("/predict", files={"file": (f"{d}-{i}.png", buf.getvalue(), "image/png")})
            assert r.status_code == 200, r.text
            sent.append((r.json()["prediction_id"], labels[k]))
    for pid, label in sent:
        r = server.client.post("/feedback", json={"prediction_id": pid, "label": label}, headers=server.auth())
        assert r.status_code == 201, r.text

    proc = subprocess.run([MODELLOOP, "retrain", str(project), "--json"], capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode in (0, 1), proc.stderr  # 1 = the gate rejected the challenger
    re = json.loads(proc.stdout)
    assert re["parent"] == "v1" and re["version"] == "v2"
    assert re["feedback_examples"] + re["feedback_validation"] + re["feedback_holdout"] == len(sent)
    assert re["decision"] in ("promoted", "rejected")
    assert (proc.returncode == 0) == (re["decision"] == "promoted")
    assert set(re["champion_metrics"]) >= {"accuracy", "f1_macro"}
    assert re["champion_version"] == ("v2" if re["decision"] == "promoted" else "v1")


def test_interrupted_run_resumes(tmp_path, mnist):
    data = write_digit_folder(tmp_path / "photos", mnist, digits=(2, 5), per_class=250, size=32, colour=False)
    project = tmp_path / "proj"
    cli_json("init", project, "--data", data, "--target", "0.5")
    _quick(project, candidates=("cnn",), max_epochs=15, patience=15)  # long enough to be killed mid-training
    runs = project / ".modelloop" / "runs"
    proc = subprocess.Popen([MODELLOOP, "run", str(project)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill the run hard once final training has written a few checkpoints.
    deadline = time.time() + 300
    while time.time() < deadline:
        ckpts = list(runs.glob("*/checkpoint.pt")) if runs.exists() else []
        if ckpts:
            break
        assert proc.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir()]
    state = json.loads((run_dir / "state.json").read_text())
    assert state["status"] == "running" and "selection" in state
    import torch

    done_epochs = len(torch.load(run_dir / "checkpoint.pt", weights_only=True)["history"])
    assert done_epochs >= 1

    resumed = subprocess.run([MODELLOOP, "run", str(project), "--resume", "--json"], capture_output=True,
                             text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    out = json.loads(resumed.stdout)
    assert out["run_id"] == run_dir.name  # the same run continued, not a new one
    assert "resumed training at epoch" in resumed.stderr or "resumed" in resumed.stderr
    manifest = json.loads((project / "registry" / "versions" / out["version"] / "manifest.json").read_text())
    assert manifest["training"]["epochs_run"] >= done_epochs
    assert [p.name for p in runs.iterdir() if p.is_dir()] == [run_dir.name]
    assert json.loads((run_dir / "state.json").read_text())["status"] == "done"
