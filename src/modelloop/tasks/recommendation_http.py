"""Recommendations over HTTP: ``GET /recommend``, ``GET /similar``, and feedback on recommendations.

The recommendation task hands these to the server (:class:`modelloop.tasks.recommendation.Recommendation`:
``routes()`` returns :func:`router`, ``check_feedback()`` calls :func:`check_item`); a server of
another task has no such routes. Both work on the server's context (what
:class:`modelloop.tasks.serving.ServingContext` describes) and never import the server: the
served model is the task's ``serve_model()`` (a ``RecModel``), hot-swapped when the registry's
aliases change.

- ``GET /recommend?user=U&k=10&exclude_seen=true`` -> ``{prediction_id, model_version, user, k,
  items: [{item, score, title}], fallback, latency_ms}``; ``fallback`` is ``"popularity"`` for a
  user the model has no history for (not an error). Each answer is logged in the feedback store
  as a prediction: its input is the request (user, k, exclude_seen), its label the first item,
  its scores the served list in order (the *slate* the gate re-ranks). The answer is sent once
  that row is committed (or, during a store outage, spooled: header ``X-Modelloop-Logged``), like
  ``/predict``'s; 503 with ``Retry-After`` when it can be neither.
- ``GET /similar?item=I&k=10`` -> the k items nearest to I (404 naming an unknown item).
- ``POST /feedback`` on a recommendation: ``label`` is the item the user clicked or rated
  (``kind`` ``click``, ``label`` or ``rating`` with ``value``); an item outside the catalogue
  answers 422 naming the field and the value.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from typing import Any

import torch
from fastapi import APIRouter, Request, Response

from ..errors import InputError, ModelloopError, NotFoundError
from ..feedback import prediction_row
from ..spec import RecommendationSpec

__all__ = ["check_item", "check_k", "recommendations", "router", "similar_items"]

log = logging.getLogger(__name__)

#: where :func:`check_item` keeps, per server, the catalogue of each version it has seen
_CATALOGUES = "recommendation.catalogues"


def recommendations(ctx, user: str | None, k: Any, exclude_seen: Any, response: Response | None = None
              ) -> dict[str, Any]:
    """The top-k items for ``user``, logged as a prediction (call from a worker thread)."""
    t0 = time.perf_counter()
    if user is None or not str(user).strip():
        raise InputError("query parameter 'user': missing; expected a user id, e.g. /recommend?user=42&k=10")
    user = str(user)
    k = check_k(k, (ctx.spec.recommendation or RecommendationSpec()).max_k)
    flag = str(exclude_seen).lower()
    if flag not in ("true", "false", "1", "0", "yes", "no"):
        raise InputError(f"query parameter 'exclude_seen': received {exclude_seen!r}; expected true or false")
    excl = flag in ("true", "1", "yes")
    m = ctx.holder.get()
    model = m.model
    scores = model.score_matrix([user], exclude_seen=excl)[0]
    top = torch.topk(scores, min(k, scores.shape[0]))
    items = [(model.items[j], float(v)) for j, v in zip(top.indices.tolist(), top.values.tolist(), strict=True)
             if v > -math.inf]
    fallback = None if user in model.user_index else "popularity"
    pid = uuid.uuid4().hex
    latency_ms = (time.perf_counter() - t0) * 1000
    out = {"prediction_id": pid, "model_version": m.version, "user": user, "k": k, "exclude_seen": excl,
           "items": [{"item": i, "score": s, "title": m.title(i)} for i, s in items],
           "fallback": fallback, "latency_ms": latency_ms}
    request = {"user": user, "k": k, "exclude_seen": excl, "fallback": fallback}
    row = prediction_row(pid, m.version, request, items[0][0] if items else "", dict(items), latency_ms)
    logged = ctx.writer.commit_blocking([row])  # on a worker thread: wait for the commit
    if response is not None:
        response.headers["X-Modelloop-Logged"] = logged
    ctx.served(m.version)
    return out


def similar_items(ctx, item: str | None, k: Any) -> dict[str, Any]:
    """The k items nearest to ``item`` (NotFoundError naming an item the model does not know)."""
    if item is None or not str(item).strip():
        raise InputError("query parameter 'item': missing; expected an item id, e.g. /similar?item=50&k=10")
    k = check_k(k, (ctx.spec.recommendation or RecommendationSpec()).max_k)
    m = ctx.holder.get()
    if str(item) not in m.model.item_index:
        raise NotFoundError(f"query parameter 'item': received {item!r}, not one of the {len(m.model.items)} "
                            f"items model {m.version} knows; expected a known item id (e.g. "
                            f"{', '.join(repr(i) for i in m.model.items[:3])})")
    sims = m.model.similar_items(str(item), k)
    return {"item": str(item), "title": m.title(str(item)), "model_version": m.version, "k": k,
            "items": [{"item": i, "title": m.title(i)} for i in sims]}


def _catalogue(ctx, version: str, load) -> tuple[set[str], list[str]]:
    """The items the version that served a prediction knows (its training items and item texts),
    and a few of them for messages; kept per server and version."""
    catalogues = ctx.cache.setdefault(_CATALOGUES, {})
    if version not in catalogues:
        current = ctx.holder.loaded
        try:
            m = current if current is not None and current.version == version else load(version)
        except ModelloopError:
            m = ctx.holder.get()
        catalogues[version] = (set(m.model.items) | set(m.item_text), list(m.model.items[:3]))
    return catalogues[version]


def check_item(ctx, version: str, label: Any, load) -> str:
    """The item a feedback ``label`` names, checked against the catalogue of ``version``
    (``load(version)``: that version's recommender, when it is not the one being served).

    Raises:
        InputError: ``label`` missing, or not an item of that catalogue (naming field 'label').
    """
    if label is None:
        raise InputError("field 'label': missing; expected the id of the item the user clicked or rated")
    item = str(label)
    known, examples = _catalogue(ctx, version, load)
    if item not in known:
        raise InputError(f"field 'label': received {label!r}; expected an item id of the catalogue "
                         f"({len(known)} items, e.g. {', '.join(repr(i) for i in examples)})")
    return item


def router(ctx) -> APIRouter:
    """The /recommend and /similar routes over the server's context ``ctx``."""
    r = APIRouter()

    @r.get("/recommend")
    def recommend(request: Request, response: Response, user: str | None = None, k: str = "10",
                  exclude_seen: str = "true"):
        """Top-k items for a user (a user without history gets the most popular items, ``fallback``)."""
        ctx.check_predict_key(request)
        return recommendations(ctx, user, k, exclude_seen, response)

    @r.get("/similar")
    def similar(request: Request, item: str | None = None, k: str = "10"):
        """The k items most similar to ``item`` (cosine of the model's item vectors)."""
        ctx.check_predict_key(request)
        return similar_items(ctx, item, k)

    return r


def check_k(k: Any, max_k: int, field_name: str = "k") -> int:
    try:
        value = int(str(k))
    except ValueError:
        raise InputError(f"query parameter {field_name!r}: received {k!r}; expected an integer from 1 to "
                         f"{max_k}") from None
    if not 1 <= value <= max_k:
        raise InputError(f"query parameter {field_name!r}: received {value}; expected an integer from 1 to {max_k}")
    return value
