"""One writer per project, registrations that no race or crash corrupts, no retrain with nothing new.

Real processes throughout: registrations racing from separate interpreters, real ``modelloop``
commands refused while another holds the project, real SIGKILLs (a process whose registry
function is replaced by ``os.kill(os.getpid(), SIGKILL)`` dies at exactly that point, as a
crash there would leave it), and the PostgreSQL advisory lock on a real server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from modelloop.data import Dataset
from modelloop.errors import BusyError
from modelloop.loop import Loop
from modelloop.models import build_model
from modelloop.project import Project
from modelloop.registry import ProjectLock
from tests.conftest import MODELLOOP, cli

PY = sys.executable
ENV = {**os.environ, "COLUMNS": "200"}


def tiny_project(path: Path) -> Path:
    """A tabular project that trains in seconds: breast-cancer rows, a linear model, 2 epochs, 1 trial."""
    Project.init(path, task="tabular-classification", data="builtin:breast-cancer", target=0.8)
    spec_path = path / "modelloop.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    spec["selection"] = {"candidates": ["linear"], "trials": 1}
    spec["training"] = {"max_epochs": 2}
    spec["serving"] = {"backends": ["torch"]}
    spec["policy"] = {"min_new_feedback": 5}
    spec_path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny project whose first run made v1 the champion (copied by each test that changes it)."""
    path = tiny_project(tmp_path_factory.mktemp("lock") / "tiny")
    proc = cli("run", path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path


@pytest.fixture
def project(trained: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "p"
    shutil.copytree(trained, dst)
    return dst


def add_feedback(loop: Loop, n: int, offset: int = 0) -> None:
    """``n`` predictions of the champion on test rows, each with its true label as feedback."""
    champion = loop.registry.champion()
    ds = Dataset.load(loop.paths.data, loop.registry.manifest(champion)["dataset"]["base_fingerprint"])
    x, y = ds.splits["test"]
    for i in range(offset, offset + n):
        label = ds.class_names[int(y[i])]
        pid = loop.store.log_prediction(model_version=champion, x=x[i], label=label, scores={label: 0.9},
                                        latency_ms=1.0)
        loop.store.add_feedback(pid, label, client="tester")


def wait_for(predicate, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- the lock itself --------------------------------------------------------------------------------

HOLD = """
import sys, time
from modelloop.registry import ProjectLock
lock = ProjectLock(sys.argv[1], "p")
with lock.hold(sys.argv[2], wait=float(sys.argv[3])):
    print("held", flush=True)
    time.sleep(float(sys.argv[4]))
print("released", flush=True)
"""


def test_the_lock_is_reentrant_names_its_holder_and_refuses_everyone_else(tmp_path: Path) -> None:
    path = tmp_path / ".modelloop" / "writer.lock"
    lock = ProjectLock(path, "p", where="project 'p'")
    with lock.hold("run"), lock.hold("register"):  # re-entrant in the holding thread
        assert lock.held_here()
        info = lock.holder()
        assert info["pid"] == os.getpid() and info["operation"] == "run"
        assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
        on_disk = json.loads(path.read_text())
        assert on_disk["pid"] == os.getpid() and on_disk["operation"] == "run" and on_disk["command"]
        # Another thread of this process is refused like another process.
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                with lock.hold("x"):
                    pass
            except BusyError as e:
                errors.append(e)

        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert len(errors) == 1 and "another thread of this process" in str(errors[0])
        # Another process is refused, and told who holds the lock.
        proc = subprocess.run([PY, "-c", HOLD, str(path), "promote", "0", "0"], capture_output=True, text=True)
        assert proc.returncode != 0
        assert "BusyError" in proc.stderr and f"pid {os.getpid()}" in proc.stderr and "run: `" in proc.stderr
        # One that waits gets it once the holder lets go.
        waiter = subprocess.Popen([PY, "-c", HOLD, str(path), "promote", "60", "0"], stdout=subprocess.PIPE,
                                  text=True)
        time.sleep(1.0)
        assert waiter.poll() is None
    assert not lock.held_here()
    out, _ = waiter.communicate(timeout=60)
    assert waiter.returncode == 0 and out.split() == ["held", "released"]
    assert lock.holder() is None and path.read_text() == ""


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    path = tmp_path / "writer.lock"
    holder = subprocess.Popen([PY, "-c", HOLD, str(path), "retrain", "0", "600"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    lock = ProjectLock(path, "p")
    assert lock.holder()["pid"] == holder.pid
    with pytest.raises(BusyError, match=f"pid {holder.pid}.*retrain"):
        with lock.hold("run"):
            pass
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock.holder() is None  # its name is still in the file, but it is gone
    with lock.hold("run"):  # at once: the kernel released the flock with the process
        assert lock.holder()["pid"] == os.getpid()


# -- repro: two registrations at once --------------------------------------------------------------

CONFIG = {"family": "linear", "input_shape": [1, 32, 32], "num_classes": 2, "params": {}}
REGISTER = """
import json, sys, time, torch
from pathlib import Path
from modelloop.loop import Loop
from modelloop.models import build_model
from modelloop.project import Project
root, seed, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
config = json.loads(sys.argv[4])
loop = Loop(root)
torch.manual_seed(seed)
model = build_model(config)
manifest = {"task": "image-classification", "model": config, "class_names": ["even", "odd"], "seed": seed,
            "metrics": {"test": {"accuracy": 0.5}}, "requirements": {"passed": False, "checks": []},
            "dataset": {"fingerprint": "f", "base_fingerprint": "f", "source": "x"}, "run_id": f"r{seed}"}
pre = {"format": {"channels": 1, "height": 32, "width": 32}, "normalizer": {"mean": [0.0], "std": [1.0]},
       "class_names": ["even", "odd"]}
(go.parent / f"ready-{seed}").touch()
while not go.exists():
    time.sleep(0.001)
print(loop.registry.register(manifest, model, pre), flush=True)
"""


def test_registrations_racing_from_separate_processes_make_distinct_complete_versions(tmp_path: Path) -> None:
    """Before the lock, two writers started within milliseconds produced a v7 holding one's
    manifest and the other's weights, and the other crashed."""
    root = tiny_project(tmp_path / "p")
    go = tmp_path / "go"
    seeds = [11, 22, 33]
    procs = [subprocess.Popen([PY, "-c", REGISTER, str(root), str(s), str(go), json.dumps(CONFIG)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in seeds]
    wait_for(lambda: all((tmp_path / f"ready-{s}").exists() for s in seeds), what="the writers to start")
    go.touch()  # all three register at once
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [e[-2000:] for _, e in outs]
    assert sorted(o.strip() for o, _ in outs) == ["v1", "v2", "v3"]
    loop = Loop(root)
    for m in loop.registry.versions():
        torch.manual_seed(m["seed"])  # the weights are those of the writer whose manifest this is
        expected = build_model(CONFIG).state_dict()
        got = load_file(str(loop.registry.path(m["version"]) / "weights.safetensors"))
        assert all(torch.equal(got[k], expected[k]) for k in expected), m["version"]
    assert sorted(m["seed"] for m in loop.registry.versions()) == seeds
    assert sorted(p.name for p in (root / "registry" / "versions").iterdir()) == ["v1", "v2", "v3"]
    assert [e["version"] for e in loop.registry.events()] == ["v1", "v2", "v3"]
    for p in (root / "registry" / "versions").rglob("*"):
        assert p.stat().st_mode & 0o777 == (0o700 if p.is_dir() else 0o600)


# -- repro: two `modelloop retrain` at once ---------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_holder_and_readers_are_not_blocked(project: Path) -> None:
    first = subprocess.Popen([MODELLOOP, "retrain", str(project), "--force"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ENV)
    lock = Loop(project).lock
    wait_for(lambda: (lock.holder() or {}).get("pid") == first.pid, what="the first retrain to take the lock")
    os.kill(first.pid, signal.SIGSTOP)  # it holds the project for as long as the checks below take
    try:
        t0 = time.monotonic()
        second = cli("retrain", project, "--force")
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr and "retrain: `modelloop retrain" in second.stderr
        assert "--wait" in second.stderr
        run = cli("run", project, "--json")
        assert run.returncode == 2 and json.loads(run.stdout)["type"] == "BusyError"
        promote = cli("promote", project, "v1", "--json")  # registry changes wait a little, then refuse
        assert promote.returncode == 2 and f"pid {first.pid}" in json.loads(promote.stdout)["error"]
        assert time.monotonic() - t0 < 120
        # The server's reads need no lock.
        reader = Loop(project)
        assert reader.registry.champion() == "v1" and [v["version"] for v in reader.registry.versions()] == ["v1"]
        assert reader.registry.state_mtime() > 0 and reader.registry.load("v1").version == "v1"
        waiter_log = project.parent / "waiter.log"
        with waiter_log.open("w") as log:
            waiter = subprocess.Popen([MODELLOOP, "retrain", str(project), "--force", "--wait"],
                                      stdout=subprocess.DEVNULL, stderr=log, env=ENV)
        wait_for(lambda: "waiting for the writer lock" in waiter_log.read_text(), what="the waiter to wait")
        assert waiter.poll() is None
    finally:
        os.kill(first.pid, signal.SIGCONT)
    _, err1 = first.communicate(timeout=600)
    assert first.returncode in (0, 1), err1[-2000:]
    assert waiter.wait(timeout=600) in (0, 1), waiter_log.read_text()[-2000:]
    assert "challenger v3" in waiter_log.read_text() or "[gate] v3" in waiter_log.read_text()
    loop = Loop(project)
    assert [v["version"] for v in loop.registry.versions()] == ["v1", "v2", "v3"]
    assert loop.check() == []


# -- repro: retrain with nothing new ----------------------------------------------------------------


def test_retrain_with_nothing_new_stops_and_force_retrains(project: Path) -> None:
    skipped = cli("retrain", project, "--json")
    assert skipped.returncode == 1, skipped.stderr[-2000:]
    res = json.loads(skipped.stdout)
    assert res["decision"] == "skipped" and res["version"] is None
    assert res["reason"] == "no new feedback since v1 was trained (no usable labelled feedback yet)"
    assert "no new feedback since v1 was trained" in cli("retrain", project).stdout
    forced = cli("retrain", project, "--force", "--json")
    assert forced.returncode in (0, 1), forced.stderr[-2000:]
    assert json.loads(forced.stdout)["version"] == "v2"

    loop = Loop(project)
    add_feedback(loop, 30)
    fresh = loop.retrain(promote=False)  # new feedback: trained without --force
    assert fresh["version"] == "v3" and fresh["feedback_examples"] + fresh["feedback_validation"] + \
        fresh["feedback_holdout"] == 30
    again = loop.retrain()
    assert again["decision"] == "skipped" and again["version"] is None
    assert again["reason"] == "no new feedback since v3 was trained (30 labelled feedback rows, all already used)"
    # watch: the new-feedback trigger fires (30 rows since the champion was trained), but v3 learned them all
    res = loop.watch_once()
    assert res["triggers"]["new_feedback"]["fired"] and res["action"] == "skipped"
    assert res["reason"].startswith("no new feedback since v3 was trained")
    res = loop.watch_once(force=True)
    assert res["action"] == "retrained" and res["version"] == "v4"
    add_feedback(loop, 5, offset=30)  # five more rows: something new again
    assert loop.retrain(promote=False)["version"] == "v5"
    assert len(loop.registry.versions()) == 5 and loop.check() == []


# -- repro: a crash between registration and promotion ----------------------------------------------

DIE_AT = """
import os, signal, sys
import modelloop.registry.store as store
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
point = sys.argv[1]
if point == "promote":      # the version is registered; its promotion never happens
    store.LocalRegistry.promote = die
elif point == "renamed":    # the version folder was just renamed into place; nothing after it happened
    store.fsync_dir = die
elif point == "sealed":     # the artifact and the report are written; the rename never happens
    store.seal = die
from modelloop.cli import app
app(sys.argv[2:], prog_name="modelloop")
"""


def die_at(point: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-c", DIE_AT, point, *map(str, args)], capture_output=True, text=True, env=ENV,
                          timeout=600)


@pytest.mark.parametrize("point", ["promote", "renamed", "sealed"])
def test_run_killed_around_its_registration_resumes_into_one_complete_promoted_version(tmp_path, point) -> None:
    root = tiny_project(tmp_path / "p")
    crashed = die_at(point, "run", root)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert "[optimization]" in crashed.stderr and "[report] v1" in crashed.stderr
    loop = Loop(root)
    assert loop.registry.champion() is None
    assert loop.check(finished=False) == []  # even as the crash left it: no incomplete version
    if point == "sealed":
        assert loop.registry.versions() == [] and loop.registry.stale_temporaries()
    else:
        assert [v["version"] for v in loop.registry.versions()] == ["v1"]
        assert loop.check() == ["v1: registered, but its run " + loop.registry.manifest("v1")["run_id"]
                                + " never finished"]

    resumed = cli("run", root, "--resume", "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    res = json.loads(resumed.stdout)
    assert res["version"] == "v1" and res["champion"] is True
    loop = Loop(root)
    assert [v["version"] for v in loop.registry.versions()] == ["v1"] and loop.registry.champion() == "v1"
    assert loop.check() == [] and not loop.registry.stale_temporaries()
    assert sorted(p.name for p in (root / "reports").iterdir()) == ["v1.html"]
    events = [(e["event"], e["version"]) for e in loop.registry.events()]
    assert events == [("registered", "v1"), ("promoted", "v1")]
    states = [json.loads(f.read_text()) for f in (root / ".modelloop" / "runs").glob("*/state.json")]
    assert [(s["status"], s.get("version")) for s in states] == [("done", "v1")]


def test_retrain_killed_before_its_promotion_is_finished_by_the_next_retrain(project: Path) -> None:
    crashed = die_at("promote", "retrain", project, "--force")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    loop = Loop(project)
    assert loop.registry.champion() == "v1" and loop.check(finished=False) == []
    assert loop.registry.manifest("v2")["gate"]["decision"] == "promoted"
    rerun = cli("retrain", project, "--json")  # finishes v2, then finds nothing new to learn
    assert rerun.returncode == 1, rerun.stderr[-2000:]
    assert "v2 of interrupted retrain" in rerun.stderr
    assert json.loads(rerun.stdout)["reason"].startswith("no new feedback since v2 was trained")
    loop = Loop(project)
    assert loop.registry.champion() == "v2" and [v["version"] for v in loop.registry.versions()] == ["v1", "v2"]
    assert [e["event"] for e in loop.registry.events() if e["version"] == "v2"] == ["registered", "gate", "promoted"]
    assert loop.check() == []


# -- permissions ------------------------------------------------------------------------------------


def test_project_files_are_private(trained: Path) -> None:
    for folder in (".modelloop", ".modelloop/runs", ".modelloop/data", "registry", "registry/versions",
                   "registry/versions/v1", "reports"):
        assert (trained / folder).stat().st_mode & 0o777 == 0o700, folder
    for f in ("modelloop.yaml", "registry/registry.json", "registry/events.jsonl", "reports/v1.html",
              ".modelloop/writer.lock",
              *(str(p.relative_to(trained)) for p in (trained / "registry/versions/v1").iterdir()),
              *(str(p.relative_to(trained)) for p in (trained / ".modelloop/runs").glob("*/state.json"))):
        assert (trained / f).stat().st_mode & 0o777 == 0o600, f


# -- across machines: the PostgreSQL advisory lock --------------------------------------------------

PG_HOLD = """
import sys, time
from modelloop.loop import Loop
with Loop(sys.argv[1]).lock.hold("run"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_projects_sharing_a_postgresql_store_serialize_through_an_advisory_lock(tmp_path, postgres) -> None:
    """Two copies of one project (as two machines would mount a shared registry, at different
    paths): their lock files differ, the advisory lock on the shared PostgreSQL store does not."""
    url = postgres.create_database("lock")
    a, b = tmp_path / "machine-a" / "shared", tmp_path / "machine-b" / "shared"
    for root in (a, b):
        tiny_project(root)
        spec_path = root / "modelloop.yaml"
        spec = yaml.safe_load(spec_path.read_text())
        spec["feedback"] = {"store_url": url}
        spec_path.write_text(yaml.safe_dump(spec))
    holder = subprocess.Popen([PY, "-c", PG_HOLD, str(a)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(BusyError) as exc:
            with Loop(b).lock.hold("retrain"):
                pass
        msg = str(exc.value)
        assert f"modelloop run pid {holder.pid}@" in msg and "PostgreSQL advisory lock" in msg
        refused = cli("retrain", b)
        assert refused.returncode == 2 and f"modelloop run pid {holder.pid}@" in refused.stderr
        assert Loop(b).lock.holder() is None  # b's own lock file is free: only PostgreSQL said no
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the server drops the killed holder's session and its lock
        holder.wait()
    with Loop(b).lock.hold("retrain", wait=30):
        pass
