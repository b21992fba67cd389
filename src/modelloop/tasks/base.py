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

from ..errors import InputError
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

    # -- the stages of the loop (see ``modelloop.loop``; ``ctx`` is a ``stages.Context``) ----------
    # Run: load -> select -> fit -> assemble. Retrain: load_model + reload -> feedback ->
    # fit_challenger -> assemble (with the parent: the gate's decision). ``run`` is the run's
    # records (``loop.state.RunState``): a stage that finishes something worth keeping across an
    # interruption saves it there.
    @abstractmethod
    def load(self, ctx, run):
        """Load, validate, clean, split and snapshot the data (or resume the run's snapshot)."""

    @abstractmethod
    def reload(self, ctx, fingerprint: str):
        """The snapshot a version was trained on, by its fingerprint."""

    @abstractmethod
    def select(self, ctx, data, run, time_left: float) -> tuple[dict[str, Any], Any]:
        """Technology selection -> (the selection record: ``chosen``, ``leaderboard``, ...; what
        the chosen candidate already fitted, or None). A resumed run's record is returned as is."""

    @abstractmethod
    def fit(self, ctx, data, selection: dict[str, Any], fitted: Any, run, resume: bool, time_left):
        """The chosen candidate's final fit -> ``stages.Fitted``; ``time_left()`` is the budget left."""

    @abstractmethod
    def load_model(self, ctx, version: str, backend: str | None = None, threads: int = 1):
        """A registered version ready to serve (``.version``, ``.manifest``)."""

    @abstractmethod
    def feedback(self, ctx, parent, data):
        """Trusted feedback as training data for a challenger of ``parent`` -> ``stages.FeedbackSet``."""

    @abstractmethod
    def fit_challenger(self, ctx, parent, data, fb, run):
        """A challenger of the champion ``parent``, trained on the data plus ``fb`` -> ``stages.Fitted``."""

    @abstractmethod
    def assemble(self, ctx, data, fitted, run, *, parent=None, selection=None, fb=None, title: str,
                 monitoring: dict[str, Any] | None = None):
        """Evaluate on the test split, check the requirements, optimize for serving and describe
        the version -> ``stages.NewVersion``. With ``parent`` (a retrain), the gate's decision
        between champion and challenger is in the manifest's ``gate``."""

    @abstractmethod
    def monitor(self, ctx, champ) -> dict[str, Any]:
        """The champion's monitoring signals: ``drift``, ``prediction_drift``, ``live_accuracy``,
        ``feedback`` counts (``new_since_last_training``), and the task's own."""

    @abstractmethod
    def models_row(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """What ``modelloop models`` shows of one version; ``headline``: two named test metrics."""

    def shadow_report(self, ctx, version: str) -> dict[str, Any] | None:
        """How a shadow model compares with what was served (None: this task has no shadow mode)."""
        return None

    def rollback_check(self, ctx, champion: str, predecessor: str) -> dict[str, Any] | None:
        """Evidence that ``champion`` serves worse than ``predecessor`` (``rollback``: bool), or None."""
        return None

    def feedback_split(self, ctx, class_names: list[str], like) -> dict[str, Any]:
        raise NotImplementedError(f"{self.name}: feedback is not split by class")

    # -- projects, the command line and the Python API -----------------------------------------
    #: the data a new project uses when none is given (None: the user must name some)
    default_data: str | None = None
    #: what data this task expects, for the message when none is given
    data_hint: str = "a data source (see 'modelloop init --help')"
    #: ``init`` options this task takes besides the data and the requirements (e.g. text_column)
    init_options: tuple[str, ...] = ()

    def check_source(self, source: str, base: Path) -> None:
        """Raise DataError, naming the source and what was expected, when ``source`` cannot be this
        task's data (checked at ``init``, before anything is written)."""
        return None

    def init_spec(self, spec: dict[str, Any], options: dict[str, Any]) -> None:
        """Put this task's ``init`` options (:attr:`init_options`, the ones given) into the new
        spec's dict; by default they are fields of its ``data`` section."""
        spec["data"].update(options)

    def check_project(self, spec: Spec, root: Path) -> None:
        """Checks a new project's data must pass at ``init`` beyond :meth:`check_source`."""
        return None

    def headline(self, metrics: dict[str, Any]) -> str:
        """The test metrics worth one line of the command line's output."""
        return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))

    def offline_inputs(self, files: list[Path], texts: list[str], rows: list[str]) -> tuple[list[str], Any, str]:
        """``modelloop predict``'s arguments -> (what to show for each input, the inputs for
        :meth:`predict_offline`, the name of the key that shows them)."""
        raise InputError(f"modelloop predict: a {self.name} project has no offline predict")

    #: ``Project.predict`` answers with the champion (False: :meth:`predict_offline` says what instead)
    predicts_offline: bool = True

    def predict_offline(self, model, inputs: Any) -> list[dict[str, Any]]:
        """``Project.predict``: Python inputs -> one answer per input (not logged)."""
        raise InputError(f"{self.name}: no offline predict")


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
