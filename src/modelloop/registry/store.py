"""The model registry: numbered versions, the ``champion`` alias, and a log of every decision.

Layout under ``DIR/registry/``::

    versions/v1/           one artifact per version (see artifact.py)
    registry.json          aliases and the champion's history (for rollback)
    events.jsonl           registrations, promotions, rollbacks and gate decisions, in order

A version exists only when all of it is on disk. ``register`` claims the next number under the
project's writer lock (see lock.py), writes the artifact into a temporary folder of its own
(``versions/.vN.<pid>.<random>.tmp``), lets the caller finish it (``complete``: the loop writes
the version's report and records it in the manifest there), flushes it to disk, and only then
renames it to ``versions/vN``. A crash at any point leaves either no ``vN`` or a complete one;
a stale temporary folder is removed by the next writer. Every change (register, promote,
rollback, set_alias, update_manifest) holds the writer lock; reads never do, since every write
they could see is an atomic rename.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import RegistryError
from ..settings import PRIVATE_FILE, private_dir, write_private
from .artifact import MANIFEST, LoadedModel, fsync_dir, load_artifact, seal, write_artifact
from .lock import ProjectLock, Wait

__all__ = ["Registry", "LocalRegistry", "open_registry", "REGISTRY_WAIT_S"]

#: how long a registry change waits for a writer lock held by someone else before it refuses
REGISTRY_WAIT_S = 5.0


class Registry(ABC):
    """What any registry backend offers. Chosen by URI in :func:`open_registry`."""

    @abstractmethod
    def register(self, manifest: dict[str, Any], model: torch.nn.Module, preprocessing: dict[str, Any],
                 extra_files: dict[str, Path] | None = None,
                 complete: Callable[[str], dict[str, Any]] | None = None) -> str: ...

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

    @abstractmethod
    def events(self) -> list[dict[str, Any]]:
        """Every recorded event, oldest first."""

    @abstractmethod
    def manifest(self, version: str) -> dict[str, Any]: ...

    @abstractmethod
    def update_manifest(self, version: str, **fields: Any) -> None: ...

    @abstractmethod
    def path(self, version: str) -> Path:
        """The version's artifact folder (manifest, weights, preprocessing)."""

    @abstractmethod
    def alias(self, name: str) -> str | None: ...

    @abstractmethod
    def set_alias(self, name: str, version: str | None, reason: str = "") -> None: ...

    @abstractmethod
    def champion_history(self) -> list[str]: ...

    @abstractmethod
    def read_state(self) -> dict[str, Any]:
        """``{"aliases": {name: version}, "champion_history": [version, ...]}``."""

    @abstractmethod
    def clean(self) -> list[str]:
        """Remove what crashed writers left half-written; returns what was removed."""


def _default_lock(root: Path) -> ProjectLock:
    """A project's registry (``DIR/registry`` next to ``DIR/modelloop.yaml``) shares the project's
    writer lock; a registry folder on its own has a lock file inside it."""
    root = root.absolute()
    project = root.parent
    if root.name == "registry" and ((project / "modelloop.yaml").is_file() or (project / ".modelloop").is_dir()):
        return ProjectLock(project / ".modelloop" / "writer.lock", name=project.name,
                           where=f"project {str(project)!r}")
    return ProjectLock(root / ".writer.lock", name=str(root), where=f"registry {str(root)!r}")


class LocalRegistry(Registry):
    """A registry in a folder. ``lock``: the writer lock its changes hold (default: the project's,
    when the folder is a project's ``registry/``)."""

    def __init__(self, root: str | Path, lock: ProjectLock | None = None) -> None:
        self.root = Path(root)
        self._versions = self.root / "versions"
        self._state = self.root / "registry.json"
        self._events = self.root / "events.jsonl"
        self.lock = lock or _default_lock(self.root)

    def _writing(self, operation: str, wait: Wait = REGISTRY_WAIT_S):
        return self.lock.hold(operation, wait=wait)

    # -- state -----------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        if not self._state.is_file():
            return {"aliases": {}, "champion_history": []}
        return json.loads(self._state.read_text())

    def _write_state(self, state: dict[str, Any]) -> None:
        private_dir(self.root)
        write_private(self._state, json.dumps(state, indent=2), fsync=True)

    def state_mtime(self) -> int:
        """Changes whenever an alias moves; the server polls it to hot-swap the champion."""
        try:
            return self._state.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def state_stamp(self) -> tuple[int, int, int]:
        """Changes whenever an alias moves, even twice within one tick of the file system's
        clock: every change writes a new ``registry.json`` (a new inode, renamed into place), so
        its inode, modification time and size together tell it from the one before. (0, 0, 0)
        while no alias was ever set. Each server process polls it to hot-swap the champion."""
        try:
            st = self._state.stat()
        except FileNotFoundError:
            return (0, 0, 0)
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def record(self, event: dict[str, Any]) -> None:
        """Append one event to ``events.jsonl`` (one ``write`` of one line, file mode 0600)."""
        private_dir(self.root)
        line = (json.dumps({"time": time.time(), **event}) + "\n").encode()
        fd = os.open(self._events, os.O_WRONLY | os.O_APPEND | os.O_CREAT, PRIVATE_FILE)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def events(self) -> list[dict[str, Any]]:
        if not self._events.is_file():
            return []
        out = []
        for line in self._events.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut short by a crash (or a full disk) is skipped, not fatal
                continue
        return out

    # -- versions --------------------------------------------------------------------------
    def _version_numbers(self) -> list[int]:
        if not self._versions.is_dir():
            return []
        return sorted(int(p.name[1:]) for p in self._versions.iterdir()
                      if p.name.startswith("v") and p.name[1:].isdigit() and (p / MANIFEST).is_file())

    def stale_temporaries(self) -> list[Path]:
        """Temporary version folders: a registration in progress, or one a crash interrupted."""
        if not self._versions.is_dir():
            return []
        return sorted(p for p in self._versions.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))

    def clean(self) -> list[str]:
        """Remove the temporary folders of interrupted registrations (under the writer lock, so
        none of them belongs to a registration in progress). Returns their names."""
        with self._writing("clean"):
            gone = []
            for p in self.stale_temporaries():
                shutil.rmtree(p, ignore_errors=True)
                gone.append(p.name)
            return gone

    def register(self, manifest: dict[str, Any], model: torch.nn.Module, preprocessing: dict[str, Any],
                 extra_files: dict[str, Path] | None = None,
                 complete: Callable[[str], dict[str, Any]] | None = None) -> str:
        """Write a new artifact as the next version (v1, v2, ...) and return its name.

        ``extra_files`` (name -> source path) are copied in, e.g. the exported ``model.onnx``.
        ``complete(version)``, called once the number is claimed and the weights are written,
        does what must exist before the version does (the loop writes its report there) and
        returns fields to add to the manifest. The version appears (an atomic rename) only after
        it returns and everything is on disk; if it raises, nothing is registered.

        Raises:
            BusyError: another writer holds the project's lock for longer than REGISTRY_WAIT_S.
        """
        with self._writing("register"):
            private_dir(self.root)
            private_dir(self._versions)
            for p in self.stale_temporaries():  # we hold the lock: these are a crashed writer's
                shutil.rmtree(p, ignore_errors=True)
            nums = self._version_numbers()
            version = f"v{(nums[-1] if nums else 0) + 1}"
            tmp = self._versions / f".{version}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
            full = {**manifest, "version": version, "created_at": time.time()}
            try:
                write_artifact(tmp, full, model, preprocessing, extra_files)
                if complete is not None:
                    full.update(complete(version) or {})
                    (tmp / MANIFEST).write_text(json.dumps(full, indent=2))
                seal(tmp, fsync=True)
                tmp.rename(self._versions / version)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            fsync_dir(self._versions)
            self.record({"event": "registered", "version": version, "parent": manifest.get("parent")})
            return version

    def manifest(self, version: str) -> dict[str, Any]:
        path = self._versions / version / MANIFEST
        if not (version.startswith("v") and version[1:].isdigit()) or not path.is_file():
            known = ", ".join(f"v{n}" for n in self._version_numbers()) or "none yet"
            raise RegistryError(f"model version {version!r}: not in the registry at {str(self.root)!r}; "
                                f"expected one of: {known}")
        return json.loads(path.read_text())

    def update_manifest(self, version: str, **fields: Any) -> None:
        """Add facts learned after registration (e.g. the gate's decision) to a version's manifest."""
        with self._writing("update_manifest"):
            m = self.manifest(version)
            m.update(fields)
            write_private(self._versions / version / MANIFEST, json.dumps(m, indent=2), fsync=True)

    def versions(self) -> list[dict[str, Any]]:
        aliases = self.read_state()["aliases"]
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
        return self.read_state()["aliases"].get("champion")

    def promote(self, version: str, reason: str = "manual") -> None:
        with self._writing("promote"):
            self.manifest(version)
            state = self.read_state()
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
        return self.read_state()["aliases"].get(name)

    def set_alias(self, name: str, version: str | None, reason: str = "") -> None:
        """Point an alias other than ``champion`` (e.g. ``challenger``, ``shadow``) at a version, or remove it."""
        if name == "champion":
            raise RegistryError("alias 'champion': moved only by promote and rollback")
        with self._writing("set_alias"):
            if version is not None:
                self.manifest(version)
            state = self.read_state()
            if version is None:
                state["aliases"].pop(name, None)
            else:
                state["aliases"][name] = version
            self._write_state(state)
            self.record({"event": "alias", "alias": name, "version": version, "reason": reason})

    def champion_history(self) -> list[str]:
        return list(self.read_state()["champion_history"])

    def rollback(self) -> str:
        """Make the previous champion champion again. Returns it."""
        with self._writing("rollback"):
            state = self.read_state()
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


def open_registry(uri: str | Path, lock: ProjectLock | None = None) -> Registry:
    """A registry from a folder path or ``file://`` URI; ``lock``: the writer lock its changes hold."""
    s = str(uri)
    if s.startswith("file://"):
        s = s.removeprefix("file://")
    elif "://" in s:
        raise RegistryError(f"registry URI {s!r}: unsupported scheme; expected a folder path or file://PATH")
    return LocalRegistry(s, lock=lock)
