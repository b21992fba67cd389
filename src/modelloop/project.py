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

import numpy as np
import torch

from .data.builtin import BUILTINS
from .data.image import decode_image
from .errors import DataError, InputError, SpecError
from .loop import Loop, Progress
from .spec import SPEC_FILE, TASKS, parse_spec, save_spec

__all__ = ["Project"]


TEXT_BUILTINS = ("rotten-tomatoes",)
TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
DEFAULT_DATA = {"image-classification": "builtin:seed-case", "text-classification": "builtin:rotten-tomatoes",
                "tabular-classification": "builtin:breast-cancer", "tabular-regression": "builtin:diabetes"}
#: audio has no built-in example: ``modelloop data keywords OUT`` synthesizes one
AUDIO_DATA_HINT = ("a folder of class subfolders of audio clips (WAV/FLAC/OGG); make one with "
                   "'modelloop data keywords OUT'")


def _check_source(source: str, base: Path, task: str = "image-classification") -> None:
    if task == "audio-classification":
        path = Path(source) if Path(source).is_absolute() else base / source
        if source.startswith("builtin:") or not path.is_dir():
            why = "no built-in audio dataset" if source.startswith("builtin:") else "no such folder"
            raise DataError(f"data source {source!r}: {why}; expected {AUDIO_DATA_HINT}")
        return
    if task in ("tabular-classification", "tabular-regression"):
        from .data.tabular import REGRESSION_BUILTINS, TABULAR_BUILTINS, TABULAR_SUFFIXES

        builtins = REGRESSION_BUILTINS if task == "tabular-regression" else TABULAR_BUILTINS
        path = Path(source) if Path(source).is_absolute() else base / source
        if source.startswith("builtin:"):
            if source.removeprefix("builtin:") not in builtins:
                raise DataError(f"data source {source!r}: unknown built-in dataset for {task}; expected one of "
                                + ", ".join(f"builtin:{n}" for n in builtins))
        elif not path.is_file() or path.suffix.lower() not in TABULAR_SUFFIXES:
            raise DataError(f"data source {source!r}: {'no such file' if not path.is_file() else 'unsupported type'}; "
                            f"expected a {'/'.join(s.lstrip('.').upper() for s in TABULAR_SUFFIXES)} table with "
                            "feature columns and a target column, or "
                            + ", ".join(f"builtin:{n}" for n in builtins))
        return
    text = task == "text-classification"
    builtins = TEXT_BUILTINS if text else BUILTINS
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name not in builtins:
            raise DataError(f"data source {source!r}: unknown built-in dataset for {task}; expected one of "
                            + ", ".join(f"builtin:{n}" for n in builtins))
        return
    path = Path(source) if Path(source).is_absolute() else base / source
    if text:
        if not path.is_file() or path.suffix.lower() not in TEXT_SUFFIXES:
            raise DataError(f"data source {source!r}: {'no such file' if not path.is_file() else 'unsupported type'}; "
                            f"expected a {'/'.join(s.lstrip('.').upper() for s in TEXT_SUFFIXES)} file with text and "
                            "label columns, or builtin:rotten-tomatoes")
        return
    if not path.is_dir():
        raise DataError(f"data source {source!r}: no such folder; expected a folder of class subfolders of "
                        "images (PNG/JPEG/BMP) or builtin:NAME (" + ", ".join(f"builtin:{n}" for n in BUILTINS) + ")")


class Project:
    """A modelloop project folder (``modelloop.yaml`` + registry + feedback store)."""

    def __init__(self, path: str | Path) -> None:
        self.loop = Loop(path)
        self.path = self.loop.paths.root

    @classmethod
    def init(cls, path: str | Path, task: str = "image-classification", data: str | None = None,
             name: str | None = None, overwrite: bool = False, text_column: str | None = None,
             label_column: str | None = None, **requirements: Any) -> Project:
        """Write ``path/modelloop.yaml`` for ``task`` on ``data`` and return the project.

        ``data`` defaults to the task's built-in example (``builtin:seed-case`` images,
        ``builtin:rotten-tomatoes`` texts). ``text_column`` / ``label_column`` name the columns of
        a text file. ``requirements`` are fields of :class:`~modelloop.spec.Requirements`
        (metric, target, p95_latency_ms, max_model_size_mb, time_budget_s).

        Raises:
            SpecError: unknown task or invalid requirement, or a spec already exists.
            DataError: the data source does not exist.
        """
        path = Path(path)
        if task == "recommendation":
            from .recommendation.project import init_project

            return cls(init_project(path, data=data, name=name, overwrite=overwrite, **requirements))
        if task not in TASKS:
            raise SpecError(f"option 'task': received {task!r}; expected one of {', '.join(TASKS)}")
        if (path / SPEC_FILE).exists() and not overwrite:
            raise SpecError(f"{path / SPEC_FILE}: already exists; expected a new project folder "
                            "(or pass overwrite/--force)")
        if data is None and task not in DEFAULT_DATA:
            raise DataError(f"option 'data': missing for {task}; expected {AUDIO_DATA_HINT}")
        data = data or DEFAULT_DATA[task]
        source = data
        if not data.startswith("builtin:"):
            # A relative path means relative to where the command runs; store it absolute so the
            # project works from any directory.
            source = str(Path(data).resolve())
        _check_source(source, path.resolve(), task)
        reqs = {k: v for k, v in requirements.items() if v is not None}
        data_spec = {"source": source, **({"text_column": text_column} if text_column else {}),
                     **({"label_column": label_column} if label_column else {})}
        spec = parse_spec({"name": name or path.resolve().name, "task": task, "data": data_spec,
                           "requirements": reqs}, where=f"{path / SPEC_FILE}")
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
        if self.loop.spec.task == "recommendation":
            raise InputError(f"project {str(self.path)!r}: a recommendation project has no predict; expected "
                             "Project.recommend(user, k) or Project.similar(item, k) (GET /recommend, GET /similar)")
        model = self.loop.load_champion()
        if self.loop.task.input_kind == "tabular":
            if hasattr(inputs, "to_dict") and hasattr(inputs, "columns"):  # a pandas DataFrame
                inputs = inputs.astype(object).where(inputs.notna(), None).to_dict("records")
            rows = model.featurizer.coerce_rows([inputs] if isinstance(inputs, dict) else list(inputs), "inputs")
            probs = model.predict_proba(rows).numpy()
            if model.regression:
                return [{"value": float(p[0]), "label": f"{float(p[0]):.6g}", "model_version": model.version}
                        for p in probs]
            return [{"label": model.class_names[int(p.argmax())],
                     "scores": dict(zip(model.class_names, map(float, p), strict=True)),
                     "model_version": model.version} for p in probs]
        if self.loop.task.input_kind == "text":
            from .tasks.text_classification import parse_texts

            texts = parse_texts([inputs] if isinstance(inputs, str) else list(inputs), "inputs")
            probs = model.predict_proba(texts).numpy()
            return [{"label": model.class_names[int(p.argmax())],
                     "scores": dict(zip(model.class_names, map(float, p), strict=True)),
                     "model_version": model.version} for p in probs]
        if self.loop.task.input_kind == "audio":
            from .data.audio import SAMPLE_RATE, preprocess, read_audio

            if isinstance(inputs, (str, Path)) or (isinstance(inputs, list) and inputs and
                                                   isinstance(inputs[0], (str, Path))):
                files = [inputs] if isinstance(inputs, (str, Path)) else inputs
                clips = [read_audio(Path(f)) for f in files]
            else:  # waveforms at 16 kHz: one clip (T,) or a batch (N, T)
                arr = np.asarray(inputs, dtype=np.float32)
                rows = arr[None] if arr.ndim == 1 else arr.reshape(len(arr), -1)
                clips = [preprocess(a, SAMPLE_RATE) for a in rows]
            probs = model.predict_proba(torch.from_numpy(np.stack(clips))).numpy()
            return [{"label": model.class_names[int(p.argmax())],
                     "scores": dict(zip(model.class_names, map(float, p), strict=True)),
                     "model_version": model.version} for p in probs]
        fmt = model.fmt
        if isinstance(inputs, (str, Path)) or (isinstance(inputs, list) and inputs and
                                               isinstance(inputs[0], (str, Path))):
            files = [inputs] if isinstance(inputs, (str, Path)) else inputs
            x = np.stack([decode_image(Path(f).read_bytes(), fmt, str(f)) for f in files]).astype(np.float32)
        else:
            arr = np.asarray(inputs, dtype=np.float32)
            if arr.size % fmt.size != 0:
                raise InputError(f"inputs: received {arr.size} values (shape {list(arr.shape)}); expected a "
                                 f"multiple of {fmt.size} ({fmt.channels}x{fmt.height}x{fmt.width} pixels)")
            x = arr.reshape(-1, fmt.channels, fmt.height, fmt.width)
        probs = model.predict_proba(torch.from_numpy(x)).numpy()
        return [{"label": model.class_names[int(p.argmax())],
                 "scores": dict(zip(model.class_names, map(float, p), strict=True)),
                 "model_version": model.version} for p in probs]

    def _recommender(self):
        from .tasks.recommendation import load_version

        if self.loop.spec.task != "recommendation":
            raise InputError(f"project {str(self.path)!r}: a {self.loop.spec.task} project; recommend and similar "
                             "are for recommendation projects (use predict)")
        champion = self.loop.registry.champion()
        if champion is None:
            raise InputError(f"project {str(self.path)!r}: no champion yet; run 'modelloop run DIR' first")
        return load_version(self.loop.registry, champion)

    def recommend(self, user: str, k: int = 10, exclude_seen: bool = True) -> dict[str, Any]:
        """The champion's top-``k`` items for ``user``, offline and not logged (the server logs
        what it serves). A user without history gets the most popular items (``fallback``).

        Returns ``{"user", "items": [{"item", "score", "title"}], "fallback", "model_version"}``.
        """
        import math

        m = self._recommender()
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError(f"argument 'k': received {k!r}; expected a whole number >= 1")
        scores = m.model.score_matrix([str(user)], exclude_seen=exclude_seen)[0]
        top = torch.topk(scores, min(k, scores.shape[0]))
        items = [{"item": m.model.items[j], "score": float(v), "title": m.title(m.model.items[j])}
                 for j, v in zip(top.indices.tolist(), top.values.tolist(), strict=True) if v > -math.inf]
        return {"user": str(user), "items": items, "model_version": m.version,
                "fallback": None if str(user) in m.model.user_index else "popularity"}

    def similar(self, item: str, k: int = 10) -> dict[str, Any]:
        """The ``k`` items most similar to ``item`` by the champion's item vectors."""
        m = self._recommender()
        if str(item) not in m.model.item_index:
            raise InputError(f"argument 'item': received {item!r}, not one of the {len(m.model.items)} items model "
                             f"{m.version} knows; expected a known item id")
        return {"item": str(item), "title": m.title(str(item)), "model_version": m.version,
                "items": [{"item": i, "title": m.title(i)} for i in m.model.similar_items(str(item), k)]}

    def serve(self, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info", **overrides: Any) -> None:
        """Serve the champion over HTTP until interrupted.

        ``overrides``: ``max_batch_size``, ``max_wait_ms``, ``backend`` (else the spec's ``serving``).
        """
        import uvicorn

        from .serve import create_app

        app = create_app(self.path, **{k: v for k, v in overrides.items() if v is not None})
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
