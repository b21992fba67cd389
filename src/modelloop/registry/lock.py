"""One writer per project at a time.

A run, a retrain, a watch round and every registry change (register, promote, rollback,
set_alias, update_manifest) hold the project's writer lock; readers (the server polling the
champion, ``models``, manifest reads) never take it, because every write they could see is an
atomic rename.

- **Across processes on one machine**: ``fcntl.flock`` on ``DIR/.modelloop/writer.lock``. The
  kernel releases it when the holder exits, even on ``kill -9``, so a crash never leaves a
  stale lock. The holder writes its pid, host, operation, command line and start time into the
  file, so a refusal names who holds it.
- **Across machines** sharing one registry: when the feedback store is PostgreSQL, the holder
  also takes ``pg_try_advisory_lock(key)`` on a connection of its own, ``key`` the first 8 bytes
  of SHA-256 of ``"modelloop-project:" + the project's name``. The name, not the folder's path,
  because machines may mount the shared folder at different paths; one PostgreSQL database
  holds one project's feedback, so two projects never share a key there. PostgreSQL releases
  the lock when the connection drops (a killed holder included). The connection's
  ``application_name`` says who holds it, for the refusal's message.
- **Within a process** the lock is re-entrant for the thread that holds it (``run`` holds it,
  then registers); another thread of the same process is refused like another process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shlex
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BusyError, StoreUnavailableError
from ..settings import PRIVATE_FILE, private_dir

__all__ = ["ProjectLock", "advisory_key", "Wait"]

log = logging.getLogger(__name__)

#: how long to wait for the lock: False (or 0) refuses at once, True (or None) waits until it is
#: free, a number waits that many seconds
Wait = bool | float | None


def advisory_key(name: str) -> int:
    """The PostgreSQL advisory lock key (a signed 64-bit integer) of a project name."""
    digest = hashlib.sha256(f"modelloop-project:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@dataclass
class _Held:
    fd: int
    thread: int
    info: dict[str, Any]
    depth: int = 1
    pg: Any = None  # (engine, connection) holding the advisory lock
    pid: int = field(default_factory=os.getpid)


_guard = threading.Lock()
_held: dict[str, _Held] = {}
_inherited: list[Any] = []  # a forked child's copies of its parent's connections: never closed by it


def _after_fork_in_child() -> None:
    # A child shares its parent's lock file description and PostgreSQL socket: it does not hold the
    # lock. Closing its copy of the descriptor leaves the parent's flock in place (unlike LOCK_UN);
    # the connection objects are kept alive so that no garbage collection closes the parent's session.
    global _guard
    _guard = threading.Lock()
    for h in _held.values():
        with contextlib.suppress(OSError):
            os.close(h.fd)
        if h.pg is not None:
            _inherited.append(h.pg)
    _held.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _command_line() -> str:
    argv = list(sys.argv) or ["python"]
    argv[0] = Path(argv[0]).name or argv[0]
    line = " ".join(shlex.quote(a) for a in argv)
    return line if len(line) <= 300 else line[:297] + "..."


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process (it has not written its name yet)"
    started = float(info.get("started_at", time.time()))
    age = max(0.0, time.time() - started)
    where = "" if info.get("host") == socket.gethostname() else f" on {info.get('host')}"
    thread = " (another thread of this process)" if info.get("pid") == os.getpid() else ""
    return (f"pid {info.get('pid')}{where}{thread}, {info.get('operation')}: `{info.get('command')}`, "
            f"since {time.strftime('%H:%M:%S', time.localtime(started))} ({age:.0f} s)")


class ProjectLock:
    """The writer lock of one project (or one registry folder).

    Args:
        path: the lock file (``DIR/.modelloop/writer.lock``); its folder is created 0700.
        name: the project's name, which keys the PostgreSQL advisory lock.
        where: how messages name what is locked, e.g. ``"project '/data/digits'"``.
        pg: returns the SQLAlchemy engine of a PostgreSQL feedback store to take the advisory
            lock on too, or None (called at each outermost acquisition).
    """

    def __init__(self, path: str | Path, name: str, where: str | None = None,
                 pg: Callable[[], Any] | None = None) -> None:
        self.path = Path(path).absolute()
        self.name = name
        self.where = where or f"lock {str(self.path)!r}"
        self.key = advisory_key(name)
        self._pg = pg

    # -- reading ---------------------------------------------------------------------------
    def holder(self) -> dict[str, Any] | None:
        """What the holder wrote into the lock file (pid, host, operation, command, started_at), or
        None when nobody holds it. Reads only: never takes the lock, never blocks."""
        with _guard:
            h = _held.get(str(self.path))
            if h is not None:
                return dict(h.info)
        info = self._read_info(tries=1)
        if not info:
            return None
        if info.get("host") == socket.gethostname():  # a killed holder leaves its name behind
            try:
                os.kill(int(info["pid"]), 0)
            except ProcessLookupError:
                return None
            except (PermissionError, KeyError, ValueError, TypeError):
                pass
        return info

    def held_here(self) -> bool:
        """Whether the calling thread holds the lock."""
        with _guard:
            h = _held.get(str(self.path))
            return h is not None and h.thread == threading.get_ident()

    def _read_info(self, tries: int = 5) -> dict[str, Any] | None:
        for _ in range(tries):  # the holder writes its name just after it takes the lock
            try:
                text = self.path.read_text()
                if text.strip():
                    return json.loads(text)
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        return None

    # -- taking and releasing --------------------------------------------------------------
    @contextlib.contextmanager
    def hold(self, operation: str, wait: Wait = False) -> Iterator[ProjectLock]:
        """Hold the lock for ``operation`` (e.g. ``"retrain"``), re-entrantly in this thread.

        Raises:
            BusyError: another process, machine or thread holds it (and ``wait`` ran out); the
                message names the holder's pid, operation and command line.
        """
        self._acquire(operation, wait)
        try:
            yield self
        finally:
            self._release()

    def _acquire(self, operation: str, wait: Wait) -> None:
        key, me = str(self.path), threading.get_ident()
        if wait is True or wait is None:
            deadline = None
        else:
            deadline = time.monotonic() + float(wait or 0)
        said = False
        while True:
            with _guard:
                h = _held.get(key)
                if h is not None and h.thread == me:
                    h.depth += 1
                    return
                if h is not None:
                    busy = _describe(h.info)
                else:
                    busy = self._try_take(operation, me)
                    if busy is None:
                        return
            if deadline is not None and time.monotonic() >= deadline:
                raise BusyError(f"{self.where}: busy: the writer lock {str(self.path)!r} is held by {busy}; "
                                "expected one run, retrain, watch round or registry change at a time: wait "
                                "for it to finish, or pass --wait")
            if not said:
                log.info("%s: waiting for the writer lock, held by %s", self.where, busy)
                said = True
            time.sleep(0.1)

    def _try_take(self, operation: str, me: int) -> str | None:
        """Take the file lock (then the advisory lock); None when taken, else who holds it."""
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return _describe(self._read_info())
        info = {"pid": os.getpid(), "host": socket.gethostname(), "operation": operation,
                "command": _command_line(), "started_at": time.time(), "thread": threading.current_thread().name}
        try:
            os.fchmod(fd, PRIVATE_FILE)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode(), 0)
            pg, busy = self._take_advisory(operation)
        except BaseException:
            self._drop(fd)
            raise
        if busy is not None:
            self._drop(fd)
            return busy
        _held[str(self.path)] = _Held(fd, me, info, pg=pg)
        return None

    def _take_advisory(self, operation: str) -> tuple[Any, str | None]:
        engine = self._pg() if self._pg is not None else None
        if engine is None:
            return None, None
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        app = f"modelloop {operation} pid {os.getpid()}@{socket.gethostname()}"[:63]
        eng = sa.create_engine(engine.url, poolclass=NullPool, isolation_level="AUTOCOMMIT",
                               # bounded: the caller waits on this under the process's lock guard
                               connect_args={"application_name": app, "connect_timeout": 5, "keepalives": 1,
                                             "keepalives_idle": 10, "keepalives_interval": 5,
                                             "keepalives_count": 3})
        try:
            conn = eng.connect()
        except sa.exc.SQLAlchemyError as e:
            eng.dispose()
            raise StoreUnavailableError(f"{self.where}: cannot take the PostgreSQL advisory lock ({type(e).__name__}: "
                                        f"{str(getattr(e, 'orig', e)).strip().splitlines()[0]}); expected a "
                                        "reachable feedback store") from None
        try:
            if conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar():
                return (eng, conn), None
            row = conn.execute(sa.text(
                "SELECT a.pid, a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid::bigint = :hi AND l.objid::bigint = :lo AND l.objsubid = 1"),
                {"hi": (self.key >> 32) & 0xFFFFFFFF, "lo": self.key & 0xFFFFFFFF}).first()
        except BaseException:
            conn.close()
            eng.dispose()
            raise
        conn.close()
        eng.dispose()
        who = (f"'{row.application_name or 'an unnamed client'}' (PostgreSQL backend {row.pid}, client "
               f"{row.client_addr or 'local socket'}, since {row.backend_start:%H:%M:%S})" if row else "another client")
        return None, f"{who}, through the PostgreSQL advisory lock {self.key} of project {self.name!r}"

    def _release(self) -> None:
        with _guard:
            h = _held.get(str(self.path))
            if h is None or h.thread != threading.get_ident():
                return
            h.depth -= 1
            if h.depth > 0:
                return
            del _held[str(self.path)]
            if h.pg is not None:
                eng, conn = h.pg
                try:
                    import sqlalchemy as sa

                    conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
                except Exception as e:  # the connection is gone: so is the lock
                    log.warning("%s: releasing the PostgreSQL advisory lock: %s", self.where, e)
                finally:
                    with contextlib.suppress(Exception):
                        conn.close()
                    eng.dispose()
            self._drop(h.fd)

    @staticmethod
    def _drop(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)  # a refusal never names a holder that is gone
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
