"""The model registry: numbered versions, the ``champion`` alias, and a log of every decision.

Layout under ``DIR/registry/``::

    versions/v1/           one artifact per version (see artifact.py)
    registry.json          aliases and the champion's history (for rollback)
    events.jsonl           registrations, promotions, rollbacks and gate decisions, in order

Writes are atomic (write a temporary file, then rename), so a reader such as the server never
sees a half-written registry.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from ..errors import RegistryError
from .artifact import MANIFEST, LoadedModel, load_artifact, write_artifact

__all__ = ["Registry", "LocalRegistry", "open_registry"]


class Registry(ABC):
    """What any registry backend offers. Chosen by URI in :func:`open_registry`."""

    @abstractmethod
    def register(self, manifest: dict[str, Any], model: torch.nn.Module, preprocessing: dict[str, Any],
                 extra_files: dict[str, Path] | None = None) -> str: ...

    @abstractmethod
    def versions(self) -> list[dict[str, Any]]: ...

    @abstractmethod
    def load(self, version: str, backend: str | None = None, threads: int = 1) -> LoadedModel: ...

    @abstractmethod
    def champion(self) -> str | None: ...

    @abstractmethod
    def promote(self, version: str, reason: str = "manual") -> None: ...

    @abstractmethod
    def rollback(self) -> str: ...

    @abstractmethod
    def record(self, event: dict[str, Any]) -> None: ...


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


class LocalRegistry(Registry):
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._versions = self.root / "versions"
        self._state = self.root / "registry.json"
        self._events = self.root / "events.jsonl"

    # -- state -----------------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any]:
        if not self._state.is_file():
            return {"aliases": {}, "champion_history": []}
        return json.loads(self._state.read_text())

    def _write_state(self, state: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _atomic_write(self._state, json.dumps(state, indent=2))

    def state_mtime(self) -> int:
        """Changes whenever an alias moves; the server polls it to hot-swap the champion."""
        try:
            return self._state.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def record(self, event: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        with self._events.open("a") as f:
            f.write(json.dumps({"time": time.time(), **event}) + "\n")

    def events(self) -> list[dict[str, Any]]:
        if not self._events.is_file():
            return []
        return [json.loads(line) for line in self._events.read_text().splitlines() if line.strip()]

    # -- versions --------------------------------------------------------------------------
    def _version_numbers(self) -> list[int]:
        if not self._versions.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in self._versions.iterdir()
                      if p.name.startswith("v") and p.name[1:].isdigit() and (p / MANIFEST).is_file())

    def register(self, manifest: dict[str, Any], model: torch.nn.Module, preprocessing: dict[str, Any],
                 extra_files: dict[str, Path] | None = None) -> str:
        """Write a new artifact as the next version (v1, v2, ...) and return its name.

        ``extra_files`` (name -> source path) are copied in, e.g. the exported ``model.onnx``.
        """
        self._versions.mkdir(parents=True, exist_ok=True)
        nums = self._version_numbers()
        version = f"v{(nums[-1] if nums else 0) + 1}"
        tmp = self._versions / f".{version}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        write_artifact(tmp, {**manifest, "version": version, "created_at": time.time()}, model, preprocessing,
                       extra_files)
        tmp.rename(self._versions / version)
        self.record({"event": "registered", "version": version, "parent": manifest.get("parent")})
        return version

    def manifest(self, version: str) -> dict[str, Any]:
        path = self._versions / version / MANIFEST
        if not path.is_file():
            known = ", ".join(f"v{n}" for n in self._version_numbers()) or "none yet"
            raise RegistryError(f"model version {version!r}: not in the registry at {str(self.root)!r}; "
                                f"expected one of: {known}")
        return json.loads(path.read_text())

    def update_manifest(self, version: str, **fields: Any) -> None:
        """Add facts learned after registration (e.g. the gate's decision) to a version's manifest."""
        m = self.manifest(version)
        m.update(fields)
        _atomic_write(self._versions / version / MANIFEST, json.dumps(m, indent=2))

    def versions(self) -> list[dict[str, Any]]:
        aliases = self._read_state()["aliases"]
        by_version: dict[str, list[str]] = {}
        for alias, v in aliases.items():
            by_version.setdefault(v, []).append(alias)
        out = []
        for n in self._version_numbers():
            m = self.manifest(f"v{n}")
            m["aliases"] = sorted(by_version.get(m["version"], []))
            out.append(m)
        return out

    def load(self, version: str, backend: str | None = None, threads: int = 1) -> LoadedModel:
        """Load a version with its recorded serving backend (or ``backend`` to override it)."""
        self.manifest(version)  # clear error for an unknown version
        return load_artifact(self._versions / version, backend, threads)

    def path(self, version: str) -> Path:
        return self._versions / version

    # -- aliases ---------------------------------------------------------------------------
    def champion(self) -> str | None:
        return self._read_state()["aliases"].get("champion")

    def promote(self, version: str, reason: str = "manual") -> None:
        self.manifest(version)
        state = self._read_state()
        previous = state["aliases"].get("champion")
        if previous == version:
            return
        state["aliases"]["champion"] = version
        if state["aliases"].get("challenger") == version:
            del state["aliases"]["challenger"]
        state["champion_history"].append(version)
        self._write_state(state)
        self.record({"event": "promoted", "version": version, "previous": previous, "reason": reason})

    def alias(self, name: str) -> str | None:
        return self._read_state()["aliases"].get(name)

    def set_alias(self, name: str, version: str | None, reason: str = "") -> None:
        """Point an alias other than ``champion`` (e.g. ``challenger``, ``shadow``) at a version, or remove it."""
        if name == "champion":
            raise RegistryError("alias 'champion': moved only by promote and rollback")
        if version is not None:
            self.manifest(version)
        state = self._read_state()
        if version is None:
            state["aliases"].pop(name, None)
        else:
            state["aliases"][name] = version
        self._write_state(state)
        self.record({"event": "alias", "alias": name, "version": version, "reason": reason})

    def champion_history(self) -> list[str]:
        return list(self._read_state()["champion_history"])

    def rollback(self) -> str:
        """Make the previous champion champion again. Returns it."""
        state = self._read_state()
        history = state["champion_history"]
        if len(history) < 2:
            raise RegistryError(
                f"registry {str(self.root)!r}: nothing to roll back to; the champion history is "
                f"{history or 'empty'}, expected at least two promotions"
            )
        current = history.pop()
        previous = history[-1]
        state["aliases"]["champion"] = previous
        self._write_state(state)
        self.record({"event": "rolled_back", "version": previous, "from": current})
        return previous


def open_registry(uri: str | Path) -> Registry:
    """A registry from a folder path or ``file://`` URI."""
    s = str(uri)
    if s.startswith("file://"):
        s = s.removeprefix("file://")
    elif "://" in s:
        raise RegistryError(f"registry URI {s!r}: unsupported scheme; expected a folder path or file://PATH")
    return LocalRegistry(s)
