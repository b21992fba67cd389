"""The model registry on a real folder: versions, self-describing artifacts, champion alias, events."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from modelloop.data import Normalizer
from modelloop.errors import RegistryError
from modelloop.loop import Loop
from modelloop.models import build_model
from modelloop.registry import LocalRegistry, load_artifact, open_registry
from modelloop.spec import DataSpec, Spec, save_spec

CONFIG = {"family": "linear", "input_shape": [1, 4, 4], "num_classes": 2, "params": {}}
CLASSES = ["even", "odd"]


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(CONFIG)


def pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, 4, 4), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def preprocessing(norm: Normalizer) -> dict[str, Any]:
    return {"format": {"channels": 1, "height": 4, "width": 4}, "normalizer": norm.state_dict(),
            "class_names": CLASSES, "pixel_range": [0, 255]}


def manifest(accuracy: float = 0.9, parent: str | None = None, passed: bool = True) -> dict[str, Any]:
    """The keys Loop._finish writes that LocalRegistry.versions() and Loop.models() read."""
    return {
        "task": "image-classification", "name": "t", "model": CONFIG, "parameters": 34, "class_names": CLASSES,
        "metrics": {"test": {"accuracy": accuracy, "f1_macro": accuracy - 0.01}, "val": None},
        "requirements": {"passed": passed, "checks": []},
        "dataset": {"fingerprint": "abc123", "base_fingerprint": "abc123", "source": "builtin:seed-case"},
        "run_id": "r1", "parent": parent, "feedback_examples": 0 if parent is None else 5,
    }


@pytest.fixture
def reg(tmp_path: Path) -> LocalRegistry:
    return LocalRegistry(tmp_path / "registry")


def register(reg: LocalRegistry, seed: int = 0, **kw: Any) -> str:
    norm = Normalizer().fit(pixels(32, seed))
    return reg.register(manifest(**kw), tiny_model(seed), preprocessing(norm))


# -- versions and artifacts -----------------------------------------------------------------------


def test_versions_are_numbered_v1_v2(reg: LocalRegistry) -> None:
    assert reg.versions() == []
    assert register(reg) == "v1"
    assert register(reg, seed=1, parent="v1") == "v2"
    vs = reg.versions()
    assert [v["version"] for v in vs] == ["v1", "v2"]
    assert vs[1]["parent"] == "v1"
    assert all(isinstance(v["created_at"], float) for v in vs)
    assert vs[0]["created_at"] <= vs[1]["created_at"]
    assert all(v["aliases"] == [] for v in vs)


def test_numbering_continues_past_versions_beyond_nine(reg: LocalRegistry) -> None:
    for _ in range(11):
        register(reg)
    assert [v["version"] for v in reg.versions()][-3:] == ["v9", "v10", "v11"]
    assert register(reg) == "v12"


def test_artifact_files_exist_and_nothing_is_pickled(reg: LocalRegistry) -> None:
    v = register(reg)
    folder = reg.path(v)
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["manifest.json", "preprocessing.json", "weights.safetensors"]
    for p in folder.rglob("*"):
        assert p.suffix not in {".pkl", ".pickle", ".pt", ".pth", ".joblib"}
        assert not p.read_bytes().startswith(b"PK")  # torch.save's zip container
    # Every file is plain data: two JSON documents and a safetensors file (8-byte header length, JSON header).
    raw = (folder / "weights.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    assert set(header) - {"__metadata__"} == {"fc.weight", "fc.bias"}
    m = json.loads((folder / "manifest.json").read_text())
    assert m["version"] == "v1" and m["model"] == CONFIG and m["class_names"] == CLASSES
    pre = json.loads((folder / "preprocessing.json").read_text())
    assert pre["format"] == {"channels": 1, "height": 4, "width": 4}
    state = load_file(str(folder / "weights.safetensors"))
    assert set(state) == {"fc.weight", "fc.bias"}
    assert state["fc.weight"].shape == (2, 16)
    # No temporary folder is left behind.
    assert sorted(p.name for p in reg.path(v).parent.iterdir()) == ["v1"]


def test_load_artifact_reproduces_the_original_predictions(reg: LocalRegistry) -> None:
    model = tiny_model(3)
    train = pixels(50, 1)
    norm = Normalizer().fit(train)
    v = reg.register(manifest(), model, preprocessing(norm))
    x = pixels(20, 2)
    model.eval()
    with torch.no_grad():
        expected = torch.softmax(model(norm.transform(x)), dim=1)
    for loaded in (reg.load(v), load_artifact(reg.path(v))):
        assert loaded.version == "v1"
        assert loaded.class_names == CLASSES
        assert (loaded.fmt.channels, loaded.fmt.height, loaded.fmt.width) == (1, 4, 4)
        got = loaded.predict_proba(x)
        assert got.shape == (20, 2)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
        for a, b in zip(loaded.model.state_dict().values(), model.state_dict().values(), strict=True):
            assert torch.equal(a, b)


def test_load_unknown_version_lists_the_known_ones(reg: LocalRegistry) -> None:
    with pytest.raises(RegistryError, match="'v1': not in the registry.*none yet"):
        reg.load("v1")
    register(reg)
    register(reg)
    with pytest.raises(RegistryError) as exc:
        reg.load("v7")
    msg = str(exc.value)
    assert "'v7'" in msg and str(reg.root) in msg
    assert "expected one of: v1, v2" in msg


def test_load_artifact_with_missing_preprocessing_is_a_registry_error(reg: LocalRegistry) -> None:
    v = register(reg)
    (reg.path(v) / "preprocessing.json").unlink()
    with pytest.raises(RegistryError, match="missing preprocessing.json; expected manifest.json"):
        reg.load(v)


def test_load_artifact_with_missing_weights_is_a_registry_error(reg: LocalRegistry) -> None:
    v = register(reg)
    (reg.path(v) / "weights.safetensors").unlink()
    with pytest.raises(RegistryError, match="missing weights.safetensors"):
        reg.load(v)


def test_update_manifest_adds_fields_and_keeps_the_rest(reg: LocalRegistry) -> None:
    v = register(reg)
    before = reg.manifest(v)
    reg.update_manifest(v, report="/r/v1.html", gate={"decision": "promoted"})
    after = reg.manifest(v)
    assert after["report"] == "/r/v1.html"
    assert after["gate"] == {"decision": "promoted"}
    assert {k: after[k] for k in before} == before
    assert json.loads((reg.path(v) / "manifest.json").read_text()) == after
    with pytest.raises(RegistryError, match="expected one of: v1"):
        reg.update_manifest("v9", report="x")


# -- champion, promote, rollback ------------------------------------------------------------------


def test_promote_sets_the_champion_and_the_alias(reg: LocalRegistry) -> None:
    register(reg)
    register(reg)
    assert reg.champion() is None
    reg.promote("v1")
    assert reg.champion() == "v1"
    reg.promote("v2", reason="better")
    assert reg.champion() == "v2"
    aliases = {v["version"]: v["aliases"] for v in reg.versions()}
    assert aliases == {"v1": [], "v2": ["champion"]}
    # A fresh object on the same folder sees the same state.
    assert LocalRegistry(reg.root).champion() == "v2"


def test_promote_unknown_version_is_a_registry_error_and_changes_nothing(reg: LocalRegistry) -> None:
    register(reg)
    reg.promote("v1")
    with pytest.raises(RegistryError, match="'v3'.*expected one of: v1"):
        reg.promote("v3")
    assert reg.champion() == "v1"


def test_rollback_returns_to_the_previous_champion(reg: LocalRegistry) -> None:
    for _ in range(3):
        register(reg)
    reg.promote("v1")
    reg.promote("v2")
    reg.promote("v3")
    assert reg.rollback() == "v2"
    assert reg.champion() == "v2"
    assert reg.rollback() == "v1"
    assert reg.champion() == "v1"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback()
    assert reg.champion() == "v1"


def test_rollback_without_history_is_a_registry_error(reg: LocalRegistry) -> None:
    with pytest.raises(RegistryError) as exc:
        reg.rollback()
    msg = str(exc.value)
    assert str(reg.root) in msg
    assert "champion history is empty" in msg and "expected at least two promotions" in msg
    register(reg)
    reg.promote("v1")
    with pytest.raises(RegistryError, match=r"\['v1'\]"):
        reg.rollback()


def test_promoting_the_champion_again_is_a_no_op(reg: LocalRegistry) -> None:
    register(reg)
    register(reg)
    reg.promote("v1")
    reg.promote("v2")
    n_events = len(reg.events())
    reg.promote("v2")
    assert len(reg.events()) == n_events
    assert reg.rollback() == "v1"  # the repeated promotion did not enter the history


def test_state_mtime_changes_on_promote_and_rollback(reg: LocalRegistry) -> None:
    register(reg)
    register(reg)
    assert reg.state_mtime() == 0  # no alias set yet
    reg.promote("v1")
    m1 = reg.state_mtime()
    assert m1 > 0
    time.sleep(0.01)
    reg.promote("v2")
    m2 = reg.state_mtime()
    assert m2 != m1
    time.sleep(0.01)
    reg.rollback()
    assert reg.state_mtime() != m2
    # Registering a version does not move an alias.
    m3 = reg.state_mtime()
    register(reg)
    assert reg.state_mtime() == m3


def test_events_record_every_decision_in_order(reg: LocalRegistry) -> None:
    register(reg)
    register(reg, parent="v1")
    reg.promote("v1", reason="first")
    reg.promote("v2", reason="gate passed")
    reg.rollback()
    reg.record({"event": "gate", "version": "v2", "decision": "rejected"})
    events = reg.events()
    assert [(e["event"], e["version"]) for e in events] == [
        ("registered", "v1"), ("registered", "v2"), ("promoted", "v1"), ("promoted", "v2"), ("rolled_back", "v1"),
        ("gate", "v2"),
    ]
    assert events[1]["parent"] == "v1"
    assert events[2]["previous"] is None and events[2]["reason"] == "first"
    assert events[3]["previous"] == "v1" and events[3]["reason"] == "gate passed"
    assert events[4]["from"] == "v2"
    assert events[5]["decision"] == "rejected"
    times = [e["time"] for e in events]
    assert times == sorted(times)
    lines = (reg.root / "events.jsonl").read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(line) for line in lines)


def test_open_registry_accepts_paths_and_file_uris(tmp_path: Path) -> None:
    assert isinstance(open_registry(tmp_path / "r"), LocalRegistry)
    r = open_registry(f"file://{tmp_path / 'r'}")
    assert isinstance(r, LocalRegistry) and r.root == tmp_path / "r"
    with pytest.raises(RegistryError, match="unsupported scheme"):
        open_registry("s3://bucket/models")


# -- Loop.models() reads what the registry stores -------------------------------------------------


def test_loop_models_lists_versions_from_minimal_manifests(tmp_path: Path) -> None:
    save_spec(Spec(name="t", data=DataSpec(source="builtin:seed-case")), tmp_path)
    loop = Loop(tmp_path)
    register(loop.registry, accuracy=0.91)
    register(loop.registry, accuracy=0.93, parent="v1", passed=False)
    loop.registry.update_manifest("v2", gate={"decision": "rejected"}, report="reports/v2.html")
    loop.promote("v1")
    rows = loop.models()
    assert [r["version"] for r in rows] == ["v1", "v2"]
    assert rows[0]["aliases"] == ["champion"] and rows[1]["aliases"] == []
    assert rows[0]["family"] == "linear"
    assert rows[0]["accuracy"] == 0.91 and rows[1]["f1_macro"] == pytest.approx(0.92)
    assert rows[1]["parent"] == "v1" and rows[1]["feedback_examples"] == 5
    assert rows[1]["requirements_passed"] is False
    assert rows[0]["gate"] is None and rows[1]["gate"] == "rejected"
    assert rows[1]["report"] == "reports/v2.html"
    assert rows[0]["dataset"] == "abc123"
    assert loop.load_champion().version == "v1"
    loop.promote("v2")
    assert loop.rollback() == "v1"
