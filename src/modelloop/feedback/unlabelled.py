"""Served inputs nobody gave feedback on: the unlabelled data a semi-supervised retrain learns from.

A prediction counts as unlabelled only when no feedback row of any kind or client exists for it
(an input with feedback is labelled data, or evidence, and is never counted twice). An input that
any untrusted client (``feedback.untrusted_clients``) gave feedback on is left out wherever it
was served: the store does not record which client asked for a prediction, so the inputs those
clients were seen with are what can be recognised as theirs.
"""

from __future__ import annotations

import numpy as np
import sqlalchemy as sa

from .store import FeedbackStore, _decode_input, feedback, predictions

__all__ = ["unlabelled_inputs"]


def unlabelled_inputs(store: FeedbackStore, limit: int = 20_000) -> tuple[list[np.ndarray | str], list[str]]:
    """The most recent stored inputs without feedback, one per distinct input (its latest
    prediction), newest first -> (inputs as stored: arrays, or str for texts; prediction ids).

    Left out: every prediction with feedback, trusted or not; every prediction whose input (by
    its SHA-256) also appears in a prediction that has feedback (it would count twice, and an
    untrusted client's input stays out however often it is sent).
    """
    with_feedback = sa.select(feedback.c.prediction_id)
    seen_hashes = (sa.select(predictions.c.input_hash)
                   .join(feedback, feedback.c.prediction_id == predictions.c.id))
    q = (sa.select(predictions.c.id, predictions.c.input_hash, predictions.c.input_shape, predictions.c.input_dtype,
                   predictions.c.input_data)
         .where(predictions.c.id.not_in(with_feedback))
         .where(predictions.c.input_hash.not_in(seen_hashes))
         .order_by(predictions.c.created_at.desc(), predictions.c.id))
    items, ids, hashes = [], [], set()
    with store.long_read() as c:
        for r in c.execute(q):
            if r[1] in hashes:  # the same input served again: once
                continue
            hashes.add(r[1])
            items.append(_decode_input(r[2], r[3], r[4]))
            ids.append(r[0])
            if len(ids) >= limit:
                break
    return items, ids
