"""Recommendations over HTTP: ``GET /recommend``, ``GET /similar``, and feedback on recommendations.

:func:`attach` is called by :func:`modelloop.serve.app.create_app` for every project. For a
recommendation project it returns a :class:`RecService` whose holder replaces the
classification model holder (same ``get()`` / ``loaded`` contract, hot-swapped when the
registry's aliases change); the routes are mounted for every project, and on a project of
another task they answer 409 naming the task.

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
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from ..errors import InputError, ModelloopError, NotFoundError
from ..feedback import prediction_row
from ..tasks.recommendation import check_k as _check_k
from ..tasks.recommendation import load_version, rec_spec

__all__ = ["attach", "RecService", "rec_holder", "router"]

log = logging.getLogger(__name__)


def rec_holder(loop, on_load=None):
    """The champion recommender, reloaded when the registry's aliases change (a ``ModelHolder``
    with the recommender loader)."""
    from ..serve.app import ModelHolder

    return ModelHolder(loop, on_load=on_load, load=lambda version: load_version(loop.registry, version))


class RecService:
    """What the recommendation routes and the feedback hook share."""

    def __init__(self, loop, metrics, keys, writer_box: dict[str, Any]) -> None:
        self.loop = loop
        self.keys = keys
        self.metrics = metrics
        self.writer_box = writer_box
        self.holder = rec_holder(loop, on_load=lambda m: metrics.serving(m.version, m.backend))
        self.max_k = rec_spec(loop.spec).max_k
        self._catalogues: dict[str, tuple[set[str], list[str]]] = {}

    # -- requests --------------------------------------------------------------------------
    def recommend(self, user: str | None, k: Any, exclude_seen: Any, response: Response | None = None
                  ) -> dict[str, Any]:
        t0 = time.perf_counter()
        if user is None or not str(user).strip():
            raise InputError("query parameter 'user': missing; expected a user id, e.g. /recommend?user=42&k=10")
        user = str(user)
        k = _check_k(k, self.max_k)
        flag = str(exclude_seen).lower()
        if flag not in ("true", "false", "1", "0", "yes", "no"):
            raise InputError(f"query parameter 'exclude_seen': received {exclude_seen!r}; expected true or false")
        excl = flag in ("true", "1", "yes")
        m = self.holder.get()
        model = m.model
        scores = model.score_matrix([user], exclude_seen=excl)[0]
        import math

        import torch

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
        logged = self.writer_box["w"].commit_blocking([row])  # on a worker thread: wait for the commit
        if response is not None:
            response.headers["X-Modelloop-Logged"] = logged
        self.metrics.predictions.labels(m.version).inc()
        return out

    def similar(self, item: str | None, k: Any) -> dict[str, Any]:
        if item is None or not str(item).strip():
            raise InputError("query parameter 'item': missing; expected an item id, e.g. /similar?item=50&k=10")
        k = _check_k(k, self.max_k)
        m = self.holder.get()
        if str(item) not in m.model.item_index:
            raise NotFoundError(f"query parameter 'item': received {item!r}, not one of the {len(m.model.items)} "
                                f"items model {m.version} knows; expected a known item id (e.g. "
                                f"{', '.join(repr(i) for i in m.model.items[:3])})")
        sims = m.model.similar_items(str(item), k)
        return {"item": str(item), "title": m.title(str(item)), "model_version": m.version, "k": k,
                "items": [{"item": i, "title": m.title(i)} for i in sims]}

    def _catalogue(self, version: str) -> tuple[set[str], list[str]]:
        """The items the version that served a prediction knows (its training items and item texts)."""
        if version not in self._catalogues:
            current = self.holder.loaded
            try:
                m = current if current is not None and current.version == version else load_version(
                    self.loop.registry, version)
            except ModelloopError:
                m = self.holder.get()
            self._catalogues[version] = (set(m.model.items) | set(m.item_text), list(m.model.items[:3]))
        return self._catalogues[version]

    def refuse_predict(self) -> None:
        from ..tasks.recommendation import PREDICT_HINT

        raise InputError(PREDICT_HINT)

    def feedback(self, body, request: Request):
        """POST /feedback for a recommendation: ``label`` = the item clicked or rated."""
        from ..serve.schemas import FeedbackOut
        from ..serve.security import key_from_request

        self.keys.require(request, "client")
        self.writer_box["w"].flush()  # spooled predictions are in the store before we look (503 while it is down)
        pred = self.loop.store.get_prediction(body.prediction_id)
        if body.label is None:
            raise InputError("field 'label': missing; expected the id of the item the user clicked or rated")
        item = str(body.label)
        known, examples = self._catalogue(pred["model_version"])
        if item not in known:
            raise InputError(f"field 'label': received {body.label!r}; expected an item id of the catalogue "
                             f"({len(known)} items, e.g. {', '.join(repr(i) for i in examples)})")
        fid = self.loop.store.add_feedback(body.prediction_id, item,
                                           client=self.keys.fingerprint(key_from_request(request)),
                                           kind=body.kind, value=body.value)
        self.metrics.feedback.inc()
        return FeedbackOut(feedback_id=fid, prediction_id=body.prediction_id, kind=body.kind, label=item,
                           value=body.value)


def router(loop, service: RecService | None, open_predict: bool = True) -> APIRouter:
    """The /recommend and /similar routes; on a project of another task they answer 409."""
    r = APIRouter()

    def _wrong_task(path: str) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": (
            f"this project serves {loop.spec.task}; {path} is for recommendation projects; "
            "expected POST /predict")})

    @r.get("/recommend")
    def recommend(request: Request, response: Response, user: str | None = None, k: str = "10",
                  exclude_seen: str = "true"):
        """Top-k items for a user (a user without history gets the most popular items, ``fallback``)."""
        if service is None:
            return _wrong_task("/recommend")
        if not open_predict:
            service.keys.require(request, "client")
        return service.recommend(user, k, exclude_seen, response)

    @r.get("/similar")
    def similar(request: Request, item: str | None = None, k: str = "10"):
        """The k items most similar to ``item`` (cosine of the model's item vectors)."""
        if service is None:
            return _wrong_task("/similar")
        if not open_predict:
            service.keys.require(request, "client")
        return service.similar(item, k)

    return r


def attach(loop, metrics, keys, writer_box: dict[str, Any]) -> RecService | None:
    """The recommendation service for a recommendation project, else None."""
    if loop.spec.task != "recommendation":
        return None
    return RecService(loop, metrics, keys, writer_box)
