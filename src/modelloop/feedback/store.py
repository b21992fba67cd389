"""Predictions and feedback, stored durably through SQLAlchemy: SQLite (the embedded default,
WAL mode) or PostgreSQL (``postgresql://...``), one schema, versioned and migrated on open.

Every prediction keeps the model input it was made on, so feedback on it becomes a training
example. Feedback comes in kinds — a corrected ``label``, ``thumbs`` up/down on the predicted
label, or a ``rating`` (1-5) — and never overwrites: each submission is a new row, and for
training the latest label-bearing row of a prediction counts (history kept). Feedback from
clients the project marks untrusted is stored but left out of training and evaluation.
Challengers in shadow mode log their answers in ``shadow_predictions``, next to the champion's.

Durability: a write method returns only after its transaction is committed (SQLite runs with
``synchronous=FULL``, so a commit survives a power cut, not only a crash of the process).
Writing predictions is idempotent on their id, so a batch that is retried after an ambiguous
commit, or replayed from the writer's spool, is stored once. A SQLite file is created readable
by its owner only (0600), with its ``-wal`` and ``-shm`` files: it holds users' inputs.

Outages: once the schema is open, a store that cannot be reached or written right now (a
PostgreSQL restart, a network outage, SQLite's ``database is locked`` after ``busy_timeout_ms``)
raises :class:`~modelloop.errors.StoreUnavailableError` (HTTP 503 with ``Retry-After``) from any
method; opening a store that cannot be reached raises :class:`~modelloop.errors.StoreError`.
On PostgreSQL no statement waits without bound: each connection has a ``statement_timeout``
(10 s by default; reads of training data through ``long_read`` are exempt), TCP keepalives and
``tcp_user_timeout``, so a lock held too long or a half-open connection ends in
:class:`~modelloop.errors.StoreUnavailableError` within seconds, not when TCP gives up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import event

from ..errors import InputError, NotFoundError, StoreError, StoreUnavailableError

__all__ = ["FeedbackStore", "open_store", "prediction_row", "check_row", "SCHEMA_VERSION", "FEEDBACK_KINDS",
           "FEEDBACK_ORIGINS", "TEXT_DTYPE", "wilson_interval"]

SCHEMA_VERSION = 3
FEEDBACK_KINDS = ("label", "thumbs", "rating", "click")
#: who chose the prediction a feedback row labels: a user on their own answer (``user``), the
#: labelling queue's most informative items (``active``) or its uniformly random audit sample (``audit``)
FEEDBACK_ORIGINS = ("user", "active", "audit")
TEXT_DTYPE = "utf-8"  # input_dtype of a text input: its UTF-8 bytes
#: the effective label of a thumbs down that names no class (live accuracy: a disagreement)
WRONG = "\x00wrong"

_meta = sa.MetaData()
_info = sa.Table("modelloop_meta", _meta, sa.Column("key", sa.String(64), primary_key=True),
                 sa.Column("value", sa.String(256), nullable=False))
predictions = sa.Table(
    "predictions", _meta,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", sa.Float, nullable=False, index=True),
    sa.Column("model_version", sa.String(32), nullable=False, index=True),
    sa.Column("input_shape", sa.String(64), nullable=False),   # JSON [C, H, W]
    sa.Column("input_dtype", sa.String(16), nullable=False),
    sa.Column("input_data", sa.LargeBinary, nullable=False),  # raw 0-255 pixels as stored dtype
    sa.Column("input_hash", sa.String(64), nullable=False, index=True),
    sa.Column("label", sa.String(256), nullable=False),
    sa.Column("scores", sa.Text, nullable=False),             # JSON {class: probability}
    sa.Column("latency_ms", sa.Float, nullable=False),
    # distance of the input from the training distribution (None: the version has no calibration); since schema 3
    sa.Column("ood_score", sa.Float, nullable=True),
)
feedback = sa.Table(
    "feedback", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("prediction_id", sa.String(32), sa.ForeignKey("predictions.id"), nullable=False, index=True),
    sa.Column("label", sa.String(256), nullable=False),  # the label this feedback is about
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("client", sa.String(128), nullable=True),
    sa.Column("kind", sa.String(16), nullable=False, server_default="label"),  # since schema 2
    sa.Column("value", sa.Float, nullable=True),  # thumbs: +1/-1; rating: 1-5 (since schema 2)
    sa.Column("origin", sa.String(16), nullable=False, server_default="user"),  # FEEDBACK_ORIGINS (since schema 3)
)
#: what the labelling queue handed out: one row per prediction, leased to one labeller until
#: ``expires_at`` (so two labellers, in any server process, never get the same one at once), with
#: the origin its label must come back with (since schema 3)
label_handouts = sa.Table(
    "label_handouts", _meta,
    sa.Column("prediction_id", sa.String(32), primary_key=True),
    sa.Column("origin", sa.String(16), nullable=False),
    sa.Column("holder", sa.String(128), nullable=True),
    sa.Column("handed_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)
shadow_predictions = sa.Table(
    "shadow_predictions", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("prediction_id", sa.String(32), nullable=False, index=True),
    sa.Column("model_version", sa.String(32), nullable=False, index=True),
    sa.Column("label", sa.String(256), nullable=False),
    sa.Column("scores", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


# -- the rows of the predictions table ---------------------------------------------------------
# The store's length limits on prediction fields (PostgreSQL enforces them; SQLite does not).
_LIMITS = {c.name: c.type.length for c in predictions.columns if getattr(c.type, "length", None)}


def check_row(row: dict[str, Any]) -> None:
    """Refuse a prediction row whose text fields exceed the store's columns (``label`` 256
    characters, ``model_version`` 32, ...), before anyone is told it is stored: such a row could
    be spooled during an outage but never replayed.

    Raises:
        InputError: naming the field, its length and the limit.
    """
    for name, limit in _LIMITS.items():
        value = row.get(name)
        if isinstance(value, str) and len(value) > limit:
            shown = value if len(value) <= 40 else value[:40] + "..."
            raise InputError(f"prediction field {name!r}: received {len(value)} characters ({shown!r}); expected "
                             f"at most {limit} characters (the feedback store's limit)")


def prediction_row(pid: str, model_version: str, x: np.ndarray | str | dict[str, Any], label: str,
                   scores: dict[str, float], latency_ms: float, ood_score: float | None = None) -> dict[str, Any]:
    """A predictions-table row. ``x`` is one input: an array (or tensor), a text, or a table row.
    Pixels that are whole numbers 0-255 are stored as uint8; a text
    is stored as its UTF-8 bytes with dtype ``utf-8``; a table row (dict) as its JSON text, like a text.

    Raises:
        InputError: ``label`` or ``model_version`` is longer than the store keeps (see :func:`check_row`).
    """
    if isinstance(x, dict):
        x = json.dumps(x)
    if isinstance(x, str):
        data = x.encode("utf-8")
        shape, dtype = [len(data)], TEXT_DTYPE
    else:
        x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)  # a tensor row is stored as its array
        if x.dtype != np.uint8 and np.array_equal(x, np.rint(x)) and x.min() >= 0 and x.max() <= 255:
            x = x.astype(np.uint8)
        data = np.ascontiguousarray(x).tobytes()
        shape, dtype = list(x.shape), str(x.dtype)
    row = {"id": pid, "created_at": time.time(), "model_version": model_version,
           "input_shape": json.dumps(shape), "input_dtype": dtype, "input_data": data,
           "input_hash": hashlib.sha256(data).hexdigest(), "label": label, "scores": json.dumps(scores),
           "latency_ms": latency_ms, "ood_score": ood_score}
    check_row(row)
    return row


def _migrate_1_to_2(conn: sa.Connection) -> None:
    conn.execute(sa.text("ALTER TABLE feedback ADD COLUMN kind VARCHAR(16) NOT NULL DEFAULT 'label'"))
    conn.execute(sa.text("ALTER TABLE feedback ADD COLUMN value FLOAT"))


def _migrate_2_to_3(conn: sa.Connection) -> None:
    # label_handouts is new: create_all makes it after the migrations
    conn.execute(sa.text("ALTER TABLE feedback ADD COLUMN origin VARCHAR(16) NOT NULL DEFAULT 'user'"))
    conn.execute(sa.text("ALTER TABLE predictions ADD COLUMN ood_score FLOAT"))


_MIGRATIONS = {1: _migrate_1_to_2, 2: _migrate_2_to_3}  # from version N to N+1


def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """Wilson score interval for a proportion k/n."""
    if n == 0:
        return None, None
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # exactly 0 and 1 at the ends (where rounding would leave 1e-16 short and exclude k/n itself)
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


def normalize_url(url: str) -> str:
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def _owner_only(db_path: str | None) -> None:
    """Create the SQLite file ``db_path`` (and tighten an existing one, its -wal and -shm) to 0600.

    SQLite gives the -wal and -shm files it creates the mode of the database file."""
    if not db_path or db_path == ":memory:" or db_path.startswith("file:"):
        return
    path = os.path.abspath(db_path)
    if not os.path.isdir(os.path.dirname(path)):
        return  # SQLite reports the missing folder when it connects
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for name in (path, path + "-wal", path + "-shm"):
        try:
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)
        except FileNotFoundError:
            pass
        except PermissionError:  # another user's file: leave its mode to its owner
            pass


def _pg_connect_args(url: str, connect_timeout_s: float, statement_timeout_s: float) -> dict[str, Any]:
    """libpq settings that bound every wait on the server: connecting, a dead or half-open
    connection (keepalives: about 11 s idle; ``tcp_user_timeout``: data unacknowledged for 10 s)
    and one statement. Settings given in the URL's query win."""
    given = sa.engine.make_url(normalize_url(url)).query
    args: dict[str, Any] = {"connect_timeout": max(1, math.ceil(connect_timeout_s)), "keepalives": 1,
                            "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                            "tcp_user_timeout": 10000}
    args = {k: v for k, v in args.items() if k not in given}
    timeout = f"-c statement_timeout={max(1, round(statement_timeout_s * 1000))}"
    options = given.get("options")
    if isinstance(options, tuple):
        options = " ".join(options)
    if not options or "statement_timeout" not in options:
        args["options"] = f"{options} {timeout}" if options else timeout
    return args


def _unbounded(c: sa.Connection) -> None:
    """Lift PostgreSQL's statement_timeout for the rest of this transaction (a long read of
    training data, a migration waiting for another process's)."""
    if c.dialect.name == "postgresql":
        c.execute(sa.text("SET LOCAL statement_timeout = 0"))


class FeedbackStore:
    """Prediction log and feedback store over one database URL.

    Args:
        url: ``sqlite:///PATH`` or ``postgresql://USER@HOST:PORT/DB``.
        busy_timeout_ms: SQLite only: how long a write waits for another process's lock before
            the store reports itself unavailable.
        connect_timeout_s: PostgreSQL only: how long connecting may take before the store reports
            itself unavailable.
        statement_timeout_s: PostgreSQL only: the longest one statement may run (or wait for a
            lock) before the store reports itself unavailable; reads of training data
            (:meth:`labelled`, :meth:`recent_raw`, any read through :meth:`long_read`) and the
            migration are exempt.

    Raises:
        StoreError: the URL is unsupported, or the database cannot be reached or migrated.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 10000, connect_timeout_s: int = 5,
                 statement_timeout_s: float = 10.0) -> None:
        self.url = url
        try:
            if url.startswith("sqlite"):
                _owner_only(sa.engine.make_url(url).database)
                self.engine = sa.create_engine(url)
            else:
                self.engine = sa.create_engine(normalize_url(url), pool_size=5, max_overflow=10, pool_pre_ping=True,
                                               connect_args=_pg_connect_args(url, connect_timeout_s,
                                                                             statement_timeout_s))
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as e:
            if isinstance(e, ImportError) and "psycopg" in str(e):  # the optional 'postgres' extra
                raise StoreError(f"feedback store URL {url!r}: PostgreSQL needs psycopg ({e}); install it with "
                                 "pip install 'modelloop[postgres]'") from None
            raise StoreError(f"feedback store URL {url!r}: {e}; expected sqlite:///PATH or "
                             "postgresql://USER@HOST:PORT/DB") from None
        self.dialect = self.engine.dialect.name
        if self.dialect == "sqlite":
            @event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn, _record):  # noqa: ANN001
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=FULL")  # a commit is on disk before it is acknowledged
                cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        try:
            self._migrate()
        except sa.exc.OperationalError as e:
            raise StoreError(f"feedback store {self._safe_url()}: cannot connect or write "
                             f"({str(e.orig).strip().splitlines()[0]}); expected a reachable database") from None

        @event.listens_for(self.engine, "handle_error")
        def _unavailable(ctx):  # noqa: ANN001
            # Connection refused or lost, server shutting down, SQLite lock held too long: the
            # caller may retry; integrity and programming errors pass through unchanged.
            err = ctx.sqlalchemy_exception
            if ctx.is_disconnect or isinstance(err, (sa.exc.OperationalError, sa.exc.InterfaceError)):
                cause = str(ctx.original_exception).strip().splitlines()
                raise StoreUnavailableError(
                    f"feedback store {self._safe_url()}: unavailable ({cause[0] if cause else type(err).__name__}); "
                    f"expected a reachable database, retry in {StoreUnavailableError.retry_after_s} s") from err

    def _safe_url(self) -> str:
        return repr(sa.engine.make_url(normalize_url(self.url)).render_as_string(hide_password=True))

    def _migrate(self) -> None:
        with self.engine.begin() as c:
            _unbounded(c)
            if self.dialect == "postgresql":
                # One process migrates at a time; the others wait here.
                c.execute(sa.text("SELECT pg_advisory_xact_lock(727274)"))
            insp = sa.inspect(c)
            existing = set(insp.get_table_names())
            version = None
            if "modelloop_meta" in existing:
                row = c.execute(sa.select(_info.c.value).where(_info.c.key == "schema_version")).first()
                version = int(row[0]) if row else None
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(f"feedback store {self._safe_url()}: schema version {version} is newer than this "
                                 f"modelloop understands (expected at most {SCHEMA_VERSION}); upgrade modelloop")
            if version is not None:
                while version < SCHEMA_VERSION:
                    _MIGRATIONS[version](c)
                    version += 1
            _meta.create_all(c)
            if version is None:
                c.execute(_info.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            else:
                c.execute(_info.update().where(_info.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))

    def ping(self) -> None:
        """Return if the store takes a write right now (a no-op update, so a SQLite lock counts).

        Raises:
            StoreUnavailableError: it does not.
        """
        with self.engine.begin() as c:
            c.execute(_info.update().where(_info.c.key == "schema_version").values(value=_info.c.value))

    @contextlib.contextmanager
    def long_read(self) -> Iterator[sa.Connection]:
        """A connection for a read that may take long (training data): on PostgreSQL its
        transaction runs without ``statement_timeout``."""
        with self.engine.connect() as c:
            _unbounded(c)
            yield c

    def schema_version(self) -> int:
        with self.engine.connect() as c:
            return int(c.execute(sa.select(_info.c.value).where(_info.c.key == "schema_version")).scalar_one())

    def close(self) -> None:
        self.engine.dispose()

    # -- writes ----------------------------------------------------------------------------
    def log_prediction(self, *, model_version: str, x: np.ndarray, label: str, scores: dict[str, float],
                       latency_ms: float) -> str:
        """Store one prediction with its input (C, H, W). Returns the new prediction id."""
        pid = uuid.uuid4().hex
        self.log_many([prediction_row(pid, model_version, x, label, scores, latency_ms)])
        return pid

    def log_many(self, rows: list[dict[str, Any]], shadow_rows: list[dict[str, Any]] | None = None) -> None:
        """Store prediction rows (and shadow answers) in one transaction, committed on return.

        A prediction whose id is already stored is left as it is, so a retried or replayed batch
        is stored once.

        Raises:
            StoreUnavailableError: the store cannot be reached or written right now; nothing of
                this call is stored unless a retry finds it committed.
        """
        if rows and any("ood_score" not in r for r in rows):  # rows spooled before schema 3
            rows = [{"ood_score": None, **r} for r in rows]
        with self.engine.begin() as c:
            if rows:
                c.execute(self._insert_predictions(), rows)
            if shadow_rows:
                c.execute(shadow_predictions.insert(), shadow_rows)

    def _insert_predictions(self) -> sa.Insert:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(predictions).on_conflict_do_nothing(index_elements=["id"])

    def add_feedback(self, prediction_id: str, label: str, client: str | None = None, kind: str = "label",
                     value: float | None = None, origin: str = "user") -> int:
        """Record feedback on a prediction. Raises NotFoundError for an unknown id.

        ``label`` is the label the feedback is about: the correct one (kind ``label``), or the
        predicted one being judged (``thumbs`` with value +1/-1, ``rating`` with value 1-5).
        ``origin`` says who chose the prediction: ``user`` (anyone, on any prediction), or
        ``active`` / ``audit``, which only a prediction the labelling queue handed out with that
        origin may carry (its lease is released: the item is done).

        Raises:
            StoreError: an unknown ``kind``.
            InputError: an unknown ``origin``, or one the prediction was not handed out with.
            NotFoundError: no such prediction.
        """
        if kind not in FEEDBACK_KINDS:
            raise StoreError(f"feedback kind {kind!r}: unknown; expected one of {', '.join(FEEDBACK_KINDS)}")
        if origin not in FEEDBACK_ORIGINS:
            raise InputError(f"field 'origin': received {origin!r}; expected one of {', '.join(FEEDBACK_ORIGINS)}")
        with self.engine.begin() as c:
            found = None if "\x00" in prediction_id else c.execute(  # no stored id has NUL (PostgreSQL refuses it)
                sa.select(predictions.c.id).where(predictions.c.id == prediction_id)).first()
            if found is None:
                raise NotFoundError(f"field 'prediction_id': received {prediction_id!r}; "
                                    "expected the id of a stored prediction")
            if origin != "user":
                handed = c.execute(sa.select(label_handouts.c.origin)
                                   .where(label_handouts.c.prediction_id == prediction_id)).scalar_one_or_none()
                if handed != origin:
                    why = "was never handed out by the labelling queue" if handed is None else \
                        f"was handed out as {handed!r}"
                    raise InputError(f"field 'origin': received {origin!r} for prediction {prediction_id!r}, which "
                                     f"{why}; expected 'user', or the origin GET /label/next gave the item")
            res = c.execute(feedback.insert().values(prediction_id=prediction_id, label=label, created_at=time.time(),
                                                     client=client, kind=kind, value=value, origin=origin))
            if origin != "user":  # done: the lease ends now (the row stays, to check later labels' origin)
                c.execute(label_handouts.update().where(label_handouts.c.prediction_id == prediction_id)
                          .values(expires_at=time.time()))
            return int(res.inserted_primary_key[0])

    # -- the labelling queue ---------------------------------------------------------------
    def label_candidates(self, limit: int) -> list[dict[str, Any]]:
        """Predictions worth handing to a labeller: no label-bearing feedback (``label`` or
        ``thumbs``) yet and not leased now; the newest ``limit``. Rows: ``id``, ``model_version``,
        ``label`` (predicted), ``scores`` (JSON), ``ood_score``, ``created_at``."""
        now = time.time()
        labelled = sa.exists().where(feedback.c.prediction_id == predictions.c.id,
                                     feedback.c.kind.in_(("label", "thumbs")))
        leased = sa.exists().where(label_handouts.c.prediction_id == predictions.c.id,
                                   label_handouts.c.expires_at > now)
        q = (sa.select(predictions.c.id, predictions.c.model_version, predictions.c.label, predictions.c.scores,
                       predictions.c.ood_score, predictions.c.created_at)
             .where(~labelled, ~leased).order_by(predictions.c.created_at.desc(), predictions.c.id).limit(limit))
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def audit_candidates(self, model_version: str) -> list[str]:
        """Ids (sorted) of ``model_version``'s predictions the audit sample may still draw: no
        ``audit`` feedback yet and not leased now. Every served prediction of the version is one,
        whatever feedback it got otherwise: that is what makes the audit sample uniform."""
        now = time.time()
        audited = sa.exists().where(feedback.c.prediction_id == predictions.c.id, feedback.c.origin == "audit")
        leased = sa.exists().where(label_handouts.c.prediction_id == predictions.c.id,
                                   label_handouts.c.expires_at > now)
        q = (sa.select(predictions.c.id).where(predictions.c.model_version == model_version, ~audited, ~leased)
             .order_by(predictions.c.id))
        with self.long_read() as c:
            return [r[0] for r in c.execute(q)]

    def claim(self, items: list[tuple[str, str]], holder: str | None, lease_s: float) -> list[str]:
        """Lease ``(prediction_id, origin)`` items to ``holder`` for ``lease_s`` seconds; returns
        the ids this call got, in order. An item another labeller holds (a lease not yet expired,
        taken by any process on this store) is skipped: each row is won by one transaction only."""
        if not items:
            return []
        now = time.time()
        got = []
        with self.engine.begin() as c:
            for pid, origin in items:
                values = {"origin": origin, "holder": holder, "handed_at": now, "expires_at": now + lease_s}
                # RETURNING says whether this statement wrote the row (rowcount is not reliable for
                # ON CONFLICT DO NOTHING on every driver)
                won = c.execute(self._insert_handout().values(prediction_id=pid, **values)
                                .returning(label_handouts.c.prediction_id)).first()
                if won is None:  # handed out before: take it only if that lease has ended
                    won = c.execute(label_handouts.update().where(label_handouts.c.prediction_id == pid,
                                                                  label_handouts.c.expires_at <= now)
                                    .values(**values).returning(label_handouts.c.prediction_id)).first()
                if won is not None:
                    got.append(pid)
        return got

    def _insert_handout(self) -> sa.Insert:
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(label_handouts).on_conflict_do_nothing(index_elements=["prediction_id"])

    def handouts(self) -> list[dict[str, Any]]:
        """Every handout row: ``prediction_id``, ``origin``, ``holder``, ``handed_at``, ``expires_at``."""
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(sa.select(label_handouts).order_by(label_handouts.c.handed_at))
                    .mappings()]

    def get_inputs(self, ids: list[str]) -> dict[str, np.ndarray | str]:
        """The stored inputs of these predictions, decoded (str for texts and table rows), by id."""
        if not ids:
            return {}
        q = sa.select(predictions.c.id, predictions.c.input_shape, predictions.c.input_dtype,
                      predictions.c.input_data).where(predictions.c.id.in_(ids))
        with self.long_read() as c:
            return {r[0]: _decode_input(r[1], r[2], r[3]) for r in c.execute(q)}

    # -- reads -----------------------------------------------------------------------------
    def get_prediction(self, prediction_id: str) -> dict[str, Any]:
        row = None
        if "\x00" not in prediction_id:  # no stored id has NUL (PostgreSQL refuses it in a parameter)
            with self.engine.connect() as c:
                row = c.execute(sa.select(predictions).where(predictions.c.id == prediction_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"field 'prediction_id': received {prediction_id!r}; "
                                "expected the id of a stored prediction")
        return dict(row)

    def feedback_history(self, prediction_id: str) -> list[dict[str, Any]]:
        with self.engine.connect() as c:
            q = sa.select(feedback).where(feedback.c.prediction_id == prediction_id).order_by(feedback.c.id)
            return [dict(r) for r in c.execute(q).mappings()]

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as c:
            n_pred = c.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one()
            n_fb = c.execute(sa.select(sa.func.count()).select_from(feedback)).scalar_one()
            n_lab = c.execute(sa.select(sa.func.count(sa.distinct(feedback.c.prediction_id)))).scalar_one()
        return {"predictions": int(n_pred), "feedback": int(n_fb), "labelled_predictions": int(n_lab)}

    def clients(self) -> list[dict[str, Any]]:
        """Feedback count per client fingerprint (None: no key recorded)."""
        with self.engine.connect() as c:
            q = sa.select(feedback.c.client, sa.func.count()).group_by(feedback.c.client)
            return [{"client": r[0], "feedback": int(r[1])} for r in c.execute(q)]

    def labelled(self, class_names: list[str] | None = None, exclude_clients: Iterable[str] = (),
                 with_input: bool = False, since: float | None = None, model_version: str | None = None,
                 thumbs_down_disagrees: bool = False, origins: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """One row per prediction that has label-bearing feedback: its effective label.

        The latest ``label`` or ``thumbs`` row of trusted clients counts. Thumbs up confirms the
        predicted label; thumbs down names the other class only when there are two classes
        (``class_names`` given), otherwise it carries no label and the prediction is skipped (with
        ``thumbs_down_disagrees``, kept with a label no model predicts: a disagreement, for live
        accuracy).
        With ``origins``, only feedback of those origins counts (``["audit"]``: the audit sample).
        Rows: id, label, predicted, model_version, created_at (of the prediction), feedback_at,
        client, origin, and with ``with_input`` the stored input.
        """
        excluded = [c for c in exclude_clients if c]
        fb = sa.select(feedback).where(feedback.c.kind.in_(("label", "thumbs")))
        if origins is not None:
            fb = fb.where(feedback.c.origin.in_(list(origins)))
        if excluded:
            fb = fb.where(sa.or_(feedback.c.client.is_(None), feedback.c.client.not_in(excluded)))
        fb = fb.subquery()
        latest = (sa.select(fb.c.prediction_id, sa.func.max(fb.c.id).label("fid"))
                  .group_by(fb.c.prediction_id).subquery())
        cols = [predictions.c.id, fb.c.label.label("fb_label"), fb.c.kind, fb.c.value, fb.c.client, fb.c.origin,
                fb.c.created_at.label("feedback_at"), predictions.c.label.label("predicted"),
                predictions.c.model_version, predictions.c.created_at]
        if with_input:
            cols += [predictions.c.input_shape, predictions.c.input_dtype, predictions.c.input_data]
        q = (sa.select(*cols).select_from(latest.join(fb, fb.c.id == latest.c.fid)
                                          .join(predictions, predictions.c.id == latest.c.prediction_id))
             .order_by(predictions.c.created_at, predictions.c.id))
        if since is not None:
            q = q.where(predictions.c.created_at >= since)
        if model_version is not None:
            q = q.where(predictions.c.model_version == model_version)
        out = []
        with self.long_read() as c:
            for r in c.execute(q).mappings():
                r = dict(r)
                if r["kind"] == "thumbs" and (r["value"] or 0) < 0:
                    others = [n for n in (class_names or []) if n != r["fb_label"]]
                    if len(others) == 1:
                        r["label"] = others[0]
                    elif thumbs_down_disagrees:
                        r["label"] = WRONG
                    else:
                        continue
                else:
                    r["label"] = r["fb_label"]
                out.append(r)
        return out

    def feedback_stats(self, exclude_clients: Iterable[str] = (), model_version: str | None = None,
                       since: float | None = None, class_names: list[str] | None = None,
                       confidence: float = 0.95) -> dict[str, Any]:
        """Live accuracy: how often the served prediction matched the feedback, with a Wilson interval
        (a thumbs down is a disagreement, however many classes there are)."""
        rows = self.labelled(class_names, exclude_clients, since=since, model_version=model_version,
                             thumbs_down_disagrees=True)
        n = len(rows)
        agree = sum(1 for r in rows if r["label"] == r["predicted"])
        low, high = wilson_interval(agree, n, confidence)
        return {"labelled": n, "agreed": agree, "live_accuracy": (agree / n) if n else None, "low": low,
                "high": high, "confidence": confidence}

    def labelled_inputs(self, class_names: list[str] | None = None, exclude_clients: Iterable[str] = (),
                        exclude_ids: Iterable[str] = ()) -> tuple[list[np.ndarray | str], list[str], list[str]]:
        """Stored inputs (arrays as stored, or str for texts) with their effective feedback label,
        and their prediction ids."""
        skip = set(exclude_ids)
        xs, labels, ids = [], [], []
        for r in self.labelled(class_names, exclude_clients, with_input=True):
            if r["id"] in skip:
                continue
            xs.append(_decode_input(r["input_shape"], r["input_dtype"], r["input_data"]))
            labels.append(r["label"])
            ids.append(r["id"])
        return xs, labels, ids

    def labelled_examples(self, shape: tuple[int, ...], class_names: list[str] | None = None,
                          exclude_clients: Iterable[str] = (), exclude_ids: Iterable[str] = ()
                          ) -> tuple[np.ndarray, list[str], list[str]]:
        """Array inputs of one shape with their effective feedback label, for training or evaluation.

        Returns (x (N, *shape) float32, labels, prediction ids). Rows stored with another input
        shape (from a model with a different format) are skipped.
        """
        xs, labels, ids = [], [], []
        for x, lab, pid in zip(*self.labelled_inputs(class_names, exclude_clients, exclude_ids), strict=True):
            if isinstance(x, np.ndarray) and x.shape == tuple(shape):
                xs.append(x)
                labels.append(lab)
                ids.append(pid)
        x = np.stack(xs).astype(np.float32) if xs else np.zeros((0, *shape), np.float32)
        return x, labels, ids

    def recent_raw(self, limit: int = 500, since: float | None = None) -> tuple[list[np.ndarray | str], list[str]]:
        """The latest served inputs (as stored; str for texts), newest first, and the labels predicted."""
        q = sa.select(predictions.c.input_shape, predictions.c.input_dtype, predictions.c.input_data,
                      predictions.c.label).order_by(predictions.c.created_at.desc()).limit(limit)
        if since is not None:
            q = q.where(predictions.c.created_at >= since)
        with self.long_read() as c:
            rows = list(c.execute(q))
        return [_decode_input(r[0], r[1], r[2]) for r in rows], [r[3] for r in rows]

    def recent_inputs(self, shape: tuple[int, ...], limit: int = 500, since: float | None = None
                      ) -> tuple[np.ndarray, list[str]]:
        """The latest served array inputs (N, *shape) float32 and the labels predicted for them."""
        xs, labels = [], []
        for x, lab in zip(*self.recent_raw(limit, since), strict=True):
            if isinstance(x, np.ndarray) and x.shape == tuple(shape):
                xs.append(x)
                labels.append(lab)
        return (np.stack(xs).astype(np.float32) if xs else np.zeros((0, *shape), np.float32)), labels

    def predictions_for(self, model_version: str) -> int:
        with self.engine.connect() as c:
            return int(c.execute(sa.select(sa.func.count()).select_from(predictions)
                                 .where(predictions.c.model_version == model_version)).scalar_one())

    def shadow_rows(self, model_version: str) -> list[dict[str, Any]]:
        """Shadow answers of ``model_version`` joined to what the champion answered."""
        q = (sa.select(shadow_predictions.c.prediction_id, shadow_predictions.c.label.label("shadow_label"),
                       predictions.c.label.label("served_label"), predictions.c.model_version.label("served_by"))
             .join(predictions, predictions.c.id == shadow_predictions.c.prediction_id)
             .where(shadow_predictions.c.model_version == model_version))
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def feedback_events(self, exclude_clients: Iterable[str] = ()) -> list[dict[str, Any]]:
        """Every feedback row (oldest first, repeats included) with its prediction's stored input
        and scores: ``id``, ``prediction_id``, ``label``, ``kind``, ``value``, ``client``,
        ``created_at``, ``input`` (decoded), ``scores`` (the served answer's JSON). Feedback from
        ``exclude_clients`` is left out. Training data: no statement timeout."""
        untrusted = [c for c in exclude_clients if c]
        q = (sa.select(feedback.c.id, feedback.c.prediction_id, feedback.c.label, feedback.c.kind, feedback.c.value,
                       feedback.c.client, feedback.c.created_at, predictions.c.input_shape, predictions.c.input_dtype,
                       predictions.c.input_data, predictions.c.scores)
             .join(predictions, predictions.c.id == feedback.c.prediction_id).order_by(feedback.c.id))
        if untrusted:
            q = q.where(sa.or_(feedback.c.client.is_(None), feedback.c.client.not_in(untrusted)))
        with self.long_read() as c:
            rows = [dict(r) for r in c.execute(q).mappings()]
        for r in rows:
            r["input"] = _decode_input(r.pop("input_shape"), r.pop("input_dtype"), r.pop("input_data"))
        return rows

    def traffic(self, model_version: str, since: float) -> dict[str, int]:
        """``served``: predictions of ``model_version``; ``with_feedback``: how many of them got
        feedback; ``feedback``: feedback rows in all; ``feedback_since``: those after ``since``."""
        with self.engine.connect() as c:
            served = c.execute(sa.select(sa.func.count()).select_from(predictions)
                               .where(predictions.c.model_version == model_version)).scalar_one()
            answered = c.execute(sa.select(sa.func.count(sa.distinct(feedback.c.prediction_id)))
                                 .select_from(feedback.join(predictions, predictions.c.id == feedback.c.prediction_id))
                                 .where(predictions.c.model_version == model_version)).scalar_one()
            total = c.execute(sa.select(sa.func.count()).select_from(feedback)).scalar_one()
            new = c.execute(sa.select(sa.func.count()).select_from(feedback)
                            .where(feedback.c.created_at > since)).scalar_one()
        return {"served": int(served), "with_feedback": int(answered), "feedback": int(total),
                "feedback_since": int(new)}

    # Kept for callers of the first schema's API.
    def _latest_feedback_rows(self, with_input: bool) -> list[dict[str, Any]]:
        return self.labelled(with_input=with_input)


def _decode_input(shape: str, dtype: str, data: bytes) -> np.ndarray | str:
    if dtype == TEXT_DTYPE:
        return bytes(data).decode("utf-8")
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(json.loads(shape))


def open_store(url: str) -> FeedbackStore:
    if not (url.startswith("sqlite") or url.startswith("postgresql") or url.startswith("postgres://")):
        raise StoreError(f"feedback store URL {url!r}: unsupported; expected sqlite:///PATH or "
                         "postgresql://USER@HOST:PORT/DB")
    return FeedbackStore(url)
