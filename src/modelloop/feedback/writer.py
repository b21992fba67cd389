"""Prediction logging with durable acknowledgements: group commit, and a local spool for outages.

Contract: a request that logs predictions is answered only once its rows are durable, so an
acknowledged prediction survives ``kill -9`` of the server (and, on SQLite, a power cut) and
feedback on it finds it. Requests share commits (group commit): one background thread takes
everything queued, writes it in one transaction, then settles every waiting request in commit
order. An ``await``-ing request holds no thread while it waits: its asyncio future is settled on
its own event loop through ``loop.call_soon_threadsafe`` (one call per loop per commit).

Outage policy (a PostgreSQL restart or network outage, SQLite ``database is locked`` after its
busy timeout; see :class:`~modelloop.errors.StoreUnavailableError`):

1. A failed commit is retried for ``retry_s`` (1 s by default): a restart, a failover or a
   dropped connection is ridden out unseen. Retrying is safe: a prediction is stored once per id.
2. If the store still fails, the batch is appended to the spool — a JSON-lines file in the
   project's ``.modelloop/`` folder, created 0600 and fsync'd before anyone is answered — and
   the requests are answered as usual with ``logged == "spooled"`` (the server sends
   ``X-Modelloop-Logged: spooled``; ``stored`` otherwise). The answer still means "stored
   durably": on this machine's disk instead of in the database. While the store is down, batches
   go straight to the spool and the store is probed every ``probe_s`` seconds (by one prober
   thread that lives as long as the writer); once it answers, the spool is replayed into it in
   chunks between batches. Files left by a killed server are replayed by any writer on the same
   folder: at its start, and by a live one, which looks for them every ``SPOOL_RESCAN_S``.
3. When the spool is full (``spool_max_bytes``, 256 MiB by default: some 150,000 image
   predictions) or cannot be written, or the writer has no spool folder, the waiting requests
   get :class:`StoreUnavailableError` (503 with ``Retry-After``): no answer claims a row that
   is not stored.
4. :meth:`PredictionWriter.flush` makes "acknowledged" mean "in the store": it replays the spool
   first and raises :class:`StoreUnavailableError` while the store is down — at once, without
   touching the store, while the prober finds it down, and never ahead of predictions: the
   requests of a batch are answered before a flush in it waits on the store. The feedback route
   calls it, so feedback is answered 503 with ``Retry-After`` during an outage (nothing stored,
   the client sends it again) and finds a spooled prediction once the store is back.

Bounds: a request waits at most ``COMMIT_TIMEOUT_S`` (30 s) for its rows, then gets
:class:`StoreUnavailableError` (a later commit of the same rows is harmless: they are stored once
per id). A row whose ``label`` or ``model_version`` exceeds the store's columns is refused with
:class:`~modelloop.errors.InputError` before it is queued, so nothing acknowledged is dropped on
replay. If the writer thread stops on an unexpected error (a bug, an unreadable spool), every
request it holds or that is queued gets :class:`StoreUnavailableError`, later ones get it at once,
and :meth:`~PredictionWriter.status` reports ``writer: "dead"``.

For benchmarks only, ``MODELLOOP_ACK=before-commit`` (or ``ack="before-commit"``) answers
requests as soon as their rows are queued, committing them a moment later: the behaviour before
durable acknowledgements, kept as the baseline ``bench/serve.py --acks`` measures against. In
that mode a prediction answered just before a crash can be lost.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import fcntl
import json
import logging
import os
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import InputError, StoreError, StoreUnavailableError
from .store import FeedbackStore, check_row, prediction_row  # the row format lives beside its table

__all__ = ["PredictionWriter", "PredictionSpool", "prediction_row", "check_row", "ACK_MODES", "COMMIT_TIMEOUT_S"]

log = logging.getLogger(__name__)

ACK_MODES = ("commit", "before-commit")
STORED, SPOOLED, QUEUED = "stored", "spooled", "queued"  # what ``commit`` returns
_STOP = object()
COMMIT_TIMEOUT_S = 30.0  # the longest a request waits for its rows to be durable before a 503
SPOOL_RESCAN_S = 5.0  # how often the spool folder is checked for files left by a server that is gone
# -- the spool ----------------------------------------------------------------------------------
class SpoolFullError(StoreUnavailableError):
    """The store is unavailable and the spool holds as much as it may."""


def _encode(row: dict[str, Any]) -> bytes:
    r = dict(row)
    r["input_data"] = base64.b64encode(bytes(r["input_data"])).decode("ascii")
    return json.dumps(r, separators=(",", ":")).encode("utf-8") + b"\n"


def _decode(line: bytes) -> dict[str, Any]:
    r = json.loads(line)
    r["input_data"] = base64.b64decode(r["input_data"])
    return r


class _SpoolFile:
    """One spool file, held under an exclusive ``flock`` while this process uses it."""

    def __init__(self, path: Path, fd: int, size: int, rows: int) -> None:
        self.path, self.fd, self.size, self.rows = path, fd, size, rows
        self.offset = 0  # bytes already replayed into the store

    def close(self, remove: bool) -> None:
        if remove:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        os.close(self.fd)  # releases the lock


class PredictionSpool:
    """Prediction rows waiting for the store: append-only JSON-lines files, fsync'd, mode 0600.

    This writer appends to a file of its own (``prediction-spool-*.jsonl`` in ``folder``); files
    of writers that are gone (no process holds their lock) are adopted on start, and by
    :meth:`rescan` later on, and replayed first. A line is complete only with its newline: a torn
    last line (a crash in the middle of an append, before anyone was answered) is dropped.

    Args:
        folder: where the files live (the project's ``.modelloop`` folder).
        max_bytes: the most the files may hold together; :meth:`append` raises
            :class:`SpoolFullError` beyond it.
    """

    def __init__(self, folder: str | Path, max_bytes: int = 256 << 20) -> None:
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self._files: list[_SpoolFile] = []  # oldest first; this writer's own file, once made, last
        self._own: _SpoolFile | None = None
        self.rows = 0  # rows not yet replayed (read by other threads: a plain int, set whole)
        self.bytes = 0
        self._peeked: tuple[_SpoolFile, int, int] | None = None  # what done() confirms
        self.rescan()

    def rescan(self) -> int:
        """Adopt the files in ``folder`` that no live writer holds (a server that was killed, or
        closed with rows left); returns how many rows were adopted."""
        if not self.folder.is_dir():
            return 0
        before, known = self.rows, {f.path for f in self._files}
        for path in sorted(self.folder.glob("prediction-spool-*.jsonl")):
            if path not in known:
                self._adopt(path)
        return self.rows - before

    def pending_elsewhere(self) -> bool:
        """Whether a spool file this writer does not hold has rows waiting: another server
        process on the same project (``serve --workers N``) spooled predictions during an outage
        and has not replayed them all yet (or a dead server's file waits to be adopted)."""
        if not self.folder.is_dir():
            return False
        mine = {f.path for f in list(self._files)}
        for path in self.folder.glob("prediction-spool-*.jsonl"):
            try:
                if path not in mine and path.stat().st_size > 0:
                    return True
            except FileNotFoundError:  # replayed and removed meanwhile
                continue
        return False

    def _count(self) -> None:
        self.rows = sum(f.rows for f in self._files)
        self.bytes = sum(f.size - f.offset for f in self._files)

    def _adopt(self, path: Path) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_APPEND)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # a live writer's file
            os.close(fd)
            return
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:
                raise FileNotFoundError(path)
        except FileNotFoundError:  # another writer replayed and removed it while we opened it
            os.close(fd)
            return
        try:
            data = os.pread(fd, os.fstat(fd).st_size, 0)
            size = data.rfind(b"\n") + 1
            if size < len(data):
                os.ftruncate(fd, size)  # a torn last line: its requests were never answered
        except OSError as e:
            log.error("prediction spool %s: cannot be read (%s); left for a later try", path, e)
            os.close(fd)
            return
        rows = data.count(b"\n", 0, size)
        if rows == 0:
            _SpoolFile(path, fd, 0, 0).close(remove=True)
            return
        log.warning("prediction spool %s: %d rows left by a server that is gone; replaying them into the store",
                    path, rows)
        self._files.insert(len(self._files) - (self._own is not None), _SpoolFile(path, fd, size, rows))
        self._count()

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Append rows and fsync them; on return they survive a crash.

        Raises:
            SpoolFullError: they would take the spool past ``max_bytes``.
            OSError: the file cannot be created or written (nothing of this call is kept).
        """
        data = b"".join(_encode(r) for r in rows)
        if self.bytes + len(data) > self.max_bytes:
            raise SpoolFullError(f"prediction spool in {self.folder}: full ({self.rows} rows, {self.bytes} of "
                                 f"{self.max_bytes} bytes) while the feedback store is unavailable; expected the "
                                 f"store back, retry in {SpoolFullError.retry_after_s} s")
        own = self._own or self._create()
        start = own.size
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(own.fd, view):]
            os.fsync(own.fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(own.fd, start)  # no torn line in front of the next append
            raise
        own.size += len(data)
        own.rows += len(rows)
        self._count()

    def _create(self) -> _SpoolFile:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"prediction-spool-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}.jsonl"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        dfd = os.open(self.folder, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the new name survives a crash too
        finally:
            os.close(dfd)
        self._own = _SpoolFile(path, fd, 0, 0)
        self._files.append(self._own)
        return self._own

    def peek(self, max_rows: int = 1000) -> list[dict[str, Any]]:
        """Up to ``max_rows`` of the oldest rows not yet replayed, from one file; :meth:`done`
        confirms they are in the store."""
        self._peeked = None
        f = next((f for f in self._files if f.rows), None)
        if f is None:
            return []
        out: list[dict[str, Any]] = []
        offset, lines = f.offset, 0
        while lines < max_rows and offset < f.size:
            chunk = os.pread(f.fd, min(f.size - offset, 4 << 20), offset)
            if chunk.rfind(b"\n") < 0:  # a line longer than the read: take it whole
                chunk = os.pread(f.fd, f.size - offset, offset)
            for line in chunk[:chunk.rfind(b"\n") + 1].split(b"\n")[:-1]:
                if lines == max_rows:
                    break
                offset, lines = offset + len(line) + 1, lines + 1
                try:
                    out.append(_decode(line))
                except (ValueError, KeyError, TypeError):  # not a line this writer wrote whole
                    log.error("prediction spool %s: unreadable line ending at byte %d skipped", f.path, offset)
        self._peeked = (f, offset, lines)
        return out

    def done(self) -> None:
        """The rows of the last :meth:`peek` are in the store: forget them (a file replayed
        whole is removed or, for this writer's own, emptied)."""
        if self._peeked is None:
            return
        f, offset, lines = self._peeked
        self._peeked = None
        f.offset, f.rows = offset, max(0, f.rows - lines)
        if f.rows == 0:
            self._finish(f)
        self._count()

    def _finish(self, f: _SpoolFile) -> None:
        if f is self._own:
            os.ftruncate(f.fd, 0)
            os.fsync(f.fd)
            f.size = f.offset = 0
            self._files.remove(f)
            self._files.append(f)
        else:
            f.close(remove=True)
            self._files.remove(f)

    def close(self) -> None:
        """Release the files; rows not replayed stay on disk for the next writer."""
        for f in self._files:
            f.close(remove=f.rows == 0)
        self._files, self._own = [], None
        self._count()


# -- the writer ---------------------------------------------------------------------------------
class _Request:
    """Rows waiting for one commit, and how to tell their sender (or a flush barrier: no rows)."""

    __slots__ = ("rows", "loop", "future", "barrier", "settled")

    def __init__(self, rows: list[dict[str, Any]], loop: asyncio.AbstractEventLoop | None = None,
                 future: asyncio.Future | concurrent.futures.Future | None = None, barrier: bool = False) -> None:
        self.rows, self.loop, self.future, self.barrier = rows, loop, future, barrier
        self.settled = False  # its outcome is on its way to the sender (set by the writer thread)


def _settle(items: list[tuple[asyncio.Future, str | None, BaseException | None]]) -> None:
    """On the event loop: settle the futures of one commit, in commit order."""
    for fut, result, exc in items:
        if fut.done():  # the request was cancelled or timed out meanwhile; its rows are stored all the same
            continue
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


def _timed_out() -> StoreUnavailableError:
    return StoreUnavailableError(f"feedback store: prediction rows not committed within {COMMIT_TIMEOUT_S:g} s "
                                 "(the store is slow or not answering); expected a responsive database, retry in "
                                 f"{StoreUnavailableError.retry_after_s} s")


class PredictionWriter:
    """Commits prediction rows from one background thread; callers wait for their commit.

    Args:
        store: the feedback store.
        spool_dir: folder for the outage spool (the project's ``.modelloop``); None: no spool,
            predictions are refused with 503 while the store is down.
        spool_max_bytes: the most the spool may hold.
        retry_s: how long a failed commit is retried before the rows go to the spool.
        probe_s: while the store is down, how often it is tried again.
        max_rows: the most rows in one transaction.
        ack: ``"commit"`` (answer after the commit: the default and the contract) or
            ``"before-commit"`` (benchmark baseline, see the module docstring); None reads
            ``MODELLOOP_ACK``, default ``commit``.
    """

    def __init__(self, store: FeedbackStore, *, spool_dir: str | Path | None = None,
                 spool_max_bytes: int = 256 << 20, retry_s: float = 1.0, probe_s: float = 1.0,
                 max_rows: int = 2048, ack: str | None = None) -> None:
        ack = ack or os.environ.get("MODELLOOP_ACK") or "commit"
        if ack not in ACK_MODES:
            raise InputError(f"MODELLOOP_ACK / ack: received {ack!r}; expected one of {', '.join(ACK_MODES)}")
        if ack != "commit":
            log.warning("predictions are answered before they are committed (ack=%s): an answered prediction "
                        "can be lost in a crash; for benchmarks only", ack)
        self.store = store
        self.ack = ack
        self.retry_s, self.probe_s, self.max_rows = retry_s, probe_s, max_rows
        self.spool = PredictionSpool(spool_dir, spool_max_bytes) if spool_dir is not None else None
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._dead = ""  # why the writer thread stopped on an unexpected error ("" while it runs)
        self._left: int | None = None  # rows left in the spool once the writer stopped
        self._down = False  # the last write found the store unavailable (set by the writer thread only)
        self._back = threading.Event()  # set by the prober: the store took a write again
        self._stop = threading.Event()  # the writer thread is done: the prober ends too
        self._prober: threading.Thread | None = None  # started at the first outage, runs until close
        self._cause = ""  # why the store is down, for errors and /health
        self._batch: list[_Request] = []  # the requests the writer thread is working on
        self._rescanned = time.monotonic()  # when the spool folder was last looked at
        self._thread = threading.Thread(target=self._run, name="modelloop-prediction-writer", daemon=True)
        self._thread.start()

    # -- callers --------------------------------------------------------------------------------
    async def commit(self, rows: list[dict[str, Any]]) -> str:
        """Queue rows and return once they are durable: ``"stored"`` (committed in the store) or
        ``"spooled"`` (fsync'd in the spool during an outage); ``"queued"`` in before-commit mode.

        Raises:
            InputError: a row does not fit the store's columns (see :func:`check_row`).
            StoreUnavailableError: the store is down and the spool cannot take the rows, the
                writer has stopped, or the rows are not durable within ``COMMIT_TIMEOUT_S``.
        """
        if not rows:
            return STORED
        if self.ack == "before-commit":
            self._submit(_Request(rows))
            return QUEUED
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._submit(_Request(rows, loop, fut))
        try:
            # On a timeout the future is cancelled, and the writer skips it when it gets there.
            return await asyncio.wait_for(fut, COMMIT_TIMEOUT_S)
        except TimeoutError:  # asyncio's, since Python 3.11
            raise _timed_out() from None

    def commit_blocking(self, rows: list[dict[str, Any]]) -> str:
        """:meth:`commit` for a caller on a worker thread (it blocks that thread, at most
        ``COMMIT_TIMEOUT_S``)."""
        if not rows:
            return STORED
        if self.ack == "before-commit":
            self._submit(_Request(rows))
            return QUEUED
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._submit(_Request(rows, None, fut))
        try:
            return fut.result(COMMIT_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            raise _timed_out() from None

    def flush(self, timeout: float = 30.0) -> None:
        """Return once every row acknowledged so far is in the store (the spool replayed).

        Raises:
            StoreUnavailableError: the store is down (at once, while the prober finds it down),
                does not come back within ``timeout``, or the writer has stopped.
        """
        if self._dead:
            raise StoreUnavailableError(self._dead)
        if self.ack == "commit" and not self.spooled and not self._down:
            return  # every acknowledged row is committed already
        if self._down and not self._back.is_set():
            raise self._unavailable()
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._submit(_Request([], None, fut, barrier=True))
        try:
            fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise StoreUnavailableError(f"feedback store: rows handed to the prediction writer not stored within "
                                        f"{timeout:g} s; expected a reachable database, retry in "
                                        f"{StoreUnavailableError.retry_after_s} s") from None

    def spooled_elsewhere(self) -> bool:
        """Whether another writer on the same spool folder (another server process of the
        project) still holds spooled rows: a prediction it answered may not be in the store yet."""
        return self.spool is not None and self.spool.pending_elsewhere()

    @property
    def spooled(self) -> int:
        """Rows acknowledged and waiting in the spool for the store."""
        if self._left is not None:
            return self._left
        return self.spool.rows if self.spool is not None else 0

    def status(self) -> dict[str, Any]:
        """``{"store": "ok" | "unavailable", "spooled": rows waiting, "writer": "ok" | "dead"}``,
        the store's counts when it answers, and ``writer_detail`` when the writer thread stopped
        on an error (for ``/health``); never raises for an unavailable store."""
        out: dict[str, Any] = {"store": "ok", "spooled": self.spooled, "writer": "dead" if self._dead else "ok"}
        if self._dead:
            out["writer_detail"] = self._dead
        if not self._down:
            try:
                return {**out, **self.store.counts()}
            except StoreUnavailableError as e:
                self._cause = str(e)
        return {**out, "store": "unavailable", "store_detail": self._cause}

    def close(self, timeout: float = 30.0) -> None:
        """Commit what is queued, try once to replay the spool, and stop; rows still spooled are
        replayed by the next writer on the same folder."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._q.put(_STOP)
        # joined even when already closed: a thread that died may still be releasing its spool,
        # which the next writer on the folder must be able to adopt once this returns
        self._thread.join(timeout=timeout)

    def _submit(self, req: _Request) -> None:
        for row in req.rows:
            check_row(row)
        with self._lock:
            if self._dead:
                raise StoreUnavailableError(self._dead)
            if self._closed or not self._thread.is_alive():
                raise StoreUnavailableError("prediction writer: stopped (the server is shutting down); expected "
                                            f"a running server, retry in {StoreUnavailableError.retry_after_s} s")
            self._q.put(req)

    def _unavailable(self) -> StoreUnavailableError:
        return StoreUnavailableError(self._cause or "feedback store: unavailable; expected a reachable database, "
                                     f"retry in {StoreUnavailableError.retry_after_s} s")

    # -- the writer thread ----------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as e:  # a bug or an unreadable spool: answer every waiting request, refuse new ones
            log.exception("prediction writer stopped")
            what = (str(e).strip().splitlines() or [""])[0][:200]  # one line: no SQL parameters (users' inputs)
            dead = (f"prediction writer: stopped after an unexpected error ({type(e).__name__}: {what}); expected a "
                    f"running writer, restart the server; retry in {StoreUnavailableError.retry_after_s} s")
            with self._lock:  # from here on _submit refuses, so the queue drained below stays empty
                self._dead = dead
                self._closed = True
            rest = [r for r in self._batch if not r.settled] + self._drain()
            self._settle([(r, None, StoreUnavailableError(dead)) for r in rest])
        finally:
            self._stop.set()
            if self.spool is not None:
                self._left = self.spool.rows
                self.spool.close()

    def _drain(self) -> list[_Request]:
        """Every request still queued, without waiting (stop markers left out)."""
        items = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return items
            if item is not _STOP:
                items.append(item)

    def _serve(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._q.get(timeout=self.probe_s if (self.spooled or self._down) else SPOOL_RESCAN_S)
            except queue.Empty:
                self._rescan()
                if self.spooled or self._down:
                    self._replay(1000)  # idle: replay a chunk once the store takes writes
                continue
            batch: list[_Request] = []
            if first is _STOP:
                stop = True
            else:
                batch.append(first)
            n = len(batch[0].rows) if batch else 0
            while n < self.max_rows:  # group commit: everything queued meanwhile goes in this transaction
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    continue
                batch.append(item)
                n += len(item.rows)
            if batch:
                self._write(batch)
            if stop:  # the last batches after _STOP (racing submits are refused once closed)
                for item in self._drain():
                    self._write([item])
                if self.spooled:
                    try:
                        self._replay(None)
                    except StoreUnavailableError as e:
                        log.warning("%d predictions stay in the spool for the next server: %s", self.spooled, e)
                continue
            self._rescan()
            if self.spooled and (not self._down or self._back.is_set()):
                self._replay(1000)  # catch up between batches

    def _rescan(self) -> None:
        """Every ``SPOOL_RESCAN_S``: adopt spool files that a server which is gone left behind."""
        if self.spool is None or time.monotonic() - self._rescanned < SPOOL_RESCAN_S:
            return
        self._rescanned = time.monotonic()
        self.spool.rescan()

    def _write(self, batch: list[_Request]) -> None:
        self._batch = batch
        rows = [r for req in batch for r in req.rows]
        if rows:
            try:
                result = self._store_or_spool(rows)
                outcome = [(req, result, None) for req in batch if not req.barrier]
            except StoreUnavailableError as e:
                outcome = [(req, None, StoreUnavailableError(str(e))) for req in batch if not req.barrier]
            except Exception as e:  # rows the store refuses (not an outage): find whose
                log.warning("writing %d predictions failed (%s); writing each request's rows alone", len(rows), e)
                outcome = [(req, *self._alone(req)) for req in batch if not req.barrier]
            self._settle(outcome)  # before any barrier: predictions never wait on a flush
        barriers = [req for req in batch if req.barrier]
        if barriers:
            exc = None
            if self._down and not self._back.is_set():
                exc = self._unavailable()  # the prober's verdict: no need to wait on the store again
            elif self.spooled or self._down:
                try:
                    self._replay(None)
                except StoreUnavailableError as e:
                    exc = e
            self._settle([(req, STORED if exc is None else None, exc and StoreUnavailableError(str(exc)))
                          for req in barriers])
        self._batch = []

    def _alone(self, req: _Request) -> tuple[str | None, BaseException | None]:
        try:
            return self._store_or_spool(req.rows), None
        except StoreUnavailableError as e:
            return None, StoreUnavailableError(str(e))
        except Exception as e:
            log.error("predictions %s not stored: %s", [r["id"] for r in req.rows], e)
            return None, StoreError(f"feedback store: predictions not stored ({str(e).splitlines()[0]}); "
                                    "expected rows the store accepts")

    def _went_down(self, e: StoreUnavailableError) -> None:
        if not self._down:
            log.error("%s; %s until it is back", e, "spooling predictions" if self.spool is not None
                      else "refusing predictions (no spool)")
        self._down, self._cause = True, str(e)
        self._back.clear()
        if self._prober is None:  # one prober for the writer's life: it cannot miss a later outage
            self._prober = threading.Thread(target=self._probe, name="modelloop-store-probe", daemon=True)
            self._prober.start()

    def _came_back(self) -> None:
        if self._down:
            log.warning("feedback store is back; %d spooled predictions to replay", self.spooled)
        self._down = False
        self._back.clear()

    def _probe(self) -> None:
        """Every ``probe_s`` while the store is down and not yet found back: try a write, off the
        writer thread, so that batches are spooled without waiting on connect or lock timeouts.
        It runs until the writer stops, so an outage that starts again right after the store was
        found back is probed like the first."""
        while not self._stop.wait(self.probe_s):
            if not self._down or self._back.is_set():
                continue
            try:
                self.store.ping()
            except Exception as e:  # still down
                self._cause = str(e)
                continue
            self._back.set()

    def _store_or_spool(self, rows: list[dict[str, Any]]) -> str:
        """Commit rows (retrying for ``retry_s``), or spool them while the store is down."""
        if not self._down or self._back.is_set():
            try:
                self._log(rows, retry=not self._down)
                self._came_back()
                return STORED
            except StoreUnavailableError as e:
                self._went_down(e)
        if self.spool is None:
            raise StoreUnavailableError(f"{self._cause} (no spool configured)")
        try:
            self.spool.append(rows)
        except SpoolFullError as e:
            raise StoreUnavailableError(f"{self._cause}; {e}") from None
        except OSError as e:
            raise StoreUnavailableError(f"{self._cause}; prediction spool in {self.spool.folder}: cannot write "
                                        f"({e}); expected a writable folder") from None
        return SPOOLED

    def _log(self, rows: list[dict[str, Any]], retry: bool) -> None:
        deadline = time.monotonic() + (self.retry_s if retry else 0.0)
        delay = 0.05
        while True:
            try:
                self.store.log_many(rows)
                return
            except StoreUnavailableError:
                if time.monotonic() + delay > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _replay(self, max_rows: int | None) -> None:
        """Move spooled rows into the store: ``max_rows`` of them, or (None) all of them and
        check that the store takes writes; while the store is down, ``max_rows`` waits for the
        prober to find it back.

        Raises:
            StoreUnavailableError: only with ``max_rows`` None, when the store is down.
        """
        if self._down and max_rows is not None and not self._back.is_set():
            return
        if self._down and not self.spooled:
            try:
                self.store.ping()
            except StoreUnavailableError as e:
                self._went_down(e)
                if max_rows is None:
                    raise
                return
            self._came_back()
        left = max_rows
        while self.spooled and (left is None or left > 0):
            chunk = self.spool.peek(min(1000, left) if left is not None else 1000)
            try:
                try:
                    self.store.log_many(chunk)
                except StoreUnavailableError:
                    raise
                except Exception as e:  # a row the store refuses: store the others, drop it loudly
                    for r in chunk:
                        try:
                            self.store.log_many([r])
                        except StoreUnavailableError:
                            raise
                        except Exception:
                            log.error("spooled prediction %s cannot be stored (%s); dropped", r["id"], e)
            except StoreUnavailableError as e:
                self._went_down(e)
                if max_rows is None:
                    raise
                return
            self._came_back()
            self.spool.done()
            if left is not None:
                left -= len(chunk)

    def _settle(self, outcome: list[tuple[_Request, str | None, BaseException | None]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for req, result, exc in outcome:
            if req.settled:
                continue
            req.settled = True
            if req.future is None:  # before-commit mode: nobody waits
                if exc is not None:
                    log.error("%d answered predictions were not stored: %s", len(req.rows), exc)
                continue
            if req.loop is None:
                with contextlib.suppress(concurrent.futures.InvalidStateError):  # settled already
                    if exc is not None:
                        req.future.set_exception(exc)
                    else:
                        req.future.set_result(result)
            else:
                by_loop.setdefault(req.loop, []).append((req.future, result, exc))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_settle, items)
            except RuntimeError:  # the loop is closed: nobody is left to answer
                pass
