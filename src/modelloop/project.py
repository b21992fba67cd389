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
from .spec import SPEC_FILE, Requirements, parse_spec, save_spec
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

    def serve(self, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **overrides: Any) -> None:
        """Serve the champion over HTTP until interrupted.

        ``overrides``: ``max_batch_size``, ``max_wait_ms``, ``backend`` (else the spec's ``serving``).
        """
        import uvicorn

        from .serve import create_app

        app = create_app(self.path, **{k: v for k, v in overrides.items() if v is not None})
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
