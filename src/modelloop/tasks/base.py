"""The task contract: what differs between tasks (images, texts, audio, tables, recommendation, ...), and nothing else.

A :class:`Task` says *what*: how its data is loaded and split, which candidate models compete
and how they fit, how a model is evaluated and what evidence the gate compares, how feedback
becomes training data, which requirement metrics fit it, how a request body becomes raw inputs and
an output becomes the answer, and which routes it adds to the server. The loop, the trainer, the
backends, the gate, the registry and the server say *how*, the same for every task (see
``docs/architecture.md`` for the stages and the groups of this contract).

Tasks are found by name (:func:`get_task`): the built-in ones, those registered with
:func:`register_task`, and those other packages provide through the ``modelloop.tasks``
entry-point group, e.g. in their ``pyproject.toml``::

    [project.entry-points."modelloop.tasks"]
    my-task = "my_package.tasks:MyTask"
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError, SpecError
from ..spec import SPEC_FILE, DataSpec, ServingSpec, Spec

__all__ = ["Candidate", "Task", "file_inputs", "get_task", "register_task", "task_names", "check_spec", "TASK_NAMES",
           "ENTRY_POINT_GROUP", "CLASSIFICATION_METRICS", "fields_of"]

#: the requirement metrics of classification tasks (probabilities in, a label out)
CLASSIFICATION_METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro")


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
    """Everything task-specific the loop, the server and the command line need, in groups: inputs,
    the run's stages, the retrain's stages, a version, monitoring, projects, serving, training.
    :class:`~.supervised.SupervisedTask` implements the stages for (input, label) examples."""

    name: str
    input_kind: str  # "image" | "text" | "audio" | "tabular"
    #: "classification" (outputs: class probabilities) or "regression" (one number per input)
    problem: str = "classification"
    #: how a fit is scored on the validation split (a key of ``train.trainer.SCORES``)
    val_score: str = "accuracy"
    candidates: dict[str, Candidate]
    default_candidates: tuple[str, ...]
    #: a JSON request body of this task, for the message about a body that is not JSON
    json_example: str = "{...}"
    #: what a multipart upload to ``/predict`` holds ("image files", ...), or None: JSON only
    uploads: str | None = None
    #: parse every JSON body off the event loop (its parsing does real work, e.g. resampling)
    heavy_json: bool = False
    #: request content types ``/predict`` takes besides JSON and multipart as the whole body
    #: (``application/x-npy``, ``image/png``, ...): see :meth:`parse_binary`
    binary_types: tuple[str, ...] = ()
    #: an interrupted run of this task continues with ``run --resume`` (else it is marked interrupted)
    resumable: bool = True
    #: what the requirement metrics measure, for messages ("classification", "regression", "ranking")
    metric_kind: str = "classification"
    #: the metrics ``requirements.metric`` may name for this task
    metrics: tuple[str, ...] = CLASSIFICATION_METRICS
    #: ``requirements.metric`` when the spec leaves it unset (an unset target means: significantly
    #: better than this task's trivial baseline)
    default_metric: str = "accuracy"

    def check_spec(self, spec: Spec) -> None:
        """Check what only this task knows about ``spec``, and fill in this task's defaults.

        ``selection.candidates`` must name candidates of this task; ``requirements.metric`` must
        be one of :attr:`metrics`. A spec that leaves the metric unset gets :attr:`default_metric`.
        Checking twice changes nothing.

        Raises:
            SpecError: naming the field, what was received and what was expected.
        """
        self._check_candidates(spec)
        self._check_metric(spec)
        self._check_semi_supervised(spec)

    # -- learning from served inputs nobody gave feedback on (``feedback.semi_supervised``) -----
    #: "auto": consistency training on unlabelled served inputs is on unless the spec says off
    #: (measured to help this task); "on": supported, but only when the spec says on; None: not
    #: supported (the spec's "on" is refused)
    semi_supervised: str | None = None
    #: why a task without :attr:`semi_supervised` leaves it out, for the message refusing "on"
    semi_supervised_why: str = "this task has no augmentation to check pseudo-labels against"

    def uses_unlabelled(self, spec: Spec) -> bool:
        """Whether a retrain of this task under ``spec`` learns from served inputs without feedback."""
        mode = spec.feedback.semi_supervised
        if self.semi_supervised is None:
            return False
        return mode == "on" or (mode == "auto" and self.semi_supervised == "auto")

    def consistency_views(self, spec: Spec) -> Any:
        """The two views consistency training compares (an object with ``weak(x, generator)`` and
        ``strong(x, generator)`` on feature batches), for tasks with :attr:`semi_supervised`."""
        raise NotImplementedError(f"{self.name}: no consistency views")

    def add_unlabelled(self, ctx, data, fb) -> None:
        """Put the usable served inputs without feedback into ``fb`` (see ``SupervisedTask``)."""
        raise NotImplementedError(f"{self.name}: does not learn from unlabelled inputs")

    def _check_semi_supervised(self, spec: Spec) -> None:
        if spec.feedback.semi_supervised == "on" and self.semi_supervised is None:
            raise SpecError(f"field 'feedback.semi_supervised': received 'on', which {self.name} does not support "
                            f"({self.semi_supervised_why}); expected 'auto' or 'off'")

    def _check_candidates(self, spec: Spec) -> None:
        allowed = tuple(self.candidates)
        for c in spec.selection.candidates or []:
            if c not in allowed:
                raise SpecError(f"field 'selection.candidates': received {c!r}, which is not a candidate for "
                                f"{self.name}; expected some of {', '.join(allowed)}")

    def _check_metric(self, spec: Spec) -> None:
        req = spec.requirements
        if "metric" not in req.model_fields_set and req.metric != self.default_metric:
            req.metric = self.default_metric  # the spec's own default (accuracy) means nothing here
        if req.metric not in self.metrics:
            raise SpecError(f"field 'requirements.metric': received {req.metric!r}, which is not a "
                            f"{self.metric_kind} metric for {self.name}; expected one of {', '.join(self.metrics)}")

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

    def parse_binary(self, content_type: str, body: bytes, model, limits: ServingSpec) -> tuple[Any, bool]:
        """A request body of one of :attr:`binary_types` -> (raw batch, whether the caller sent a
        list). Runs off the event loop. Raises InputError naming the body and what it expected."""
        raise NotImplementedError(f"{self.name}: takes no binary request bodies")

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

    def load_model(self, ctx, version: str, backend: str | None = None, threads: int = 1):
        """A registered version ready to predict (``.version``, ``.manifest``): what the gate,
        monitoring and ``Project`` use; the server's :meth:`serve_model`."""
        return self.serve_model(ctx.registry, version, backend=backend, threads=threads)

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

    def resolve_source(self, source: str) -> str:
        """The data source as the spec keeps it: a relative path means relative to where the
        command runs, so it is stored absolute (the project then works from any directory);
        ``builtin:NAME`` and URLs stay as they are."""
        if source.startswith("builtin:") or "://" in source:
            return source
        return str(Path(source).resolve())

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

    def loss(self, outputs, targets):
        """What training minimizes over a batch: model outputs and targets -> a scalar tensor.

        Classification: the mean cross-entropy of the logits (N, K) against class indices (N,)
        int64, or against class probabilities (N, K) float (a teacher's soft targets). Regression
        (``problem == "regression"``): the mean squared error of the single output (N, 1) against
        the values (N,), in the target's units.
        """
        from ..train.trainer import cross_entropy, squared_error  # torch: not needed to parse a spec

        if self.problem == "regression":
            return squared_error(outputs, targets)
        return cross_entropy(outputs, targets)

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

    # -- labelling and out-of-distribution scores ----------------------------------------------
    @property
    def labelling(self) -> bool:
        """This task's served predictions can be labelled from the labelling queue and carry an
        OOD score: tasks served through ``POST /predict``. Recommendation and FAQ answers are
        lists judged by clicks and thumbs, not inputs waiting for a class (not applicable)."""
        return self.served_route == "/predict"

    def ood_calibration(self, ctx, new, quantile: float = 0.99):
        """Fit the out-of-distribution calibration of a version about to be registered (``new``:
        a ``stages.NewVersion``) on its dataset's training and validation splits, in the space
        the drift monitor uses -> ``feedback.ood.OodCalibration``, or None where not applicable."""
        if not self.labelling or "dataset" not in new.manifest:
            return None
        import numpy as np
        import torch

        from ..data.dataset import Dataset
        from ..feedback.drift import embed
        from ..feedback.ood import fit_calibration
        from ..registry.artifact import read_featurizer

        ds = Dataset.load(ctx.paths.data, new.manifest["dataset"].get("base_fingerprint")
                          or new.manifest["dataset"]["fingerprint"])
        feat = read_featurizer(new.preprocessing)
        rng = np.random.default_rng(ctx.spec.seed)

        def sample(split: str, limit: int):
            x, y = ds.splits[split]
            idx = np.sort(rng.choice(len(y), size=min(limit, len(y)), replace=False))
            xs = [x[i] for i in idx] if isinstance(x, list) else x[torch.as_tensor(idx)]
            return embed(new.model, feat.transform(xs)), np.asarray(y)[idx]

        train_emb, train_y = sample("train", 4000)
        val_emb, _ = sample("val", 2000)
        return fit_calibration(train_emb, None if self.problem == "regression" else train_y, val_emb, quantile)

    def show_input(self, x, model) -> dict[str, Any]:
        """A stored input (as the prediction store decodes it) as the labelling page and the
        export show it: ``{"kind": "image", "png": base64}``, ``{"kind": "audio", "wav": base64}``,
        ``{"kind": "text", "text": ...}`` or ``{"kind": "row", "row": {...}}``."""
        import base64
        import io
        import json

        import numpy as np

        if isinstance(x, str):
            if self.input_kind == "tabular":
                try:
                    return {"kind": "row", "row": json.loads(x)}
                except ValueError:
                    pass
            return {"kind": "text", "text": x}
        a = np.asarray(x)
        buf = io.BytesIO()
        if self.input_kind == "audio":
            import soundfile as sf

            rate = int(self.describe_input(model).get("sample_rate", 16000))
            sf.write(buf, np.clip(a.reshape(-1).astype(np.float32), -1, 1), rate, format="WAV", subtype="PCM_16")
            return {"kind": "audio", "wav": base64.b64encode(buf.getvalue()).decode(), "sample_rate": rate}
        from PIL import Image

        img = a.reshape(-1, a.shape[-2], a.shape[-1]) if a.ndim >= 2 else a.reshape(1, 1, -1)
        img = np.clip(img, 0, 255).astype(np.uint8)
        Image.fromarray(img[0] if img.shape[0] == 1 else np.moveaxis(img[:3], 0, -1)).save(buf, format="PNG")
        return {"kind": "image", "png": base64.b64encode(buf.getvalue()).decode()}

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


def file_inputs(files: list[Path], what: str, model: str, expected: str) -> tuple[list[str], list[str], str]:
    """``modelloop predict``'s FILES argument checked: every file exists (``what``: "image
    files"; ``model``: "an image model"; ``expected``: what one file should be) -> the
    :meth:`Task.offline_inputs` triple."""
    if not files:
        raise InputError(f"argument 'FILES': missing; expected one or more {what} for {model}")
    for f in files:
        if not f.is_file():
            raise InputError(f"{what.split()[0]} file {str(f)!r}: no such file; expected {expected}")
    return [str(f) for f in files], [str(f) for f in files], "file"


def fields_of(body: dict) -> str:
    """The field names of a request body for a message: a few, each cut short."""
    names = sorted(str(k)[:40] for k in list(body)[:10])
    return f"{names}" + (f" and {len(body) - 10} more" if len(body) > 10 else "")


# -- the task registry --------------------------------------------------------------------------
#: the built-in tasks: name -> (module in this package, class), imported on first use
_BUILTIN = {
    "image-classification": ("image_classification", "ImageClassification"),
    "text-classification": ("text_classification", "TextClassification"),
    "audio-classification": ("audio_classification", "AudioClassification"),
    "tabular-classification": ("tabular_classification", "TabularClassification"),
    "tabular-regression": ("tabular_regression", "TabularRegression"),
    "recommendation": ("recommendation", "Recommendation"),
    "faq": ("faq", "FaqAnswering"),
}
#: the built-in task names (:func:`task_names` lists every known task, plugins included)
TASK_NAMES = tuple(_BUILTIN)
#: the entry-point group through which another package provides tasks: ``NAME = "module:Factory"``
ENTRY_POINT_GROUP = "modelloop.tasks"
#: tasks registered with register_task, and those loaded from entry points: name -> (factory, where
#: it comes from, for messages)
_REGISTERED: dict[str, tuple[Callable[[], Task], str]] = {}


def register_task(name: str, factory: Callable[[], Task], *, replace: bool = False) -> None:
    """Make :func:`get_task` answer ``name`` with ``factory()``: a :class:`Task` subclass, or any
    callable that returns a Task whose ``name`` is ``name``.

    A package can instead list its tasks under the entry-point group ``modelloop.tasks``
    (:data:`ENTRY_POINT_GROUP`); they are loaded the first time their name is asked for.

    Raises:
        ValueError: ``name`` is empty, a built-in task, or already registered (unless ``replace``).
        TypeError: ``factory`` is not callable.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"task name: received {name!r}; expected a non-empty string such as 'my-task'")
    if not callable(factory):
        raise TypeError(f"task {name!r}: received {factory!r} as its factory; expected a Task subclass or a "
                        "callable that returns a Task")
    if name in _BUILTIN:
        raise ValueError(f"task {name!r}: a built-in task has this name; expected a name not among "
                         f"{', '.join(TASK_NAMES)}")
    if name in _REGISTERED and not replace:
        raise ValueError(f"task {name!r}: already registered ({_REGISTERED[name][1]}); expected a new name, "
                         "or replace=True")
    _REGISTERED[name] = (factory, f"registered factory {getattr(factory, '__qualname__', repr(factory))}")


def task_names() -> tuple[str, ...]:
    """Every task name :func:`get_task` knows: the built-in ones, the registered ones, and those
    of the ``modelloop.tasks`` entry points (read from the installed packages' metadata, not loaded)."""
    from importlib.metadata import entry_points

    plugins = (ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
    return tuple(dict.fromkeys([*TASK_NAMES, *_REGISTERED, *plugins]))


def _describe_entry_point(ep) -> str:
    dist = f", distribution {ep.dist.name} {ep.dist.version}" if getattr(ep, "dist", None) else ""
    return f"entry point '{ep.name} = {ep.value}' (group {ENTRY_POINT_GROUP}{dist})"


def _from_entry_point(name: str) -> tuple[Callable[[], Task], str] | None:
    """The factory of the ``modelloop.tasks`` entry point called ``name`` and its description,
    loaded now and registered, or None when no installed package provides one."""
    from importlib.metadata import entry_points

    found = list(entry_points(group=ENTRY_POINT_GROUP, name=name))
    if not found:
        return None
    if len({ep.value for ep in found}) > 1:
        raise SpecError(f"task {name!r}: provided by {len(found)} entry points "
                        f"({'; '.join(_describe_entry_point(ep) for ep in found)}); expected one")
    ep = found[0]
    try:
        factory = ep.load()
    except Exception as e:  # whatever a plugin's import raises, the message names the plugin
        raise SpecError(f"task {name!r}: {_describe_entry_point(ep)} failed to load ({type(e).__name__}: {e}); "
                        "expected 'module:attribute' naming an importable Task subclass or factory") from e
    if not callable(factory):
        raise SpecError(f"task {name!r}: {_describe_entry_point(ep)} gives {factory!r}; expected a Task subclass "
                        "or a callable that returns a Task")
    _REGISTERED[name] = (factory, _describe_entry_point(ep))
    return _REGISTERED[name]


def get_task(name: str) -> Task:
    """The task named ``name``: a built-in one (its module is imported on first use), one
    registered with :func:`register_task`, or one an installed package provides through the
    ``modelloop.tasks`` entry-point group (loaded the first time its name is asked for).

    Raises:
        SpecError: no task has that name (naming the known ones), or a plugin's task cannot be
            loaded or made (naming its entry point or factory).
    """
    import importlib

    if name in _BUILTIN:
        module, cls = _BUILTIN[name]
        return getattr(importlib.import_module(f".{module}", __package__), cls)()
    found = _REGISTERED.get(name) or _from_entry_point(name)
    if found is None:
        raise SpecError(f"task {name!r}: unknown; expected one of {', '.join(task_names())} (or a task registered "
                        f"with register_task, or provided through the {ENTRY_POINT_GROUP!r} entry-point group)")
    factory, origin = found
    try:
        task = factory()
    except Exception as e:  # whatever a plugin's factory raises, the message names the plugin
        raise SpecError(f"task {name!r}: {origin} failed ({type(e).__name__}: {e}); expected it to return a "
                        "Task") from e
    if not isinstance(task, Task) or getattr(task, "name", None) != name:
        got = (f"a Task named {getattr(task, 'name', None)!r}" if isinstance(task, Task)
               else f"{task!r:.80} ({type(task).__name__})")
        raise SpecError(f"task {name!r}: {origin} returned {got}; expected a Task named {name!r}")
    return task


def check_spec(spec: Spec, where: str | Path = SPEC_FILE) -> None:
    """Check ``spec`` against its task and fill in the task's defaults (see :meth:`Task.check_spec`).

    Run it wherever a spec meets its task: when a project is opened, and before ``init`` writes one.
    ``where`` is the file the spec came from, for the message.

    Raises:
        SpecError: the task is unknown, or the spec does not fit it; naming ``where``, the field,
            what was received and what was expected.
    """
    known = task_names()
    if spec.task not in known:
        raise SpecError(f"{where}: field 'task': received {spec.task!r}; expected one of {', '.join(known)}")
    try:
        get_task(spec.task).check_spec(spec)
    except SpecError as e:
        raise SpecError(f"{where}: {e}") from None
