"""The recommendation task's plugin entry.

Recommendation does not fit the classification contract (features in, class probabilities
out): the loop hands a recommendation project to :mod:`modelloop.recommendation.core` instead.
This class exists so that a recommendation project opens like any other, so that the
classification-shaped entry points (``/predict``, ``modelloop predict``) answer with a clear
pointer to ``/recommend``, and so that the task checks its own part of the spec.

Candidates (``recommendation.candidates``) are names or settings mappings. Names: ``popularity``;
``mf`` (biased matrix factorization, MSE on explicit ratings, BPR on implicit data); ``bpr`` (the
same model trained with BPR, 4 negatives per positive, settings tuned on MovieLens-100k); ``ease``
(closed-form item-item model, Steck 2019: the strongest ranker on MovieLens-100k, for catalogues
up to ~20k items); ``two-tower`` (user id tower x item id + MiniLM text tower); any further kind
that :func:`modelloop.models.recommend.build_recommender` knows is passed through as is. A
mapping names its ``kind`` (one of those names), an optional ``name`` for the leaderboard, and
the model's settings (e.g. ``epochs``, ``factors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError, SpecError
from ..spec import DataSpec, RecommendationSpec, Spec, recommendation_candidate
from .base import Candidate, Task

__all__ = ["Recommendation", "PREDICT_HINT", "RANKING_METRICS", "ALIASES", "candidate_configs", "K"]

#: list length of every ranking metric and of the gate
K = 10
RANKING_METRICS = ("ndcg@10", "precision@10", "recall@10")
#: spec names -> (recommender kind, fixed settings); "mf" picks its loss from the data
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "popularity": ("popularity", {}),
    "mf": ("mf", {}),
    "bpr": ("mf", {"loss": "bpr", "lr": 0.005, "reg": 0.01, "negatives": 4, "epochs": 100}),
    "two-tower": ("two_tower", {}),
    "two_tower": ("two_tower", {}),
}
DEFAULT_EXPLICIT = ("popularity", "mf", "bpr", "ease", "two-tower")
DEFAULT_IMPLICIT = ("popularity", "bpr", "ease", "two-tower")

PREDICT_HINT = ("this project serves recommendation; /predict is for classification projects; "
                "expected GET /recommend?user=USER&k=10 (or GET /similar?item=ITEM&k=10)")


class Recommendation(Task):
    name = "recommendation"
    input_kind = "interactions"
    resumable = False  # a recommendation run starts again from its data
    candidates: dict[str, Candidate] = {}
    default_candidates: tuple[str, ...] = ()
    metric_kind = "ranking"
    metrics = RANKING_METRICS
    default_metric = "ndcg@10"
    default_target = 0.05

    def _check_candidates(self, spec: Spec) -> None:
        """The candidates live in ``recommendation.candidates`` (not ``selection.candidates``), and
        each must be a recommender kind that takes its settings."""
        if spec.selection.candidates:
            raise SpecError(f"field 'selection.candidates': received {spec.selection.candidates!r}; expected "
                            "none for recommendation: list the candidates under recommendation.candidates "
                            "(names or {kind: ..., settings})")
        entries = spec.recommendation.candidates if spec.recommendation else None
        for c in entries or []:
            try:
                _resolve(c, explicit=True)
            except ValueError as e:
                raise SpecError(f"field 'recommendation.candidates': received {entries!r}; expected: {e}") from None

    def prepare(self, data: DataSpec, base_dir: Path):
        raise InputError("recommendation data is prepared by modelloop.recommendation.core; "
                         "expected 'modelloop run DIR'")

    def candidates_for(self, ds) -> tuple[list[str], dict[str, str]]:
        return [], {}

    def collate(self, items: list[Any], like) -> tuple[Any, list[bool]]:
        return [], [False] * len(items)

    def parse_json(self, body: Any, model, limits=None) -> tuple[Any, bool]:
        raise InputError(PREDICT_HINT)

    def describe_input(self, model) -> dict[str, Any]:
        return {"input": "user id", "endpoints": ["/recommend?user=USER&k=10&exclude_seen=true",
                                                  "/similar?item=ITEM&k=10"]}


def _known_kinds() -> list[str]:
    from ..models import recommend

    kinds = getattr(recommend, "_KINDS", {})
    return sorted(kinds)


def _resolve(c: str | dict[str, Any], explicit: bool) -> dict[str, Any]:
    """A candidate entry -> {"name", "config"} with config ready for ``build_recommender``.

    Raises ValueError naming what was received and what was expected.
    """
    name, settings, label = recommendation_candidate(c)
    if name in ALIASES:
        kind, fixed = ALIASES[name]
    else:
        kinds = _known_kinds()
        if name not in kinds:
            raise ValueError(f"unknown candidate {name!r}; expected some of "
                             f"{', '.join(dict.fromkeys([*ALIASES, *kinds]))}")
        kind, fixed = name, {}
    config = {"kind": kind, **fixed, **settings}
    if kind == "mf" and "loss" not in config:
        config["loss"] = "mse" if explicit else "bpr"
    try:
        from ..models.recommend import build_recommender

        build_recommender(config)
    except InputError as e:
        raise ValueError(f"candidate {label!r}: {e}") from None
    return {"name": label, "config": config}


def candidate_configs(rec: RecommendationSpec, explicit: bool) -> list[dict[str, Any]]:
    """The candidates to compete: [{"name", "config"}] for ``build_recommender``."""
    entries = rec.candidates or list(DEFAULT_EXPLICIT if explicit else DEFAULT_IMPLICIT)
    return [_resolve(c, explicit) for c in entries]
