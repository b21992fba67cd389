"""The HTTP API over a project: predict with the champion, take feedback, list models, admin.

Routes stay thin: they check the key, parse and validate the request, then hand over to the
micro-batcher (predict), the feedback store or the loop. The champion is re-read when the
registry's aliases change, so a promotion or rollback takes effect on the next batch without a
restart; every batch runs on one model, and each answer names the version that computed it.

Uploads are decoded, and large JSON bodies parsed, in a few worker threads
(``serving.decode_threads``) after their size was checked from the header, so the event loop
keeps answering (``/health`` included) while a request is refused or decoded. Every limit a
request meets is a 422 naming the file or field; an oversized body is a 413.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import orjson
from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..data.image import parse_pixels
from ..errors import InputError, ModelloopError
from ..feedback import PredictionWriter, prediction_row
from ..loop import Loop
from ..recommendation.serve import attach as attach_recommendation
from ..recommendation.serve import router as recommendation_router
from ..registry import LoadedModel
from .batching import MicroBatcher
from .metrics import ServerMetrics
from .middleware import GuardMiddleware
from .schemas import AdminPromoteIn, FeedbackIn, FeedbackOut, ShadowIn
from .security import KeyRing, key_from_request, load_keys
from .shadow import ShadowScorer

__all__ = ["create_app", "parse_pixels"]

log = logging.getLogger(__name__)
UI_DIR = Path(__file__).parent / "ui"
#: JSON bodies up to this size are parsed on the event loop (cheaper than a thread hop); larger
#: ones, and every audio body (resampling, voice detection), in a worker thread
INLINE_JSON_BYTES = 64 * 1024

_ERRORS = {"application/json": {"schema": {"type": "object", "properties": {"detail": {}}}}}
#: documented answers besides 200 (FastAPI documents 422 for routes with a declared body)
_STORE_DOWN = {503: {"description": "The feedback store cannot be reached right now; nothing was stored, send "
                                    "again after Retry-After seconds.", "content": _ERRORS}}
_NO_MODEL = {503: {"description": "No champion model to serve yet (run 'modelloop run DIR'), or the feedback "
                                  "store cannot be reached right now (Retry-After).", "content": _ERRORS}}
_LIMITED = {413: {"description": "The request body is larger than serving.max_body_bytes.", "content": _ERRORS}}


def _predict_body(json_schema: dict[str, Any], uploads: bool) -> dict[str, Any]:
    """The OpenAPI description of /predict: the task's JSON body, and file uploads for images and audio."""
    content: dict[str, Any] = {"application/json": {"schema": json_schema}}
    if uploads:
        content["multipart/form-data"] = {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "array", "minItems": 1, "items": {"type": "string", "format": "binary"}}}}}
    return {"requestBody": {"required": True, "content": content},
            "responses": {"422": {"description": "An input the model cannot take; the message names the field "
                                                 "or file, what was received and what was expected.",
                                  "content": _ERRORS},
                          "415": {"description": "Neither JSON nor a file upload.", "content": _ERRORS},
                          **{str(k): v for k, v in {**_NO_MODEL, **_LIMITED}.items()}}}


def _json_safe(value: Any, depth: int = 0) -> Any:
    """A value echoed in an error, made safe for JSON and short: non-finite numbers as their
    names, long texts, big arrays and objects summarised."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else ("NaN" if math.isnan(value) else
                                                   "Infinity" if value > 0 else "-Infinity")
    if isinstance(value, int):
        return value if abs(value) < 10**15 else f"an integer of {len(str(abs(value)))} digits"
    if isinstance(value, str):
        return value if len(value) <= 200 else f"a text of {len(value)} characters"
    if isinstance(value, (list, tuple)):
        if len(value) > 10 or depth >= 3:
            return f"an array of {len(value)} items"
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, dict):
        if len(value) > 10 or depth >= 3:
            return f"an object of {len(value)} fields"
        return {str(k)[:100]: _json_safe(v, depth + 1) for k, v in value.items()}
    text = str(value)
    return text if len(text) <= 200 else text[:200] + "..."


def _short(name: str | None) -> str:
    """An uploaded file's name for messages, cut short."""
    name = name or "file"
    return name if len(name) <= 100 else name[:100] + "..."


class ModelHolder:
    """The champion, reloaded when the registry's aliases change.

    ``load(version)`` builds what is served (default: the registry's ``LoadedModel`` with the
    chosen backend); recommendation projects pass their own loader.
    """

    def __init__(self, loop: Loop, backend: str | None = None, threads: int = 1, on_load=None, load=None) -> None:
        self._loop = loop
        self._load = load or (lambda version: loop.registry.load(version, backend=backend, threads=threads))
        self._lock = threading.Lock()
        self._mtime = -1
        self._model: LoadedModel | None = None
        self._on_load = on_load

    def get(self) -> LoadedModel:
        """The current champion, loading a new one if the aliases moved (call off the event loop)."""
        mtime = self._loop.registry.state_mtime()
        if mtime != self._mtime:
            with self._lock:
                if mtime != self._mtime:
                    version = self._loop.registry.champion()
                    if version is not None and (self._model is None or self._model.version != version):
                        model = self._load(version)
                        self._model = model
                        log.info("serving model %s (%s)", version, getattr(model, "backend", "torch"))
                        if self._on_load:
                            self._on_load(model)
                    self._mtime = mtime
        if self._model is None:
            raise ModelloopError("no champion model to serve yet; run 'modelloop run DIR' first")
        return self._model

    @property
    def loaded(self) -> LoadedModel | None:
        return self._model


class RetrainJobs:
    """Retraining started over HTTP, one at a time, in a background thread."""

    def __init__(self, project_dir: Path) -> None:
        self.project_dir = project_dir
        self.jobs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def start(self, kind: str = "retrain") -> dict[str, Any]:
        with self._lock:
            if any(j["status"] == "running" for j in self.jobs.values()):
                raise HTTPException(status_code=409, detail="a retrain is already running")
            job = {"id": uuid.uuid4().hex[:12], "kind": kind, "status": "running", "started_at": time.time(),
                   "result": None, "error": None}
            self.jobs[job["id"]] = job
        threading.Thread(target=self._run, args=(job,), daemon=True, name="modelloop-retrain").start()
        return job

    def _run(self, job: dict[str, Any]) -> None:
        try:
            loop = Loop(self.project_dir)
            if job["kind"] == "watch":
                res = loop.watch_once()
                job["result"] = {k: res.get(k) for k in ("action", "version", "decision", "reasons", "champion")}
                job["result"]["triggers"] = res["triggers"]
            else:
                res = loop.retrain()
                job["result"] = {k: res[k] for k in ("version", "parent", "feedback_examples", "decision",
                                                     "champion_version")}
                job["result"]["reasons"] = res["evidence"]["reasons"]
            job["status"] = "skipped" if job["result"].get("decision") == "skipped" else "done"
        except Exception as e:  # reported to the caller through the job
            log.exception("retrain failed")
            job["status"], job["error"] = "failed", str(e)
        job["finished_at"] = time.time()


def create_app(project_dir: str | Path, *, max_batch_size: int | None = None, max_wait_ms: float | None = None,
               backend: str | None = None) -> FastAPI:
    """The FastAPI app for a project folder. Keyword arguments override the spec's ``serving``."""
    loop = Loop(project_dir)
    cfg = loop.spec.serving
    metrics = ServerMetrics()
    holder = ModelHolder(loop, backend, cfg.threads, on_load=lambda m: metrics.serving(m.version, m.backend))
    keys: KeyRing = load_keys(cfg.keys, loop.paths.state / "keys.json")
    writer_box: dict[str, PredictionWriter] = {}
    rec = attach_recommendation(loop, metrics, keys, writer_box)  # None unless task is recommendation
    if rec is not None:
        holder = rec.holder

    def forward(x: np.ndarray) -> tuple[np.ndarray, LoadedModel]:
        model = holder.get()
        return model.run(x), model

    batcher = MicroBatcher(forward, max_batch_size or cfg.max_batch_size,
                           cfg.max_wait_ms if max_wait_ms is None else max_wait_ms, on_batch=metrics.on_batch)
    jobs = RetrainJobs(loop.paths.root)
    shadow = ShadowScorer(loop, cfg.threads)
    decoders: dict[str, anyio.CapacityLimiter] = {}

    async def off_loop(fn, *args):
        """``fn(*args)`` in one of ``serving.decode_threads`` worker threads (others wait their turn)."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=decoders["limiter"])

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        decoders["limiter"] = anyio.CapacityLimiter(cfg.decode_threads)
        writer_box["w"] = PredictionWriter(loop.store, spool_dir=loop.paths.state)  # spool: store outages
        batcher.start()
        try:
            holder.get()
        except ModelloopError as e:
            log.warning("%s", e)
        # Everything loaded so far lives as long as the server: keep it out of the garbage
        # collector's full passes, which otherwise stall requests for milliseconds under load.
        gc.collect()
        gc.freeze()
        yield
        await batcher.stop()
        writer_box["w"].close()
        shadow.close()

    app = FastAPI(title="modelloop", version=__version__, lifespan=lifespan,
                  description=f"Serving project {loop.spec.name!r} ({loop.spec.task}). Keys: 'Authorization: "
                              "Bearer KEY' or 'X-API-Key: KEY'.")
    app.state.loop, app.state.holder, app.state.keys, app.state.metrics = loop, holder, keys, metrics
    app.state.batcher = batcher
    if cfg.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["authorization", "x-api-key", "content-type"])
    app.add_middleware(GuardMiddleware, metrics=metrics, max_body_bytes=cfg.max_body_bytes)

    @app.exception_handler(ModelloopError)
    async def _modelloop_error(_: Request, exc: ModelloopError) -> JSONResponse:
        status = 503 if type(exc) is ModelloopError else exc.http_status
        retry = getattr(exc, "retry_after_s", None)
        return JSONResponse(status_code=status, content={"detail": str(exc)},
                            headers={"Retry-After": str(retry)} if retry else None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            # FastAPI's answer to a declared JSON body that is not UTF-8: a bad input like any other
            return JSONResponse(status_code=422, content={"detail": "request body: not valid JSON or not UTF-8; "
                                                                    "expected a JSON object"})
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422, but never a 500: what the client sent is echoed only when JSON can carry
        it (NaN and Infinity by name) and when it is short."""
        errors = []
        for e in list(exc.errors())[:20]:
            item = {"type": e.get("type"), "loc": [_json_safe(p) for p in e.get("loc", ())],
                    "msg": str(e.get("msg", ""))[:500]}
            if "input" in e:
                item["input"] = _json_safe(e["input"])
            if e.get("ctx"):
                item["ctx"] = _json_safe(e["ctx"])
            errors.append(item)
        return JSONResponse(status_code=422, content={"detail": errors})

    def _model_for_parsing() -> LoadedModel:
        return holder.loaded or holder.get()

    # -- predictions -------------------------------------------------------------------------
    task = loop.task

    def _parse_json(raw: bytes, model: LoadedModel) -> tuple[Any, bool]:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise InputError(f"request body: not valid JSON or not UTF-8 ({e}); expected {task.json_example} "
                             "(numbers are finite: NaN and Infinity are not JSON)") from None
        return task.parse_json(body, model, cfg)

    async def _inputs(request: Request, model: LoadedModel) -> tuple[Any, bool]:
        """(the task's raw inputs, e.g. pixels (n, C, H, W) float32, a list of texts, waveforms
        (n, 1, T) float32; whether the caller sent a list)."""
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype == "application/json":
            raw = await request.body()
            if len(raw) > INLINE_JSON_BYTES or task.heavy_json:
                return await off_loop(_parse_json, raw, model)
            return _parse_json(raw, model)
        if ctype == "multipart/form-data" and task.uploads is None:
            raise InputError(f"content type {ctype!r}: file uploads are for image and audio models; this "
                             f"{loop.spec.task} model expects application/json like {task.json_example}")
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
            return await off_loop(task.decode_uploads, files, model, cfg), len(files) > 1
        shown = ctype if len(ctype) <= 100 else ctype[:100] + "..."
        raise HTTPException(status_code=415, detail=f"content type {shown or '(none)'!r}: unsupported; expected "
                                                    "application/json or multipart/form-data")

    @app.post("/predict", openapi_extra=_predict_body({}, task.uploads is not None))
    async def predict(request: Request) -> Response:
        """Classify images: ``{"pixels": [...]}`` / a bare array (one image, values 0-255),
        ``{"instances": [[...], ...]}`` (a list), or multipart field ``file`` (one or more files).
        Text models take ``{"text": ...}``; audio models ``{"samples": [...], "sample_rate": 16000}``
        or uploaded WAV/FLAC/OGG clips in field ``file`` (an unusable clip: 422 naming the file)."""
        if rec is not None:
            rec.refuse_predict()
        t0 = time.perf_counter()
        batcher.arriving()
        queued = False
        try:
            if not cfg.open_predict:
                keys.require(request, "client")
            x, as_list = await _inputs(request, _model_for_parsing())
            batcher.left()
            queued = True
            res = await batcher.submit(x)
        finally:
            if not queued:
                batcher.left()
        model = res.model
        names = model.class_names
        latency_ms = (time.perf_counter() - t0) * 1000
        out, rows = [], []
        for xi, p in zip(x, res.probs, strict=True):
            pid = uuid.uuid4().hex
            if model.regression:  # one number: the label the store keeps is the value, 6 significant digits
                value = float(p[0])
                label, scores = f"{value:.6g}", {names[0]: value}
                out.append({"prediction_id": pid, "value": value, "label": label, "model_version": model.version,
                            "latency_ms": latency_ms})
            else:
                scores = {n: float(v) for n, v in zip(names, p, strict=True)}
                label = names[int(p.argmax())]
                out.append({"prediction_id": pid, "label": label, "scores": scores, "model_version": model.version,
                            "latency_ms": latency_ms})
            rows.append(prediction_row(pid, model.version, xi, label, scores, latency_ms))
        logged = await writer_box["w"].commit(rows)  # answered once the rows are committed (or spooled)
        if shadow.active():
            shadow.submit([o["prediction_id"] for o in out], x)
        metrics.predictions.labels(model.version).inc(len(out))
        payload = ({"predictions": out, "model_version": model.version, "batch_size": res.batch_size}
                   if as_list else out[0])
        return Response(orjson.dumps(payload), media_type="application/json",
                        headers={"X-Modelloop-Logged": logged})

    @app.post("/feedback", response_model=FeedbackOut, status_code=201,
              responses={404: {"description": "No such prediction.", "content": _ERRORS}, **_STORE_DOWN, **_LIMITED})
    def feedback(body: FeedbackIn, request: Request) -> FeedbackOut:
        """Give the correct label for a prediction (client key). Unknown ``prediction_id``: 404;
        a label the model does not know: 422."""
        if rec is not None:
            return rec.feedback(body, request)
        keys.require(request, "client")
        writer_box["w"].flush()  # spooled predictions are in the store before we look (503 while it is down)
        pred = loop.store.get_prediction(body.prediction_id)
        manifest = loop.registry.manifest(pred["model_version"])
        classes = manifest["class_names"]
        label = pred["label"] if body.label is None else str(body.label)
        if manifest["model"].get("target"):  # regression: the label is the true value
            try:
                number = float(label)
            except ValueError:
                number = float("nan")
            if isinstance(body.label, bool) or not math.isfinite(number):
                raise InputError(f"field 'label': received {_json_safe(body.label)!r}; expected the true value of "
                                 f"{classes[0]!r}, a finite number")
            label = f"{number:.6g}"
        elif label not in classes:
            raise InputError(f"field 'label': received {_json_safe(body.label)!r}; expected one of "
                             f"{', '.join(classes)}")
        fid = loop.store.add_feedback(body.prediction_id, label, client=keys.fingerprint(key_from_request(request)),
                                      kind=body.kind, value=body.value)
        metrics.feedback.inc()
        return FeedbackOut(feedback_id=fid, prediction_id=body.prediction_id, kind=body.kind, label=label,
                           value=body.value)

    # -- status ------------------------------------------------------------------------------
    @app.get("/health", responses={503: {"description": "The prediction writer has died; restart the server.",
                                         "content": _ERRORS}})
    def health() -> JSONResponse:
        """Liveness, the served version, the store's status (``ok`` | ``unavailable``), the predictions
        waiting in the outage spool, and the store's counts. 503 (``status: "failing"``) when the
        prediction writer has died: nothing more can be acknowledged, so the server should be restarted."""
        m = holder.loaded
        writer = writer_box["w"].status()
        dead = writer.get("writer") == "dead"
        return JSONResponse(status_code=503 if dead else 200, content={
            "status": "failing" if dead else "ok", "model_version": loop.registry.champion(),
            "loaded_version": m and m.version, "project": loop.spec.name, **writer})

    @app.get("/ready", responses={503: {"description": "No model loaded yet.", "content": _ERRORS}})
    def ready() -> JSONResponse:
        """200 once a model is loaded and can answer; 503 before."""
        try:
            m = holder.get()
        except ModelloopError as e:
            return JSONResponse(status_code=503, content={"ready": False, "detail": str(e)})
        return JSONResponse({"ready": True, "model_version": m.version, "backend": m.backend})

    @app.get("/models")
    def models() -> dict[str, Any]:
        """Versions with metrics, parent, dataset, serving backend; and the champion."""
        rows = loop.models()
        for r in rows:
            r["backend"] = (loop.registry.manifest(r["version"]).get("serving") or {}).get("backend", "torch")
        return {"champion": loop.registry.champion(), "versions": rows}

    @app.get("/info")
    def info() -> dict[str, Any]:
        """What a client needs to build inputs: project, classes and the input format."""
        m = _model_for_parsing()
        return {"project": loop.spec.name, "task": loop.spec.task, "class_names": m.class_names,
                **loop.task.describe_input(m), "model_version": m.version, "predict_open": cfg.open_predict}

    @app.get("/metrics")
    def prometheus() -> Response:
        """Prometheus text format. Drift gauges hold the last monitor run's figures."""
        m = holder.loaded
        if m is not None:
            metrics.set_live_accuracy(m.version, loop.store.feedback_stats(loop.spec.feedback.untrusted_clients,
                                                                           model_version=m.version,
                                                                           class_names=m.class_names))
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        """Live counters for the web UI."""
        m = holder.loaded
        served = "/recommend" if loop.spec.task == "recommendation" else "/predict"
        return {"requests": metrics.total(served), **metrics.recent_latency_ms(),
                **loop.store.feedback_stats(), "feedback": loop.store.counts()["feedback"],
                "model_version": m and m.version, "backend": m and m.backend,
                "uptime_s": time.time() - metrics.started, "predict_open": cfg.open_predict}

    # -- admin -------------------------------------------------------------------------------
    @app.post("/admin/promote")
    def admin_promote(body: AdminPromoteIn, request: Request) -> dict[str, Any]:
        keys.require(request, "admin")
        loop.registry.promote(body.version, reason="admin over HTTP")
        return {"champion": loop.registry.champion()}

    @app.post("/admin/rollback")
    def admin_rollback(request: Request) -> dict[str, Any]:
        keys.require(request, "admin")
        return {"champion": loop.registry.rollback()}

    @app.post("/admin/retrain", status_code=202)
    def admin_retrain(request: Request) -> dict[str, Any]:
        keys.require(request, "admin")
        return jobs.start()

    @app.post("/admin/watch", status_code=202)
    def admin_watch(request: Request) -> dict[str, Any]:
        """One policy check (retrain on triggers, auto-rollback), as a background job."""
        keys.require(request, "admin")
        return jobs.start("watch")

    @app.get("/admin/monitor")
    def admin_monitor(request: Request) -> dict[str, Any]:
        """Drift, prediction drift, live accuracy with its interval, feedback clients, shadow results."""
        keys.require(request, "admin")
        writer_box["w"].flush()
        res = loop.monitor()
        metrics.set_drift(res["drift"])
        return res

    @app.post("/admin/shadow")
    def admin_shadow(body: ShadowIn, request: Request) -> dict[str, Any]:
        keys.require(request, "admin")
        return loop.shadow(body.version)

    @app.get("/admin/lineage")
    def admin_lineage(request: Request, prediction: str | None = None, version: str | None = None) -> dict[str, Any]:
        keys.require(request, "admin")
        if (prediction is None) == (version is None):
            raise InputError("query: expected exactly one of 'prediction' or 'version'")
        writer_box["w"].flush()
        return loop.lineage(prediction_id=prediction, version=version)

    @app.get("/admin/jobs/{job_id}")
    def admin_job(job_id: str, request: Request) -> dict[str, Any]:
        keys.require(request, "admin")
        if job_id not in jobs.jobs:
            raise HTTPException(status_code=404, detail=f"job {job_id!r}: not found")
        return jobs.jobs[job_id]

    # -- web UI ------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(UI_DIR / "index.html")

    app.include_router(recommendation_router(loop, rec, cfg.open_predict))
    app.mount("/ui", StaticFiles(directory=UI_DIR), name="ui")

    build_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        """The OpenAPI document, with /predict's JSON body as the served model takes it (its
        pixel count, columns or sample limits), so clients and fuzzers see the real contract."""
        doc = build_openapi()
        model = None if rec is not None else holder.loaded
        body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        body["schema"] = loop.task.request_schema(model, cfg)
        return doc

    app.openapi = openapi
    return app
