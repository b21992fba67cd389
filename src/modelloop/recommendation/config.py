"""The ``recommendation:`` section of a recommendation project's ``modelloop.yaml``.

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

Candidates are names or settings mappings. Names: ``popularity``; ``mf`` (biased matrix
factorization, MSE on explicit ratings, BPR on implicit data); ``bpr`` (the same model trained
with BPR, 4 negatives per positive, settings tuned on MovieLens-100k); ``ease`` (closed-form
item-item model, Steck 2019: the strongest ranker on MovieLens-100k, for catalogues up to ~20k
items); ``two-tower`` (user id tower x item id + MiniLM text tower); any further kind that
:func:`modelloop.models.recommend.build_recommender` knows is passed through as is. A mapping
names its ``kind`` (one of those names), an optional ``name`` for the leaderboard, and the
model's settings (e.g. ``epochs``, ``factors``).

This module imports only pydantic at load time, so :mod:`modelloop.spec` can import it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = ["RecommendationSpec", "RANKING_METRICS", "ALIASES", "candidate_configs", "check_spec", "K"]

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


class RecommendationSpec(BaseModel):
    """Columns of the interactions table, the optional item-text table, and the candidates."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # finite numbers only

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
    def _known(cls, v: list[str | dict[str, Any]] | None) -> list[str | dict[str, Any]] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("must name at least one candidate (or leave it unset to let the task choose)")
        names = []
        for c in v:
            cfg = _resolve(c, explicit=True)   # raises ValueError with the reason
            names.append(cfg["name"])
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


def _known_kinds() -> list[str]:
    from ..models import recommend

    kinds = getattr(recommend, "_KINDS", {})
    return sorted(kinds)


def _resolve(c: str | dict[str, Any], explicit: bool) -> dict[str, Any]:
    """A candidate entry -> {"name", "config"} with config ready for ``build_recommender``.

    Raises ValueError naming what was received and what was expected.
    """
    from ..errors import InputError

    if isinstance(c, str):
        name, settings = c, {}
    elif isinstance(c, dict):
        if "kind" not in c:
            raise ValueError(f"candidate {c!r}: no 'kind'; expected e.g. {{kind: mf, epochs: 20}}")
        settings = {k: v for k, v in c.items() if k not in ("kind", "name")}
        name = str(c["kind"])
    else:
        raise ValueError(f"candidate {c!r}: received {type(c).__name__}; expected a name or a mapping with 'kind'")
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
    label = c.get("name") if isinstance(c, dict) and c.get("name") else (
        name if not settings else f"{name}({', '.join(f'{k}={v}' for k, v in sorted(settings.items()))})")
    try:
        from ..models.recommend import build_recommender

        build_recommender(config)
    except InputError as e:
        raise ValueError(f"candidate {label!r}: {e}") from None
    return {"name": str(label), "config": config}


def candidate_configs(rec: RecommendationSpec, explicit: bool) -> list[dict[str, Any]]:
    """The candidates to compete: [{"name", "config"}] for ``build_recommender``."""
    entries = rec.candidates or list(DEFAULT_EXPLICIT if explicit else DEFAULT_IMPLICIT)
    return [_resolve(c, explicit) for c in entries]


def check_spec(spec: Any) -> Any:
    """Spec checks for the recommendation task (called by the Spec's validator): the candidates
    live in ``recommendation.candidates``, not ``selection.candidates``. (The requirement metric,
    ``ndcg@10`` >= 0.05 unless set, is checked with every task's in ``Spec``.)
    """
    if spec.selection.candidates:
        raise ValueError("selection.candidates: received "
                         f"{spec.selection.candidates!r}; for recommendation, list the candidates under "
                         "recommendation.candidates (names or {kind: ..., settings})")
    return spec
