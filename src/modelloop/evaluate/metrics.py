"""Classification and regression metrics as pure functions of labels and model outputs."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["classification_metrics", "regression_metrics", "r2_score", "measure_latency", "latency_ms"]


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro and per-class precision/recall/F1, confusion matrix, ROC-AUC.

    Args:
        y_true: (N,) int class indices.
        probs: (N, K) class probabilities.
    Returns:
        A JSON-able dict. ``roc_auc`` is binary AUC for two classes, one-vs-rest macro AUC for
        more, and None when a class is absent from ``y_true``.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    y_pred = probs.argmax(axis=1)
    labels = list(range(k))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    pm, rm, fm, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average="macro", zero_division=0)
    auc = None
    if len(np.unique(y_true)) == k and len(y_true) > 0:
        if k == 2:
            auc = float(roc_auc_score(y_true, probs[:, 1]))
        else:
            pn = probs / probs.sum(axis=1, keepdims=True)
            auc = float(roc_auc_score(y_true, pn, multi_class="ovr", average="macro", labels=labels))
    return {
        "n": int(len(y_true)),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else 0.0,
        "precision_macro": float(pm),
        "recall_macro": float(rm),
        "f1_macro": float(fm),
        "roc_auc": auc,
        "per_class": {
            c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(class_names)
        },
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination, 1 - SSE / SST (0.0 when the targets are constant or absent)."""
    y, p = np.asarray(y_true, dtype=np.float64), np.asarray(y_pred, dtype=np.float64)
    sst = float(((y - y.mean()) ** 2).sum()) if len(y) else 0.0
    return 1.0 - float(((y - p) ** 2).sum()) / sst if sst > 0 else 0.0


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, Any]:
    """RMSE, MAE and R² of predicted values, plus the targets' spread for scale.

    Args:
        y_true, y_pred: (N,) numbers, in the target's units.
    Returns:
        A JSON-able dict with ``n``, ``rmse``, ``mae``, ``r2``, ``target_std`` and ``mean_error``
        (bias: mean of prediction - truth).
    """
    y, p = np.asarray(y_true, dtype=np.float64).reshape(-1), np.asarray(y_pred, dtype=np.float64).reshape(-1)
    if not len(y):
        return {"n": 0, "rmse": None, "mae": None, "r2": None, "target_std": None, "mean_error": None}
    e = p - y
    return {"n": int(len(y)), "rmse": float(np.sqrt(np.mean(e ** 2))), "mae": float(np.mean(np.abs(e))),
            "r2": r2_score(y, p), "target_std": float(y.std()), "mean_error": float(e.mean())}


def latency_ms(call: Callable[[int], Any], runs: int = 60, warmup: int = 10) -> dict[str, float]:
    """p50 and p95 milliseconds of ``call(i)`` on this machine, after ``warmup`` untimed calls
    (``i`` counts the timed calls from 0, so a caller can vary the input)."""
    for i in range(warmup):
        call(i)
    times = []
    for i in range(runs):
        t = time.perf_counter()
        call(i)
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


def measure_latency(model: torch.nn.Module, example: torch.Tensor, runs: int = 60,
                    warmup: int = 10) -> dict[str, float]:
    """Single-item forward latency on this machine, in milliseconds (p50 and p95).

    example: (1, C, H, W) float input the model accepts.
    """
    model.eval()
    with torch.inference_mode():
        return latency_ms(lambda _: model(example), runs, warmup)
