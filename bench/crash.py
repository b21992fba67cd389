"""Crash campaign: ``kill -9`` of ``modelloop run``, ``modelloop retrain`` and bare registrations at
seeded random moments, then recovery, resume or rerun, with the registry's promises checked after
every kill (habit 13: a version exists only when all of it is on disk; one writer per project).

The promises (``Loop.check``): every version is complete (manifest, weights, preprocessing) and
has its report and its gate (the requirements checked; a retrained version's decision); the
champion, every alias and the champion history point at complete versions; no run registered two
versions; and, once a writer has recovered the project, no registered version waits for its run to
finish (promotion, gate record).

Each point draws (seeded) a command and a delay, starts the command as a real process (its own
process group) and sends SIGKILL to the group at that delay:

- ``run``: ``modelloop run DIR --resume`` (resumes what the last kill interrupted, or starts a run);
- ``retrain``: ``modelloop retrain DIR --force``;
- ``register``: this script's ``--register-worker``, which registers copies of the champion the
  way the loop does (a run folder, the number claimed under the writer lock, the report written
  before the version appears, the run finished), eight back to back.

The delay is uniform between the command's first output (imports done) and its measured end
(each command is first run once to completion to measure it; a command that ends before its
delay, the machine having become faster, sets its kind's end to what it took). The stage reached is the last
``[stage]`` progress line the command wrote to stderr. After the kill: check (as the crash left
it), then ``Loop.recover`` (what every writer does first) and check again; the next point's
command is the resume or rerun. At the end one ``modelloop run DIR --resume`` runs to completion
and the final check covers everything.

Cases: ``seed-case`` (the founding case, builtin:seed-case as ``modelloop demo`` trains it) and
``tabular`` (builtin:breast-cancer, one small candidate, the test suite's configuration).

    python bench/crash.py --points 20 --seed 0 [--case seed-case] [--trials N] [--epochs N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

MODELLOOP = str(Path(sys.executable).parent / "modelloop")
KINDS = {"run": 0.4, "retrain": 0.4, "register": 0.2}
_STAGE = re.compile(r"^\[([a-z][a-z ]*)\]", re.M)


@dataclass
class Point:
    index: int
    kind: str
    delay_s: float
    stage: str = ""
    outcome: str = ""
    after_kill: list[str] = field(default_factory=list)
    after_recovery: list[str] = field(default_factory=list)
    versions: int = 0


def command(kind: str, project: Path) -> list[str]:
    if kind == "run":
        return [MODELLOOP, "run", str(project), "--resume"]
    if kind == "retrain":
        return [MODELLOOP, "retrain", str(project), "--force"]
    return [sys.executable, str(Path(__file__).resolve()), "--register-worker", str(project), "--count", "8"]


def _launch(cmd: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as err:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                env={**os.environ, "COLUMNS": "200"})


def stage_of(log: Path) -> str:
    """The last ``[stage]`` progress line a command wrote (``start`` if none: still importing)."""
    tags = _STAGE.findall(log.read_text(errors="replace")) if log.is_file() else []
    return tags[-1] if tags else "start"


def measure(cmd: list[str], log: Path, timeout: float = 3600) -> tuple[float, float, int]:
    """Run ``cmd`` to completion: (seconds to its first output, seconds to its end, exit code)."""
    t0 = time.monotonic()
    p = _launch(cmd, log)
    first = None
    while p.poll() is None:
        if first is None and log.stat().st_size > 0:
            first = time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            raise TimeoutError(f"{' '.join(cmd)}: still running after {timeout} s")
        time.sleep(0.02)
    end = time.monotonic() - t0
    return (first if first is not None else end), end, p.returncode


def kill_at(cmd: list[str], delay: float, log: Path) -> tuple[str, float]:
    """Start ``cmd``, SIGKILL its process group ``delay`` seconds later. Returns the outcome and
    the seconds it ran."""
    t0 = time.monotonic()
    p = _launch(cmd, log)
    while time.monotonic() - t0 < delay:
        if p.poll() is not None:
            return f"ended first (exit {p.returncode})", time.monotonic() - t0
        time.sleep(0.005)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()
    ran = time.monotonic() - t0
    return ("killed" if p.returncode == -signal.SIGKILL else f"ended first (exit {p.returncode})"), ran


def campaign(project: Path, points: int, seed: int, logs: Path, say=print, kinds: dict[str, float] | None = None,
             windows: dict[str, tuple[float, float]] | None = None) -> dict[str, Any]:
    """Kill, check, recover, check, ``points`` times on ``project`` (which has a champion); then
    one ``run --resume`` to completion and a final check. Returns the points and the totals.

    ``windows``: kind -> (first output, end) in seconds, measured already (the others are
    measured here, each by one run to completion)."""
    from modelloop.loop import Loop

    kinds = kinds or KINDS
    rng = random.Random(seed)
    logs.mkdir(parents=True, exist_ok=True)
    windows = dict(windows or {})
    for kind in kinds:
        if kind in windows:
            continue
        first, end, rc = measure(command(kind, project), logs / f"measure-{kind}.log")
        if rc not in (0, 1):
            tail = (logs / f"measure-{kind}.log").read_text()[-3000:]
            raise RuntimeError(f"{kind}: exit {rc} when measured:\n{tail}")
        windows[kind] = (first, end)
        say(f"measured {kind}: first output at {first:.1f} s, done at {end:.1f} s")
    done: list[Point] = []
    names, weights = list(kinds), list(kinds.values())
    say("  #  command    delay s  stage reached  outcome                after kill / after recovery")
    for i in range(points):
        kind = rng.choices(names, weights)[0]
        lo, hi = windows[kind]
        pt = Point(i + 1, kind, rng.uniform(lo, hi))
        log = logs / f"point-{i + 1:02d}-{kind}.log"
        pt.outcome, ran = kill_at(command(kind, project), pt.delay_s, log)
        pt.stage = stage_of(log)
        if pt.outcome != "killed":  # the machine got faster than when measured: later delays follow it
            windows[kind] = (min(lo, ran), ran)
        loop = Loop(project)
        pt.after_kill = loop.check(finished=False)
        pt.after_recovery = loop.recover()
        pt.versions = len(loop.registry.versions())
        done.append(pt)
        say(f"{pt.index:3d}  {pt.kind:8s} {pt.delay_s:7.1f}  {pt.stage:14s} {pt.outcome:22s} "
            f"{'ok' if not pt.after_kill else 'BROKEN'} / {'ok' if not pt.after_recovery else 'BROKEN'}  "
            f"{pt.versions} versions" + "".join(f"\n      {p}" for p in pt.after_kill + pt.after_recovery))
    _, end, rc = measure(command("run", project), logs / "final-run.log")
    final = Loop(project).check()
    return {"points": done, "windows": windows, "final_rc": rc, "final": final,
            "killed": sum(p.outcome == "killed" for p in done),
            "held_after_kill": sum(not p.after_kill for p in done),
            "held_after_recovery": sum(not p.after_recovery for p in done),
            "stages": {k: dict(Counter(p.stage for p in done if p.kind == k and p.outcome == "killed"))
                       for k in kinds}}


def register_worker(project: Path, count: int) -> None:
    """Register ``count`` copies of the champion the way the loop registers a version."""
    from modelloop.loop import Loop
    from modelloop.registry.artifact import PREPROCESSING

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    loop = Loop(project)
    champion = loop.registry.champion()
    folder = loop.registry.path(champion)
    model = loop.registry.load(champion).model
    pre = json.loads((folder / PREPROCESSING).read_text())
    base = {k: v for k, v in loop.registry.manifest(champion).items()
            if k not in ("version", "created_at", "report", "aliases", "gate", "parent")}
    onnx = {p.name: p for p in folder.glob("*.onnx")}
    for _ in range(count):
        with loop.lock.hold("register", wait=True):
            run = loop.runs.new("register", copy_of=champion)
            say(f"[register] run {run.run_id}: claiming the next version")

            def complete(version: str) -> dict[str, Any]:
                path = loop.runs.write_report(version, lambda p, v=version: Path(p).write_text(
                    f"<!doctype html><title>{v}</title><p>copy of {champion}</p>"))
                say(f"[report] {version}: {path}")
                return {"report": str(path)}

            version = loop.registry.register({**base, "run_id": run.run_id}, model, pre, extra_files=onnx,
                                             complete=complete)
            run.save(registered=version)
            loop.runs.complete(run, version, say)


def init_project(case: str, directory: Path, trials: int | None, epochs: int | None,
                 target: float | None = None) -> Path:
    """A new project of ``case``: ``seed-case`` as ``modelloop demo`` sets it up (accuracy >= 0.95),
    ``tabular`` as the test suite's tiny configuration (accuracy >= 0.8)."""
    import yaml

    from modelloop.project import Project

    project = directory / case
    if case == "seed-case":
        Project.init(project, data="builtin:seed-case", target=0.95 if target is None else target)
    else:
        Project.init(project, task="tabular-classification", data="builtin:breast-cancer",
                     target=0.8 if target is None else target)
    spec_path = project / "modelloop.yaml"
    spec = yaml.safe_load(spec_path.read_text())
    if case == "tabular":
        spec["selection"] = {"candidates": ["linear"], "trials": 1}
        spec["training"] = {"max_epochs": 2}
        spec["serving"] = {"backends": ["torch"]}
    if trials is not None:
        spec.setdefault("selection", {})["trials"] = trials
    if epochs is not None:
        spec.setdefault("training", {})["max_epochs"] = epochs
    spec_path.write_text(yaml.safe_dump(spec))
    return project




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case", choices=("seed-case", "tabular"), default="seed-case")
    ap.add_argument("--trials", type=int, default=None, help="selection.trials (default: the spec's)")
    ap.add_argument("--epochs", type=int, default=None, help="training.max_epochs (default: the spec's)")
    ap.add_argument("--target", type=float, default=None, help="requirements.target (default: the case's)")
    ap.add_argument("--dir", type=Path, default=None, help="where the project goes (default: a temporary folder)")
    ap.add_argument("--register-worker", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=8, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.register_worker is not None:
        register_worker(a.register_worker, a.count)
        return
    t0 = time.monotonic()
    load_before = os.getloadavg()
    work = a.dir or Path(tempfile.mkdtemp(prefix="modelloop-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    project = init_project(a.case, work, a.trials, a.epochs, a.target)
    print(f"crash campaign: case {a.case}, {a.points} points, seed {a.seed}, trials {a.trials or 'spec'}, epochs "
          f"{a.epochs or 'spec'}, target {a.target or 'case'}; project {project}", flush=True)
    first, end, rc = measure([MODELLOOP, "run", str(project)], work / "first-run.log")
    if rc != 0:
        raise SystemExit(f"the first run exited {rc}:\n{(work / 'first-run.log').read_text()[-3000:]}")
    print(f"first run (to a champion): first output at {first:.1f} s, done at {end:.1f} s", flush=True)
    res = campaign(project, a.points, a.seed, work / "logs", say=lambda m: print(m, flush=True),
                   windows={"run": (first, end)})
    pts: list[Point] = res["points"]
    print(f"\nkills: {res['killed']} of {len(pts)} points (the others ended before their delay)")
    for kind, stages in res["stages"].items():
        if stages:
            print(f"stages reached when killed, {kind}: " + ", ".join(f"{s} {n}" for s, n in sorted(stages.items())))
    print(f"invariants held: {res['held_after_kill']}/{len(pts)} right after the kill, "
          f"{res['held_after_recovery']}/{len(pts)} after recovery; final run --resume exit {res['final_rc']}, "
          f"final check: {'ok' if not res['final'] else res['final']}")
    print(f"versions at the end: {pts[-1].versions if pts else 0} after the last point, then the final run")
    load_after = os.getloadavg()
    print(f"{describe()}; load average (1/5/15 min) before "
          f"{'/'.join(f'{x:.1f}' for x in load_before)}, after {'/'.join(f'{x:.1f}' for x in load_after)}; "
          f"took {time.monotonic() - t0:.0f} s")
    if a.dir is None:
        shutil.rmtree(work, ignore_errors=True)
    broken = res["final"] or res["held_after_kill"] < len(pts) or res["held_after_recovery"] < len(pts)
    raise SystemExit(1 if broken else 0)


if __name__ == "__main__":
    main()
