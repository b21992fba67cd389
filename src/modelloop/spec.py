"""The project spec: what to build (task, data) and what counts as good enough (requirements).

A spec lives in ``DIR/modelloop.yaml``; :func:`load_spec` validates it and reports any problem
as a :class:`~modelloop.errors.SpecError` naming the file, the field, what was received and
what was expected.

This module checks what a spec can say about itself: types, ranges, names that are spelled
right. What only a task knows (its candidates, its metrics and their defaults, the task names
themselves, plugins included) is checked by the task: :func:`modelloop.tasks.check_spec`, which
the loop runs when it opens a project and ``init`` runs before it writes one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import SpecError
from .settings import write_private

__all__ = [
    "TASKS",
    "METRICS",
    "FAMILIES",
    "Spec",
    "DataSpec",
    "ComputeSpec",
    "SplitSpec",
    "AugmentSpec",
    "Requirements",
    "SelectionSpec",
    "RecommendationSpec",
    "TrainingSpec",
    "ServingSpec",
    "MAX_WORKERS",
    "FeedbackSpec",
    "GateSpec",
    "MonitorSpec",
    "PolicySpec",
    "FaqSpec",
    "KeysSpec",
    "load_spec",
    "save_spec",
    "SPEC_FILE",
]

SPEC_FILE = "modelloop.yaml"
#: the built-in tasks (``modelloop.tasks.task_names()`` lists every task, plugins included)
TASKS = ("image-classification", "text-classification", "audio-classification", "tabular-classification",
         "tabular-regression", "recommendation", "faq")
METRICS = ("accuracy", "f1_macro", "precision_macro", "recall_macro")
FAMILIES = ("linear", "mlp", "cnn")


class _Strict(BaseModel):
    # Every number in a spec is finite: a target of NaN would pass every comparison's negation.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class SplitSpec(_Strict):
    """Fractions of each class held out for validation and test; the rest trains."""

    validation: float = Field(0.15, gt=0, lt=0.5)
    test: float = Field(0.15, gt=0, lt=0.5)
    seed: int = 0


class AugmentSpec(_Strict):
    """Training-time augmentation. ``shift`` is the largest random translation in pixels (images).
    ``copies`` (audio) is how many perturbed copies of each training clip join the training split
    (speed, time shift, gain, noise; see ``data.audio.augment_waveforms``)."""

    shift: int = Field(2, ge=0, le=8)
    copies: int = Field(3, ge=0, le=16)


class DataSpec(_Strict):
    """Where the data comes from and how it is prepared.

    ``source`` is a folder of class subfolders of images, a CSV/TSV/JSONL/Parquet file of texts
    (columns ``text_column`` and ``label_column``), a folder of class subfolders of audio clips
    (WAV/FLAC/OGG), a CSV/TSV/JSONL/Parquet table of feature columns and a target column
    (``label_column``; a table without ``label`` may name it ``target``), or ``builtin:NAME``.
    ``image_size`` is ``[height, width]``; by default the most common size in the data.
    ``on_bad_file``: ``drop`` removes unreadable files and lists them in the data report;
    ``error`` stops the run at the first one.
    """

    source: str
    image_size: tuple[int, int] | None = None
    split: SplitSpec = SplitSpec()
    augmentation: AugmentSpec = AugmentSpec()
    on_bad_file: Literal["drop", "error"] = "drop"
    text_column: str = "text"
    label_column: str = "label"

    @field_validator("source")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be a folder path or builtin:NAME, not empty")
        return v

    @field_validator("image_size")
    @classmethod
    def _size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not all(4 <= s <= 512 for s in v):
            raise ValueError("must be [height, width] with each between 4 and 512")
        return v


class Requirements(_Strict):
    """What a model must achieve to be shipped.

    ``metric`` on the test split must reach ``target`` (at least it; at most it for the error
    metrics ``rmse`` and ``mae``). Without a ``target``, the model must be significantly better
    than the task's trivial baseline on the test split (majority class, mean value, popularity
    ranking; paired per test example or user, at ``gate.confidence``), so that a first run on
    new data can serve; the report states the baseline and the test. Classification tasks
    measure accuracy, f1_macro, precision_macro or recall_macro; regression measures r2 (the
    default there), rmse or mae, in the target's units; recommendation ndcg@10 (the default
    there), precision@10 or recall@10; FAQ answering top1 (top-1 accuracy of the in-scope
    questions, the default there), mrr@5 or recall@3. Which metrics a task takes, and its default metric, are
    the task's to say (see ``Task.check_spec``). The optional budgets gate too:
    ``p95_latency_ms`` (single-item prediction on this machine) and ``max_model_size_mb``
    (artifact size). ``time_budget_s`` bounds the whole training run (selection + training).
    """

    metric: Literal["accuracy", "f1_macro", "precision_macro", "recall_macro", "r2", "rmse", "mae",
                    "ndcg@10", "precision@10", "recall@10", "top1", "mrr@5", "recall@3"] = "accuracy"
    #: None (unset): significantly better than the task's trivial baseline on the test split
    target: float | None = None
    p95_latency_ms: float | None = Field(None, gt=0)
    max_model_size_mb: float | None = Field(None, gt=0)
    time_budget_s: float = Field(600.0, gt=0)

    @field_validator("target")
    @classmethod
    def _target_fits_metric(cls, v: float | None, info) -> float | None:
        if v is None:
            return v
        metric = info.data.get("metric", "accuracy")
        if metric in LOWER_IS_BETTER:
            if v < 0:
                raise ValueError(f"must be an error >= 0 for {metric}")
        elif v > 1.0 or (metric != "r2" and v < 0):
            raise ValueError(f"must be {'<= 1' if metric == 'r2' else 'between 0 and 1'} for {metric}")
        return v


#: metrics where smaller is better (errors, in the target's units)
LOWER_IS_BETTER = ("rmse", "mae")


class SelectionSpec(_Strict):
    """Technology selection: which candidates compete, how much search each gets, how one is chosen.

    ``candidates``: unset lets the task choose for the data (and record why); image tasks know
    linear, mlp, cnn, efficientnet (frozen ImageNet features + head) and efficientnet-finetune;
    text tasks know tfidf-linear, minilm-linear, minilm-mlp and minilm-lora; audio tasks know cnn
    and ds-cnn (both on log-mel spectrograms); tabular tasks know linear, mlp and hgb (gradient-boosted
    trees), all on the featurized row. The names are checked by the task (``Task.check_spec``).
    ``choose``: ``cheapest`` takes the candidate with the lowest p95 latency (then size) among
    those meeting every requirement on the validation split, with ``quality_margin`` added to the
    target to allow for a small validation split's noise; ``best`` takes the best validation
    quality. With no candidate meeting the requirements, the best is taken and a warning recorded.
    ``distill``: when a pretrained candidate is chosen, the best small candidate is also trained
    on its soft predictions (knowledge distillation) and ships instead when it meets every
    requirement at a lower latency.
    """

    candidates: list[str] | None = None
    trials: int = Field(9, ge=1, le=500)
    epochs_per_trial: int = Field(8, ge=1, le=200)
    share_of_budget: float = Field(0.5, gt=0, le=0.9)
    choose: Literal["cheapest", "best"] = "cheapest"
    quality_margin: float = Field(0.01, ge=0, le=0.5)
    distill: bool = True

    @field_validator("candidates")
    @classmethod
    def _some(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("must name at least one candidate (or leave it unset to let the task choose)")
        return list(dict.fromkeys(v))


class TrainingSpec(_Strict):
    """Final training of the chosen candidate."""

    max_epochs: int = Field(40, ge=1, le=1000)
    patience: int = Field(6, ge=1, le=100)
    batch_size: int = Field(64, ge=1, le=4096)


class KeysSpec(_Strict):
    """API keys by role. Prefer the environment (MODELLOOP_CLIENT_KEYS / MODELLOOP_ADMIN_KEYS,
    comma-separated) over writing keys here; with neither, ``modelloop serve`` creates a key of
    each role in ``.modelloop/keys.json`` (see ``modelloop keys DIR``)."""

    client: list[str] = []
    admin: list[str] = []

    @field_validator("client", "admin")
    @classmethod
    def _long_enough(cls, v: list[str]) -> list[str]:
        for k in v:
            if len(k) < 16:
                raise ValueError("each key must be at least 16 characters")
        return v


#: the most server processes ``modelloop serve`` runs (``serving.workers``, ``--workers``)
MAX_WORKERS = 64


class ServingSpec(_Strict):
    """How ``modelloop serve`` runs.

    ``backends``: candidates tried at registration (the fastest that passes parity wins).
    ``max_batch_size`` / ``max_wait_ms``: adaptive micro-batching; a request alone never waits
    longer than ``max_wait_ms`` for company (and not at all when nothing else is in flight).
    ``open_predict``: predict without a key. Feedback and admin calls always need one.

    Limits on what one request may make the server do (each refusal is a 422 naming the file or
    field, what was received and the limit; a body over ``max_body_bytes`` is a 413):
    ``max_image_pixels`` per uploaded image (width x height, read from the header before any
    decoding; at most Pillow's decompression-bomb threshold), ``max_files`` uploads per request,
    ``max_audio_seconds`` and ``max_audio_sample_rate`` per clip (from the header for files),
    ``max_text_chars`` per text, ``max_row_fields`` per table row. ``decode_threads``: worker
    threads that decode uploads and parse large bodies, off the event loop (more requests wait
    their turn instead of competing for memory).

    ``workers``: server processes on one port (``modelloop serve --workers`` overrides it); more
    than one needs a PostgreSQL feedback store, which every process writes to.
    """

    backends: list[Literal["torch", "torch-bf16", "onnxruntime", "onnxruntime-int8"]] = [
        "torch", "torch-bf16", "onnxruntime", "onnxruntime-int8"]
    max_accuracy_drop: float = Field(0.005, ge=0, le=0.2)
    max_batch_size: int = Field(64, ge=1, le=4096)
    max_wait_ms: float = Field(2.0, ge=0, le=1000)
    threads: int = Field(1, ge=1, le=64)
    open_predict: bool = True
    max_body_bytes: int = Field(10_000_000, ge=1024)
    max_image_pixels: int = Field(40_000_000, ge=64, le=89_478_485)
    max_files: int = Field(64, ge=1, le=1024)
    max_audio_seconds: float = Field(60.0, gt=0, le=3600)
    max_audio_sample_rate: int = Field(192_000, ge=8000, le=384_000)
    max_text_chars: int = Field(10_000, ge=1, le=1_000_000)
    max_row_fields: int = Field(1000, ge=1, le=100_000)
    decode_threads: int = Field(2, ge=1, le=64)
    workers: int = Field(1, ge=1, le=MAX_WORKERS)
    cors_origins: list[str] = []
    keys: KeysSpec = KeysSpec()

    @field_validator("backends")
    @classmethod
    def _has_torch(cls, v: list[str]) -> list[str]:
        if "torch" not in v:
            raise ValueError("must include 'torch', the reference every other backend is checked against")
        return list(dict.fromkeys(v))


class FeedbackSpec(_Strict):
    """Where feedback lives and how far it is trusted.

    ``store_url``: ``sqlite:///PATH`` or ``postgresql://USER@HOST:PORT/DB``; default a SQLite file
    in the project (``MODELLOOP_STORE_URL`` overrides both). ``untrusted_clients``: client
    fingerprints (see ``modelloop monitor``) whose feedback is kept but never trained or gated on.
    ``holdout_fraction``: share of labelled feedback (chosen by prediction id) kept out of
    training so the gate can compare champion and challenger on recent data neither trained on.

    ``semi_supervised``: whether a retrain also learns from served predictions nobody gave
    feedback on (pseudo-labels kept only where the teacher's confidence reaches
    ``pseudo_label_threshold``, consistent under the task's augmentation): ``auto`` where the
    task supports it and it was measured to help (``Task.semi_supervised == "auto"``), ``on``
    (image classification; refused by tasks that cannot), ``off``. ``unlabelled_ratio``:
    unlabelled inputs per labelled one in each training batch; ``max_unlabelled``: the most
    recent stored inputs without feedback that a retrain uses.
    Pseudo-labels never reach the validation split, the test split or the gate's hold-out.
    """

    store_url: str | None = None
    untrusted_clients: list[str] = []
    holdout_fraction: float = Field(0.3, ge=0.0, lt=1.0)
    #: share of the labelling queue's items drawn uniformly at random from the champion's
    #: predictions (origin ``audit``): the unbiased live-accuracy sample
    audit_fraction: float = Field(0.1, ge=0.0, le=1.0)
    #: how long an item handed out by ``GET /label/next`` stays reserved for its labeller
    lease_seconds: float = Field(300.0, gt=0, le=7 * 24 * 3600)
    #: the newest unlabelled predictions the queue ranks for each request
    queue_pool: int = Field(2000, ge=10, le=100_000)
    semi_supervised: Literal["auto", "on", "off"] = "auto"
    pseudo_label_threshold: float = Field(0.95, gt=0.5, le=1.0)
    unlabelled_ratio: int = Field(2, ge=1, le=16)
    max_unlabelled: int = Field(20_000, ge=1, le=1_000_000)

    @field_validator("semi_supervised", mode="before")
    @classmethod
    def _yaml_switch(cls, v: Any) -> Any:
        # YAML 1.1 reads a bare on/off (and yes/no) as a boolean: take it as the switch it was meant as.
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class GateSpec(_Strict):
    """How a challenger is judged against the champion (see ``gate.py``)."""

    confidence: float = Field(0.95, gt=0.5, lt=1.0)
    max_accuracy_drop: float = Field(0.02, ge=0, le=1)
    max_class_recall_drop: float = Field(0.06, ge=0, le=1)
    #: regression: the largest test RMSE rise (relative, beyond chance) a challenger may have
    max_error_increase: float = Field(0.05, ge=0)
    max_feedback_disagreement: float = Field(0.15, gt=0, le=1)
    min_feedback_for_evidence: int = Field(20, ge=1)


class MonitorSpec(_Strict):
    """Drift and live-accuracy monitoring (``modelloop monitor``)."""

    window: int = Field(300, ge=20, le=100_000)
    reference_size: int = Field(500, ge=20, le=100_000)
    permutations: int = Field(200, ge=20, le=10_000)
    drift_p_value: float = Field(0.01, gt=0, lt=0.5)
    psi_threshold: float = Field(0.2, gt=0)
    #: share of validation inputs the OOD threshold keeps in distribution (set at registration)
    ood_quantile: float = Field(0.99, gt=0.5, lt=1.0)


class PolicySpec(_Strict):
    """What ``modelloop watch`` does by itself.

    Retrain when ``min_new_feedback`` labelled feedback arrived since the champion was trained,
    when input drift is detected, or when live accuracy's upper bound falls below
    ``live_accuracy_floor`` (default: the requirement's target). ``promote: auto`` promotes a
    challenger the gate passes; ``manual`` leaves it as ``challenger`` for ``modelloop promote``.
    A freshly promoted champion is rolled back when its live accuracy is significantly below its
    predecessor's, once each has ``rollback_min_feedback`` labelled predictions.
    """

    promote: Literal["auto", "manual"] = "auto"
    min_new_feedback: int = Field(100, ge=1)
    retrain_on_drift: bool = True
    live_accuracy_floor: float | None = Field(None, ge=0, le=1)
    rollback_min_feedback: int = Field(30, ge=5)
    interval_s: float = Field(60.0, gt=0)
    #: audit labels the live-accuracy trigger needs before it decides on the audit figure
    #: (below: on the feedback figure, which is biased, and says so)
    min_audit_labels: int = Field(30, ge=5)


class RecommendationSpec(_Strict):
    """The ``recommendation:`` section of a recommendation project: the columns of the interactions
    table, the optional item-text table, and the candidates.

    Example::

        task: recommendation
        data:
          source: builtin:movielens-100k        # or a CSV/TSV/Parquet file of interactions
          split: {validation: 0.15, test: 0.15, seed: 0}
        requirements: {metric: ndcg@10, target: 0.05}
        recommendation:
          user_column: user
          item_column: item
          rating_column: rating                 # null: implicit data (every row counts 1)
          timestamp_column: null                # with one, the latest duplicate (user, item) row wins
          items: null                           # optional item table with texts (titles, genres)
          item_id_column: null
          item_text_columns: []
          candidates: [popularity, mf, bpr, ease, two-tower]   # or {kind: mf, factors: 32, epochs: 20, ...}

    ``candidates`` are names or settings mappings (a ``kind``, an optional ``name`` for the
    leaderboard, and the model's settings such as ``epochs`` or ``factors``). This section checks
    their shape and that their names are distinct; which kinds exist and which settings they take
    is the recommendation task's to check (``modelloop.tasks.recommendation``).
    """

    user_column: str = "user"
    item_column: str = "item"
    rating_column: str | None = "rating"
    timestamp_column: str | None = None
    items: str | None = None
    item_id_column: str | None = None
    item_text_columns: list[str] = []
    candidates: list[str | dict[str, Any]] | None = None
    click_rating: float | None = Field(None, description=(
        "Rating a click counts as when retraining on explicit ratings; default: the 75th percentile "
        "of the training ratings. Implicit data: 1."))
    max_k: int = Field(100, ge=1, le=10_000)

    @field_validator("candidates")
    @classmethod
    def _shapes(cls, v: list[str | dict[str, Any]] | None) -> list[str | dict[str, Any]] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("must name at least one candidate (or leave it unset to let the task choose)")
        names = [recommendation_candidate(c)[2] for c in v]  # raises ValueError with the reason
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"candidate name(s) {dup} appear twice; give each a distinct 'name'")
        return v

    @field_validator("items")
    @classmethod
    def _items_need_text(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must be a path to an item table, or null")
        return v


class FaqSpec(_Strict):
    """The ``faq:`` section of a customer-service (FAQ answering) project.

    Example::

        task: faq
        data:
          source: builtin:faq-example            # or a CSV/TSV/JSONL/Parquet file of FAQ entries
          split: {validation: 0.15, test: 0.15, seed: 0}   # of the example questions
        faq:
          id_column: id                          # absent from the file: the row number is the id
          question_column: question
          answer_column: answer
          examples: null                         # optional customer questions: columns query, id
          query_column: query                    # (an empty id: a question no entry answers)
          example_id_column: id
          candidates: null                       # default: every candidate the data allows
          answer_rate: 0.9                       # the threshold answers at least this share of
                                                 # the in-scope validation questions
          max_question_chars: 1000
          max_k: 10

    ``examples: builtin:faq-example`` takes the built-in example's customer questions.
    """

    id_column: str = "id"
    question_column: str = "question"
    answer_column: str = "answer"
    examples: str | None = None
    query_column: str = "query"
    example_id_column: str = "id"
    candidates: list[str] | None = None
    answer_rate: float = Field(0.9, gt=0, le=1)
    max_question_chars: int = Field(1000, ge=10, le=100_000)
    max_k: int = Field(10, ge=1, le=100)
    fine_tune_epochs: int = Field(4, ge=1, le=100)

    @field_validator("candidates")
    @classmethod
    def _some(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("must name at least one candidate (or leave it unset to let the task choose)")
        return v


def recommendation_candidate(c: Any) -> tuple[str, dict[str, Any], str]:
    """A ``recommendation.candidates`` entry -> (its name or kind, its settings, its leaderboard label).

    Raises:
        ValueError: the entry is neither a name nor a mapping with a ``kind``, naming what was received.
    """
    if isinstance(c, str):
        name, settings = c, {}
    elif isinstance(c, dict):
        if "kind" not in c:
            raise ValueError(f"candidate {c!r}: no 'kind'; expected e.g. {{kind: mf, epochs: 20}}")
        settings = {k: v for k, v in c.items() if k not in ("kind", "name")}
        name = str(c["kind"])
    else:
        raise ValueError(f"candidate {c!r}: received {type(c).__name__}; expected a name or a mapping with 'kind'")
    label = c.get("name") if isinstance(c, dict) and c.get("name") else (
        name if not settings else f"{name}({', '.join(f'{k}={v}' for k, v in sorted(settings.items()))})")
    return name, settings, str(label)


class ComputeSpec(_Strict):
    """Where fits and searches run (see ``modelloop.backends`` and docs/scaling.md).

    ``backend: local`` (the default) runs everything in the command's own process. ``backend: ray``
    runs the candidate search's trials as Ray Tune trials and a network's final fit as a Ray Train
    ``TorchTrainer`` with ``workers`` data-parallel processes; it needs ``pip install 'modelloop[ray]'``.

    Attributes:
        backend: "local" or "ray".
        address: the Ray cluster: "auto" (the one this machine is part of, or ``RAY_ADDRESS``),
            "HOST:PORT" of its head node, "ray://HOST:10001" (Ray Client), or "local" (start a
            private one-machine cluster for this command).
        workers: data-parallel processes of a final fit, and trials that run at once.
        cpus_per_worker: CPUs each trial and each training process reserves (its torch threads).
        gpus_per_worker: GPUs each reserves; above 0, training uses CUDA and NCCL.
        storage: where checkpoints and trial results go: a folder every node sees (NFS) or a
            URI (``s3://...``, ``gs://...``); None: ``.modelloop/ray`` in the project.
        max_failures: how many times a fit whose worker died restarts from its last checkpoint.
    """

    backend: Literal["local", "ray"] = "local"
    address: str = "auto"
    workers: int = Field(2, ge=1, le=1024)
    cpus_per_worker: float = Field(1.0, gt=0, le=1024)
    gpus_per_worker: float = Field(0.0, ge=0, le=64)
    storage: str | None = None
    max_failures: int = Field(3, ge=0, le=100)


class Spec(_Strict):
    """A modelloop project: task, data, requirements and the knobs of each stage.

    ``task`` names a task: a built-in one (:data:`TASKS`) or a plugin's. That it exists, and what
    only it knows (candidates, metrics), is checked by :func:`modelloop.tasks.check_spec`.
    """

    name: str = "project"
    task: str = "image-classification"
    data: DataSpec
    requirements: Requirements = Requirements()
    selection: SelectionSpec = SelectionSpec()
    training: TrainingSpec = TrainingSpec()
    serving: ServingSpec = ServingSpec()
    feedback: FeedbackSpec = FeedbackSpec()
    gate: GateSpec = GateSpec()
    monitor: MonitorSpec = MonitorSpec()
    policy: PolicySpec = PolicySpec()
    compute: ComputeSpec = ComputeSpec()
    recommendation: RecommendationSpec | None = None  # recommendation projects only
    faq: FaqSpec | None = None  # FAQ answering projects only
    seed: int = 0

    @field_validator("task")
    @classmethod
    def _task_named(cls, v: str) -> str:
        if not v.strip():
            raise ValueError(f"must name a task, e.g. one of {', '.join(TASKS)}")
        return v

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        return f"field {loc!r}: unknown field (received {err['input']!r}); check the spelling"
    if err["type"] == "literal_error":
        return f"field {loc!r}: received {err.get('input')!r}; expected one of {err['ctx']['expected']}"
    if err["type"] == "missing":
        return f"field {loc!r}: missing; it is required"
    return f"field {loc!r}: received {err.get('input')!r}; expected: {msg}"


def parse_spec(data: Any, where: str = SPEC_FILE) -> Spec:
    """Validate a spec given as a mapping. Raises SpecError naming ``where`` and the field."""
    if not isinstance(data, dict):
        raise SpecError(f"{where}: received {type(data).__name__}; expected a mapping of spec fields")
    try:
        return Spec.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(_describe(err) for err in e.errors())
        raise SpecError(f"{where}: {problems}") from None


def load_spec(project_dir: str | Path) -> Spec:
    """Load and validate ``project_dir/modelloop.yaml``."""
    path = Path(project_dir) / SPEC_FILE
    if not path.is_file():
        raise SpecError(
            f"{path}: no such file; expected a project folder made by 'modelloop init DIR --task ... --data ...'"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML ({e}); expected a YAML mapping of spec fields") from None
    return parse_spec(data, str(path))


def save_spec(spec: Spec, project_dir: str | Path) -> Path:
    path = Path(project_dir) / SPEC_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # 0600: the spec may hold the feedback store's URL, password included.
    return write_private(path, yaml.safe_dump(spec.to_dict(), sort_keys=False))
