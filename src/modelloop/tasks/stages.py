"""What the loop hands a task's stages, and what the stages hand back.

The loop (``modelloop.loop``) says *how* a run and a retrain go for every task: the run's state
and resume markers, the writer lock, registration with its report, promotion, the records a
crash leaves to finish. A task's stages (see :class:`~.base.Task`) say *what* differs: its data,
its candidates and how they fit, how a model is evaluated, what feedback teaches it and what the
gate compares. These small objects are the interface between the two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Context", "Fitted", "FeedbackSet", "NewVersion", "best_on_validation"]


@dataclass
class Context:
    """The project as a task's stages see it.

    ``say(msg)`` reports progress; ``store()`` opens the feedback store on first use;
    ``backend`` runs fits and searches (see ``modelloop.backends``); ``watch_state()`` is what the
    retraining policy recorded (``last_retrain_at``).
    """

    spec: Any
    paths: Any
    registry: Any
    store: Callable[[], Any]
    say: Callable[[str], None]
    progress: Callable[[str], None] | None
    backend: Any = None
    watch_state: Callable[[], dict[str, Any]] = dict


@dataclass
class Fitted:
    """A trained model and what the artifact needs besides its weights.

    ``config`` becomes the manifest's ``model`` section; ``result`` is the training record
    (``describe``-able, or a dict); ``extra`` holds the task's own pieces (featurizer, item
    texts, selection changes).
    """

    model: Any
    config: dict[str, Any]
    result: Any
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FeedbackSet:
    """Trusted feedback as training data, split by prediction id (a hash, so nothing moves).

    ``fingerprint`` identifies the rows and labels (nothing new when it equals the latest
    version's); ``rows`` counts the usable ones; ``train_ids`` / ``val_ids`` / ``hold_ids`` are
    prediction ids learned from, validated on, and held out for the gate; ``data`` is the task's.
    ``unlabelled_ids``: served predictions without feedback whose inputs the challenger also
    learns from (pseudo-labels; semi-supervised retraining), never validated or gated on.
    """

    fingerprint: str
    rows: int
    train_ids: list[str]
    val_ids: list[str]
    hold_ids: list[str]
    data: dict[str, Any] = field(default_factory=dict)
    unlabelled_ids: list[str] = field(default_factory=list)


@dataclass
class NewVersion:
    """A version ready to register: manifest, weights, preprocessing, extra files, and the
    report writer ``report(path, version)``; ``result`` is what ``run``/``retrain`` return."""

    manifest: dict[str, Any]
    model: Any
    preprocessing: dict[str, Any]
    report: Callable[[Path, str], Any]
    result: dict[str, Any]
    extra_files: dict[str, Path] = field(default_factory=dict)


def best_on_validation(board: list[dict[str, Any]], metric: str, say: Callable[[str], None]) -> dict[str, Any]:
    """The leaderboard row with the best validation ``metric`` (higher is better; the first of
    equals), every row's ``decision`` filled in (rows already decided, e.g. skipped, keep theirs)."""
    best = max((r for r in board if r.get("val")), key=lambda r: r["val"][metric])
    for r in board:
        if r is best:
            r["decision"] = f"chosen: best validation {metric}"
        elif "decision" not in r:
            r["decision"] = f"validation {metric} {r['val'][metric]:.4f} < {best['val'][metric]:.4f}"
    say(f"[selection] chose {best['candidate']} (val {metric} {best['val'][metric]:.4f})")
    return best
