"""What only the SQLite feedback store does (WAL mode, migrating a first-release file) and the
checks on store URLs. What every store does, SQLite and PostgreSQL alike, is in
``tests/contract/test_stores.py``."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from modelloop.errors import StoreError
from modelloop.feedback import FeedbackStore, open_store
from modelloop.feedback.store import SCHEMA_VERSION


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "feedback.db"


@pytest.fixture
def store(db: Path):
    s = FeedbackStore(f"sqlite:///{db}")
    yield s
    s.close()


def test_sqlite_runs_in_wal_mode(store: FeedbackStore, db: Path) -> None:
    with store.engine.connect() as c:
        assert c.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert c.execute(sa.text("PRAGMA foreign_keys")).scalar_one() == 1
        assert c.execute(sa.text("PRAGMA synchronous")).scalar_one() == 2  # FULL: a commit is on disk
    x = np.zeros((1, 28, 28), np.uint8)
    store.log_prediction(model_version="v1", x=x, label="even", scores={"even": 1.0}, latency_ms=1.0)
    # WAL mode is persistent in the file: a plain sqlite3 connection sees it too.
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)


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
