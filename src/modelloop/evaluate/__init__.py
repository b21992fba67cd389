"""Evaluation: metrics (pure functions) and the HTML report."""

from .metrics import classification_metrics, measure_latency, regression_metrics

__all__ = ["classification_metrics", "measure_latency", "regression_metrics"]
