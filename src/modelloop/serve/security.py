"""API keys with two roles: ``client`` (predict, feedback) and ``admin`` (also promote, rollback,
retrain).

Keys come from the environment (``MODELLOOP_CLIENT_KEYS``, ``MODELLOOP_ADMIN_KEYS``,
comma-separated), else from the spec's ``serving.keys``, else from ``.modelloop/keys.json`` in
the project, which ``modelloop serve`` creates on first start (readable by its owner only). Only
SHA-256 digests are kept in memory; a presented key is compared against every digest with
``hmac.compare_digest``, so the time taken does not depend on how much of a key matched. Keys
are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from fastapi import HTTPException, Request

from ..settings import PRIVATE_FILE, private_dir
from ..spec import KeysSpec

__all__ = ["KeyRing", "load_keys", "keys_for", "ensure_key_file", "key_from_request"]

ROLES = ("client", "admin")


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyRing:
    """Role lookup for presented keys."""

    def __init__(self, client: list[str], admin: list[str], source: str) -> None:
        self._keys = [(_digest(k), "client") for k in client] + [(_digest(k), "admin") for k in admin]
        self.source = source

    def role_of(self, key: str | None) -> str | None:
        if not key:
            return None
        d = _digest(key)
        role = None
        for digest, r in self._keys:  # no early exit: every digest is compared
            if hmac.compare_digest(d, digest):
                role = r if role != "admin" else role
        return role

    def require(self, request: Request, role: str) -> str:
        """The caller's role, or 401 (no or unknown key) / 403 (a client key where admin is needed)."""
        have = self.role_of(key_from_request(request))
        if have is None:
            raise HTTPException(status_code=401, detail=(
                "missing or unknown API key; expected header 'Authorization: Bearer KEY' or 'X-API-Key: KEY' "
                f"with a {role} key"), headers={"WWW-Authenticate": "Bearer"})
        if role == "admin" and have != "admin":
            raise HTTPException(status_code=403, detail="this call needs an admin key; a client key was given")
        return have

    @staticmethod
    def fingerprint(key: str | None) -> str | None:
        """A short, non-reversible name for a key (to tell clients apart in the store)."""
        return hashlib.sha256(key.encode()).hexdigest()[:12] if key else None


def key_from_request(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def ensure_key_file(path: Path) -> dict[str, list[str]]:
    """Read ``keys.json``, creating it with one fresh key per role if missing.

    Several server processes may start at once (``serve --workers N``): the file is written
    whole under a temporary name and then linked into place, which fails if it exists, so the
    first process's keys win, every other process reads them, and nobody reads a half-written file.
    """
    if path.is_file():
        return json.loads(path.read_text())
    keys = {role: [secrets.token_urlsafe(24)] for role in ROLES}
    private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(keys, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another process created it first: its keys are the project's
            return json.loads(path.read_text())
    finally:
        tmp.unlink(missing_ok=True)
    return keys


def _env_keys(role: str) -> list[str]:
    return [k.strip() for k in os.environ.get(f"MODELLOOP_{role.upper()}_KEYS", "").split(",") if k.strip()]


def keys_for(spec_keys: KeysSpec, key_file: Path) -> tuple[dict[str, list[str]], str]:
    """The keys by role, and where they came from (environment, spec, or the project's key file)."""
    env = {role: _env_keys(role) for role in ROLES}
    if any(env.values()):
        return env, "environment"
    if spec_keys.client or spec_keys.admin:
        return {"client": list(spec_keys.client), "admin": list(spec_keys.admin)}, "modelloop.yaml"
    return ensure_key_file(key_file), str(key_file)


def load_keys(spec_keys: KeysSpec, key_file: Path) -> KeyRing:
    keys, source = keys_for(spec_keys, key_file)
    return KeyRing(keys.get("client", []), keys.get("admin", []), source)
