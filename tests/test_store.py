"""The feedback store on a real SQLite file."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from modelloop.errors import NotFoundError, StoreError
from modelloop.feedback import FeedbackStore, open_store
from modelloop.feedback.store import SCHEMA_VERSION

SHAPE = (1, 28, 28)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "feedback.db"


@pytest.fixture
def store(db: Path):
    s = FeedbackStore(f"sqlite:///{db}")
    yield s
    s.close()


def image(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def log(store: FeedbackStore, x: np.ndarray, label: str = "even", version: str = "v1") -> str:
    other = "odd" if label == "even" else "even"
    return store.log_prediction(model_version=version, x=x, label=label, scores={label: 0.8, other: 0.2},
                                latency_ms=1.5)


def test_log_prediction_round_trips(store: FeedbackStore) -> None:
    x = image(0)
    pid = store.log_prediction(model_version="v3", x=x, label="odd", scores={"even": 0.25, "odd": 0.75},
                               latency_ms=2.25)
    assert isinstance(pid, str) and len(pid) == 32
    row = store.get_prediction(pid)
    assert row["id"] == pid
    assert row["model_version"] == "v3"
    assert row["label"] == "odd"
    assert json.loads(row["scores"]) == {"even": 0.25, "odd": 0.75}
    assert row["latency_ms"] == 2.25
    assert json.loads(row["input_shape"]) == [1, 28, 28]
    assert row["input_dtype"] == "uint8"
    np.testing.assert_array_equal(np.frombuffer(row["input_data"], np.uint8).reshape(SHAPE), x)
    assert row["created_at"] > 0


def test_prediction_ids_are_unique(store: FeedbackStore) -> None:
    ids = {log(store, image(0)) for _ in range(20)}
    assert len(ids) == 20
    assert store.counts()["predictions"] == 20


def test_get_unknown_prediction_is_not_found(store: FeedbackStore) -> None:
    with pytest.raises(NotFoundError, match="field 'prediction_id': received 'nope'"):
        store.get_prediction("nope")


def test_feedback_for_an_unknown_prediction_is_rejected_and_not_stored(store: FeedbackStore, db: Path) -> None:
    log(store, image(0))
    with pytest.raises(NotFoundError) as exc:
        store.add_feedback("0123456789abcdef", "odd")
    assert "'0123456789abcdef'" in str(exc.value)
    assert "expected the id of a stored prediction" in str(exc.value)
    assert store.counts() == {"predictions": 1, "feedback": 0, "labelled_predictions": 0}
    with sqlite3.connect(db) as con:
        assert con.execute("select count(*) from feedback").fetchone() == (0,)


def test_feedback_ids_count_up(store: FeedbackStore) -> None:
    a, b = log(store, image(0)), log(store, image(1))
    f1 = store.add_feedback(a, "odd", client="u1")
    f2 = store.add_feedback(b, "even")
    assert f2 == f1 + 1


def test_repeated_feedback_keeps_every_row_and_the_latest_counts(store: FeedbackStore, db: Path) -> None:
    x = image(7)
    pid = log(store, x, label="even")
    store.add_feedback(pid, "odd", client="alice")
    store.add_feedback(pid, "even", client="bob")
    assert store.counts() == {"predictions": 1, "feedback": 2, "labelled_predictions": 1}
    with sqlite3.connect(db) as con:
        rows = con.execute("select label, client from feedback where prediction_id = ? order by id", (pid,)).fetchall()
    assert rows == [("odd", "alice"), ("even", "bob")]
    xs, labels, ids = store.labelled_examples(SHAPE)
    assert labels == ["even"] and ids == [pid]
    assert xs.shape == (1, *SHAPE)
    # The served prediction ("even") now agrees with the latest label.
    stats = store.feedback_stats()
    assert (stats["labelled"], stats["agreed"], stats["live_accuracy"]) == (1, 1, 1.0)


def test_labelled_examples_return_the_stored_input_exactly(store: FeedbackStore) -> None:
    a, b = image(1), image(2)
    pa = log(store, a)
    time.sleep(0.002)  # distinct created_at, which orders the examples
    pb = log(store, b)
    log(store, image(3))  # no feedback: not a training example
    store.add_feedback(pb, "odd")
    store.add_feedback(pa, "even")
    xs, labels, ids = store.labelled_examples(SHAPE)
    assert xs.dtype == np.float32 and xs.shape == (2, *SHAPE)
    by_id = dict(zip(ids, zip(xs, labels, strict=True), strict=True))
    np.testing.assert_array_equal(by_id[pa][0], a.astype(np.float32))
    np.testing.assert_array_equal(by_id[pb][0], b.astype(np.float32))
    assert by_id[pa][1] == "even" and by_id[pb][1] == "odd"
    assert ids == [pa, pb]  # in the order the predictions were made


def test_float_inputs_are_stored_bit_exact(store: FeedbackStore) -> None:
    x = (np.random.default_rng(0).random(SHAPE) * 255).astype(np.float32)
    pid = log(store, x)
    store.add_feedback(pid, "odd")
    xs, _, _ = store.labelled_examples(SHAPE)
    assert xs[0].tobytes() == x.tobytes()


def test_rows_of_another_input_shape_are_skipped(store: FeedbackStore) -> None:
    small = log(store, image(0, (1, 8, 8)))
    colour = log(store, image(1, (3, 28, 28)))
    right = log(store, image(2))
    for pid in (small, colour, right):
        store.add_feedback(pid, "odd")
    xs, labels, ids = store.labelled_examples(SHAPE)
    assert ids == [right] and labels == ["odd"] and xs.shape == (1, *SHAPE)
    xs8, _, ids8 = store.labelled_examples((1, 8, 8))
    assert ids8 == [small] and xs8.shape == (1, 1, 8, 8)


def test_labelled_examples_when_there_is_no_feedback(store: FeedbackStore) -> None:
    log(store, image(0))
    xs, labels, ids = store.labelled_examples(SHAPE)
    assert xs.shape == (0, *SHAPE) and xs.dtype == np.float32
    assert labels == [] and ids == []


def test_counts_and_live_accuracy(store: FeedbackStore) -> None:
    assert store.counts() == {"predictions": 0, "feedback": 0, "labelled_predictions": 0}
    stats = store.feedback_stats()
    assert (stats["labelled"], stats["agreed"], stats["live_accuracy"], stats["low"]) == (0, 0, None, None)
    served = ["even", "even", "odd", "odd", "even"]
    truth = ["even", "odd", "odd", "odd", None]  # the last one gets no feedback
    for i, (s, t) in enumerate(zip(served, truth, strict=True)):
        pid = log(store, image(i), label=s)
        if t is not None:
            store.add_feedback(pid, t)
    assert store.counts() == {"predictions": 5, "feedback": 4, "labelled_predictions": 4}
    stats = store.feedback_stats()
    assert (stats["labelled"], stats["agreed"], stats["live_accuracy"]) == (4, 3, 0.75)
    assert stats["low"] == pytest.approx(0.3006, abs=1e-3) and stats["high"] == pytest.approx(0.9544, abs=1e-3)


def test_sqlite_runs_in_wal_mode(store: FeedbackStore, db: Path) -> None:
    with store.engine.connect() as c:
        assert c.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert c.execute(sa.text("PRAGMA foreign_keys")).scalar_one() == 1
    log(store, image(0))
    # WAL mode is persistent in the file: a plain sqlite3 connection sees it too.
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_second_store_on_the_same_file_sees_the_rows(db: Path) -> None:
    first = FeedbackStore(f"sqlite:///{db}")
    x = image(5)
    pid = log(first, x, label="odd")
    first.add_feedback(pid, "even")
    second = FeedbackStore(f"sqlite:///{db}")  # e.g. `retrain` while the server is running
    assert second.counts() == {"predictions": 1, "feedback": 1, "labelled_predictions": 1}
    xs, labels, ids = second.labelled_examples(SHAPE)
    assert ids == [pid] and labels == ["even"]
    np.testing.assert_array_equal(xs[0], x)
    # Writes from the second are visible to the first.
    second.add_feedback(pid, "odd")
    assert first.labelled_examples(SHAPE)[1] == ["odd"]
    first.close()
    second.close()
    # And everything survives closing: a fresh store after both are gone.
    third = open_store(f"sqlite:///{db}")
    assert third.counts()["feedback"] == 2
    assert third.get_prediction(pid)["label"] == "odd"
    third.close()


def test_schema_version_is_recorded(store: FeedbackStore, db: Path) -> None:
    with sqlite3.connect(db) as con:
        row = con.execute("select value from modelloop_meta where key='schema_version'").fetchone()
    assert row == (str(SCHEMA_VERSION),)


def test_a_newer_schema_is_refused(db: Path) -> None:
    FeedbackStore(f"sqlite:///{db}").close()
    with sqlite3.connect(db) as con:
        con.execute("update modelloop_meta set value='99' where key='schema_version'")
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        FeedbackStore(f"sqlite:///{db}")


@pytest.mark.parametrize("url", ["mysql://h/db", "feedback.db"])
def test_open_store_rejects_unsupported_urls(url: str) -> None:
    with pytest.raises(StoreError) as exc:
        open_store(url)
    assert repr(url) in str(exc.value)
    assert "expected sqlite:///PATH" in str(exc.value)


@pytest.mark.parametrize("url", ["not a url", "nosuchdialect://x/y"])
def test_feedback_store_rejects_malformed_urls(url: str) -> None:
    with pytest.raises(StoreError, match="expected sqlite:///PATH"):
        FeedbackStore(url)


def test_a_first_schema_database_is_migrated_without_losing_rows(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as con:  # the schema as the first release wrote it
        con.executescript("""
            CREATE TABLE modelloop_meta (key VARCHAR(64) PRIMARY KEY, value VARCHAR(256) NOT NULL);
            INSERT INTO modelloop_meta VALUES ('schema_version', '1');
            CREATE TABLE predictions (id VARCHAR(32) PRIMARY KEY, created_at FLOAT NOT NULL,
                model_version VARCHAR(32) NOT NULL, input_shape VARCHAR(64) NOT NULL, input_dtype VARCHAR(16) NOT NULL,
                input_data BLOB NOT NULL, input_hash VARCHAR(64) NOT NULL, label VARCHAR(256) NOT NULL,
                scores TEXT NOT NULL, latency_ms FLOAT NOT NULL);
            CREATE TABLE feedback (id INTEGER PRIMARY KEY AUTOINCREMENT, prediction_id VARCHAR(32) NOT NULL
                REFERENCES predictions(id), label VARCHAR(256) NOT NULL, created_at FLOAT NOT NULL,
                client VARCHAR(128));
            INSERT INTO predictions VALUES ('p1', 1.0, 'v1', '[1, 2, 2]', 'uint8', x'01020304', 'h', 'even', '{}', 1.0);
            INSERT INTO feedback (prediction_id, label, created_at, client) VALUES ('p1', 'odd', 2.0, NULL);
        """)
    store = FeedbackStore(f"sqlite:///{db}")
    assert store.schema_version() == SCHEMA_VERSION
    x, labels, ids = store.labelled_examples((1, 2, 2))
    assert ids == ["p1"] and labels == ["odd"] and x.reshape(-1).tolist() == [1, 2, 3, 4]
    assert store.feedback_history("p1")[0]["kind"] == "label"
    store.add_feedback("p1", "odd", kind="thumbs", value=-1.0)
    assert store.labelled(["even", "odd"])[-1]["label"] == "even"  # thumbs down on 'odd' of two classes
    store.close()


def test_unreachable_postgresql_is_a_clear_error() -> None:
    with pytest.raises(StoreError, match="cannot connect") as e:
        open_store("postgresql://modelloop:secret@127.0.0.1:1/feedback")
    assert "secret" not in str(e.value)
