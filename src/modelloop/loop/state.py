"""Run state: the records a run or retrain keeps on disk, and the promises they keep.

A run (or retrain) lives in ``runs/RUN_ID/``; its ``state.json`` says how far it got (the
dataset snapshot, the selection, the version it registered) so that ``run --resume`` continues
and so that the next writer finishes a version a crashed one registered. :class:`Runs` is the
public object every stage of the loop, and every task's pipeline, records its progress through.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..feedback.sampling import feedback_fingerprint, is_holdout
from ..registry.artifact import PREPROCESSING, WEIGHTS
from ..settings import PRIVATE_FILE, ProjectPaths, private_dir, write_private

__all__ = ["Runs", "RunState", "is_holdout", "feedback_fingerprint", "Progress"]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]


class RunState:
    """One run's folder and its ``state.json`` (a dict: ``run_id``, ``kind``, ``status``, ...)."""

    def __init__(self, run_id: str, folder: Path, state: dict[str, Any]) -> None:
        self.run_id, self.folder, self.state = run_id, folder, state

    def save(self, **changes: Any) -> None:
        """Update the state and write it, flushed to disk, before the step that follows."""
        self.state.update(changes)
        write_private(self.folder / "state.json", json.dumps(self.state, indent=2), fsync=True)

    def write(self, name: str, value: Any) -> None:
        """A JSON record of this run (``feedback_ids.json``, ``holdout_ids.json``, ...), mode 0600."""
        write_private(self.folder / name, json.dumps(value))

    def elapsed(self, since: float) -> float:
        """Seconds this run has worked: before an interruption, and since ``since`` (perf_counter)."""
        return float(self.state.get("elapsed_s", 0.0)) + time.perf_counter() - since


class Runs:
    """The project's runs, versions and their promises (see :meth:`check`).

    Args:
        paths: the project's folders.
        registry: its model registry.
        lock: its writer lock (``check`` asks whether another writer is at work).
        say: where progress lines go.
    """

    def __init__(self, paths: ProjectPaths, registry, lock, say: Callable[[Progress | None, str], None],
                 resumable: bool = True) -> None:
        self.paths, self.registry, self.lock, self.say = paths, registry, lock, say
        self.resumable = resumable

    # -- runs ---------------------------------------------------------------------------------
    def new(self, kind: str = "run", **fields: Any) -> RunState:
        run_id = time.strftime("r%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        run_dir = self.paths.runs / run_id
        private_dir(self.paths.runs)
        run_dir.mkdir(mode=0o700)
        run_dir.chmod(0o700)
        run = RunState(run_id, run_dir, {"run_id": run_id, "status": "running", "kind": kind,
                                         "started_at": time.time(), **fields})
        run.save()
        return run

    def unfinished(self) -> RunState | None:
        """The latest run (not retrain) still marked running: what ``run --resume`` continues."""
        if not self.paths.runs.is_dir():
            return None
        for run_dir in sorted(self.paths.runs.iterdir(), reverse=True):
            f = run_dir / "state.json"
            if f.is_file():
                state = json.loads(f.read_text())
                if state.get("status") == "running" and state.get("kind") == "run":
                    return RunState(state["run_id"], run_dir, state)
        return None

    def registered_version(self, run: RunState) -> str | None:
        """The version a run registered: the one its state names, else the one whose manifest
        names the run (a crash can fall between the registration and the state's update)."""
        v = run.state.get("registered")
        if v and (self.registry.path(v) / "manifest.json").is_file():
            return v
        return next((m["version"] for m in self.registry.versions() if m.get("run_id") == run.run_id), None)

    # -- registration ---------------------------------------------------------------------------
    def write_report(self, version: str, write: Callable[[Path], Any]) -> Path:
        """``reports/VERSION.html``, mode 0600, atomically: ``write(path)`` writes a temporary
        file, which is flushed to disk and renamed into place."""
        private_dir(self.paths.reports)
        final = self.paths.reports / f"{version}.html"
        tmp = self.paths.reports / f".{version}.html.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            write(tmp)
            os.chmod(tmp, PRIVATE_FILE)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def complete(self, run: RunState, version: str, progress: Progress | None) -> dict[str, Any]:
        """The steps after a version is registered, each done once even when repeated after a
        crash: the registration and gate records, the promotion (a run's first version meeting
        the requirements; a retrain's challenger the gate passed, if its champion is still the
        champion) or the challenger alias, and the run's state "done". Returns the run's result."""
        state = run.state
        m = self.registry.manifest(version)
        events = [e for e in self.registry.events() if e.get("version") == version]
        if not any(e.get("event") == "registered" for e in events):
            self.registry.record({"event": "registered", "version": version, "parent": m.get("parent"),
                                  "recovered": True})
        champion = self.registry.champion()
        passed = bool(m["requirements"]["passed"])
        if state.get("kind", "run") != "retrain":
            if passed and champion is None:
                self.registry.promote(version, reason="first version meeting the requirements")
            message = (f"[registry] registered {version}" + (" as champion" if self.registry.champion() == version
                                                               else "") + ("" if passed else " (requirements not met)"))
        else:
            decision = m.get("gate") or {}
            if not any(e.get("event") == "gate" for e in events):
                self.registry.record({"event": "gate", "version": version, "champion": m.get("parent"),
                                      "decision": decision.get("decision"), "reasons": decision.get("reasons", [])})
            if decision.get("decision") == "promoted":
                if not state.get("promote", True):
                    if self.registry.alias("challenger") != version:
                        self.registry.set_alias("challenger", version)
                elif champion == m.get("parent"):
                    self.registry.promote(version, reason="gate passed after retraining on feedback")
                elif champion != version:  # someone promoted or rolled back since: that decision stands
                    log.warning("%s passed the gate against %s, but the champion is now %s: not promoted",
                                version, m.get("parent"), champion)
                    self.registry.record({"event": "not_promoted", "version": version, "champion": champion,
                                          "reason": f"the champion moved from {m.get('parent')} to {champion}"})
            message = f"[gate] {version} {decision.get('decision')}: {'; '.join(decision.get('reasons', []))}"
        run.save(status="done", version=version)
        self.say(progress, message)
        return {"version": version, "run_id": m.get("run_id"), "parent": m.get("parent"),
                "metrics": m["metrics"]["test"], "val_metrics": m["metrics"].get("val"), "latency": m.get("latency"),
                "size_mb": m.get("size_mb"), "gate": m["requirements"], "passed": passed,
                "champion": self.registry.champion() == version, "report": m.get("report"),
                "family": m["model"].get("candidate", m["model"].get("family")),
                "dataset": m["dataset"]["fingerprint"], "feedback_examples": m.get("feedback_examples", 0),
                "decision": m.get("gate"), "task": m.get("task")}

    # -- retraining ------------------------------------------------------------------------------
    def nothing_new(self, champion: str, fingerprint: str, rows: int) -> str | None:
        """Why a retrain from ``champion`` would learn nothing new, or None.

        ``fingerprint`` identifies the usable labelled feedback now (:func:`feedback_fingerprint`
        of its prediction ids and labels). Nothing is new when it equals that of the latest version
        trained from this lineage: the champion itself or its latest challenger (a rejected
        challenger, retrained on the same rows, would come out the same). Versions registered
        before fingerprints were recorded never count as "the same".
        """
        latest = self.registry.manifest(champion)
        for m in self.registry.versions():
            if m.get("parent") == champion and int(m["version"][1:]) > int(latest["version"][1:]):
                latest = m
        if latest.get("feedback_fingerprint") != fingerprint:
            return None
        used = f"{rows} labelled feedback rows, all already used" if rows else "no usable labelled feedback yet"
        return f"no new feedback since {latest['version']} was trained ({used})"

    def skipped(self, champion: str, reason: str, rows: int, progress: Progress | None) -> dict[str, Any]:
        self.say(progress, f"[retrain] nothing to do: {reason}; --force retrains anyway")
        return {"version": None, "run_id": None, "parent": champion, "decision": "skipped", "reason": reason,
                "evidence": {"decision": "skipped", "reasons": [reason]}, "feedback_rows": rows,
                "feedback_examples": 0, "feedback_validation": 0, "feedback_holdout": 0, "champion": False,
                "champion_version": champion, "report": None, "metrics": None, "passed": None,
                "champion_metrics": None, "challenger_metrics": None}

    # -- after a crash ----------------------------------------------------------------------------
    def prepare_writer(self) -> None:
        """Under the writer lock: make the project's folders private, and remove what crashed
        writers left half-written (temporary version folders, reports of versions that never
        came to exist, temporary state files). Nothing here can belong to a live writer."""
        self.paths.make_private()
        self.registry.clean()
        reports = self.paths.reports
        for p in reports.iterdir():
            stale_tmp = p.name.startswith(".") and p.name.endswith(".tmp")
            orphan = (p.suffix == ".html" and p.stem.startswith("v") and p.stem[1:].isdigit()
                      and not (self.registry.path(p.stem) / "manifest.json").is_file())
            if stale_tmp or orphan:
                p.unlink(missing_ok=True)
        for p in self.paths.runs.glob("*/.*.tmp"):
            p.unlink(missing_ok=True)

    def recover(self, progress: Progress | None) -> None:
        """Finish what crashed writers left. Called under the writer lock, so every run still
        marked running belongs to a process that is gone: one that registered its version is
        finished (:meth:`complete`); an interrupted retrain is marked so; an interrupted run
        stays resumable (``run --resume``) where the task resumes runs."""
        if not self.paths.runs.is_dir():
            return
        by_run: dict[str, str] | None = None
        for run_dir in sorted(self.paths.runs.iterdir()):
            f = run_dir / "state.json"
            try:
                state = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if state.get("status") != "running":
                continue
            if by_run is None:
                by_run = {}
                for m in self.registry.versions():
                    by_run.setdefault(m.get("run_id"), m["version"])
            run = RunState(state.get("run_id"), run_dir, state)
            version = state.get("registered")
            if not (version and (self.registry.path(version) / "manifest.json").is_file()):
                version = by_run.get(state.get("run_id"))
            if version is not None:
                self.say(progress, f"[registry] {version} of interrupted {state.get('kind', 'run')} "
                         f"{state.get('run_id')} was registered: finishing it")
                self.complete(run, version, progress)
            elif state.get("kind") != "run" or not self.resumable:
                run.save(status="interrupted")

    def check(self, finished: bool = True) -> list[str]:
        """What breaks the registry's promises, as sentences (empty: all kept). The promises: every
        version is complete (manifest, weights, preprocessing) and has its report and its gate
        (requirements checked; a retrained version's decision); the champion and every alias
        point at such a version; no run registered two versions. With ``finished`` (and no writer
        at work), also: no registered version waits for its run to finish, as one does between a
        crash after its registration and the next writer (which finishes it)."""
        problems: list[str] = []
        seen_runs: dict[str, str] = {}
        versions = self.registry.versions()
        complete = set()
        for m in versions:
            v = m["version"]
            folder = self.registry.path(v)
            missing = [n for n in ("manifest.json", WEIGHTS, PREPROCESSING) if not (folder / n).is_file()]
            if missing:
                problems.append(f"{v}: missing {', '.join(missing)}")
            report = self.paths.reports / f"{v}.html"
            if not m.get("report") or not report.is_file():
                problems.append(f"{v}: no report ({str(report)!r}, manifest {m.get('report')!r})")
            if "passed" not in (m.get("requirements") or {}):
                problems.append(f"{v}: no requirements check")
            if m.get("parent") and "decision" not in (m.get("gate") or {}):
                problems.append(f"{v}: retrained from {m['parent']} but no gate decision")
            run_id = m.get("run_id")
            if run_id in seen_runs:
                problems.append(f"{v}: run {run_id} already registered {seen_runs[run_id]}")
            seen_runs.setdefault(run_id, v)
            if not missing:
                complete.add(v)
        state = self.registry.read_state()
        for alias, v in state["aliases"].items():
            if v not in complete:
                problems.append(f"alias {alias} -> {v}: not a complete version")
        for v in state["champion_history"]:
            if v not in complete:
                problems.append(f"champion history names {v}: not a complete version")
        someone_else_writing = self.lock.holder() is not None and not self.lock.held_here()
        if finished and not someone_else_writing and self.paths.runs.is_dir():
            for f in self.paths.runs.glob("*/state.json"):
                try:
                    st = json.loads(f.read_text())
                except ValueError:
                    problems.append(f"{f}: unreadable")
                    continue
                if st.get("status") == "running" and st.get("run_id") in seen_runs:
                    problems.append(f"{seen_runs[st['run_id']]}: registered, but its {st.get('kind')} "
                                    f"{st['run_id']} never finished")
        return problems
