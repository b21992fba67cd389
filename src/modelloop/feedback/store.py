"""Predictions and feedback, stored durably through SQLAlchemy.

The embedded default is a SQLite file in the project (WAL mode, so the server can write while
``retrain`` reads). Every prediction keeps the model input it was made on, so feedback on it
becomes a training example. Feedback never overwrites: each submission is a new row and the
latest one for a prediction counts.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import event

from ..errors import NotFoundError, StoreError

__all__ = ["FeedbackStore", "open_store", "SCHEMA_VERSION"]

SCHEMA_VERSION = 1

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
)
feedback = sa.Table(
    "feedback", _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("prediction_id", sa.String(32), sa.ForeignKey("predictions.id"), nullable=False, index=True),
    sa.Column("label", sa.String(256), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("client", sa.String(128), nullable=True),
)


class FeedbackStore:
    """Prediction log and feedback store over one database URL (``sqlite:///PATH``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = sa.create_engine(url, future=True)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as e:
            raise StoreError(f"feedback store URL {url!r}: {e}; expected sqlite:///PATH") from None
        if self.engine.dialect.name == "sqlite":
            @event.listens_for(self.engine, "connect")
            def _pragmas(dbapi_conn, _record):  # noqa: ANN001
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=10000")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        self._migrate()

    def _migrate(self) -> None:
        _meta.create_all(self.engine)
        with self.engine.begin() as c:
            row = c.execute(sa.select(_info.c.value).where(_info.c.key == "schema_version")).first()
            if row is None:
                c.execute(_info.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            elif int(row[0]) > SCHEMA_VERSION:
                raise StoreError(f"feedback store {self.url!r}: schema version {row[0]} is newer than this "
                                 f"modelloop understands (expected at most {SCHEMA_VERSION}); upgrade modelloop")

    def close(self) -> None:
        self.engine.dispose()

    # -- writes ----------------------------------------------------------------------------
    def log_prediction(self, *, model_version: str, x: np.ndarray, label: str, scores: dict[str, float],
                       latency_ms: float) -> str:
        """Store one prediction with its input (C, H, W). Returns the new prediction id."""
        from .writer import prediction_row

        pid = uuid.uuid4().hex
        self.log_many([prediction_row(pid, model_version, x, label, scores, latency_ms)])
        return pid

    def log_many(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as c:
            c.execute(predictions.insert(), rows)

    def add_feedback(self, prediction_id: str, label: str, client: str | None = None) -> int:
        """Record the correct label for a prediction. Raises NotFoundError for an unknown id."""
        with self.engine.begin() as c:
            found = c.execute(sa.select(predictions.c.id).where(predictions.c.id == prediction_id)).first()
            if found is None:
                raise NotFoundError(f"field 'prediction_id': received {prediction_id!r}; "
                                    "expected the id of a stored prediction")
            res = c.execute(feedback.insert().values(prediction_id=prediction_id, label=label,
                                                     created_at=time.time(), client=client))
            return int(res.inserted_primary_key[0])

    # -- reads -----------------------------------------------------------------------------
    def get_prediction(self, prediction_id: str) -> dict[str, Any]:
        with self.engine.connect() as c:
            row = c.execute(sa.select(predictions).where(predictions.c.id == prediction_id)).mappings().first()
        if row is None:
            raise NotFoundError(f"field 'prediction_id': received {prediction_id!r}; "
                                "expected the id of a stored prediction")
        return dict(row)

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as c:
            n_pred = c.execute(sa.select(sa.func.count()).select_from(predictions)).scalar_one()
            n_fb = c.execute(sa.select(sa.func.count()).select_from(feedback)).scalar_one()
            n_lab = c.execute(sa.select(sa.func.count(sa.distinct(feedback.c.prediction_id)))).scalar_one()
        return {"predictions": int(n_pred), "feedback": int(n_fb), "labelled_predictions": int(n_lab)}

    def feedback_stats(self) -> dict[str, Any]:
        """Live accuracy: how often the served prediction matched the latest feedback label."""
        rows = self._latest_feedback_rows(with_input=False)
        n = len(rows)
        agree = sum(1 for r in rows if r["label"] == r["predicted"])
        return {"labelled": n, "agreed": agree, "live_accuracy": (agree / n) if n else None}

    def _latest_feedback_rows(self, with_input: bool) -> list[dict[str, Any]]:
        latest = (sa.select(feedback.c.prediction_id, sa.func.max(feedback.c.id).label("fid"))
                  .group_by(feedback.c.prediction_id).subquery())
        cols = [predictions.c.id, feedback.c.label, predictions.c.label.label("predicted"),
                predictions.c.model_version]
        if with_input:
            cols += [predictions.c.input_shape, predictions.c.input_dtype, predictions.c.input_data]
        q = (sa.select(*cols).select_from(latest.join(feedback, feedback.c.id == latest.c.fid)
                                          .join(predictions, predictions.c.id == latest.c.prediction_id))
             .order_by(predictions.c.created_at))
        with self.engine.connect() as c:
            return [dict(r) for r in c.execute(q).mappings()]

    def labelled_examples(self, shape: tuple[int, ...]) -> tuple[np.ndarray, list[str], list[str]]:
        """Inputs with their latest feedback label, for retraining.

        Returns (x (N, *shape) float32, labels, prediction ids). Rows stored with another input
        shape (from a model with a different format) are skipped.
        """
        xs, labels, ids = [], [], []
        for r in self._latest_feedback_rows(with_input=True):
            if tuple(json.loads(r["input_shape"])) != tuple(shape):
                continue
            xs.append(np.frombuffer(r["input_data"], dtype=np.dtype(r["input_dtype"])).reshape(shape))
            labels.append(r["label"])
            ids.append(r["id"])
        x = np.stack(xs).astype(np.float32) if xs else np.zeros((0, *shape), np.float32)
        return x, labels, ids


def open_store(url: str) -> FeedbackStore:
    if not url.startswith("sqlite"):
        raise StoreError(f"feedback store URL {url!r}: unsupported; expected sqlite:///PATH")
    return FeedbackStore(url)
