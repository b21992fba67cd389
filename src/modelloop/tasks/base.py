"""The task contract: what differs between image, text and audio classification, and nothing else.

A :class:`Task` says *what*: how its data is loaded and split, which candidate models compete
(each a featurizer + a trainable network), how one raw input is stored with its prediction (so
feedback becomes a training example) and read back, and how a request body becomes raw inputs.
The loop, the trainer, the gate, the registry and the server say *how*, the same for every task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..spec import DataSpec, ServingSpec, Spec

__all__ = ["Candidate", "Task", "get_task", "TASK_NAMES", "fields_of"]


@dataclass(frozen=True)
class Candidate:
    """One technology choice: a featurizer and the trainable network family on top of it.

    ``featurizer`` is a fresh featurizer config (``{"kind": ..., settings}``); ``model`` holds
    extra architecture settings the family needs besides input shape and class count.
    """

    name: str
    family: str
    featurizer: dict[str, Any]
    model: dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False
    about: str = ""


class Task(ABC):
    """Everything task-specific the loop needs; about six methods."""

    name: str
    input_kind: str  # "image" | "text" | "audio" | "tabular"
    #: "classification" (outputs: class probabilities) or "regression" (one number per input)
    problem: str = "classification"
    candidates: dict[str, Candidate]
    default_candidates: tuple[str, ...]
    #: a JSON request body of this task, for the message about a body that is not JSON
    json_example: str = "{...}"
    #: what a multipart upload to ``/predict`` holds ("image files", ...), or None: JSON only
    uploads: str | None = None
    #: parse every JSON body off the event loop (its parsing does real work, e.g. resampling)
    heavy_json: bool = False
    #: an interrupted run of this task continues with ``run --resume`` (else it is marked interrupted)
    resumable: bool = True

    @abstractmethod
    def prepare(self, data: DataSpec, base_dir: Path):
        """Load, validate, clean and split the source -> ``Dataset``."""

    def choose_candidates(self, spec: Spec, ds) -> tuple[list[Candidate], dict[str, str]]:
        """The candidates to compete (the spec's list, or this task's choice for the data),
        and why each of the task's other candidates was left out."""
        if spec.selection.candidates:
            chosen = list(spec.selection.candidates)
            return [self.candidates[c] for c in chosen], {c: "not listed in selection.candidates"
                                                          for c in self.candidates if c not in chosen}
        names, why = self.candidates_for(ds)
        return [self.candidates[c] for c in names], why

    @abstractmethod
    def candidates_for(self, ds) -> tuple[list[str], dict[str, str]]:
        """This task's default candidate names for the dataset, and why the others are left out."""

    @abstractmethod
    def collate(self, items: list[Any], like) -> tuple[Any, list[bool]]:
        """Stored inputs (arrays or str, as the feedback store returns them) -> (a raw batch of the
        usable ones, which were usable). ``like`` is the dataset or model they must fit."""

    @abstractmethod
    def parse_json(self, body: Any, model, limits: ServingSpec | None = None) -> tuple[Any, bool]:
        """A JSON request body -> (raw batch, whether the caller sent a list).

        ``limits`` holds the request limits (``serving.max_text_chars``, ...; the defaults when
        None). Only numbers count as numbers (never booleans or numeric strings where a number
        belongs, and never NaN or infinity). Raises InputError naming the field.
        """

    def decode_uploads(self, files: list[tuple[str, bytes]], model, limits: ServingSpec) -> Any:
        """Uploaded files (name, bytes) -> a raw batch; every file's header is checked against
        ``limits`` before any file is decoded. Only tasks with :attr:`uploads` take files."""
        raise NotImplementedError(f"{self.name}: takes no file uploads")

    def describe_input(self, model) -> dict[str, Any]:
        return {}

    def request_schema(self, model, limits: ServingSpec | None = None) -> dict[str, Any]:
        """JSON Schema of a ``/predict`` JSON body for ``model`` (None: not loaded yet), for the
        OpenAPI document; what :meth:`parse_json` takes."""
        return {"type": "object"}

    # -- serving: what the server asks the task (it never branches on the task's name) ------------
    #: the route whose requests the server counts as served predictions (``/stats``)
    served_route: str = "/predict"

    def serve_model(self, registry, version: str, *, backend: str | None = None, threads: int = 1):
        """The model the server answers with for registered ``version``: by default the registry's
        ``LoadedModel`` on ``backend`` (None: the one its manifest chose) with ``threads`` threads."""
        return registry.load(version, backend=backend, threads=threads)

    def routes(self, ctx):
        """The routes this task adds to the server besides the shared ones (``/predict``,
        ``/feedback``, ...), as a FastAPI ``APIRouter`` built on ``ctx`` (a
        :class:`~.serving.ServingContext`), or None: none."""
        return None

    def check_predict(self) -> None:
        """Raises InputError (naming the routes to use instead) when this task's models are not
        served through ``POST /predict``; called before anything else of the request is read."""
        return None

    def read_output(self, model, output) -> tuple[str, dict[str, float], dict[str, Any]]:
        """One input's row of ``model``'s outputs (a numpy vector) -> (the label the prediction
        store keeps, the scores it keeps by name, the fields ``/predict`` answers between
        ``prediction_id`` and ``model_version``). Classification: the most probable class and
        every class's probability."""
        names = model.class_names
        scores = {n: float(v) for n, v in zip(names, output, strict=True)}
        label = names[int(output.argmax())]
        return label, scores, {"label": label, "scores": scores}

    def check_feedback(self, label, predicted: str, version: str, ctx) -> str:
        """The label the feedback store keeps for ``label`` (as ``POST /feedback`` received it:
        a text, a number or None) given on a prediction that model ``version`` answered with
        ``predicted``; ``ctx`` is the server's :class:`~.serving.ServingContext`.
        Classification: a class of that version (None confirms ``predicted``).

        Raises:
            InputError: naming field 'label', what was received and what was expected.
        """
        from ..errors import InputError
        from .serving import json_safe

        classes = ctx.registry.manifest(version)["class_names"]
        kept = predicted if label is None else str(label)
        if kept not in classes:
            raise InputError(f"field 'label': received {json_safe(label)!r}; expected one of {', '.join(classes)}")
        return kept


def fields_of(body: dict) -> str:
    """The field names of a request body for a message: a few, each cut short."""
    names = sorted(str(k)[:40] for k in list(body)[:10])
    return f"{names}" + (f" and {len(body) - 10} more" if len(body) > 10 else "")


#: task name -> (module in this package, class)
_TASKS = {
    "image-classification": ("image_classification", "ImageClassification"),
    "text-classification": ("text_classification", "TextClassification"),
    "audio-classification": ("audio_classification", "AudioClassification"),
    "tabular-classification": ("tabular_classification", "TabularClassification"),
    "tabular-regression": ("tabular_regression", "TabularRegression"),
    "recommendation": ("recommendation", "Recommendation"),
}
TASK_NAMES = tuple(_TASKS)


def get_task(name: str) -> Task:
    """The task named ``name`` (its module is imported on first use)."""
    import importlib

    if name not in _TASKS:
        raise ValueError(f"task {name!r}: unknown; expected one of {', '.join(TASK_NAMES)}")
    module, cls = _TASKS[name]
    return getattr(importlib.import_module(f".{module}", __package__), cls)()
