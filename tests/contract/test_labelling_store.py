"""The store's side of the labelling queue, on SQLite and PostgreSQL: the schema 2 -> 3 migration,
leases that one labeller wins, feedback origins, and a uniformly random audit sample."""

from __future__ import annotations

import threading
import uuid

import numpy as np
import pytest
import sqlalchemy as sa
from scipy.stats import chisquare

from modelloop.errors import InputError
from modelloop.feedback import FeedbackStore, prediction_row
from modelloop.feedback.labelling import audit_figure, pick_active, pick_audit
from modelloop.feedback.store import SCHEMA_VERSION, wilson_interval

STORES = ["sqlite", "postgresql"]


@pytest.fixture(params=STORES)
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    server = request.getfixturevalue("postgres")
    return server.create_database(f"label_{uuid.uuid4().hex[:12]}")


def _fill(store: FeedbackStore, n: int, version: str = "v1") -> list[str]:
    rng = np.random.default_rng(0)
    ids = [f"p{i:04d}" for i in range(n)]
    rows = []
    for pid in ids:
        p = float(rng.uniform(0.5, 1.0))
        rows.append(prediction_row(pid, version, rng.integers(0, 256, (1, 4, 4)), "even",
                                   {"even": p, "odd": 1 - p}, 1.0, ood_score=float(rng.uniform(0, 2))))
    store.log_many(rows)
    return ids


_SCHEMA_2 = [
    "CREATE TABLE modelloop_meta (key VARCHAR(64) PRIMARY KEY, value VARCHAR(256) NOT NULL)",
    "INSERT INTO modelloop_meta VALUES ('schema_version', '2')",
    "CREATE TABLE predictions (id VARCHAR(32) PRIMARY KEY, created_at FLOAT NOT NULL, model_version VARCHAR(32) "
    "NOT NULL, input_shape VARCHAR(64) NOT NULL, input_dtype VARCHAR(16) NOT NULL, input_data {blob} NOT NULL, "
    "input_hash VARCHAR(64) NOT NULL, label VARCHAR(256) NOT NULL, scores TEXT NOT NULL, latency_ms FLOAT NOT NULL)",
    "CREATE TABLE feedback (id {serial} PRIMARY KEY, prediction_id VARCHAR(32) NOT NULL REFERENCES predictions(id), "
    "label VARCHAR(256) NOT NULL, created_at FLOAT NOT NULL, client VARCHAR(128), kind VARCHAR(16) NOT NULL "
    "DEFAULT 'label', value FLOAT)",
    "CREATE TABLE shadow_predictions (id {serial} PRIMARY KEY, prediction_id VARCHAR(32) NOT NULL, model_version "
    "VARCHAR(32) NOT NULL, label VARCHAR(256) NOT NULL, scores TEXT NOT NULL, created_at FLOAT NOT NULL)",
    "INSERT INTO predictions VALUES ('p1', 1.0, 'v1', '[1, 2, 2]', 'uint8', {bytes}, 'h', 'even', "
    "'{{\"even\": 0.9, \"odd\": 0.1}}', 1.0)",
    "INSERT INTO feedback (prediction_id, label, created_at, client, kind, value) VALUES ('p1', 'odd', 2.0, NULL, "
    "'label', NULL)",
]


def test_a_schema_2_database_is_migrated_and_keeps_working(url: str) -> None:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    pg = engine.dialect.name == "postgresql"
    fmt = {"blob": "BYTEA" if pg else "BLOB", "serial": "SERIAL" if pg else "INTEGER",
           "bytes": "'\\x01020304'::bytea" if pg else "x'01020304'"}
    with engine.begin() as c:  # the schema as the previous release wrote it
        for stmt in _SCHEMA_2:
            c.execute(sa.text(stmt.format(**fmt)))
    engine.dispose()
    store = FeedbackStore(url)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 3
        old = store.feedback_history("p1")[0]
        assert old["origin"] == "user" and old["label"] == "odd"
        assert store.get_prediction("p1")["ood_score"] is None
        assert store.labelled(["even", "odd"])[0]["label"] == "odd"
        # the new parts work on the migrated database
        assert store.claim([("p1", "audit")], "alice", 300) == ["p1"]
        store.add_feedback("p1", "even", client="alice", origin="audit")
        assert [r["id"] for r in store.labelled(["even", "odd"], origins=["audit"])] == ["p1"]
    finally:
        store.close()
    FeedbackStore(url).close()  # opening again changes nothing


def test_leases_feedback_origins_and_audit_candidates(url: str) -> None:
    store = FeedbackStore(url)
    try:
        ids = _fill(store, 30)
        assert len(store.label_candidates(100)) == 30 and store.audit_candidates("v1") == sorted(ids)
        assert store.claim([(ids[0], "active"), (ids[1], "audit")], "alice", 300) == [ids[0], ids[1]]
        # held: nobody else gets them, and neither list offers them
        assert store.claim([(ids[0], "active"), (ids[1], "audit"), (ids[2], "active")], "bob", 300) == [ids[2]]
        assert {ids[0], ids[1], ids[2]}.isdisjoint(c["id"] for c in store.label_candidates(100))
        assert {ids[0], ids[1], ids[2]}.isdisjoint(store.audit_candidates("v1"))
        # a label must come back with the origin its item was handed out with
        with pytest.raises(InputError, match="field 'origin': received 'audit'.*handed out as 'active'"):
            store.add_feedback(ids[0], "odd", origin="audit")
        with pytest.raises(InputError, match="field 'origin': received 'active'.*never handed out"):
            store.add_feedback(ids[5], "odd", origin="active")
        with pytest.raises(InputError, match="field 'origin': received 'robot'; expected one of user, active, audit"):
            store.add_feedback(ids[5], "odd", origin="robot")
        store.add_feedback(ids[0], "odd", client="alice", origin="active")
        store.add_feedback(ids[1], "even", client="alice", origin="audit")
        store.add_feedback(ids[3], "odd", client="carol")  # a user's own correction
        origins = {r["id"]: r["origin"] for r in store.labelled(["even", "odd"])}
        assert origins == {ids[0]: "active", ids[1]: "audit", ids[3]: "user"}
        # labelled items leave the active pool; only audit labels leave the audit pool
        pool = {c["id"] for c in store.label_candidates(100)}
        assert ids[0] not in pool and ids[1] not in pool and ids[3] not in pool
        audit_pool = set(store.audit_candidates("v1"))
        assert ids[1] not in audit_pool and ids[0] in audit_pool and ids[3] in audit_pool
        # an expired lease can be taken again
        assert store.claim([(ids[4], "active")], "alice", -1) == [ids[4]]
        assert store.claim([(ids[4], "active")], "bob", 300) == [ids[4]]
    finally:
        store.close()


def test_concurrent_claims_hand_each_prediction_to_one_labeller(url: str) -> None:
    ids = _fill(FeedbackStore(url), 40)
    won: dict[str, list[str]] = {}
    barrier = threading.Barrier(8)

    def labeller(name: str) -> None:
        s = FeedbackStore(url)  # its own engine and connections, like another server process
        try:
            barrier.wait()
            won[name] = s.claim([(p, "active") for p in ids], name, 300)
        finally:
            s.close()

    threads = [threading.Thread(target=labeller, args=(f"l{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    handed = [p for got in won.values() for p in got]
    assert sorted(handed) == sorted(ids)  # every one handed out, none twice


def test_audit_sample_is_uniform_over_the_candidates(url: str) -> None:
    store = FeedbackStore(url)
    try:
        _fill(store, 50)
        cands = store.audit_candidates("v1")
    finally:
        store.close()
    rng = np.random.default_rng(12345)
    counts = dict.fromkeys(cands, 0)
    draws = 4000
    for _ in range(draws):
        for pid in pick_audit(cands, 5, rng):
            counts[pid] += 1
    observed = np.array(list(counts.values()))
    assert observed.sum() == draws * 5
    assert chisquare(observed).pvalue > 0.001  # 50 equally likely candidates


def test_active_picks_are_diverse_and_put_ood_first() -> None:
    rng = np.random.default_rng(0)
    # twenty near-copies of one confusion, and ten other uncertain inputs spread out
    emb = np.concatenate([np.ones((20, 8)) + rng.normal(0, 1e-3, (20, 8)), rng.normal(0, 3, (10, 8))])
    u = np.concatenate([np.full(20, 0.99), np.full(10, 0.9)])
    ood = np.full(30, np.nan)
    ood[25] = 7.0
    order = pick_active(u, emb, 6, ood)
    assert order[0] == 25 and len(set(order)) == 6
    assert sum(1 for i in order if i < 20) <= 1  # at most one copy of the repeated confusion, not six
    order = pick_active(u, emb, 6)
    assert order[0] < 20  # the most uncertain first ...
    assert sum(1 for i in order if i < 20) == 1  # ... and then the others, not its copies


def test_audit_figure_is_accuracy_with_its_wilson_interval() -> None:
    rows = [{"label": "even", "predicted": "even"}] * 45 + [{"label": "odd", "predicted": "even"}] * 5
    fig = audit_figure(rows, regression=False)
    low, high = wilson_interval(45, 50)
    assert fig["value"] == 0.9 and fig["n"] == 50 and fig["low"] == low and fig["high"] == high
    assert not fig["biased"] and fig["source"] == "audit"
    reg = audit_figure([{"label": "1.0", "predicted": "3.0"}, {"label": "2.0", "predicted": "2.0"}], regression=True)
    assert reg["measure"] == "rmse" and reg["value"] == pytest.approx(np.sqrt(2.0))


@pytest.mark.parametrize("n", [2, 10, 181, 1000])
def test_wilson_interval_holds_its_point_at_the_ends(n) -> None:
    """All right (or all wrong) gives an upper (lower) bound of exactly 1 (0), not 1 - 1e-16."""
    assert wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0
    low, high = wilson_interval(n // 2, n)
    assert 0.0 < low <= (n // 2) / n <= high < 1.0
