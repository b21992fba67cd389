"""Classification metrics as pure functions of labels and class probabilities."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

__all__ = ["classification_metrics", "measure_latency"]


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict[str, Any]:
    """Accuracy, macro and per-class precision/recall/F1, confusion matrix, ROC-AUC.

    Args:
        y_true: (N,) int class indices.
        probs: (N, K) class probabilities.
    Returns:
        A JSON-able dict. ``roc_auc`` is binary AUC for two classes, one-vs-rest macro AUC for
        more, and None when a class is absent from ``y_true``.
    """
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


def measure_latency(model: torch.nn.Module, example: torch.Tensor, runs: int = 60,
                    warmup: int = 10) -> dict[str, float]:
    """Single-item forward latency on this machine, in milliseconds (p50 and p95).

    example: (1, C, H, W) float input the model accepts.
    """
    model.eval()
    times = []
    with torch.inference_mode():
        for i in range(warmup + runs):
            t = time.perf_counter()
            model(example)
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}
