"""Rating and top-k ranking metrics, as Microsoft Recommenders defines them (pure functions).

Ranking metrics take, per user, the recommended list (best first, already without the items the
user rated in training) and the set of relevant items (the user's test items). They average over
the users present in both mappings; a user with no hit counts as 0.

- precision@k = hits in the top k / k
- recall@k = hits in the top k / number of relevant items
- NDCG@k = sum over hits at rank r (1-based) of 1/log2(r + 1), divided by the ideal
  sum_{r=1..min(|relevant|, k)} 1/log2(r + 1) (binary relevance)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ..errors import InputError

__all__ = ["rmse", "mae", "precision_at_k", "recall_at_k", "ndcg_at_k", "ranking_metrics", "per_user_ranking"]


def _pair(y_true: Iterable[float], y_pred: Iterable[float]) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(y_true, dtype=np.float64).ravel()
    p = np.asarray(y_pred, dtype=np.float64).ravel()
    if t.shape != p.shape or t.size == 0:
        raise InputError(f"ratings: received {t.size} true and {p.size} predicted values; expected equal, non-zero")
    return t, p


def rmse(y_true: Iterable[float], y_pred: Iterable[float]) -> float:
    """Root mean squared error."""
    t, p = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((t - p) ** 2)))


def mae(y_true: Iterable[float], y_pred: Iterable[float]) -> float:
    """Mean absolute error."""
    t, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(t - p)))


def ranking_metrics(recommended: Mapping[str, Sequence[str]], relevant: Mapping[str, Iterable[str]],
                    k: int = 10) -> dict[str, float]:
    """precision@k, recall@k and NDCG@k averaged over users in both mappings.

    Args:
        recommended: user -> items, best first (only the first ``k`` are used).
        relevant: user -> the user's relevant (test) items.
        k: list length, >= 1.

    Returns:
        {"precision": ..., "recall": ..., "ndcg": ..., "users": number of users averaged over}.

    Raises:
        InputError: ``k`` < 1 or no user in common.
    """
    if not isinstance(k, int) or k < 1:
        raise InputError(f"k: received {k!r}; expected an integer >= 1")
    users = [u for u in relevant if u in recommended]
    if not users:
        raise InputError("ranking metrics: no user appears in both recommended and relevant; expected overlap")
    per = per_user_ranking([list(recommended[u]) for u in users], users, relevant, k)
    return {"precision": float(per["precision"].mean()), "recall": float(per["recall"].mean()),
            "ndcg": float(per["ndcg"].mean()), "users": float(len(users))}


def per_user_ranking(lists: Sequence[Sequence[str]], users: Sequence[str], relevant: Mapping[str, Iterable[str]],
                     k: int = 10) -> dict[str, np.ndarray]:
    """Per-user precision@k, recall@k, NDCG@k (binary relevance) and hit@k, aligned with ``users``
    (``lists[i]`` is user ``users[i]``'s list, best first). A user without relevant items scores 0."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))                 # (k,) discount at ranks 1..k
    n = len(users)
    prec, rec, ndcg, hit = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    for j, (u, lst) in enumerate(zip(users, lists, strict=True)):
        truth = set(relevant[u])
        if not truth:
            continue
        hits = np.array([item in truth for item in list(lst)[:k]], dtype=np.float64)
        n_hit = hits.sum()
        prec[j] = n_hit / k
        rec[j] = n_hit / len(truth)
        ndcg[j] = float((hits * discounts[: len(hits)]).sum() / discounts[: min(len(truth), k)].sum())
        hit[j] = float(n_hit > 0)
    return {"precision": prec, "recall": rec, "ndcg": ndcg, "hit": hit}


def precision_at_k(recommended: Mapping[str, Sequence[str]], relevant: Mapping[str, Iterable[str]],
                   k: int = 10) -> float:
    """See :func:`ranking_metrics`."""
    return ranking_metrics(recommended, relevant, k)["precision"]


def recall_at_k(recommended: Mapping[str, Sequence[str]], relevant: Mapping[str, Iterable[str]],
                k: int = 10) -> float:
    """See :func:`ranking_metrics`."""
    return ranking_metrics(recommended, relevant, k)["recall"]


def ndcg_at_k(recommended: Mapping[str, Sequence[str]], relevant: Mapping[str, Iterable[str]],
              k: int = 10) -> float:
    """See :func:`ranking_metrics`."""
    return ranking_metrics(recommended, relevant, k)["ndcg"]
