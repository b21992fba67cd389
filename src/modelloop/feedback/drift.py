"""Drift statistics: has live traffic moved away from what the model was trained on?

- Input drift: maximum mean discrepancy (MMD², RBF kernel, median-heuristic bandwidth) between
  model embeddings of a training reference sample and of recent live inputs, with a permutation
  test: the threshold is the (1 - p)-quantile of the statistic under random relabelling of the
  pooled samples, so it adapts to the sample sizes and the embedding.
- Prediction drift: the population stability index (PSI) between the distribution of predicted
  labels on the reference and on live traffic.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["embed", "mmd_test", "psi"]


def embed(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """The input of the model's last linear layer (its penultimate representation), (N, D); for a
    model without one (gradient-boosted trees), its input features."""
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linear:
        return x.reshape(len(x), -1).float().numpy() if len(x) else np.zeros((0, 0))
    last = linear[-1]
    captured: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    try:
        model.eval()
        with torch.inference_mode():
            for i in range(0, len(x), batch_size):
                model(x[i : i + batch_size])
    finally:
        hook.remove()
    return torch.cat(captured).reshape(len(x), -1).numpy() if captured else np.zeros((0, 0))


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T, 0.0)


def mmd_test(reference: np.ndarray, live: np.ndarray, permutations: int = 200, p_value: float = 0.01,
             seed: int = 0) -> dict[str, Any]:
    """MMD² between two samples with a permutation threshold.

    Returns ``{"statistic", "threshold", "p_value", "detected", "n_reference", "n_live"}``;
    ``detected`` when the statistic exceeds the threshold (the permutation p-value is below ``p_value``).
    """
    ref = np.asarray(reference, dtype=np.float64)
    liv = np.asarray(live, dtype=np.float64)
    n, m = len(ref), len(liv)
    pooled = np.concatenate([ref, liv])
    d = _sq_dists(pooled, pooled)
    bandwidth = float(np.median(d[np.triu_indices(len(pooled), k=1)])) or 1.0
    k = np.exp(-d / bandwidth)

    def stat(idx: np.ndarray) -> float:
        a, b = idx[:n], idx[n:]
        kaa = k[np.ix_(a, a)]
        kbb = k[np.ix_(b, b)]
        kab = k[np.ix_(a, b)]
        return float((kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
                     - 2 * kab.mean())

    observed = stat(np.arange(n + m))
    rng = np.random.default_rng(seed)
    null = np.array([stat(rng.permutation(n + m)) for _ in range(permutations)])
    p = float((1 + np.sum(null >= observed)) / (1 + permutations))
    threshold = float(np.quantile(null, 1 - p_value))
    return {"statistic": observed, "threshold": threshold, "p_value": p, "detected": bool(observed > threshold),
            "method": "MMD² (RBF kernel on model embeddings, permutation test)", "n_reference": n, "n_live": m}


def psi(reference_labels: list[str], live_labels: list[str], classes: list[str], eps: float = 1e-4) -> float:
    """Population stability index of two label distributions."""
    r = np.array([reference_labels.count(c) for c in classes], dtype=np.float64)
    live = np.array([live_labels.count(c) for c in classes], dtype=np.float64)
    r = np.clip(r / max(r.sum(), 1), eps, None)
    live = np.clip(live / max(live.sum(), 1), eps, None)
    return float(np.sum((live - r) * np.log(live / r)))
