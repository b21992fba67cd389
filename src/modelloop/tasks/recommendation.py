"""The recommendation task's plugin entry.

Recommendation does not fit the classification contract (features in, class probabilities
out): the loop hands a recommendation project to :mod:`modelloop.recommendation.core` instead.
This class exists so that a recommendation project opens like any other and so that the
classification-shaped entry points (``/predict``, ``modelloop predict``) answer with a clear
pointer to ``/recommend``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError
from ..spec import DataSpec
from .base import Candidate, Task

__all__ = ["Recommendation", "PREDICT_HINT"]

PREDICT_HINT = ("this project serves recommendation; /predict is for classification projects; "
                "expected GET /recommend?user=USER&k=10 (or GET /similar?item=ITEM&k=10)")


class Recommendation(Task):
    name = "recommendation"
    input_kind = "interactions"
    resumable = False  # a recommendation run starts again from its data
    candidates: dict[str, Candidate] = {}
    default_candidates: tuple[str, ...] = ()

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

    # -- serving: GET /recommend and /similar instead of POST /predict ---------------------------
    # The route code lives in modelloop.recommendation.serve (imported when a server asks for it).
    served_route = "/recommend"

    def serve_model(self, registry, version: str, *, backend: str | None = None, threads: int = 1):
        """The registered recommender (``RecModel``); it has one serving backend, PyTorch."""
        from ..recommendation.core import load_version

        return load_version(registry, version)

    def routes(self, ctx):
        """``GET /recommend`` and ``GET /similar``."""
        from ..recommendation.serve import router

        return router(ctx)

    def check_predict(self) -> None:
        raise InputError(PREDICT_HINT)

    def check_feedback(self, label, predicted: str, version: str, ctx) -> str:
        """``label`` is the item the user clicked or rated: an item of the catalogue of the
        version that recommended (required, whatever ``predicted`` was)."""
        from ..recommendation.serve import check_item

        return check_item(ctx, version, label)
