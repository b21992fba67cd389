"""``POST /predict``: the task reads the request, the micro-batcher runs the champion, the
prediction writer commits what was answered.

Uploads are decoded, and large JSON bodies parsed, in a few worker threads
(``serving.decode_threads``) after their size was checked from the header, so the event loop
keeps answering (``/health`` included) while a request is refused or decoded. Every limit a
request meets is a 422 naming the file or field; an oversized body is a 413 (the middleware's).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import orjson
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ...data.image import NPY_TYPE
from ...errors import InputError
from ...feedback import prediction_row
from ..deps import ServeContext
from .responses import ERRORS, LIMITED, NO_MODEL

__all__ = ["INLINE_JSON_BYTES", "document", "router"]

#: JSON bodies up to this size are parsed on the event loop (cheaper than a thread hop); larger
#: ones, and every body of a task whose parsing does real work (``Task.heavy_json``), in a worker thread
INLINE_JSON_BYTES = 64 * 1024


def _predict_body(json_schema: dict[str, Any], uploads: bool, binary_types: tuple[str, ...] = ()) -> dict[str, Any]:
    """The OpenAPI description of /predict: the task's JSON body, file uploads for images and
    audio, and the binary bodies the task takes (a .npy array, an image file)."""
    content: dict[str, Any] = {"application/json": {"schema": json_schema}}
    if uploads:
        content["multipart/form-data"] = {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}}}}
    for ctype in binary_types:
        content[ctype] = {"schema": {"type": "string", "format": "binary"}}
    return {"requestBody": {"required": True, "content": content},
            "responses": {"422": {"description": "An input the model cannot take; the message names the field "
                                                 "or file, what was received and what was expected.",
                                  "content": ERRORS},
                          "415": {"description": "Neither JSON nor a file upload.", "content": ERRORS},
                          **{str(k): v for k, v in {**NO_MODEL, **LIMITED}.items()}}}


def _short(name: str | None) -> str:
    """An uploaded file's name for messages, cut short."""
    name = name or "file"
    return name if len(name) <= 100 else name[:100] + "..."


def document(ctx: ServeContext, doc: dict[str, Any]) -> None:
    """Put /predict's JSON body, as the served model takes it (its pixel count, columns or sample
    limits), into the OpenAPI document ``doc``, so clients and fuzzers see the real contract."""
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    body["schema"] = ctx.task.request_schema(ctx.holder.loaded, ctx.config)


def router(ctx: ServeContext) -> APIRouter:
    r = APIRouter()
    task, cfg, batcher, shadow = ctx.task, ctx.config, ctx.batcher, ctx.shadow

    def _parse_json(raw: bytes, model) -> tuple[Any, bool]:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise InputError(f"request body: not valid JSON or not UTF-8 ({e}); expected {task.json_example} "
                             "(numbers are finite: NaN and Infinity are not JSON)") from None
        return task.parse_json(body, model, cfg)

    async def _inputs(request: Request, model) -> tuple[Any, bool]:
        """(the task's raw inputs, e.g. pixels (n, C, H, W) float32, a list of texts, waveforms
        (n, 1, T) float32; whether the caller sent a list)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            raw = await request.body()
            if len(raw) > INLINE_JSON_BYTES or task.heavy_json:
                return await ctx.off_loop(_parse_json, raw, model)
            return _parse_json(raw, model)
        if ctype in task.binary_types:
            raw = await request.body()
            if not raw:
                raise InputError(f"request body: empty; expected {ctype} content")
            if ctype == NPY_TYPE and len(raw) <= INLINE_JSON_BYTES:  # an array header and a copy: cheaper inline
                return task.parse_binary(ctype, raw, model, cfg)
            return await ctx.off_loop(task.parse_binary, ctype, raw, model, cfg)
        if ctype == "multipart/form-data" and task.uploads is None:
            raise InputError(f"content type {ctype!r}: file uploads are for image and audio models; this "
                             f"{ctx.spec.task} model expects application/json like {task.json_example}")
        if ctype == "multipart/form-data":
            try:
                form = await request.form()
            except StarletteHTTPException as e:  # Starlette's refusal of malformed multipart data (400)
                raise InputError(f"request body: not valid multipart form data ({str(e.detail)[:200]}); expected "
                                 "files in form field 'file'") from None
            uploads = [u for u in form.getlist("file") if not isinstance(u, str)]
            if not uploads:
                fields = sorted(str(k)[:40] for k in list(form.keys())[:10])
                raise InputError(f"form field 'file': missing; received fields {fields}; "
                                 f"expected one or more {task.uploads} in field 'file'")
            if len(uploads) > cfg.max_files:
                raise InputError(f"form field 'file': received {len(uploads)} files; expected at most "
                                 f"{cfg.max_files} (serving.max_files)")
            files = [(_short(u.filename), await u.read()) for u in uploads]
            return await ctx.off_loop(task.decode_uploads, files, model, cfg), len(files) > 1
        shown = ctype if len(ctype) <= 100 else ctype[:100] + "..."
        accepted = ", ".join(["application/json", *(["multipart/form-data"] if task.uploads else []),
                              *task.binary_types])
        raise HTTPException(status_code=415, detail=f"content type {shown or '(none)'!r}: unsupported; expected "
                                                    f"one of {accepted}")

    @r.post("/predict", openapi_extra=_predict_body({}, task.uploads is not None, task.binary_types))
    async def predict(request: Request) -> Response:
        """Classify images: ``{"pixels": [...]}`` / a bare array (one image, values 0-255),
        ``{"instances": [[...], ...]}`` (a list), or multipart field ``file`` (one or more files).
        Text models take ``{"text": ...}``; audio models ``{"samples": [...], "sample_rate": 16000}``
        or uploaded WAV/FLAC/OGG clips in field ``file`` (an unusable clip: 422 naming the file).
        Image models also take the pixels as a NumPy array (``application/x-npy``: ``np.save`` of
        one image or a batch; the fastest to parse) or one image file as the whole body
        (``image/png``, ``image/jpeg``, ``image/bmp``)."""
        task.check_predict()
        t0 = time.perf_counter()
        batcher.arriving()
        queued = False
        try:
            ctx.check_predict_key(request)
            x, as_list = await _inputs(request, ctx.model_for_parsing())
            batcher.left()
            queued = True
            res = await batcher.submit(x)
        finally:
            if not queued:
                batcher.left()
        model = res.model
        latency_ms = (time.perf_counter() - t0) * 1000
        cal = ctx.ood_calibration(model) if res.ood is not None else None
        out, rows = [], []
        for i, (xi, p) in enumerate(zip(x, res.probs, strict=True)):
            pid = uuid.uuid4().hex
            label, scores, shown = task.read_output(model, p)
            ood_score = float(res.ood[i]) if cal is not None else None
            # ood: true outside the training distribution; null for a version registered without calibration
            ood = {"ood": None if cal is None else bool(ood_score > cal.threshold), "ood_score": ood_score}
            out.append({"prediction_id": pid, **shown, **ood, "model_version": model.version,
                        "latency_ms": latency_ms})
            rows.append(prediction_row(pid, model.version, xi, label, scores, latency_ms, ood_score))
        flagged = sum(1 for o in out if o["ood"])
        if flagged:
            ctx.metrics.ood.labels(model.version).inc(flagged)
        logged = await ctx.writer.commit(rows)  # answered once the rows are committed (or spooled)
        if shadow.active():
            shadow.submit([o["prediction_id"] for o in out], x)
        ctx.served(model.version, len(out))
        payload = ({"predictions": out, "model_version": model.version, "batch_size": res.batch_size}
                   if as_list else out[0])
        return Response(orjson.dumps(payload), media_type="application/json",
                        headers={"X-Modelloop-Logged": logged})

    return r
