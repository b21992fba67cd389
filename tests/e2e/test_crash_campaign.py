"""kill -9 at 20 seeded random moments of ``modelloop run``, ``modelloop retrain`` and bare
registrations on a tiny project, each followed by recovery and the resume or rerun: the registry
keeps its promises after every kill (only complete versions, each with its report and gate, the
champion on a complete version, no orphan). The campaign's engine is ``bench/crash.py``, which
runs the same campaign on the founding case."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import MODELLOOP

pytestmark = pytest.mark.slow
BENCH = Path(__file__).resolve().parents[2] / "bench" / "crash.py"


def _crash_module():
    spec = importlib.util.spec_from_file_location("modelloop_bench_crash", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(mod)
    return mod


def test_kill_9_at_20_random_points_never_breaks_the_registry(tmp_path: Path) -> None:
    crash = _crash_module()
    project = crash.init_project("tabular", tmp_path, None, None)
    first, end, rc = crash.measure([MODELLOOP, "run", str(project)], tmp_path / "first-run.log")
    assert rc == 0, (tmp_path / "first-run.log").read_text()[-3000:]
    lines: list[str] = []
    res = crash.campaign(project, points=20, seed=7, logs=tmp_path / "logs", say=lines.append,
                         windows={"run": (first, end)})
    print("\n".join(lines))
    points = res["points"]
    broken = [(p.index, p.kind, p.stage, p.after_kill, p.after_recovery) for p in points
              if p.after_kill or p.after_recovery]
    assert broken == [], "\n".join(lines)
    assert res["final_rc"] == 0 and res["final"] == [], res["final"]
    killed = [p for p in points if p.outcome == "killed"]
    assert len(killed) >= 15, "\n".join(lines)  # the others ended just before their delay
    assert {p.kind for p in killed} == {"run", "retrain", "register"}
