"""The ranking gate: should a retrained recommender replace the champion?

Both models are compared on data neither trained on, paired:

1. **Test split, per user.** Each user's NDCG@10 under both models, on the test interactions
   minus the (user, item) pairs the challenger learned from feedback; both models rank the same
   items (each user's training items and feedback items excluded for both). One-sided Wilcoxon
   signed-rank tests (challenger worse / better) at the spec's ``gate.confidence``, and a paired
   bootstrap (2,000 resamples of users, fixed seed) for the lower one-sided confidence bound of
   the mean NDCG@10 drop (champion - challenger). The challenger is rejected when it is
   significantly worse, or when that lower bound exceeds ``gate.max_accuracy_drop`` (read here
   as an absolute NDCG@10 drop).
2. **Held-out feedback.** For the feedback kept out of training (chosen by prediction id), each
   clicked item was shown to the user in a served list, the *slate*. A model's full-catalogue
   top-k would favour the champion by construction (it chose what was shown), so the decision
   uses an exposure-fair comparison: both models re-rank the same slate, and for each held-out
   click we ask which one puts the clicked item higher. An exact binomial (sign / McNemar-style)
   test on the discordant pairs at ``gate.confidence`` rejects a challenger that ranks users'
   later choices significantly lower. The catalogue hit rate@10 of each model on the held-out
   clicks (with McNemar's exact test) is reported alongside as information. Held-out evidence
   counts once there are ``gate.min_feedback_for_evidence`` clicks.
3. The challenger must meet every requirement on the gate's test set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..gate import binomtest, conclude, missed_requirements
from .config import K
from .core import top_lists

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["judge", "test_evidence", "slate_evidence"]


def test_evidence(champ: np.ndarray, chall: np.ndarray, confidence: float, seed: int = 0) -> dict[str, Any]:
    """Paired per-user NDCG@10: Wilcoxon signed-rank both ways and a bootstrap bound of the drop."""
    n = len(champ)
    diff = champ - chall  # > 0: champion better
    nonzero = int(np.sum(diff != 0))
    if nonzero:
        from scipy.stats import wilcoxon

        p_worse = float(wilcoxon(chall, champ, alternative="less", zero_method="wilcox").pvalue)
        p_better = float(wilcoxon(chall, champ, alternative="greater", zero_method="wilcox").pvalue)
    else:
        p_worse = p_better = 1.0
    rng = np.random.default_rng(seed)
    if n:
        idx = rng.integers(0, n, size=(2000, n))
        boots = diff[idx].mean(1)
        bound = float(np.quantile(boots, 1 - confidence))
    else:
        bound = 0.0
    alpha = 1 - confidence
    return {"n_users": n, "champion_ndcg@10": float(champ.mean()) if n else None,
            "challenger_ndcg@10": float(chall.mean()) if n else None,
            "mean_drop": float(diff.mean()) if n else 0.0, "drop_lower_bound": bound,
            "users_champion_better": int(np.sum(diff > 0)), "users_challenger_better": int(np.sum(diff < 0)),
            "users_tied": int(np.sum(diff == 0)), "p_challenger_worse": p_worse, "p_challenger_better": p_better,
            "significantly_worse": bool(n > 0 and p_worse < alpha),
            "significantly_better": bool(n > 0 and p_better < alpha),
            "method": "one-sided Wilcoxon signed-rank on per-user NDCG@10; paired bootstrap (2000) for the drop"}


@torch.no_grad()
def _slate_ranks(model, users: list[str], slates: list[list[str]], items: list[str]) -> list[int | None]:
    """1-based rank of ``items[j]`` within ``slates[j]`` by the model's scores (None: not in the slate)."""
    scores = model.score_matrix(users, exclude_seen=False)
    out: list[int | None] = []
    for row, (slate, item) in enumerate(zip(slates, items, strict=True)):
        if item not in slate:
            out.append(None)
            continue
        vals = [float(scores[row, model.item_index[s]]) if s in model.item_index else -np.inf for s in slate]
        order = sorted(range(len(slate)), key=lambda j: (-vals[j], j))   # ties: the served order
        out.append(order.index(slate.index(item)) + 1)
    return out


def slate_evidence(champ_model, chall_model, hold: pd.DataFrame, exclude: dict[str, set[str]],
                   confidence: float) -> dict[str, Any]:
    """Held-out clicks: who ranks the clicked item higher within its slate, and catalogue hit@10."""
    alpha = 1 - confidence
    users = [str(u) for u in hold["user"]]
    items = [str(i) for i in hold["item"]]
    slates = [list(s) for s in hold["slate"]]
    ra = _slate_ranks(champ_model, users, slates, items) if users else []
    rb = _slate_ranks(chall_model, users, slates, items) if users else []
    pairs = [(a, b) for a, b in zip(ra, rb, strict=True) if a is not None and b is not None]
    champ_higher = sum(a < b for a, b in pairs)
    chall_higher = sum(b < a for a, b in pairs)
    m = champ_higher + chall_higher
    p_worse = float(binomtest(champ_higher, m, 0.5, alternative="greater").pvalue) if m else 1.0
    p_better = float(binomtest(chall_higher, m, 0.5, alternative="greater").pvalue) if m else 1.0
    # catalogue hit rate@10 (information: the champion chose the slates, so it is favoured here)
    ex = {u: set(exclude.get(u, set())) for u in users}
    la = top_lists(champ_model, users, K, ex) if users else []
    lb = top_lists(chall_model, users, K, ex) if users else []
    ha = np.array([i in lst for i, lst in zip(items, la, strict=True)], dtype=bool)
    hb = np.array([i in lst for i, lst in zip(items, lb, strict=True)], dtype=bool)
    only_a, only_b = int(np.sum(ha & ~hb)), int(np.sum(~ha & hb))
    d = only_a + only_b
    n = len(pairs)
    return {
        "n": n, "held_out_clicks": len(users), "clicks_outside_slate": len(users) - n,
        "champion_mrr_in_slate": float(np.mean([1 / a for a, _ in pairs])) if n else None,
        "challenger_mrr_in_slate": float(np.mean([1 / b for _, b in pairs])) if n else None,
        "champion_ranks_higher": champ_higher, "challenger_ranks_higher": chall_higher, "tied": n - m,
        "p_challenger_worse": p_worse, "p_challenger_better": p_better,
        "significantly_worse": bool(n > 0 and p_worse < alpha),
        "significantly_better": bool(n > 0 and p_better < alpha),
        "champion_hit_rate@10": float(ha.mean()) if len(ha) else None,
        "challenger_hit_rate@10": float(hb.mean()) if len(hb) else None,
        "hit_only_champion": only_a, "hit_only_challenger": only_b,
        "hit_mcnemar_p": float(min(1.0, 2 * binomtest(min(only_a, only_b), d, 0.5, alternative="less").pvalue))
        if d else 1.0,
        "method": "exact sign test on which model ranks the held-out clicked item higher within its served slate; "
                  "catalogue hit rate@10 with McNemar (information only: the champion chose the slates)",
    }


def judge(spec, champ_model, chall_model, champ_m: dict[str, Any], chall_m: dict[str, Any],
          champ_per: dict[str, np.ndarray], chall_per: dict[str, np.ndarray], chall_req: dict[str, Any],
          hold: pd.DataFrame, exclude: dict[str, set[str]], removed_from_test: int = 0) -> dict[str, Any]:
    """The decision and its evidence (see the module docs)."""
    gate = spec.gate
    reasons = missed_requirements(chall_req)
    test = test_evidence(champ_per["ndcg"], chall_per["ndcg"], gate.confidence, seed=spec.seed)
    test["removed_feedback_pairs"] = removed_from_test
    if test["significantly_worse"]:
        reasons.append(f"significantly worse on the test split: NDCG@10 {test['challenger_ndcg@10']:.4f} vs champion "
                       f"{test['champion_ndcg@10']:.4f} (Wilcoxon p = {test['p_challenger_worse']:.3g})")
    if test["drop_lower_bound"] > gate.max_accuracy_drop + 1e-9:
        reasons.append(f"test NDCG@10 drops by {test['mean_drop']:.4f} (lower {gate.confidence:.0%} bound "
                       f"{test['drop_lower_bound']:.4f} > {gate.max_accuracy_drop})")
    fb = slate_evidence(champ_model, chall_model, hold, exclude, gate.confidence)
    enough = fb["n"] >= gate.min_feedback_for_evidence
    fb["enough"] = enough
    if enough and fb["significantly_worse"]:
        decided = fb["champion_ranks_higher"] + fb["challenger_ranks_higher"]
        reasons.append(f"significantly worse on held-out feedback: ranks the clicked item lower in "
                       f"{fb['champion_ranks_higher']} of {decided} slates (sign test p = "
                       f"{fb['p_challenger_worse']:.3g})")
    decision, better = conclude(reasons, test, fb if enough else None)
    if decision == "promoted" and not enough:
        reasons[-1] += (f"; {fb['n']} held-out clicks (< {gate.min_feedback_for_evidence}): feedback evidence "
                        "not used")
    metric = spec.requirements.metric
    return {"decision": decision, "reasons": reasons, "metric": metric,
            "confidence": gate.confidence, "significantly_better_on": better, "test": test, "feedback": fb,
            "requirements": chall_req, "champion_value": champ_m[metric], "challenger_value": chall_m[metric],
            "test_examples": test["n_users"], "margin": gate.max_accuracy_drop}
