"""The quality gate: does a model meet the requirements, and is a challenger at least as good?

Both questions are answered with their evidence, so the decision can be stored and shown later.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import binomtest

from .spec import Requirements

__all__ = ["check_requirements", "compare"]


def check_requirements(req: Requirements, metrics: dict[str, Any], latency: dict[str, float] | None,
                       size_mb: float | None) -> dict[str, Any]:
    """Each requirement with the measured value and whether it passed."""
    checks = [{"name": f"test {req.metric}", "value": metrics[req.metric], "target": f">= {req.target}",
               "passed": metrics[req.metric] >= req.target}]
    if req.p95_latency_ms is not None and latency is not None:
        checks.append({"name": "p95 latency (ms)", "value": latency["p95_ms"], "target": f"<= {req.p95_latency_ms}",
                       "passed": latency["p95_ms"] <= req.p95_latency_ms})
    if req.max_model_size_mb is not None and size_mb is not None:
        checks.append({"name": "model size (MB)", "value": size_mb, "target": f"<= {req.max_model_size_mb}",
                       "passed": size_mb <= req.max_model_size_mb})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def compare(req: Requirements, champion: dict[str, Any], challenger: dict[str, Any], y_true: np.ndarray,
            champion_pred: np.ndarray, challenger_pred: np.ndarray, challenger_requirements: dict[str, Any]
            ) -> dict[str, Any]:
    """Champion vs challenger on the same held-out test split.

    The challenger is promoted when it meets every requirement and its metric is not below the
    champion's. McNemar's exact test on the paired predictions is recorded as evidence of how
    significant the difference is.
    """
    champ_right = champion_pred == y_true
    chall_right = challenger_pred == y_true
    b = int(np.sum(champ_right & ~chall_right))  # only the champion right
    c = int(np.sum(~champ_right & chall_right))  # only the challenger right
    p_value = float(binomtest(b, b + c, 0.5).pvalue) if b + c > 0 else 1.0
    metric = req.metric
    not_worse = challenger[metric] >= champion[metric]
    reasons = []
    if not challenger_requirements["passed"]:
        failed = [ch["name"] for ch in challenger_requirements["checks"] if not ch["passed"]]
        reasons.append("challenger misses requirements: " + ", ".join(failed))
    if not not_worse:
        reasons.append(f"challenger test {metric} {challenger[metric]:.4f} < champion {champion[metric]:.4f}")
    promoted = challenger_requirements["passed"] and not_worse
    return {
        "decision": "promoted" if promoted else "rejected",
        "reasons": reasons or [f"challenger meets requirements and test {metric} "
                               f"{challenger[metric]:.4f} >= champion {champion[metric]:.4f}"],
        "metric": metric,
        "champion_value": champion[metric],
        "challenger_value": challenger[metric],
        "test_examples": int(len(y_true)),
        "mcnemar": {"only_champion_right": b, "only_challenger_right": c, "p_value": p_value},
        "requirements": challenger_requirements,
    }
