"""The HTTP API over a project: predict with the champion, take feedback, list models.

Routes stay thin: they parse and validate the request, then call the loop's registry and the
feedback store. The champion is re-read when the registry's aliases change, so a promotion or a
rollback takes effect without restarting the server.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from .. import __version__
from ..data.image import ImageFormat, decode_image
from ..errors import InputError, ModelloopError
from ..loop import Loop
from ..registry import LoadedModel
from .schemas import FeedbackIn, FeedbackOut, PredictResponse

__all__ = ["create_app", "parse_pixels"]

log = logging.getLogger(__name__)


def parse_pixels(value: Any, fmt: ImageFormat, field: str = "pixels") -> np.ndarray:
    """JSON pixels -> float32 (C, H, W). Accepts a flat list of C*H*W numbers, [H][W] (gray) or [C][H][W].

    Raises InputError naming the field, what was received and what was expected.
    """
    expected = (f"{fmt.size} numbers from 0 to 255 (flat), or nested as "
                + (f"[{fmt.height}][{fmt.width}]" if fmt.channels == 1 else
                   f"[{fmt.channels}][{fmt.height}][{fmt.width}]"))
    if not isinstance(value, list):
        raise InputError(f"field {field!r}: received {type(value).__name__}; expected a JSON array of {expected}")
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise InputError(f"field {field!r}: received a ragged or non-numeric array; expected {expected}") from None
    if arr.size == fmt.size and arr.ndim == 1:
        arr = arr.reshape(fmt.channels, fmt.height, fmt.width)
    elif arr.shape == (fmt.height, fmt.width) and fmt.channels == 1:
        arr = arr[None]
    elif arr.shape != (fmt.channels, fmt.height, fmt.width):
        raise InputError(f"field {field!r}: received an array of shape {list(arr.shape)}; expected {expected}")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
        bad = arr[~np.isfinite(arr) | (arr < 0) | (arr > 255)][0]
        raise InputError(f"field {field!r}: received a value of {bad!r}; expected pixel values from 0 to 255")
    return arr


class ModelHolder:
    """The champion, reloaded when the registry's aliases change (checked on each request)."""

    def __init__(self, loop: Loop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._mtime = -1
        self._model: LoadedModel | None = None

    def get(self) -> LoadedModel:
        mtime = self._loop.registry.state_mtime()
        if mtime != self._mtime:
            with self._lock:
                if mtime != self._mtime:
                    version = self._loop.registry.champion()
                    if version is not None and (self._model is None or self._model.version != version):
                        self._model = self._loop.registry.load(version)
                        log.info("serving model %s", version)
                    self._mtime = mtime
        if self._model is None:
            raise ModelloopError("no champion model to serve yet; run 'modelloop run DIR' first")
        return self._model


def create_app(project_dir: str | Path) -> FastAPI:
    """The FastAPI app for a project folder."""
    loop = Loop(project_dir)
    holder = ModelHolder(loop)
    app = FastAPI(title="modelloop", version=__version__,
                  description=f"Serving project {loop.spec.name!r} ({loop.spec.task}).")
    app.state.loop = loop
    app.state.holder = holder

    @app.exception_handler(ModelloopError)
    async def _modelloop_error(_: Request, exc: ModelloopError) -> JSONResponse:
        status = 503 if type(exc) is ModelloopError else exc.http_status
        return JSONResponse(status_code=status, content={"detail": str(exc)})

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "model_version": loop.registry.champion(), "project": loop.spec.name,
                **loop.store.counts()}

    @app.get("/models")
    def models() -> dict[str, Any]:
        return {"champion": loop.registry.champion(), "versions": loop.models()}

    @app.post("/predict", response_model=PredictResponse,
              openapi_extra={"requestBody": {"content": {
                  "application/json": {"schema": {"oneOf": [
                      {"type": "object", "properties": {"pixels": {"type": "array"}}, "required": ["pixels"]},
                      {"type": "array"}]}},
                  "multipart/form-data": {"schema": {"type": "object", "properties": {
                      "file": {"type": "string", "format": "binary"}}, "required": ["file"]}}},
                  "required": True}})
    async def predict(request: Request) -> PredictResponse:
        """Classify one image: JSON pixels (``{"pixels": [...]}`` or a bare array, values 0-255) or
        an uploaded image file (multipart field ``file``)."""
        model = holder.get()
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            try:
                body = json.loads(await request.body())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise InputError(f"request body: not valid JSON ({e}); expected {{\"pixels\": [...]}}") from None
            if isinstance(body, dict):
                if "pixels" not in body:
                    raise InputError(f"request body: received fields {sorted(body)}; expected a field 'pixels'")
                body = body["pixels"]
            x = parse_pixels(body, model.fmt)
        elif ctype == "multipart/form-data":
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise InputError(f"form field 'file': missing; received fields {sorted(form.keys())}; "
                                 "expected an image file in field 'file'")
            x = decode_image(await upload.read(), model.fmt, upload.filename or "file").astype(np.float32)
        else:
            return JSONResponse(status_code=415, content={
                "detail": f"content type {ctype or '(none)'!r}: unsupported; expected application/json "
                          "or multipart/form-data"})
        t = time.perf_counter()
        probs = model.predict_proba(torch.from_numpy(x)[None])[0].tolist()
        latency = (time.perf_counter() - t) * 1000
        scores = dict(zip(model.class_names, probs, strict=True))
        label = model.class_names[int(np.argmax(probs))]
        pid = loop.store.log_prediction(model_version=model.version, x=x, label=label, scores=scores,
                                        latency_ms=latency)
        return PredictResponse(prediction_id=pid, label=label, scores=scores, model_version=model.version,
                               latency_ms=latency)

    @app.post("/feedback", response_model=FeedbackOut, status_code=201)
    def feedback(body: FeedbackIn) -> FeedbackOut:
        """Give the correct label for a prediction. Unknown ``prediction_id``: 404; unknown label: 422."""
        pred = loop.store.get_prediction(body.prediction_id)
        classes = loop.registry.manifest(pred["model_version"])["class_names"]
        label = str(body.label)
        if label not in classes:
            raise InputError(f"field 'label': received {body.label!r}; expected one of {', '.join(classes)}")
        fid = loop.store.add_feedback(body.prediction_id, label, client=None)
        return FeedbackOut(feedback_id=fid, prediction_id=body.prediction_id, label=label)

    return app
