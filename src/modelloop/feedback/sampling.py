"""How feedback is split and recognised: pure functions of prediction ids and labels."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

__all__ = ["is_holdout", "feedback_fingerprint", "trained_fingerprint"]


def is_holdout(prediction_id: str, fraction: float) -> bool:
    """Whether a prediction's feedback is held out (for the gate): a pure function of its id, so
    an example never moves between training and hold-out as more feedback arrives."""
    return int(hashlib.sha1(prediction_id.encode()).hexdigest()[:8], 16) / 0x100000000 < fraction


def feedback_fingerprint(rows: Iterable[tuple[Any, Any]]) -> str:
    """Which feedback a version learned from: a hash of its (prediction id, label) pairs, in any order."""
    h = hashlib.sha256()
    for pid, label in sorted((str(p), str(v)) for p, v in rows):
        h.update(f"{pid}\t{label}\n".encode())
    return h.hexdigest()[:16]


def trained_fingerprint(base: str, prediction_ids: Iterable[str]) -> str:
    """The fingerprint of what a retrained version learned from: the dataset snapshot ``base``
    plus the predictions whose feedback it trained on, in the order given."""
    h = hashlib.sha256(base.encode())
    for pid in prediction_ids:
        h.update(pid.encode())
    return h.hexdigest()[:16]
