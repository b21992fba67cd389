"""One contract for every feedback store: a SQLite file and a real PostgreSQL server.

Each store, through the same tests: a prediction is logged and read back with its input
bit-exact; feedback for an unknown prediction is rejected and not stored; repeated feedback keeps
every row and the latest counts; labelled inputs (arrays, texts, table rows) round-trip; counts
and live accuracy; ids are unique; a second store on the same database sees the rows; the schema
version is recorded and a newer one refused. Rows are checked through a connection of their own,
not only through the store that wrote them. SQLite-only behaviour (WAL mode, migrating a
first-release file, URL checks) is in ``tests/test_store.py``.

The PostgreSQL case starts its own server (``tests/pg.py``); without PostgreSQL installed it
errors rather than skips (``make system-deps`` installs it).
"""

from __future__ import annotations

import json
import time
import uuid

import numpy as np
import pytest
import sqlalchemy as sa

from modelloop.errors import NotFoundError, StoreError
from modelloop.feedback import FeedbackStore, prediction_row
from modelloop.feedback.store import SCHEMA_VERSION

SHAPE = (1, 28, 28)
STORES = ["sqlite", "postgresql"]


@pytest.fixture(params=STORES)
def url(request, tmp_path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    server = request.getfixturevalue("postgres")  # session-wide server; a database per test
    return server.create_database(f"contract_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def store(url: str):
    s = FeedbackStore(url)
    assert s.dialect == ("sqlite" if url.startswith("sqlite") else "postgresql")
    yield s
    s.close()


def raw(store: FeedbackStore, sql: str, **params) -> list[tuple]:
    """Rows as another connection sees them: a separate engine on the store's database."""
    engine = sa.create_engine(store.engine.url)
    try:
        with engine.connect() as c:
            return [tuple(r) for r in c.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def image(seed: int, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def log(store: FeedbackStore, x, label: str = "even", version: str = "v1") -> str:
    other = "odd" if label == "even" else "even"
    return store.log_prediction(model_version=version, x=x, label=label, scores={label: 0.8, other: 0.2},
                                latency_ms=1.5)


# -- predictions ---------------------------------------------------------------------------------
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
    assert bytes(row["input_data"]) == x.tobytes()
    assert row["created_at"] > 0
    # Another connection reads the same bytes.
    assert raw(store, "select input_data from predictions where id = :p", p=pid) == [(x.tobytes(),)]


def test_float_inputs_are_stored_bit_exact(store: FeedbackStore) -> None:
    x = (np.random.default_rng(0).random(SHAPE) * 255).astype(np.float32)
    x.flat[:4] = [np.float32(1e-38), np.float32(-0.0), np.nextafter(np.float32(1), np.float32(2)), 254.99998]
    pid = log(store, x)
    assert store.get_prediction(pid)["input_dtype"] == "float32"
    store.add_feedback(pid, "odd")
    xs, _, _ = store.labelled_examples(SHAPE)
    assert xs[0].tobytes() == x.tobytes()


def test_a_retried_batch_is_stored_once(store: FeedbackStore) -> None:
    rows = [prediction_row(uuid.uuid4().hex, "v1", image(i), "even", {"even": 1.0}, 1.0) for i in range(3)]
    store.log_many(rows[:2])
    store.log_many(rows)  # the first two again (a retry after an ambiguous commit), and a new one
    assert store.counts()["predictions"] == 3
    assert sorted(r[0] for r in raw(store, "select id from predictions")) == sorted(r["id"] for r in rows)


def test_prediction_ids_are_unique(store: FeedbackStore) -> None:
    ids = {log(store, image(0)) for _ in range(20)}
    assert len(ids) == 20
    assert store.counts()["predictions"] == 20


@pytest.mark.parametrize("pid", ["nope", "0" * 32, "x" * 64], ids=["short", "id-length", "longer"])
def test_get_unknown_prediction_is_not_found(store: FeedbackStore, pid: str) -> None:
    log(store, image(0))
    with pytest.raises(NotFoundError, match=f"field 'prediction_id': received '{pid}'"):
        store.get_prediction(pid)


def test_an_id_with_a_nul_character_is_not_found(store: FeedbackStore) -> None:
    """A request may carry any string as ``prediction_id`` (JSON allows \\u0000): it is an unknown id
    on every store (PostgreSQL refuses NUL in a text parameter: the store must not ask it)."""
    log(store, image(0))
    with pytest.raises(NotFoundError):
        store.get_prediction("ab\x00cd")
    with pytest.raises(NotFoundError):
        store.add_feedback("ab\x00cd", "odd")
    assert raw(store, "select count(*) from feedback") == [(0,)]


# -- feedback ------------------------------------------------------------------------------------
def test_feedback_for_an_unknown_prediction_is_rejected_and_not_stored(store: FeedbackStore) -> None:
    log(store, image(0))
    with pytest.raises(NotFoundError) as exc:
        store.add_feedback("0123456789abcdef", "odd")
    assert "'0123456789abcdef'" in str(exc.value)
    assert "expected the id of a stored prediction" in str(exc.value)
    assert store.counts() == {"predictions": 1, "feedback": 0, "labelled_predictions": 0}
    assert raw(store, "select count(*) from feedback") == [(0,)]


def test_an_unknown_feedback_kind_is_refused_and_not_stored(store: FeedbackStore) -> None:
    pid = log(store, image(0))
    with pytest.raises(StoreError, match="feedback kind 'stars': unknown"):
        store.add_feedback(pid, "odd", kind="stars")
    assert raw(store, "select count(*) from feedback") == [(0,)]


def test_feedback_ids_count_up(store: FeedbackStore) -> None:
    a, b = log(store, image(0)), log(store, image(1))
    f1 = store.add_feedback(a, "odd", client="u1")
    f2 = store.add_feedback(b, "even")
    f3 = store.add_feedback(a, "even")
    assert f2 == f1 + 1 and f3 == f2 + 1
    assert [r[0] for r in raw(store, "select id from feedback order by id")] == [f1, f2, f3]


def test_repeated_feedback_keeps_every_row_and_the_latest_counts(store: FeedbackStore) -> None:
    x = image(7)
    pid = log(store, x, label="even")
    store.add_feedback(pid, "odd", client="alice")
    store.add_feedback(pid, "even", client="bob")
    assert store.counts() == {"predictions": 1, "feedback": 2, "labelled_predictions": 1}
    rows = raw(store, "select label, client from feedback where prediction_id = :p order by id", p=pid)
    assert rows == [("odd", "alice"), ("even", "bob")]
    assert [(h["label"], h["client"], h["kind"]) for h in store.feedback_history(pid)] == [
        ("odd", "alice", "label"), ("even", "bob", "label")]
    xs, labels, ids = store.labelled_examples(SHAPE)
    assert labels == ["even"] and ids == [pid]
    np.testing.assert_array_equal(xs[0], x)
    # The served prediction ("even") now agrees with the latest label.
    stats = store.feedback_stats()
    assert (stats["labelled"], stats["agreed"], stats["live_accuracy"]) == (1, 1, 1.0)


def test_thumbs_and_untrusted_clients(store: FeedbackStore) -> None:
    """Thumbs down names the other of two classes; an untrusted client's rows are stored but the
    latest trusted row counts."""
    up, down, mixed = log(store, image(0), "even"), log(store, image(1), "even"), log(store, image(2), "odd")
    store.add_feedback(up, "even", kind="thumbs", value=1.0)
    store.add_feedback(down, "even", kind="thumbs", value=-1.0)
    store.add_feedback(mixed, "odd", client="trusted")
    store.add_feedback(mixed, "even", client="spammer")
    store.add_feedback(mixed, "even", kind="rating", value=5.0, client="trusted")  # no label: does not count
    assert raw(store, "select count(*) from feedback") == [(5,)]
    got = {r["id"]: r["label"] for r in store.labelled(["even", "odd"], exclude_clients=["spammer"])}
    assert got == {up: "even", down: "odd", mixed: "odd"}
    assert {r["id"]: r["label"] for r in store.labelled(["even", "odd"])}[mixed] == "even"
    # Without the two class names a thumbs down carries no label.
    assert down not in {r["id"] for r in store.labelled()}


# -- labelled inputs -----------------------------------------------------------------------------
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


def test_labelled_inputs_round_trip_arrays_texts_and_table_rows(store: FeedbackStore) -> None:
    arr = np.random.default_rng(3).standard_normal((40, 49)).astype(np.float32)  # e.g. an audio feature map
    text = "Ünïcödé — 映画は最高 🎬, with a \"quote\" and a\nnew line"
    row = {"mean radius": 17.5, "size": "large", "mean texture": None, "ratio": 0.1 + 0.2}
    pids = []
    for x in (arr, text, row):
        pids.append(log(store, x))
        time.sleep(0.002)
    for pid, label in zip(pids, ("even", "odd", "even"), strict=True):
        store.add_feedback(pid, label)
    items, labels, ids = store.labelled_inputs(["even", "odd"])
    assert ids == pids and labels == ["even", "odd", "even"]
    assert isinstance(items[0], np.ndarray) and items[0].dtype == np.float32
    assert items[0].tobytes() == arr.tobytes() and items[0].shape == arr.shape
    assert items[1] == text
    assert isinstance(items[2], str) and json.loads(items[2]) == row  # a table row comes back as its JSON text
    # Already-used examples can be left out.
    assert store.labelled_inputs(["even", "odd"], exclude_ids=[pids[1]])[2] == [pids[0], pids[2]]


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


# -- counts and live accuracy --------------------------------------------------------------------
def test_counts_and_live_accuracy(store: FeedbackStore) -> None:
    assert store.counts() == {"predictions": 0, "feedback": 0, "labelled_predictions": 0}
    stats = store.feedback_stats()
    assert (stats["labelled"], stats["agreed"], stats["live_accuracy"], stats["low"]) == (0, 0, None, None)
    served = ["even", "even", "odd", "odd", "even"]
    truth = ["even", "odd", "odd", "odd", None]  # the last one gets no feedback
    for i, (s, t) in enumerate(zip(served, truth, strict=True)):
        pid = log(store, image(i), label=s, version="v1" if i < 2 else "v2")
        if t is not None:
            store.add_feedback(pid, t)
    assert store.counts() == {"predictions": 5, "feedback": 4, "labelled_predictions": 4}
    stats = store.feedback_stats()
    assert (stats["labelled"], stats["agreed"], stats["live_accuracy"]) == (4, 3, 0.75)
    assert stats["low"] == pytest.approx(0.3006, abs=1e-3) and stats["high"] == pytest.approx(0.9544, abs=1e-3)
    v1, v2 = store.feedback_stats(model_version="v1"), store.feedback_stats(model_version="v2")
    assert (v1["labelled"], v1["agreed"], v2["labelled"], v2["agreed"]) == (2, 1, 2, 2)
    assert (store.predictions_for("v1"), store.predictions_for("v2")) == (2, 3)


# -- one database, several stores ----------------------------------------------------------------
def test_a_second_store_on_the_same_database_sees_the_rows(url: str) -> None:
    first = FeedbackStore(url)
    x = image(5)
    pid = log(first, x, label="odd")
    first.add_feedback(pid, "even")
    second = FeedbackStore(url)  # e.g. `retrain` while the server is running
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
    third = FeedbackStore(url)
    assert third.counts()["feedback"] == 2
    assert third.get_prediction(pid)["label"] == "odd"
    third.close()


def test_schema_version_is_recorded(store: FeedbackStore) -> None:
    assert store.schema_version() == SCHEMA_VERSION
    assert raw(store, "select value from modelloop_meta where key = 'schema_version'") == [(str(SCHEMA_VERSION),)]


def test_a_newer_schema_is_refused(url: str) -> None:
    store = FeedbackStore(url)
    with store.engine.begin() as c:
        c.execute(sa.text("update modelloop_meta set value = '99' where key = 'schema_version'"))
    store.close()
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        FeedbackStore(url)
