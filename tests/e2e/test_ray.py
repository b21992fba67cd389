"""The same project on a real two-node Ray cluster (tests/ray_cluster.py): the candidate search as
Ray Tune trials spread over both nodes, the final fit as a two-worker data-parallel Ray Train
``TorchTrainer`` that survives a killed worker, and a retrain from feedback kept in PostgreSQL,
each compared with what the local backend does on the same seed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from modelloop.data.builtin import seed_case_traffic
from tests.conftest import cli, cli_json


def _project(root: Path, name: str, store_url: str | None = None, **selection) -> Path:
    """The seed case (784-pixel digits, even vs odd) with a small search and a short fit."""
    proj = root / name
    cli_json("init", str(proj), "--data", "builtin:seed-case")
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec["selection"].update({"candidates": ["linear", "cnn"], "trials": 4, "epochs_per_trial": 4, "choose": "best",
                              "distill": False, **selection})
    spec["training"].update(max_epochs=10, patience=10)
    spec["serving"]["backends"] = ["torch"]
    if store_url:
        spec["feedback"]["store_url"] = store_url
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    return proj


def _state(proj: Path) -> dict:
    (run,) = (proj / ".modelloop" / "runs").iterdir()
    return json.loads((run / "state.json").read_text())


def _recorded(snapshot: Path) -> int:
    """How many checkpoints Ray Train's checkpoint manager has recorded (its own snapshot file)."""
    try:
        return json.loads(snapshot.read_text())["current_report_index"]
    except (OSError, ValueError, KeyError):
        return 0


def _manifest(proj: Path, version: str) -> dict:
    return json.loads((proj / "registry" / "versions" / version / "manifest.json").read_text())


@pytest.fixture(scope="module")
def runs(ray_cluster, postgres, tmp_path_factory):
    """The same project run locally and on the cluster (its feedback store on PostgreSQL, reached
    through the server's unix socket: the cluster's namespace has no route to the host's loopback)."""
    root = tmp_path_factory.mktemp("ray")
    postgres.create_database("raystore")
    socket_url = f"postgresql://{postgres.user}@/raystore?host={postgres.root}&port={postgres.port}"
    local, on_ray = _project(root, "local"), _project(root, "ray", store_url=socket_url)
    t = time.time()
    local_out = cli_json("run", str(local), timeout=600)
    local_s = time.time() - t
    t = time.time()
    proc = ray_cluster.cli("run", str(on_ray), "--ray", ray_cluster.address, "--json", timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {"local": (local, local_out, local_s), "ray": (on_ray, json.loads(proc.stdout), time.time() - t)}


def test_search_runs_as_tune_trials_on_both_nodes_and_chooses_as_locally(runs):
    local, local_out, _ = runs["local"]
    on_ray, ray_out, _ = runs["ray"]
    lt, rt = _state(local)["selection"], _state(on_ray)["selection"]
    # every trial came back into the leaderboard, with the node that ran it
    assert len(rt["trials"]) == len(lt["trials"]) == 4
    assert all(t["state"] in ("complete", "pruned") for t in rt["trials"])
    nodes = {t["node"] for t in rt["trials"]}
    assert len(nodes) == 2, rt["trials"]
    assert all("node" not in t for t in lt["trials"])
    # each candidate's first trial has the same settings and seed as the local one: the same score within noise
    first = {(t["candidate"], t["trial"]): t for t in lt["trials"]}
    for t in rt["trials"]:
        if t["trial"] == 0:
            assert t["params"] == first[(t["candidate"], 0)]["params"]
            assert abs(t["val_accuracy"] - first[(t["candidate"], 0)]["val_accuracy"]) <= 0.03, (t, first)
    # the second search of the leading candidate resumed its study: its trials are numbered on from the first
    cnn = sorted(t["trial"] for t in rt["trials"] if t["candidate"] == "cnn")
    assert cnn == [0, 1, 2]
    assert rt["chosen"] == lt["chosen"] == "cnn"
    assert ray_out["family"] == local_out["family"] == "cnn"
    report = Path(ray_out["report"]).read_text()
    assert "Search trials" in report and all(n[:12] in report for n in nodes)


def test_two_worker_ddp_fit_matches_the_local_fit(runs):
    local, local_out, _ = runs["local"]
    on_ray, ray_out, _ = runs["ray"]
    lm, rm = _manifest(local, local_out["version"]), _manifest(on_ray, ray_out["version"])
    assert lm["training"]["workers"] == 1 and rm["training"]["workers"] == 2
    assert rm["training"]["epochs_run"] == lm["training"]["epochs_run"] == 10
    # The same recipe and effective batch: test accuracy within one point of the local fit's.
    assert abs(ray_out["metrics"]["accuracy"] - local_out["metrics"]["accuracy"]) <= 0.01 + 1e-9, \
        (ray_out["metrics"]["accuracy"], local_out["metrics"]["accuracy"])
    assert ray_out["metrics"]["accuracy"] >= 0.9
    # a project trained on Ray is an ordinary project: same registry, artifacts and checks
    assert cli_json("models", str(on_ray))["champion"] == ray_out["version"]
    assert (on_ray / ".modelloop" / "ray").is_dir()  # trial results and checkpoints in the project's storage


def test_retrain_from_postgresql_feedback_runs_on_the_cluster(runs, ray_cluster, serve):
    on_ray, ray_out, _ = runs["ray"]
    x, y = seed_case_traffic()
    rng = np.random.default_rng(3)
    server = serve(on_ray)  # outside the namespace; the store is the same PostgreSQL database
    names = server.client.get("/info").json()["class_names"]
    auth = server.auth("client")
    for i in rng.choice(len(x), 120, replace=False):
        r = server.client.post("/predict", json={"pixels": x[i].reshape(-1).tolist()})
        assert r.status_code == 200, r.text
        fb = server.client.post("/feedback", json={"prediction_id": r.json()["prediction_id"],
                                                   "label": names[int(y[i])]}, headers=auth)
        assert fb.status_code == 201, fb.text
    server.stop()
    proc = ray_cluster.cli("retrain", str(on_ray), "--ray", ray_cluster.address, "--json", timeout=900)
    assert proc.returncode in (0, 1), proc.stderr[-4000:]  # 1: the gate kept the champion
    res = json.loads(proc.stdout)
    assert res["decision"] in ("promoted", "rejected")
    # the 120 labelled predictions: learned from, validated on, or held out for the gate
    assert res["feedback_examples"] + res["feedback_validation"] + res["feedback_holdout"] >= 100, res
    assert _manifest(on_ray, res["version"])["training"]["workers"] == 2
    lineage = cli_json("lineage", str(on_ray), "--version", res["version"])
    assert len(lineage["feedback_ids"]) == res["feedback_examples"]


def test_a_killed_training_worker_resumes_from_its_checkpoint(ray_cluster, tmp_path):
    proj = _project(tmp_path, "kill", candidates=["cnn"], trials=1, epochs_per_trial=1)
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec["training"].update(max_epochs=14, patience=14)
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    log = open(tmp_path / "run.log", "w")  # noqa: SIM115
    out = open(tmp_path / "run.json", "w")  # noqa: SIM115
    run = ray_cluster.popen([str(Path(sys.executable).parent / "modelloop"), "run", str(proj), "--ray",
                             ray_cluster.address, "--json"], stdout=out, stderr=log)
    # wait until Ray Train has recorded checkpoints of two epochs, then kill one of the two worker processes
    storage = proj / ".modelloop" / "ray"
    deadline = time.time() + 600
    while time.time() < deadline and run.poll() is None:
        if any(_recorded(f) >= 2 for f in storage.glob("fit-*/checkpoint_manager_snapshot.json")):
            break
        time.sleep(0.3)
    assert run.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
    workers = ray_cluster.processes(r"RayTrainWorker")
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)
    assert run.wait(timeout=900) == 0, (tmp_path / "run.log").read_text()[-4000:]
    log.close()
    out.close()
    res = json.loads((tmp_path / "run.json").read_text())
    training = _manifest(proj, res["version"])["training"]
    assert training["resumed_from_epoch"] is not None and training["resumed_from_epoch"] >= 1, training
    assert training["epochs_run"] == 14 and training["workers"] == 2
    assert [v["version"] for v in cli_json("models", str(proj))["versions"]] == [res["version"]]
    assert res["metrics"]["accuracy"] >= 0.9


def test_ray_address_and_spec_errors_are_clear(tmp_path):
    proj = _project(tmp_path, "bad")
    proc = cli("run", str(proj), "--ray", "nowhere")
    assert proc.returncode == 2 and "option '--ray': received 'nowhere'" in proc.stderr
    assert "Traceback" not in proc.stderr
    # no cluster listens there (outside the namespace nothing runs on 127.0.0.2)
    proc = cli("run", str(proj), "--ray", "127.0.0.2:1", timeout=300)
    assert proc.returncode == 2 and "compute.address: could not join a Ray cluster at '127.0.0.2:1'" in proc.stderr
    assert "Traceback" not in proc.stderr
    # Ray not installed (here: made unimportable in a real process): the install command, exit 2
    code = ("import sys; sys.modules['ray'] = None; from modelloop.cli import main; "
            f"sys.argv = ['modelloop', 'run', {str(proj)!r}, '--ray', 'auto']; main()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "pip install 'modelloop[ray]'" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec["compute"] = {"backend": "spark"}
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    proc = cli("run", str(proj))
    assert proc.returncode == 2 and "compute.backend" in proc.stderr and "Traceback" not in proc.stderr
    assert not (proj / "registry" / "versions").exists()
