"""What the routes of one app share: the project's loop, the served model, keys, metrics, the
prediction writer, the micro-batcher and the retraining jobs, in one :class:`ServeContext`.

Every route module (:mod:`.routes`) builds its ``APIRouter`` from the context, and so does a task
that adds routes of its own (``Task.routes(ctx)``): the context is also what
:class:`modelloop.tasks.serving.ServingContext` describes to tasks, which never import the server.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from fastapi import Request

from ..errors import ModelloopError
from ..feedback import PredictionWriter
from ..feedback.ood import load_calibration, outputs_and_embeddings
from ..loop import Loop
from ..spec import ServingSpec
from ..tasks.base import Task
from .batching import MicroBatcher
from .jobs import RetrainJobs
from .metrics import ServerMetrics
from .security import KeyRing, key_from_request, load_keys
from .shadow import ShadowScorer

__all__ = ["ModelHolder", "RetrainJobs", "ServeContext"]

log = logging.getLogger(__name__)


class ModelHolder:
    """The champion, reloaded when the registry's aliases change.

    ``load(version)`` builds what is served (default: the registry's ``LoadedModel`` with the
    chosen backend); the server passes the task's ``serve_model``.
    """

    def __init__(self, loop: Loop, backend: str | None = None, threads: int = 1, on_load=None, load=None) -> None:
        self._loop = loop
        self._load = load or (lambda version: loop.registry.load(version, backend=backend, threads=threads))
        self._lock = threading.Lock()
        self._stamp: tuple[int, ...] | None = None
        self._model: Any = None
        self._on_load = on_load

    def get(self) -> Any:
        """The current champion, loading a new one if the aliases moved (call off the event loop).

        Every server process has its own holder and polls the registry's state file on each
        batch, so a promotion by any process (the CLI, another worker) reaches every worker on
        its next batch."""
        stamp = self._loop.registry.state_stamp()
        if stamp != self._stamp:
            with self._lock:
                if stamp != self._stamp:
                    version = self._loop.registry.champion()
                    if version is not None and (self._model is None or self._model.version != version):
                        model = self._load(version)
                        self._model = model
                        log.info("serving model %s (%s)", version, getattr(model, "backend", "torch"))
                        if self._on_load:
                            self._on_load(model)
                    self._stamp = stamp
        if self._model is None:
            raise ModelloopError("no champion model to serve yet; run 'modelloop run DIR' first")
        return self._model

    @property
    def loaded(self) -> Any:
        return self._model


@dataclass(eq=False)
class ServeContext:
    """One app's shared state. Build it with :meth:`for_project`; :meth:`open` and :meth:`close`
    run in the app's lifespan (the writer and the worker-thread limiter exist only in between)."""

    loop: Loop
    config: ServingSpec
    holder: ModelHolder
    metrics: ServerMetrics
    keys: KeyRing
    batcher: MicroBatcher
    jobs: RetrainJobs
    shadow: ShadowScorer
    #: ``ood_calibration(model)``: the OOD calibration of a served model (None: it has none)
    ood_calibration: Any = None
    #: per-app state a task's hooks keep, by a key the task chooses
    cache: dict[str, Any] = field(default_factory=dict)
    _writer: PredictionWriter | None = None
    _limiter: anyio.CapacityLimiter | None = None

    @classmethod
    def for_project(cls, project_dir: str | Path, *, max_batch_size: int | None = None,
                    max_wait_ms: float | None = None, backend: str | None = None) -> ServeContext:
        """The context of a project folder. Keyword arguments override the spec's ``serving``."""
        loop = Loop(project_dir)
        cfg = loop.spec.serving
        metrics = ServerMetrics()
        holder = ModelHolder(loop, on_load=lambda m: metrics.serving(m.version, m.backend),
                             load=lambda version: loop.task.serve_model(loop.registry, version, backend=backend,
                                                                        threads=cfg.threads))

        oods: dict[str, Any] = {}

        def calibration(model: Any) -> Any:
            """The OOD calibration stored with the served version (None: registered without one)."""
            if model.version not in oods:
                oods.clear()
                cal = None
                if loop.task.labelling:
                    try:
                        cal = load_calibration(loop.registry.path(model.version), model.manifest)
                    except Exception as e:  # an unreadable calibration costs the flag, never the answer
                        log.warning("model %s: OOD calibration unreadable (%s); answering without OOD scores",
                                    model.version, e)
                if cal is None:
                    log.info("model %s has no OOD calibration: its answers carry no OOD flag", model.version)
                oods[model.version] = cal
            return oods[model.version]

        def forward(x: np.ndarray) -> tuple[Any, Any]:
            model = holder.get()
            cal = calibration(model)
            if cal is None:
                return model.run(x), model
            probs, emb = outputs_and_embeddings(model, x)
            return (probs, cal.score(emb)), model

        batcher = MicroBatcher(forward, max_batch_size or cfg.max_batch_size,
                               cfg.max_wait_ms if max_wait_ms is None else max_wait_ms, on_batch=metrics.on_batch)
        return cls(loop=loop, config=cfg, holder=holder, metrics=metrics,
                   keys=load_keys(cfg.keys, loop.paths.state / "keys.json"), batcher=batcher,
                   jobs=RetrainJobs(loop.paths.root), shadow=ShadowScorer(loop, cfg.threads),
                   ood_calibration=calibration)

    # -- the project ---------------------------------------------------------------------------
    @property
    def task(self) -> Task:
        return self.loop.task

    @property
    def spec(self):
        return self.loop.spec

    @property
    def registry(self):
        return self.loop.registry

    @property
    def store(self):
        return self.loop.store

    # -- lifespan ------------------------------------------------------------------------------
    def open(self) -> None:
        """Start what lives as long as the server: worker threads, the writer, the batcher; load
        the champion if there is one."""
        self._limiter = anyio.CapacityLimiter(self.config.decode_threads)
        self._writer = PredictionWriter(self.store, spool_dir=self.loop.paths.state)  # spool: store outages
        self.batcher.start()
        try:
            self.holder.get()
        except ModelloopError as e:
            log.warning("%s", e)

    async def close(self) -> None:
        await self.batcher.stop()
        self.writer.close()
        self.shadow.close()

    @property
    def writer(self) -> PredictionWriter:
        """The prediction writer (acknowledged once rows are committed, or spooled in an outage)."""
        if self._writer is None:
            raise RuntimeError("the prediction writer starts with the app's lifespan")
        return self._writer

    async def off_loop(self, fn, *args):
        """``fn(*args)`` in one of ``serving.decode_threads`` worker threads (others wait their turn)."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    # -- what routes ask -----------------------------------------------------------------------
    def model_for_parsing(self) -> Any:
        """The served model (loaded if none is yet), to read a request the way it takes it."""
        return self.holder.loaded or self.holder.get()

    def check_predict_key(self, request: Request) -> None:
        """Refuses a caller without a client key unless ``serving.open_predict``."""
        if not self.config.open_predict:
            self.keys.require(request, "client")

    def client_of(self, request: Request) -> str | None:
        """The fingerprint of the caller's key, as the feedback store records it."""
        return self.keys.fingerprint(key_from_request(request))

    def served(self, version: str, n: int = 1) -> None:
        """Counts ``n`` predictions served by ``version``."""
        self.metrics.predictions.labels(version).inc(n)
