"""``Project``: the whole loop from Python, one object per project folder.

    from modelloop import Project
    p = Project.init("digits", task="image-classification", data="builtin:seed-case")
    result = p.run()                 # data -> selection -> training -> evaluation -> gate -> registry
    p.predict(images)                # with the champion
    p.serve(port=8000)               # HTTP API (blocks)
    p.retrain()                      # challenger on training data + feedback, gated against the champion
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .errors import DataError, InputError, ModelloopError, SpecError
from .loop import Loop, Progress
from .spec import MAX_WORKERS, SPEC_FILE, Requirements, parse_spec, save_spec
from .tasks import check_spec, get_task, task_names

__all__ = ["Project"]


class Project:
    """A modelloop project folder (``modelloop.yaml`` + registry + feedback store)."""

    def __init__(self, path: str | Path, ray: str | None = None) -> None:
        self.loop = Loop(path, ray=ray)
        self.path = self.loop.paths.root

    @classmethod
    def init(cls, path: str | Path, task: str = "image-classification", data: str | None = None,
             name: str | None = None, overwrite: bool = False, **options: Any) -> Project:
        """Write ``path/modelloop.yaml`` for ``task`` on ``data`` and return the project.

        ``data`` defaults to the task's built-in example (``builtin:seed-case`` images,
        ``builtin:rotten-tomatoes`` texts, ...). ``options`` are fields of
        :class:`~modelloop.spec.Requirements` (metric, target, p95_latency_ms, max_model_size_mb,
        time_budget_s) and the task's own ``init`` options (``Task.init_options``: e.g.
        ``text_column`` / ``label_column`` of a text file, the columns of a recommendation file).

        Raises:
            SpecError: unknown task, option or invalid requirement, or a spec already exists.
            DataError: the data source does not exist or is not this task's data.
        """
        path = Path(path)
        try:
            the_task = get_task(task)
        except (ValueError, ModelloopError):
            raise SpecError(f"option 'task': received {task!r}; expected one of {', '.join(task_names())}") from None
        if (path / SPEC_FILE).exists() and not overwrite:
            raise SpecError(f"{path / SPEC_FILE}: already exists; expected a new project folder "
                            "(or pass overwrite/--force)")
        given = {k: v for k, v in options.items() if v is not None}
        requirement_fields = set(Requirements.model_fields)
        unknown = sorted(k for k in given if k not in requirement_fields and k not in the_task.init_options)
        if unknown:
            owners = [n for n in task_names() if n != task and set(unknown) <= set(get_task(n).init_options)]
            raise InputError(f"options {', '.join('--' + k.replace('_', '-') for k in unknown)}: not options of "
                             f"--task {task}" + (f" (they are for --task {' or --task '.join(owners)})" if owners
                                                 else "") + "; expected its options "
                             + (", ".join("--" + k.replace("_", "-") for k in the_task.init_options) or "(none)")
                             + " or the requirements")
        if data is None and the_task.default_data is None:
            raise DataError(f"option 'data': missing for {task}; expected {the_task.data_hint}")
        source = the_task.resolve_source(data or the_task.default_data)
        the_task.check_source(source, path.resolve())
        raw = {"name": name or path.resolve().name, "task": task, "data": {"source": source},
               "requirements": {k: v for k, v in given.items() if k in requirement_fields}}
        the_task.init_spec(raw, {k: v for k, v in given.items() if k in the_task.init_options})
        spec = parse_spec(raw, where=f"{path / SPEC_FILE}")
        check_spec(spec, where=path / SPEC_FILE)
        the_task.check_project(spec, path.resolve())
        path.mkdir(parents=True, exist_ok=True)
        save_spec(spec, path)
        return cls(path)

    # The loop's stages ----------------------------------------------------------------------
    def run(self, resume: bool = False, progress: Progress | None = None, wait: bool | float = False
            ) -> dict[str, Any]:
        """See :meth:`Loop.run`; ``wait`` for another writer of the project (True: until it is done)."""
        return self.loop.run(resume=resume, progress=progress, wait=wait)

    def retrain(self, progress: Progress | None = None, force: bool = False, wait: bool | float = False
                ) -> dict[str, Any]:
        """See :meth:`Loop.retrain`: skipped (``decision`` "skipped") with nothing new to learn, unless ``force``."""
        return self.loop.retrain(progress=progress, force=force, wait=wait)

    def models(self) -> list[dict[str, Any]]:
        return self.loop.models()

    def promote(self, version: str) -> str:
        return self.loop.promote(version)

    def rollback(self) -> str:
        return self.loop.rollback()

    def predict(self, inputs: Any) -> list[dict[str, Any]]:
        """Predict with the champion, without logging (the server logs what it serves).

        Args:
            inputs: for image models, image file paths or pixel arrays (one image (C, H, W) / (H, W) /
                flat, or a batch (N, ...)), values 0-255; for text models, a text or a list of texts;
                for audio models, WAV/FLAC/OGG file paths or 16 kHz waveforms ((T,) or (N, T)); for
                tabular models, one row ``{column: value}``, a list of rows, or a pandas DataFrame.
        Returns:
            One ``{"label", "scores", "model_version"}`` per input.
        """
        task = self.loop.task
        return task.predict_offline(self.loop.load_champion() if task.predicts_offline else None, inputs)

    def _ranking(self, what: str):
        """The task's ``what`` (``recommend``/``similar``) and the champion it answers with."""
        answer = getattr(self.loop.task, what, None)
        if answer is None:
            raise InputError(f"project {str(self.path)!r}: a {self.loop.spec.task} project; {what} is for tasks "
                             "that rank items (recommendation); expected predict")
        champion = self.loop.registry.champion()
        if champion is None:
            raise InputError(f"project {str(self.path)!r}: no champion yet; run 'modelloop run DIR' first")
        return answer, self.loop.task.load_model(self.loop.context(None), champion)

    def recommend(self, user: str, k: int = 10, exclude_seen: bool = True) -> dict[str, Any]:
        """The champion's top-``k`` items for ``user``, offline and not logged (the server logs
        what it serves). A user without history gets the most popular items (``fallback``).

        Returns ``{"user", "items": [{"item", "score", "title"}], "fallback", "model_version"}``.
        """
        answer, model = self._ranking("recommend")
        return answer(model, user, k, exclude_seen)

    def similar(self, item: str, k: int = 10) -> dict[str, Any]:
        """The ``k`` items most similar to ``item`` by the champion's item vectors."""
        answer, model = self._ranking("similar")
        return answer(model, item, k)

    def serve(self, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", workers: int | None = None,
              **overrides: Any) -> None:
        """Serve the champion over HTTP until interrupted.

        ``workers``: server processes on one port (default: the spec's ``serving.workers``, 1).
        More than one runs uvicorn's multi-process mode: each process builds its own app from
        the project folder, and they share the project's PostgreSQL feedback store, registry and
        background jobs (see docs/http-api.md, "Several workers").
        ``overrides``: ``max_batch_size``, ``max_wait_ms``, ``backend`` (else the spec's ``serving``).

        Raises:
            InputError: ``workers`` is not an integer from 1 to 64, or is more than 1 while the
                feedback store is SQLite (one file is no store for several server processes).
        """
        import uvicorn

        n = self.serving_workers(workers)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if n == 1:
            from .serve import create_app

            app = create_app(self.path, **overrides)
            uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
            return

        import json
        import os

        from .serve.app import OVERRIDES_ENV, PROJECT_ENV
        from .serve.security import keys_for

        # Made once, here, before the processes start: the project's key file (each process
        # would otherwise race to create it) and the check that the spec and its models load.
        keys_for(self.loop.spec.serving.keys, self.loop.paths.state / "keys.json")
        saved = {k: os.environ.get(k) for k in (PROJECT_ENV, OVERRIDES_ENV)}
        os.environ[PROJECT_ENV], os.environ[OVERRIDES_ENV] = str(self.path), json.dumps(overrides)
        try:  # uvicorn's supervisor: starts the processes, restarts one that dies, stops them all on SIGTERM
            uvicorn.run("modelloop.serve.app:app_from_environment", factory=True, workers=n, host=host, port=port,
                        log_level=log_level, access_log=False)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def serving_workers(self, workers: int | None = None) -> int:
        """How many server processes :meth:`serve` runs: ``workers``, else ``serving.workers``.

        Raises:
            InputError: not an integer from 1 to 64, or more than 1 with a SQLite feedback store.
        """
        if workers is None:
            n = self.loop.spec.serving.workers
            where, said = "serving.workers", f"serving.workers: {n}"
        else:
            n, where, said = workers, "option '--workers'", f"--workers {workers}"
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_WORKERS:
            raise InputError(f"{where}: received {n!r}; expected an integer from 1 to {MAX_WORKERS} "
                             "(server processes on one port)")
        url = self.loop.paths.store_url(self.loop.spec.feedback.store_url)
        if n > 1 and not url.startswith(("postgresql", "postgres://")):
            import os

            source = ("MODELLOOP_STORE_URL" if os.environ.get("MODELLOOP_STORE_URL") else
                      "feedback.store_url" if self.loop.spec.feedback.store_url else
                      "feedback.store_url (not set: the default SQLite file in the project)")
            kind = "SQLite" if url.startswith("sqlite") else "not PostgreSQL"
            shown = url if url.startswith("sqlite") else url.split("://")[0] + "://..."
            raise InputError(f"{source}: received {shown!r} ({kind}); {said} runs {n} server processes, "
                             "which need one store they can all write to: expected a PostgreSQL URL "
                             "(postgresql://USER@HOST:PORT/DB) in feedback.store_url or MODELLOOP_STORE_URL, or "
                             "one worker")
        return n
