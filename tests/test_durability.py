"""Durable acknowledgements of the prediction writer, on real SQLite files and a real PostgreSQL.

A commit resolves only once its row is readable from a fresh connection; concurrent commits share
transactions and are answered in commit order without a thread each; a store that stays locked or
down sends rows to the fsync'd spool (or, without room in it, refuses them), and the spool is
replayed into the store when it is back, also by the next writer after a kill -9 and by a live
writer beside the killed one. During an outage feedback is refused at once and never delays a
prediction; no request waits without bound (a hanging store, a writer thread that died); rows
the store could not keep are refused before they are acknowledged. Files that hold users' inputs
are created 0600.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

import modelloop.feedback.writer as writer_module
from modelloop.errors import InputError, StoreUnavailableError
from modelloop.feedback import FeedbackStore, PredictionWriter, prediction_row
from modelloop.feedback.store import _pg_connect_args
from modelloop.feedback.writer import PredictionSpool


def rows(n: int, version: str = "v1") -> list[dict]:
    rng = np.random.default_rng(len(version) + n)
    return [prediction_row(uuid.uuid4().hex, version, rng.integers(0, 256, (1, 4, 4)).astype(np.float32),
                           "odd", {"even": 0.25, "odd": 0.75}, 1.0) for _ in range(n)]


def sqlite_ids(db: Path) -> set[str]:
    """Prediction ids as a fresh sqlite3 connection (not the store's engine) reads them."""
    con = sqlite3.connect(db)
    try:
        return {r[0] for r in con.execute("select id from predictions")}
    finally:
        con.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def flush_when_back(writer: PredictionWriter, seconds: float = 20.0) -> None:
    """``flush()`` as a feedback client sees it: sent again while it is refused with 503 (until the
    prober has found the store back)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            writer.flush(timeout=seconds)
            return
        except StoreUnavailableError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class SqliteLock:
    """Another process's write lock on a SQLite file (BEGIN IMMEDIATE on a plain connection)."""

    def __init__(self, db: Path) -> None:
        self.con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        self.con.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.con.execute("ROLLBACK")
        self.con.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "feedback.db"


@pytest.fixture
def store(db: Path):
    s = FeedbackStore(f"sqlite:///{db}", busy_timeout_ms=200)
    yield s
    s.close()


# -- commits --------------------------------------------------------------------------------
def test_commit_resolves_only_after_the_row_is_readable_from_a_fresh_connection(store, db):
    writer = PredictionWriter(store, retry_s=30)
    batch = rows(3)
    lock = SqliteLock(db)  # the writer's transaction cannot commit until the lock goes

    async def go():
        task = asyncio.ensure_future(writer.commit(batch))
        await asyncio.sleep(0.8)  # well past busy_timeout: the writer is retrying
        assert not task.done()
        assert sqlite_ids(db) == set()
        lock.release()
        result = await asyncio.wait_for(task, 20)
        assert {r["id"] for r in batch} <= sqlite_ids(db)  # readable the moment the answer is due
        return result

    try:
        assert asyncio.run(go()) == "stored"
    finally:
        writer.close()


def test_concurrent_commits_share_transactions_answer_in_order_and_hold_no_thread(store, db):
    commits = []
    sa.event.listen(store.engine, "commit", lambda _conn: commits.append(1))
    writer = PredictionWriter(store)
    n = 300
    batches = [rows(1) for _ in range(n)]
    finished: list[int] = []

    async def one(i: int):
        result = await writer.commit(batches[i])
        finished.append(i)
        return result

    async def go():
        # One executor thread: were each waiting request to hold a thread, 300 could not be in flight.
        asyncio.get_running_loop().set_default_executor(concurrent.futures.ThreadPoolExecutor(max_workers=1))
        return await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), 60)

    try:
        assert asyncio.run(go()) == ["stored"] * n
    finally:
        writer.close()
    assert finished == list(range(n))  # answered in commit order
    assert len(sqlite_ids(db)) == n
    assert len(commits) < n / 3, f"{len(commits)} transactions for {n} requests: no group commit"


def test_commit_blocking_from_worker_threads(store, db):
    writer = PredictionWriter(store)
    batches = [rows(2) for _ in range(40)]
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(writer.commit_blocking, batches))
    finally:
        writer.close()
    assert results == ["stored"] * 40
    assert len(sqlite_ids(db)) == 80


def test_a_store_that_stays_locked_without_a_spool_is_unavailable_and_stores_nothing(store, db):
    writer = PredictionWriter(store, retry_s=0.3, probe_s=0.2)
    lock = SqliteLock(db)
    batch = rows(2)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="database is locked") as e:
            asyncio.run(writer.commit(batch))
        assert e.value.http_status == 503 and e.value.retry_after_s > 0
        assert time.monotonic() - t0 < 10
        assert writer.status()["store"] == "unavailable"
        with pytest.raises(StoreUnavailableError):
            writer.flush(timeout=10)
    finally:
        lock.release()
        writer.close()
    assert sqlite_ids(db) == set()  # refused, so the client sends it again: nothing half-stored


def test_store_methods_report_a_locked_database_as_unavailable(store, db):
    pid = store.log_prediction(model_version="v1", x=np.zeros((1, 2, 2), np.uint8), label="odd",
                               scores={"odd": 1.0}, latency_ms=1.0)
    lock = SqliteLock(db)
    try:
        with pytest.raises(StoreUnavailableError, match="database is locked"):
            store.add_feedback(pid, "even")
        with pytest.raises(StoreUnavailableError):
            store.ping()
    finally:
        lock.release()
    store.ping()
    assert store.add_feedback(pid, "even") > 0


def test_writing_the_same_rows_twice_stores_them_once(store, db):
    batch = rows(5)
    store.log_many(batch)
    store.log_many(batch)  # a retry after an ambiguous commit, or a spool replayed twice
    assert sqlite_ids(db) == {r["id"] for r in batch}


def test_before_commit_mode_answers_at_once_and_flush_waits(store, db):
    writer = PredictionWriter(store, ack="before-commit")
    batch = rows(3)
    try:
        assert asyncio.run(writer.commit(batch)) == "queued"
        writer.flush()
        assert {r["id"] for r in batch} <= sqlite_ids(db)
    finally:
        writer.close()


# -- the spool ------------------------------------------------------------------------------
def spool_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("prediction-spool-*.jsonl"))


def test_a_locked_store_spools_rows_0600_and_replays_them_when_it_is_back(store, db, tmp_path):
    spool = tmp_path / ".modelloop"
    writer = PredictionWriter(store, spool_dir=spool, retry_s=0.2, probe_s=0.2)
    first, second = rows(3), rows(2)
    lock = SqliteLock(db)
    try:
        assert asyncio.run(writer.commit(first)) == "spooled"
        assert asyncio.run(writer.commit(second)) == "spooled"  # straight to the spool while down
        (f,) = spool_files(spool)
        assert mode(f) == 0o600
        assert f.read_bytes().count(b"\n") == 5  # on disk (fsync'd) before the answer
        assert writer.spooled == 5
        assert writer.status() | {"store_detail": ""} == {"store": "unavailable", "spooled": 5, "writer": "ok",
                                                          "store_detail": ""}
        with pytest.raises(StoreUnavailableError):
            writer.flush(timeout=10)  # feedback during the outage: 503
        assert sqlite_ids(db) == set()
    finally:
        lock.release()
    try:
        flush_when_back(writer)  # feedback after it: the spool is replayed first
        assert {r["id"] for r in first + second} == sqlite_ids(db)
        assert writer.spooled == 0
        assert asyncio.run(writer.commit(rows(1))) == "stored"
        deadline = time.monotonic() + 10
        while writer.status()["store"] != "ok" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert writer.status()["store"] == "ok" and writer.status()["predictions"] == 6
    finally:
        writer.close()
    assert spool_files(spool) == []  # emptied files are removed on close


def test_the_spool_is_replayed_in_the_background_once_the_store_is_back(store, db, tmp_path):
    writer = PredictionWriter(store, spool_dir=tmp_path, retry_s=0.1, probe_s=0.2)
    batch = rows(4)
    lock = SqliteLock(db)
    try:
        assert asyncio.run(writer.commit(batch)) == "spooled"
    finally:
        lock.release()
    try:
        deadline = time.monotonic() + 15
        while writer.spooled and time.monotonic() < deadline:  # no request needed
            time.sleep(0.1)
        assert writer.spooled == 0
        assert {r["id"] for r in batch} == sqlite_ids(db)
    finally:
        writer.close()


def test_a_full_spool_refuses_with_503(store, db, tmp_path):
    a, b, c = rows(1), rows(1), rows(1)
    room = sum(len(json.dumps({**r, "input_data": "x" * 24}, separators=(",", ":"))) + 1 for r in a + b)
    writer = PredictionWriter(store, spool_dir=tmp_path, spool_max_bytes=room + 10, retry_s=0.1, probe_s=5)
    lock = SqliteLock(db)
    try:
        assert asyncio.run(writer.commit(a)) == "spooled"
        assert asyncio.run(writer.commit(b)) == "spooled"
        with pytest.raises(StoreUnavailableError, match="spool .* full") as e:
            asyncio.run(writer.commit(c))
        assert e.value.http_status == 503
        assert writer.spooled == 2
    finally:
        lock.release()
        writer.close()


_CRASHING_WRITER = textwrap.dedent("""
    import asyncio, json, os, signal, sys
    import numpy as np
    from modelloop.feedback import FeedbackStore, PredictionWriter, prediction_row
    db, spool = sys.argv[1], sys.argv[2]
    writer = PredictionWriter(FeedbackStore("sqlite:///" + db, busy_timeout_ms=100), spool_dir=spool,
                              retry_s=0.1, probe_s=60)
    print("open", flush=True)
    sys.stdin.readline()  # the test now holds the database's write lock
    ids = []
    for i in range(3):
        row = prediction_row("crash%d" % i, "v1", np.full((1, 2, 2), i, np.float32), "odd", {"odd": 1.0}, 1.0)
        assert asyncio.run(writer.commit([row])) == "spooled"
        ids.append(row["id"])
    print(json.dumps(ids), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
""")


def _killed_writer(db, spool) -> set[str]:
    """Run ``_CRASHING_WRITER`` on ``spool`` while the store is locked (so its predictions are
    spooled) until it kills itself; the ids it acknowledged."""
    proc = subprocess.Popen([sys.executable, "-c", _CRASHING_WRITER, str(db), str(spool)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "open\n", proc.stderr.read()
    lock = SqliteLock(db)
    try:
        out, err = proc.communicate("go\n", timeout=120)
    finally:
        lock.release()
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    return set(json.loads(out))


def test_a_spool_left_by_a_killed_writer_is_replayed_by_the_next_one(db, tmp_path):
    spool = tmp_path / "state"
    acknowledged = _killed_writer(db, spool)
    (f,) = spool_files(spool)
    with open(f, "ab") as fh:
        fh.write(b'not a row\n{"id": "torn')  # a damaged line is skipped; a torn one was never acknowledged
    store = FeedbackStore(f"sqlite:///{db}")
    writer = PredictionWriter(store, spool_dir=spool)
    try:
        assert writer.spooled == 4
        writer.flush(timeout=20)
        assert sqlite_ids(db) == acknowledged
    finally:
        writer.close()
        store.close()
    assert spool_files(spool) == []


def test_a_live_writers_spool_is_not_adopted_by_another(tmp_path):
    first = PredictionSpool(tmp_path)
    first.append(rows(2))
    second = PredictionSpool(tmp_path)  # another server on the same folder: its file is locked
    assert (first.rows, second.rows) == (2, 0)
    second.close()
    first.close()
    third = PredictionSpool(tmp_path)  # the first is gone: adopted
    assert third.rows == 2
    assert len(third.peek()) == 2
    third.close()


def test_another_writers_pending_rows_are_seen_and_a_replayed_file_is_not_adopted_again(tmp_path, monkeypatch):
    first = PredictionSpool(tmp_path)  # two server processes of one project share the folder
    second = PredictionSpool(tmp_path)
    assert not first.pending_elsewhere() and not second.pending_elsewhere()
    first.append(rows(2))
    assert second.pending_elsewhere() and not first.pending_elsewhere()  # its own rows are not "elsewhere"
    first.peek()
    first.done()  # replayed: its own file is emptied
    assert not second.pending_elsewhere()
    first.close()
    second.close()

    folder = tmp_path / "left"
    gone = PredictionSpool(folder)
    gone.append(rows(3))
    gone.close()  # a file left with rows: the next writer adopts it
    (left,) = spool_files(folder)
    adopter = PredictionSpool(folder)
    assert adopter.rows == 3
    late = PredictionSpool(tmp_path / "late")
    real_flock = writer_module.fcntl.flock

    def replayed_meanwhile(fd, op):  # the late writer opened the file; the adopter replays and removes it
        adopter.peek()
        adopter.done()
        return real_flock(fd, op)

    monkeypatch.setattr(writer_module.fcntl, "flock", replayed_meanwhile)
    late._adopt(left)
    monkeypatch.setattr(writer_module.fcntl, "flock", real_flock)
    assert spool_files(folder) == [] and late.rows == 0  # the late writer replays nothing twice
    adopter.close()
    late.close()


# -- file modes -----------------------------------------------------------------------------
def test_the_sqlite_store_and_its_wal_files_are_created_owner_only(tmp_path):
    old = os.umask(0o022)
    try:
        db = tmp_path / "feedback.db"
        store = FeedbackStore(f"sqlite:///{db}")
        store.log_many(rows(2))
        names = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
        assert all(p.exists() for p in names)
        assert {p.name: mode(p) for p in names} == {p.name: 0o600 for p in names}
        store.close()
        # A file made by an earlier release (0644) is tightened when opened.
        os.chmod(db, 0o644)
        FeedbackStore(f"sqlite:///{db}").close()
        assert mode(db) == 0o600
    finally:
        os.umask(old)


# -- PostgreSQL -----------------------------------------------------------------------------
def pg_stop(server) -> None:
    """Stop the fixture's real PostgreSQL server (fast shutdown: clients are disconnected)."""
    subprocess.run([*server._as, server.pg_ctl, "-D", str(server.data), "-m", "fast", "-w", "stop"], check=True,
                   capture_output=True)


def pg_start(server) -> None:
    opts = (f"-c listen_addresses=127.0.0.1 -p {server.port} -k {server.root} -c fsync=off "
            "-c max_connections=100")
    subprocess.run([*server._as, server.pg_ctl, "-D", str(server.data), "-o", opts, "-l",
                    str(server.root / "log"), "-w", "-t", "60", "start"], check=True, capture_output=True)


def pg_ids(url: str) -> set[str]:
    import psycopg

    with psycopg.connect(url) as c:
        return {r[0] for r in c.execute("select id from predictions")}


def test_postgresql_restart_spools_predictions_refuses_feedback_then_replays(postgres, tmp_path):
    url = postgres.create_database(f"durable_{uuid.uuid4().hex[:8]}")
    store = FeedbackStore(url, connect_timeout_s=2)
    writer = PredictionWriter(store, spool_dir=tmp_path, retry_s=0.3, probe_s=0.2)
    before = rows(2)
    try:
        assert asyncio.run(writer.commit(before)) == "stored"
        assert {r["id"] for r in before} <= pg_ids(url)  # a fresh connection sees it
        pid = before[0]["id"]
        pg_stop(postgres)
        try:
            during = rows(3)
            assert asyncio.run(writer.commit(during)) == "spooled"
            status = writer.status()
            assert status["store"] == "unavailable" and status["spooled"] == 3
            assert "secret" not in status["store_detail"]
            with pytest.raises(StoreUnavailableError):
                writer.flush(timeout=10)
            with pytest.raises(StoreUnavailableError):
                store.add_feedback(pid, "even")
            with pytest.raises(StoreUnavailableError):
                store.get_prediction(pid)
        finally:
            pg_start(postgres)
        flush_when_back(writer, 30)
        assert {r["id"] for r in before + during} <= pg_ids(url)
        assert store.add_feedback(during[0]["id"], "even") > 0
        assert asyncio.run(writer.commit(rows(1))) == "stored"
    finally:
        writer.close()
        store.close()


def test_postgresql_down_without_a_spool_refuses_predictions(postgres):
    url = postgres.create_database(f"durable_{uuid.uuid4().hex[:8]}")
    store = FeedbackStore(url, connect_timeout_s=2)
    writer = PredictionWriter(store, retry_s=0.2, probe_s=0.2)
    try:
        pg_stop(postgres)
        try:
            with pytest.raises(StoreUnavailableError, match="unavailable"):
                asyncio.run(writer.commit(rows(1)))
        finally:
            pg_start(postgres)
        deadline = time.monotonic() + 20
        result = None
        while result != "stored" and time.monotonic() < deadline:
            try:
                result = asyncio.run(writer.commit(rows(1)))
            except StoreUnavailableError:
                time.sleep(0.2)
        assert result == "stored"
    finally:
        writer.close()
        store.close()


def test_many_threads_commit_while_the_lock_comes_and_goes(store, db, tmp_path):
    """Every acknowledgement is kept whatever the store does meanwhile."""
    writer = PredictionWriter(store, spool_dir=tmp_path, retry_s=0.1, probe_s=0.1)
    acknowledged: list[str] = []
    stop = threading.Event()

    def client():
        while not stop.is_set():
            batch = rows(1)
            try:
                writer.commit_blocking(batch)
                acknowledged.append(batch[0]["id"])
            except StoreUnavailableError:
                pass

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    try:
        for _ in range(2):
            time.sleep(0.4)
            lock = SqliteLock(db)
            time.sleep(0.8)
            lock.release()
    finally:
        stop.set()
        for t in threads:
            t.join()
    flush_when_back(writer, 30)
    writer.close()
    assert len(acknowledged) > 20
    assert set(acknowledged) <= sqlite_ids(db)


# -- no stalls, no hangs, no lost wakeups -----------------------------------------------------
def test_feedback_during_an_outage_is_refused_at_once_and_never_delays_a_prediction(db, tmp_path):
    store = FeedbackStore(f"sqlite:///{db}", busy_timeout_ms=8000)  # each try of the locked store: 8 s
    writer = PredictionWriter(store, spool_dir=tmp_path, retry_s=0.1, probe_s=0.2)
    lock = SqliteLock(db)
    answered = []
    try:
        assert asyncio.run(writer.commit(rows(1))) == "spooled"  # the outage is found (8 s)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            for _ in range(3):
                def feedback() -> tuple[BaseException | None, float]:
                    t0 = time.monotonic()
                    try:
                        writer.flush(timeout=30)
                    except StoreUnavailableError as e:
                        return e, time.monotonic() - t0
                    return None, time.monotonic() - t0

                flushing = pool.submit(feedback)
                time.sleep(0.05)  # the feedback request is first in line
                t0 = time.monotonic()
                batch = rows(1)
                assert asyncio.run(writer.commit(batch)) == "spooled"
                answered.append(time.monotonic() - t0)
                err, took = flushing.result(30)
                assert isinstance(err, StoreUnavailableError) and "database is locked" in str(err)
                assert err.http_status == 503 and took < 4.0, took  # the prober's verdict, not another 8 s try
        assert max(answered) < 4.0, answered  # was 8 s: the prediction waited behind the feedback's try
    finally:
        lock.release()
    try:
        flush_when_back(writer)
        assert len(sqlite_ids(db)) == 4
    finally:
        writer.close()
        store.close()


def test_a_commit_waits_at_most_commit_timeout_s_then_is_refused(store, db, monkeypatch):
    monkeypatch.setattr(writer_module, "COMMIT_TIMEOUT_S", 0.5)
    writer = PredictionWriter(store, retry_s=60)  # the writer keeps trying the locked store meanwhile
    batch, other = rows(2), rows(1)
    lock = SqliteLock(db)
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="not committed within 0.5 s") as e:
            asyncio.run(asyncio.wait_for(writer.commit(batch), 20))
        assert e.value.http_status == 503 and time.monotonic() - t0 < 5
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a worker thread is given back too
            t0 = time.monotonic()
            blocked = pool.submit(writer.commit_blocking, other)
            with pytest.raises(StoreUnavailableError, match="not committed within 0.5 s"):
                blocked.result(20)
            assert time.monotonic() - t0 < 5
    finally:
        lock.release()
    monkeypatch.setattr(writer_module, "COMMIT_TIMEOUT_S", 30.0)
    try:
        assert asyncio.run(writer.commit(batch)) == "stored"  # the client's retry: harmless, stored once
    finally:
        writer.close()
    con = sqlite3.connect(db)
    try:
        assert sorted(r[0] for r in con.execute("select id from predictions")) == sorted(
            r["id"] for r in batch + other)
    finally:
        con.close()


def test_a_writer_that_dies_answers_its_batch_and_queue_and_refuses_at_once(store, db, tmp_path, monkeypatch):
    """The one test with a failing double: a spool whose read fails with EIO (no real way to make
    the writer thread hit an unexpected error on demand)."""
    left = PredictionSpool(tmp_path)
    left_rows = rows(3)
    left.append(left_rows)
    left.close()  # a spool left with rows: the writer's flush replays it first
    writer = PredictionWriter(store, spool_dir=tmp_path, probe_s=60)
    assert writer.spooled == 3
    entered, proceed = threading.Event(), threading.Event()

    def failing_peek(max_rows: int = 1000) -> list[dict]:
        entered.set()
        proceed.wait(10)
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(writer.spool, "peek", failing_peek)

    def outcome(call, *args) -> tuple[BaseException | None, float]:
        try:
            call(*args)
        except StoreUnavailableError as e:
            return e, time.monotonic()
        return None, time.monotonic()

    try:
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            flushing = pool.submit(outcome, writer.flush, 30)  # the batch in progress when the thread dies
            assert entered.wait(10)
            queued = [pool.submit(outcome, writer.commit_blocking, rows(1)),
                      pool.submit(outcome, lambda: asyncio.run(writer.commit(rows(1))))]
            deadline = time.monotonic() + 10
            while writer._q.qsize() < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            t0 = time.monotonic()
            proceed.set()
            for f in [flushing, *queued]:
                err, at = f.result(60)
                assert isinstance(err, StoreUnavailableError) and "Input/output error" in str(err), err
                assert err.http_status == 503 and at - t0 < 5
        status = writer.status()
        assert status["writer"] == "dead" and "OSError" in status["writer_detail"]
        assert status["spooled"] == 3  # left on disk, released for the next writer
        for call in (lambda: asyncio.run(writer.commit(rows(1))), lambda: writer.commit_blocking(rows(1)),
                     writer.flush):
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="stopped after an unexpected error"):
                call()
            assert time.monotonic() - t0 < 5  # at once, not a hang (a bound, with room for a busy machine)
    finally:
        proceed.set()
        writer.close()
    after = PredictionWriter(store, spool_dir=tmp_path)
    try:
        after.flush(timeout=20)
        assert {r["id"] for r in left_rows} <= sqlite_ids(db)
    finally:
        after.close()


def test_the_store_is_probed_again_when_it_goes_down_right_after_coming_back(store, db, tmp_path):
    """Two outages in a row: after the first is over (its rows replayed by the prober, with no
    request needed), the second is noticed and its rows are replayed too. One prober runs for the
    writer's whole life; before, a prober that was just finishing could leave the second outage
    with none."""
    writer = PredictionWriter(store, spool_dir=tmp_path, retry_s=0.1, probe_s=0.1)
    try:
        for outage in range(2):
            batch = rows(2)  # fresh ids each time
            lock = SqliteLock(db)
            try:
                assert asyncio.run(writer.commit(batch)) == "spooled"
                assert writer.spooled == 2
            finally:
                lock.release()
            deadline = time.monotonic() + 20
            while writer.spooled and time.monotonic() < deadline:  # no request needed
                time.sleep(0.05)
            assert writer.spooled == 0, f"outage {outage + 1}: nothing probes the store any more"
            assert {r["id"] for r in batch} <= sqlite_ids(db)
    finally:
        writer.close()


def test_a_live_writer_replays_the_spool_of_a_server_killed_beside_it(db, tmp_path, monkeypatch):
    monkeypatch.setattr(writer_module, "SPOOL_RESCAN_S", 0.2)
    spool = tmp_path / "state"
    store = FeedbackStore(f"sqlite:///{db}")
    survivor = PredictionWriter(store, spool_dir=spool)  # the other server on the project, running on
    try:
        acknowledged = _killed_writer(db, spool)
        deadline = time.monotonic() + 20
        while not (acknowledged <= sqlite_ids(db) and not spool_files(spool)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert acknowledged <= sqlite_ids(db), "the survivor did not replay the killed server's spool"
        assert spool_files(spool) == []
    finally:
        survivor.close()
        store.close()


def test_a_row_longer_than_the_store_keeps_is_refused_before_it_is_acknowledged(store, db, tmp_path):
    x = np.zeros((1, 2, 2), np.uint8)
    with pytest.raises(InputError, match=r"'label': received 300 characters .*at most 256") as e:
        prediction_row(uuid.uuid4().hex, "v1", x, "x" * 300, {"x": 1.0}, 1.0)
    assert e.value.http_status == 422
    with pytest.raises(InputError, match=r"'model_version': received 33 characters .*at most 32"):
        prediction_row(uuid.uuid4().hex, "v" * 33, x, "odd", {"odd": 1.0}, 1.0)
    writer = PredictionWriter(store, spool_dir=tmp_path, retry_s=0.1, probe_s=0.2)
    good, bad, longest = rows(1), rows(1), rows(1)
    bad[0]["label"] = "é" * 257  # rows built elsewhere are checked when they are handed over
    longest[0]["label"] = "é" * 256  # the limit counts characters, as PostgreSQL does
    lock = SqliteLock(db)
    try:
        with pytest.raises(InputError, match="'label'"):
            asyncio.run(writer.commit(good + bad))
        with pytest.raises(InputError, match="'label'"):
            writer.commit_blocking(bad)
        assert writer.spooled == 0  # nothing of the refused request was acknowledged or spooled
        assert asyncio.run(writer.commit(longest)) == "spooled"
    finally:
        lock.release()
    try:
        flush_when_back(writer)
        assert sqlite_ids(db) == {longest[0]["id"]}
    finally:
        writer.close()


def test_postgresql_connection_settings_from_the_url_win():
    args = _pg_connect_args("postgresql://u@h/db?options=-c%20search_path%3Dx&keepalives_idle=30", 5, 2.5)
    assert args["options"] == "-c search_path=x -c statement_timeout=2500"
    assert "keepalives_idle" not in args  # the URL's 30 s is passed by SQLAlchemy itself
    assert args["keepalives"] == 1 and args["tcp_user_timeout"] == 10000 and args["connect_timeout"] == 5
    assert "options" not in _pg_connect_args("postgresql://u@h/db?options=-c%20statement_timeout%3D0", 5, 10)


def test_postgresql_waits_are_bounded_but_training_reads_are_not(postgres):
    import psycopg

    url = postgres.create_database(f"durable_{uuid.uuid4().hex[:8]}")
    store = FeedbackStore(url, connect_timeout_s=2, statement_timeout_s=1)
    try:
        with store.engine.connect() as c:
            assert c.exec_driver_sql("show statement_timeout").scalar() == "1s"
            params = c.connection.dbapi_connection.info.get_parameters()
        assert (params.get("keepalives"), params.get("tcp_user_timeout")) == ("1", "10000"), params
        longest = rows(1)
        longest[0]["label"] = "é" * 256  # what the writer lets through, PostgreSQL keeps
        store.log_many(longest)
        with psycopg.connect(url) as other:  # another client holds the table: the write's wait is bounded
            other.execute("LOCK TABLE predictions IN ACCESS EXCLUSIVE MODE")
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="statement timeout"):
                store.log_many(rows(1))
            assert time.monotonic() - t0 < 5
            releasing = threading.Timer(1.5, other.rollback)
            releasing.start()
            t0 = time.monotonic()
            assert store.labelled() == []  # a read of training data may wait longer than 1 s
            assert time.monotonic() - t0 >= 1.0
            releasing.join()
        assert longest[0]["id"] in pg_ids(url)
    finally:
        store.close()
