"""The ``recommendation:`` section of ``modelloop.yaml`` and the task's candidate names, kept here
for the modules of this package.

The section itself is :class:`modelloop.spec.RecommendationSpec` (the spec layer checks its
shape); the candidate names, their settings and the checks only the task can make are in
:mod:`modelloop.tasks.recommendation`, and :func:`modelloop.tasks.check_spec` runs them.
"""

from __future__ import annotations

from ..spec import RecommendationSpec
from ..tasks import check_spec
from ..tasks.recommendation import (
    ALIASES,
    DEFAULT_EXPLICIT,
    DEFAULT_IMPLICIT,
    RANKING_METRICS,
    K,
    candidate_configs,
)

__all__ = ["RecommendationSpec", "RANKING_METRICS", "ALIASES", "DEFAULT_EXPLICIT", "DEFAULT_IMPLICIT",
           "candidate_configs", "check_spec", "K"]
