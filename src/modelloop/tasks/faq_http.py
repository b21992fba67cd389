"""Answers over HTTP: ``POST /answer``, ``GET /gaps``, and feedback on answers.

The FAQ task hands these to the server (:class:`modelloop.tasks.faq.FaqAnswering`: ``routes()``
returns :func:`router`, ``check_feedback()`` calls :func:`check_entry`); a server of another task
has no such routes. They work on the server's context (:class:`modelloop.tasks.serving.ServingContext`).

- ``POST /answer {"question": "...", "k": 3}`` -> ``{prediction_id, model_version, abstained,
  message, answers: [{id, question, answer, score}], latency_ms}``. ``abstained`` is true when
  the best score is below the version's threshold: ``message`` then says a person takes over
  (the answers are still listed, for the agent). Each answer is logged as a prediction: its input
  is the request, its label the top entry's id (``__none__`` when it abstained), its scores the
  listed entries'. An empty or over-long question, or a bad ``k``, is 422 naming the field.
- ``GET /gaps?limit=10`` -> the questions the model abstained on or that got thumbs down (or
  were marked as answered by no entry), grouped by meaning: which entries the FAQ is missing.
- ``POST /feedback`` on an answer: ``label`` is the right entry's id (``__none__``: no entry
  answers it); thumbs up/down without a label judge what was served.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool

from ..data.faq import NO_ANSWER, question_of
from ..data.text import normalize_text
from ..errors import InputError, ModelloopError
from ..feedback import prediction_row
from ..registry.artifact import PREPROCESSING
from ..spec import FaqSpec
from .serving import json_safe

__all__ = ["answer", "check_entry", "router", "gaps", "answer_schema", "HANDOVER"]

HANDOVER = "I don't know the answer to that; I'm handing you to a person."

_ENTRIES = "faq.entries"
_GAPS = "faq.gaps"
#: the largest POST /answer body: a question of faq.max_question_chars and k fit many times over
MAX_BODY_BYTES = 64 * 1024
#: gaps are grouped from at most this many recent questions
GAP_QUESTIONS = 500


def _limits(ctx) -> FaqSpec:
    return ctx.spec.faq or FaqSpec()


def check_question(body: Any, limits: FaqSpec) -> tuple[str, int]:
    """A request body -> (the normalized question, k). Raises InputError naming the field."""
    if not isinstance(body, dict):
        raise InputError(f"request body: received {type(body).__name__}; expected a JSON object such as "
                         '{"question": "How do I reset my password?", "k": 3}')
    unknown = sorted(set(body) - {"question", "k"})
    if unknown:
        raise InputError(f"request body: unknown field(s) {[str(u)[:40] for u in unknown[:5]]}; expected 'question' "
                         "and optionally 'k'")
    q = body.get("question")
    if q is None:
        raise InputError("field 'question': missing; expected the customer's question as text")
    if not isinstance(q, str):
        raise InputError(f"field 'question': received {type(q).__name__} {json_safe(q)!r}; expected a string")
    if len(q) > limits.max_question_chars:
        raise InputError(f"field 'question': received a text of {len(q)} characters; expected at most "
                         f"{limits.max_question_chars} (faq.max_question_chars)")
    text = normalize_text(q)
    if not text:
        raise InputError("field 'question': received an empty or whitespace-only text; expected a question")
    k = body.get("k", 3)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= limits.max_k:
        raise InputError(f"field 'k': received {json_safe(k)!r}; expected a whole number from 1 to {limits.max_k}")
    return text, k


def _parse_and_answer(ctx, raw: bytes, response: Response) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise InputError('request body: not valid JSON; expected {"question": "...", "k": 3}') from None
    return answer(ctx, body, response)


def answer(ctx, body: Any, response: Response | None = None) -> dict[str, Any]:
    """Answer one question and log it as a prediction (call from a worker thread)."""
    t0 = time.perf_counter()
    question, k = check_question(body, _limits(ctx))
    m = ctx.holder.get()
    res = m.retriever.answer([question], k)[0]
    pid = uuid.uuid4().hex
    latency_ms = (time.perf_counter() - t0) * 1000
    answers = res["answers"]
    label = NO_ANSWER if res["abstained"] or not answers else answers[0]["id"]
    request = {"question": question, "k": k, "abstained": res["abstained"],
               "top": answers[0]["id"] if answers else None}
    row = prediction_row(pid, m.version, json.dumps(request), label, {a["id"]: a["score"] for a in answers},
                         latency_ms)
    logged = ctx.writer.commit_blocking([row])
    if response is not None:
        response.headers["X-Modelloop-Logged"] = logged
    ctx.served(m.version)
    shadow = getattr(ctx, "shadow", None)
    if shadow is not None and shadow.active():  # a shadow version answers the same question, silently
        shadow.submit([pid], [question])
    return {"prediction_id": pid, "model_version": m.version, "abstained": res["abstained"],
            "message": HANDOVER if res["abstained"] else None, "answers": answers, "latency_ms": latency_ms}


def _entries(ctx, version: str, load) -> tuple[set[str], list[str]]:
    """The entry ids of ``version`` (read from its artifact's ``preprocessing.json``, kept per
    server and version), and a few for messages."""
    cache = ctx.cache.setdefault(_ENTRIES, {})
    if version not in cache:
        current = ctx.holder.loaded
        if current is not None and current.version == version:
            ids = list(current.retriever.ids)
        else:
            try:
                ids = json.loads((ctx.registry.path(version) / PREPROCESSING).read_text())["ids"]
            except (OSError, ValueError, KeyError, ModelloopError):
                ids = list(ctx.holder.get().retriever.ids)  # a version gone from the registry: the champion's
        cache[version] = (set(ids), ids[:3])
    return cache[version]


def check_entry(ctx, version: str, label: Any, predicted: str, load) -> str:
    """The label the store keeps for feedback on an answer of ``version`` that served ``predicted``.

    Raises:
        InputError: ``label`` is not an entry id of that version nor ``__none__`` (naming field 'label').
    """
    if label is None:
        return predicted  # thumbs: on what was served (an entry, or the hand-over)
    entry = str(label)
    if entry == NO_ANSWER:
        return entry
    known, examples = _entries(ctx, version, load)
    if entry not in known:
        raise InputError(f"field 'label': received {json_safe(label)!r}; expected the id of an FAQ entry ({len(known)} "
                         f"entries, e.g. {', '.join(repr(i) for i in examples)}) or {NO_ANSWER!r} for a question no "
                         "entry answers")
    return entry


def gaps(store, untrusted: list[str], champ, limit: int = 10, min_size: int = 1,
         cache: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The questions the champion handed over, that got thumbs down, or that were marked as
    answered by no entry (the latest :data:`GAP_QUESTIONS`), grouped by meaning (the champion's
    MiniLM embeddings, or the pretrained MiniLM's for a lexical champion; agglomerative clustering
    at cosine distance 0.5), largest group first: which entries the FAQ is missing. Kept per
    server (``cache``: the server's) until the champion or the store's counts change; feedback
    of the ``untrusted`` clients does not count."""
    counts = store.counts()
    cache = {} if cache is None else cache
    key = (champ.version, tuple(sorted(counts.items())), limit, min_size)
    if cache.get(_GAPS, (None,))[0] == key:
        return cache[_GAPS][1]
    items, served = store.recent_raw(limit=2000)
    qs = [q for q, s in zip([question_of(it) for it in items], served, strict=True) if q is not None and s == NO_ANSWER]
    for e in reversed(store.feedback_events(untrusted)):
        q = question_of(e.get("input"))
        if q is not None and ((e.get("kind") == "thumbs" and (e.get("value") or 0) < 0)
                              or str(e.get("label")) == NO_ANSWER):
            qs.append(q)
    qs = list(dict.fromkeys(qs))[:GAP_QUESTIONS]
    if not qs:
        return []
    emb = _gap_encoder(champ).embed(qs).numpy()
    if len(qs) == 1:
        labels = np.zeros(1, dtype=int)
    else:
        from sklearn.cluster import AgglomerativeClustering

        labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                         distance_threshold=0.5).fit_predict(emb)
    groups = []
    for g in np.unique(labels):
        rows = np.flatnonzero(labels == g)
        centre = emb[rows].mean(axis=0)
        order = rows[np.argsort(-(emb[rows] @ centre))]
        groups.append({"size": int(len(rows)), "example": qs[order[0]], "questions": [qs[i] for i in order[:5]]})
    groups.sort(key=lambda g: (-g["size"], g["example"]))
    out = [g for g in groups if g["size"] >= min_size][:limit]
    cache[_GAPS] = (key, out)
    return out


_PRETRAINED: list[Any] = []


def _gap_encoder(champ):
    """The champion's retriever when it embeds, else one pretrained MiniLM kept for the process."""
    if champ.retriever.dense:
        return champ.retriever
    if not _PRETRAINED:
        from ..models.retrieval import Retriever

        _PRETRAINED.append(Retriever({"kind": "dense"}, [], [], []))
    return _PRETRAINED[0]


def answer_schema(max_chars: int, max_k: int) -> dict[str, Any]:
    """JSON Schema of a ``POST /answer`` body."""
    return {"type": "object", "required": ["question"], "additionalProperties": False,
            "properties": {"question": {"type": "string", "minLength": 1, "maxLength": max_chars,
                                        "description": "The customer's question."},
                           "k": {"type": "integer", "minimum": 1, "maximum": max_k, "default": 3,
                                 "description": "How many entries to return (the best first)."}}}


def router(ctx) -> APIRouter:
    """The /answer and /gaps routes over the server's context ``ctx``."""
    r = APIRouter()
    limits = _limits(ctx)

    @r.post("/answer", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": answer_schema(limits.max_question_chars, limits.max_k)}}}})
    async def post_answer(request: Request, response: Response):
        """Answer a customer's question from the FAQ: the best entries, or a hand-over to a person."""
        ctx.check_predict_key(request)
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise InputError(f"request body: received {len(raw)} bytes; expected at most {MAX_BODY_BYTES} (a question "
                             "and k)")
        return await run_in_threadpool(_parse_and_answer, ctx, raw, response)

    @r.get("/gaps")
    def get_gaps(request: Request, limit: str = "10"):
        """Questions the model could not answer, grouped by meaning (largest group first)."""
        ctx.check_predict_key(request)
        try:
            n = int(limit)
        except ValueError:
            raise InputError(f"query parameter 'limit': received {limit!r}; expected a whole number from 1 to 100") \
                from None
        if not 1 <= n <= 100:
            raise InputError(f"query parameter 'limit': received {n}; expected a whole number from 1 to 100")
        m = ctx.holder.get()
        return {"model_version": m.version,
                "groups": gaps(ctx.store, ctx.spec.feedback.untrusted_clients, m, limit=n, cache=ctx.cache)}

    return r
