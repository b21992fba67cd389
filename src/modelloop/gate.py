"""The quality gate: does a model meet the requirements, and should a challenger replace the champion?

The challenger is compared with the champion on two sets of data neither was trained on: the
frozen held-out test split, and the recent labelled feedback kept out of the challenger's
training (the feedback hold-out). Each comparison is paired — the same inputs through both
models — and tested with McNemar's exact test at the spec's confidence. The challenger is
promoted only if it

1. meets every requirement on the test split;
2. is not significantly worse on the test split, and neither its accuracy nor any class's
   recall there is lower than the champion's by more than ``max_accuracy_drop`` /
   ``max_class_recall_drop`` beyond what chance explains (the lower one-sided confidence bound
   of the paired difference must stay within the margin: on a 100-image test split, one or two
   images either way are noise, not evidence);
3. is not significantly worse on the feedback hold-out;
4. and the feedback hold-out looks trustworthy. Labels that contradict *both* models are
   suspect: honest feedback contradicts a good challenger only where it still errs, and those
   errors fall on every class, while poisoning pushes one class. The hold-out is refused when
   more than ``max_feedback_disagreement`` of its labels contradict both models *and* those
   labels pile onto one class beyond chance (binomial test at 99%), or when more than twice
   that share contradicts both, targeted or not. The allowed share grows with how often both
   models err on the test split (twice that rate, when it is above the configured share): on a
   hard task, honest users correct many answers both models get wrong.

Regression (:func:`compare_regression`) follows the same steps on paired squared errors instead
of right/wrong outcomes: a one-sided Wilcoxon signed-rank test for "significantly worse", the
lower confidence bound of the RMSE ratio against ``1 + max_error_increase``, and for the feedback
hold-out, values far outside both models' test error (more than 3 test RMSEs away from both
predictions) count as contradicting both; piling onto one side (all too high, or all too low) is
the targeted pattern.

Every number behind the decision is returned as evidence, to be stored and shown.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .spec import LOWER_IS_BETTER, GateSpec, Requirements

__all__ = ["check_requirements", "paired_evidence", "drop_lower_bound", "judge", "compare", "paired_errors",
           "compare_regression", "conclude", "missed_requirements", "ranking_evidence", "slate_test",
           "compare_ranking", "beats_baseline"]


def binomtest(k: int, n: int, p: float, alternative: str):
    """``scipy.stats.binomtest``, imported when a gate first needs it: scipy.stats adds about a
    second to every command's start-up otherwise."""
    from scipy.stats import binomtest as _binomtest

    return _binomtest(k, n, p, alternative=alternative)


def check_requirements(req: Requirements, metrics: dict[str, Any], latency: dict[str, float] | None,
                       size_mb: float | None, baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """Each requirement with the measured value and whether it passed.

    A target the user set is a threshold on the test metric. Without one (``req.target`` None),
    the metric's requirement is to be significantly better than the task's trivial baseline on
    the test split: ``baseline`` is :func:`beats_baseline`'s evidence.
    """
    value = metrics[req.metric]
    if req.target is None:
        if baseline is None:
            raise ValueError("requirements without a target: expected the baseline's evidence")
        bv = baseline["baseline_value"]
        checks = [{"name": f"test {req.metric}", "value": value,
                   "target": (f"significantly better than the {baseline['name']} "
                              + (f"({req.metric} {bv:.4f}; " if bv is not None else "(")
                              + f"p = {baseline['p_value']:.3g} at {baseline['confidence']:.0%})"),
                   "passed": bool(baseline["significantly_better"]), "baseline": baseline}]
    elif req.metric in LOWER_IS_BETTER:
        checks = [{"name": f"test {req.metric}", "value": value, "target": f"<= {req.target}",
                   "passed": value is not None and value <= req.target}]
    else:
        checks = [{"name": f"test {req.metric}", "value": value, "target": f">= {req.target}",
                   "passed": value is not None and value >= req.target}]
    if req.p95_latency_ms is not None and latency is not None:
        checks.append({"name": "p95 latency (ms)", "value": latency["p95_ms"], "target": f"<= {req.p95_latency_ms}",
                       "passed": latency["p95_ms"] <= req.p95_latency_ms})
    if req.max_model_size_mb is not None and size_mb is not None:
        checks.append({"name": "model size (MB)", "value": size_mb, "target": f"<= {req.max_model_size_mb}",
                       "passed": size_mb <= req.max_model_size_mb})
    return {"passed": all(c["passed"] for c in checks), "checks": checks}


def beats_baseline(model: np.ndarray, baseline: np.ndarray, confidence: float, *, name: str,
                   baseline_value: float | None, binary: bool, unit: str = "example") -> dict[str, Any]:
    """Is the model significantly better than a trivial baseline, paired per unit (example, user)?

    ``model`` and ``baseline`` are per-unit scores, higher is better: 0/1 correctness
    (``binary``: McNemar's exact one-sided test on the discordant pairs), or a continuous score
    such as minus the squared error or a user's NDCG (one-sided Wilcoxon signed-rank test).
    """
    a, b = np.asarray(model, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    n = len(a)
    if binary:
        only_model, only_base = int(np.sum((a > 0) & (b <= 0))), int(np.sum((b > 0) & (a <= 0)))
        m = only_model + only_base
        p = float(binomtest(only_model, m, 0.5, alternative="greater").pvalue) if m else 1.0
        method = f"McNemar's exact one-sided test on per-{unit} correctness"
        detail = {"only_model_right": only_model, "only_baseline_right": only_base}
    else:
        diff = a - b
        if np.any(diff != 0):
            from scipy.stats import wilcoxon

            p = float(wilcoxon(a, b, alternative="greater", zero_method="wilcox").pvalue)
        else:
            p = 1.0
        method = f"one-sided Wilcoxon signed-rank test on paired per-{unit} scores"
        detail = {"model_better": int(np.sum(diff > 0)), "baseline_better": int(np.sum(diff < 0))}
    return {"name": name, "baseline_value": baseline_value, "n": n, "p_value": p, "confidence": confidence,
            "significantly_better": bool(n > 0 and p < 1 - confidence), "method": method, **detail}


def paired_evidence(y: np.ndarray, champion_pred: np.ndarray, challenger_pred: np.ndarray, n_classes: int,
                    confidence: float) -> dict[str, Any]:
    """Accuracy, per-class recall and McNemar's exact test (both directions) on one set."""
    y, a, b = np.asarray(y), np.asarray(champion_pred), np.asarray(challenger_pred)
    n = len(y)
    a_right, b_right = a == y, b == y
    only_a = int(np.sum(a_right & ~b_right))
    only_b = int(np.sum(~a_right & b_right))
    m = only_a + only_b
    p_better = float(binomtest(only_b, m, 0.5, alternative="greater").pvalue) if m else 1.0
    p_worse = float(binomtest(only_a, m, 0.5, alternative="greater").pvalue) if m else 1.0
    alpha = 1 - confidence

    def recall(pred: np.ndarray) -> list[float | None]:
        return [float(np.mean(pred[y == k] == k)) if np.any(y == k) else None for k in range(n_classes)]

    per_class = [[int(np.sum(a_right[y == k] & ~b_right[y == k])), int(np.sum(~a_right[y == k] & b_right[y == k])),
                  int(np.sum(y == k))] for k in range(n_classes)]

    return {
        "n": n,
        "champion_accuracy": float(a_right.mean()) if n else None,
        "challenger_accuracy": float(b_right.mean()) if n else None,
        "champion_recall": recall(a), "challenger_recall": recall(b),
        "only_champion_right": only_a, "only_challenger_right": only_b,
        "p_challenger_better": p_better, "p_challenger_worse": p_worse,
        "significantly_better": n > 0 and p_better < alpha, "significantly_worse": n > 0 and p_worse < alpha,
        "contradicted_by_both": int(np.sum(~a_right & ~b_right)),
        # Which class the contradicting labels claim, per class: targeted poisoning piles onto one.
        "contradicting_labels": [int(np.sum(~a_right & ~b_right & (y == k))) for k in range(n_classes)],
        "classes_present": int(len(np.unique(y))),
        "per_class_discordant": per_class,  # [only champion right, only challenger right, n] per class
    }


def drop_lower_bound(only_champion: int, only_challenger: int, n: int, confidence: float) -> float:
    """Lower one-sided confidence bound of (champion - challenger) accuracy from paired outcomes."""
    if n == 0:
        return 0.0
    from scipy.stats import norm

    d = (only_champion - only_challenger) / n
    var = max(((only_champion + only_challenger) / n - d * d) / n, 0.0)
    return d - float(norm.ppf(confidence)) * var ** 0.5


def missed_requirements(challenger_requirements: dict[str, Any]) -> list[str]:
    """The first reasons against a challenger: the requirements it misses (none: an empty list)."""
    failed = [c["name"] for c in challenger_requirements["checks"] if not c["passed"]]
    return ["challenger misses requirements: " + ", ".join(failed)] if failed else []


def conclude(reasons: list[str], test: dict[str, Any], feedback: dict[str, Any] | None) -> tuple[str, list[str]]:
    """The decision from the reasons against the challenger (none: promoted), and where it was
    significantly better (``feedback`` None when there was too little to count). A promotion's
    reason is appended to ``reasons``."""
    better = [name for name, ev in (("test split", test), ("held-out feedback", feedback))
              if ev is not None and ev["significantly_better"]]
    if reasons:
        return "rejected", better
    reasons.append("meets requirements and is not worse than the champion"
                   + (f"; significantly better on {' and '.join(better)}" if better else ""))
    return "promoted", better


def feedback_disagreement_limit(gate: GateSpec, test: dict[str, Any]) -> float:
    """The share of held-out feedback labels that may contradict both models before the hold-out is
    suspect: the configured share, or twice the share of test examples both models get wrong when
    that is larger (honest corrections on a hard task contradict both models that often)."""
    both_wrong = test["contradicted_by_both"] / test["n"] if test.get("n") else 0.0
    return max(gate.max_feedback_disagreement, 2 * both_wrong)


def judge(req: Requirements, gate: GateSpec, class_names: list[str], challenger_requirements: dict[str, Any],
          test: dict[str, Any], feedback: dict[str, Any] | None) -> dict[str, Any]:
    """The decision from the evidence of :func:`paired_evidence` on the test split and the feedback hold-out."""
    reasons = missed_requirements(challenger_requirements)
    if test["significantly_worse"]:
        reasons.append(f"significantly worse on the test split (McNemar p = {test['p_challenger_worse']:.3g})")
    drop = test["champion_accuracy"] - test["challenger_accuracy"]
    bound = drop_lower_bound(test["only_champion_right"], test["only_challenger_right"], test["n"], gate.confidence)
    if bound > gate.max_accuracy_drop + 1e-9:
        reasons.append(f"test accuracy drops by {drop:.4f}: {test['challenger_accuracy']:.4f} vs champion "
                       f"{test['champion_accuracy']:.4f} (lower {gate.confidence:.0%} bound of the drop {bound:.4f} "
                       f"> {gate.max_accuracy_drop})")
    for name, ra, rb, (oa, ob, nk) in zip(class_names, test["champion_recall"], test["challenger_recall"],
                                          test["per_class_discordant"], strict=True):
        if ra is None or rb is None:
            continue
        kb = drop_lower_bound(oa, ob, nk, gate.confidence)
        if kb > gate.max_class_recall_drop + 1e-9:
            reasons.append(f"class {name!r} recall drops by {ra - rb:.4f} on the test split (lower "
                           f"{gate.confidence:.0%} bound {kb:.4f} > {gate.max_class_recall_drop})")
    enough_feedback = feedback is not None and feedback["n"] >= gate.min_feedback_for_evidence
    if enough_feedback:
        if feedback["significantly_worse"]:
            reasons.append("significantly worse on held-out feedback "
                           f"(McNemar p = {feedback['p_challenger_worse']:.3g})")
        c = feedback["contradicted_by_both"]
        rate = c / feedback["n"]
        claims = feedback["contradicting_labels"]
        top = int(np.argmax(claims)) if c else 0
        k = max(feedback["classes_present"], 2)
        p_targeted = float(binomtest(claims[top], c, 1 / k, alternative="greater").pvalue) if c else 1.0
        limit = feedback_disagreement_limit(gate, test)
        feedback.update(p_targeted=p_targeted, disagreement_limit=limit)
        if rate > 2 * limit or (rate > limit and p_targeted < 0.01):
            reasons.append(f"feedback looks unreliable: {rate:.0%} of held-out feedback labels contradict both "
                           f"models (> {limit:.0%}), {claims[top]} of {c} of them claiming "
                           f"class {class_names[top]!r} (targeted p = {p_targeted:.2g}); possible poisoning")
    decision, better = conclude(reasons, test, feedback if enough_feedback else None)
    return {
        "decision": decision,
        "reasons": reasons,
        "metric": req.metric,
        "confidence": gate.confidence,
        "significantly_better_on": better,
        "test": test,
        "feedback": feedback,
        "requirements": challenger_requirements,
    }


def compare(req: Requirements, champion: dict[str, Any], challenger: dict[str, Any], y_true: np.ndarray,
            champion_pred: np.ndarray, challenger_pred: np.ndarray, challenger_requirements: dict[str, Any],
            gate: GateSpec | None = None, class_names: list[str] | None = None,
            feedback: dict[str, Any] | None = None) -> dict[str, Any]:
    """Champion vs challenger: :func:`judge` on the test split (and feedback evidence when given),
    with the metric values of both models added."""
    gate = gate or GateSpec()
    names = class_names or [str(k) for k in range(int(max(np.max(y_true), champion_pred.max(),
                                                          challenger_pred.max())) + 1)]
    test = paired_evidence(y_true, champion_pred, challenger_pred, len(names), gate.confidence)
    out = judge(req, gate, names, challenger_requirements, test, feedback)
    out.update(champion_value=champion[req.metric], challenger_value=challenger[req.metric], test_examples=len(y_true),
               mcnemar={"only_champion_right": test["only_champion_right"],
                        "only_challenger_right": test["only_challenger_right"],
                        "p_value": min(1.0, 2 * min(test["p_challenger_better"], test["p_challenger_worse"]))})
    return out


def paired_errors(y: np.ndarray, champion_pred: np.ndarray, challenger_pred: np.ndarray, confidence: float,
                  outlier_scale: float | None = None) -> dict[str, Any]:
    """Regression evidence on one set: both models' RMSE and MAE, one-sided Wilcoxon signed-rank
    tests on the paired squared errors (both directions), and the lower confidence bound of the
    challenger's RMSE relative to the champion's.

    ``outlier_scale`` (the champion's test RMSE) marks targets more than 3 of it away from both
    predictions as contradicting both models; ``contradicting_labels`` counts them [too low, too high].
    """
    from scipy.stats import norm, wilcoxon

    y = np.asarray(y, dtype=np.float64).reshape(-1)
    a = np.asarray(champion_pred, dtype=np.float64).reshape(-1)
    b = np.asarray(challenger_pred, dtype=np.float64).reshape(-1)
    n = len(y)
    ea, eb = (a - y) ** 2, (b - y) ** 2
    d = eb - ea  # > 0: the challenger errs more on that example
    alpha = 1 - confidence
    p_worse = p_better = 1.0
    if n and np.any(d != 0):
        p_worse = float(wilcoxon(d, alternative="greater", zero_method="zsplit").pvalue)
        p_better = float(wilcoxon(d, alternative="less", zero_method="zsplit").pvalue)
    mse_a = float(ea.mean()) if n else 0.0
    ratio_low = None
    if n > 1 and mse_a > 0:
        low = float(d.mean() - norm.ppf(confidence) * d.std(ddof=1) / n ** 0.5)
        ratio_low = float(max(mse_a + low, 0.0) / mse_a) ** 0.5  # lower bound of RMSE_challenger / RMSE_champion
    out = {
        "n": n, "kind": "regression",
        "champion_rmse": float(ea.mean() ** 0.5) if n else None,
        "challenger_rmse": float(eb.mean() ** 0.5) if n else None,
        "champion_mae": float(np.abs(a - y).mean()) if n else None,
        "challenger_mae": float(np.abs(b - y).mean()) if n else None,
        "challenger_closer": int(np.sum(d < 0)), "champion_closer": int(np.sum(d > 0)),
        "p_challenger_better": p_better, "p_challenger_worse": p_worse,
        "significantly_better": n > 0 and p_better < alpha, "significantly_worse": n > 0 and p_worse < alpha,
        "rmse_ratio_lower_bound": ratio_low,
    }
    if outlier_scale is not None:
        far = (np.abs(a - y) > 3 * outlier_scale) & (np.abs(b - y) > 3 * outlier_scale)
        out["contradicted_by_both"] = int(far.sum())
        out["contradicting_labels"] = [int(np.sum(far & (y < a))), int(np.sum(far & (y > a)))]
    return out


def compare_regression(req: Requirements, champion: dict[str, Any], challenger: dict[str, Any], y_true: np.ndarray,
                       champion_pred: np.ndarray, challenger_pred: np.ndarray, challenger_requirements: dict[str, Any],
                       gate: GateSpec | None = None, feedback: dict[str, Any] | None = None) -> dict[str, Any]:
    """Champion vs challenger for regression: the same four rules as :func:`judge`, on squared errors."""
    gate = gate or GateSpec()
    test = paired_errors(y_true, champion_pred, challenger_pred, gate.confidence)
    reasons = missed_requirements(challenger_requirements)
    if test["significantly_worse"]:
        reasons.append(f"significantly worse on the test split (Wilcoxon p = {test['p_challenger_worse']:.3g})")
    bound = test["rmse_ratio_lower_bound"]
    if bound is not None and bound > 1 + gate.max_error_increase + 1e-9:
        reasons.append(f"test RMSE rises from {test['champion_rmse']:.4g} to {test['challenger_rmse']:.4g} (lower "
                       f"{gate.confidence:.0%} bound of the ratio {bound:.3f} > {1 + gate.max_error_increase:.3f})")
    enough = feedback is not None and feedback["n"] >= gate.min_feedback_for_evidence
    if enough:
        if feedback["significantly_worse"]:
            reasons.append("significantly worse on held-out feedback "
                           f"(Wilcoxon p = {feedback['p_challenger_worse']:.3g})")
        # Feedback values far from both models' predictions (see paired_errors' outlier_scale):
        # honest noise falls on both sides, poisoning pushes one way.
        c = feedback.get("contradicted_by_both", 0)
        sides = feedback.get("contradicting_labels", [0, 0])
        rate = c / feedback["n"]
        p_targeted = float(binomtest(max(sides), c, 0.5, alternative="greater").pvalue) if c else 1.0
        limit = gate.max_feedback_disagreement
        feedback.update(p_targeted=p_targeted, disagreement_limit=limit)
        if rate > 2 * limit or (rate > limit and p_targeted < 0.01):
            side = "above" if sides[1] >= sides[0] else "below"
            reasons.append(f"feedback looks unreliable: {rate:.0%} of held-out feedback values lie more than 3 test "
                           f"RMSEs from both models (> {limit:.0%}), {max(sides)} of {c} of them {side} the "
                           f"predictions (targeted p = {p_targeted:.2g}); possible poisoning")
    decision, better = conclude(reasons, test, feedback if enough else None)
    return {
        "decision": decision, "kind": "regression", "reasons": reasons,
        "metric": req.metric, "confidence": gate.confidence, "significantly_better_on": better,
        "test": test, "feedback": feedback, "requirements": challenger_requirements,
        "champion_value": champion[req.metric], "challenger_value": challenger[req.metric],
        "test_examples": int(len(np.asarray(y_true))),
    }


# -- ranking (recommendation) ---------------------------------------------------------------------
def ranking_evidence(champ: np.ndarray, chall: np.ndarray, confidence: float, seed: int = 0,
                     score: str = "ndcg@10") -> dict[str, Any]:
    """Paired per-user (or per-question) scores, higher is better (``score``: their name, e.g.
    NDCG@10 or a reciprocal rank): Wilcoxon signed-rank both ways and a bootstrap bound of the drop."""
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
    return {"n_users": n, "n": n, f"champion_{score}": float(champ.mean()) if n else None,
            f"challenger_{score}": float(chall.mean()) if n else None,
            "mean_drop": float(diff.mean()) if n else 0.0, "drop_lower_bound": bound,
            "users_champion_better": int(np.sum(diff > 0)), "users_challenger_better": int(np.sum(diff < 0)),
            "users_tied": int(np.sum(diff == 0)), "p_challenger_worse": p_worse, "p_challenger_better": p_better,
            "significantly_worse": bool(n > 0 and p_worse < alpha),
            "significantly_better": bool(n > 0 and p_better < alpha),
            "method": f"one-sided Wilcoxon signed-rank on paired {score}; paired bootstrap (2000) for the drop"}


def slate_test(champ_ranks: list[int | None], chall_ranks: list[int | None], champ_hits: np.ndarray,
               chall_hits: np.ndarray, confidence: float) -> dict[str, Any]:
    """Held-out clicks, paired: which model ranks the clicked item higher within its served slate
    (1-based ranks, None: not in the slate), by an exact sign test; catalogue hit@10 with McNemar
    (information only: the champion chose the slates)."""
    alpha = 1 - confidence
    ra, rb, ha, hb = champ_ranks, chall_ranks, champ_hits, chall_hits
    pairs = [(a, b) for a, b in zip(ra, rb, strict=True) if a is not None and b is not None]
    champ_higher = sum(a < b for a, b in pairs)
    chall_higher = sum(b < a for a, b in pairs)
    m = champ_higher + chall_higher
    p_worse = float(binomtest(champ_higher, m, 0.5, alternative="greater").pvalue) if m else 1.0
    p_better = float(binomtest(chall_higher, m, 0.5, alternative="greater").pvalue) if m else 1.0
    only_a, only_b = int(np.sum(ha & ~hb)), int(np.sum(~ha & hb))
    d = only_a + only_b
    n = len(pairs)
    return {
        "n": n, "held_out_clicks": len(ra), "clicks_outside_slate": len(ra) - n,
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




def compare_ranking(spec, champ_m: dict[str, Any], chall_m: dict[str, Any], champ_ndcg: np.ndarray,
                    chall_ndcg: np.ndarray, chall_req: dict[str, Any], fb: dict[str, Any],
                    removed_from_test: int = 0) -> dict[str, Any]:
    """Champion vs challenger recommender: paired per-user NDCG@10 on the test split (minus the
    pairs learned from feedback), and :func:`slate_test` evidence ``fb`` on held-out clicks.

    1. Test split: one-sided Wilcoxon signed-rank tests both ways at ``gate.confidence`` and a
       paired bootstrap bound of the mean NDCG@10 drop; rejected when significantly worse or when
       the bound exceeds ``gate.max_accuracy_drop`` (an absolute NDCG@10 drop).
    2. Held-out clicks: both models re-rank the same served slate (exposure-fair); rejected when
       the sign test says the challenger ranks users' later choices significantly lower. Counts
       once there are ``gate.min_feedback_for_evidence`` clicks.
    3. The challenger must meet every requirement on the gate's test set.
    """
    gate = spec.gate
    reasons = missed_requirements(chall_req)
    test = ranking_evidence(champ_ndcg, chall_ndcg, gate.confidence, seed=spec.seed)
    test["removed_feedback_pairs"] = removed_from_test
    if test["significantly_worse"]:
        reasons.append(f"significantly worse on the test split: NDCG@10 {test['challenger_ndcg@10']:.4f} vs champion "
                       f"{test['champion_ndcg@10']:.4f} (Wilcoxon p = {test['p_challenger_worse']:.3g})")
    if test["drop_lower_bound"] > gate.max_accuracy_drop + 1e-9:
        reasons.append(f"test NDCG@10 drops by {test['mean_drop']:.4f} (lower {gate.confidence:.0%} bound "
                       f"{test['drop_lower_bound']:.4f} > {gate.max_accuracy_drop})")
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


def compare_answers(spec, champ_test: np.ndarray, chall_test: np.ndarray, champ_fb: np.ndarray,
                    chall_fb: np.ndarray, chall_req: dict[str, Any]) -> dict[str, Any]:
    """Champion vs challenger answer retrievers, paired per question: the reciprocal rank of the
    right entry on the test questions and on held-out feedback questions.

    On each, one-sided Wilcoxon signed-rank tests both ways at ``gate.confidence`` and a paired
    bootstrap bound of the mean drop (:func:`ranking_evidence`). Rejected when the challenger is
    significantly worse on either, when the bound of its test drop exceeds
    ``gate.max_accuracy_drop``, or when it misses a requirement. Held-out feedback counts once
    there are ``gate.min_feedback_for_evidence`` questions; with neither test nor enough
    feedback questions there is no evidence, and the challenger is not promoted.
    """
    gate = spec.gate
    reasons = missed_requirements(chall_req)
    test = ranking_evidence(champ_test, chall_test, gate.confidence, seed=spec.seed, score="mrr")
    fb = ranking_evidence(champ_fb, chall_fb, gate.confidence, seed=spec.seed, score="mrr")
    if test["n"] and test["significantly_worse"]:
        reasons.append(f"significantly worse on the test questions: MRR {test['challenger_mrr']:.4f} vs champion "
                       f"{test['champion_mrr']:.4f} (Wilcoxon p = {test['p_challenger_worse']:.3g})")
    if test["n"] and test["drop_lower_bound"] > gate.max_accuracy_drop + 1e-9:
        reasons.append(f"test MRR drops by {test['mean_drop']:.4f} (lower {gate.confidence:.0%} bound "
                       f"{test['drop_lower_bound']:.4f} > {gate.max_accuracy_drop})")
    enough = fb["n"] >= gate.min_feedback_for_evidence
    fb["enough"] = enough
    if enough and fb["significantly_worse"]:
        reasons.append(f"significantly worse on held-out feedback questions: MRR {fb['challenger_mrr']:.4f} vs "
                       f"champion {fb['champion_mrr']:.4f} (Wilcoxon p = {fb['p_challenger_worse']:.3g})")
    if not test["n"] and not enough:
        reasons.append(f"no evidence: no test questions and {fb['n']} held-out feedback questions "
                       f"(< {gate.min_feedback_for_evidence})")
    elif all(ev["users_champion_better"] + ev["users_challenger_better"] == 0 for ev in (test, fb)):
        reasons.append("the challenger ranks every test and held-out question exactly as the champion: nothing to "
                       "promote")
    decision, better = conclude(reasons, test if test["n"] else {"significantly_better": False},
                                fb if enough else None)
    return {"decision": decision, "reasons": reasons, "metric": "mrr", "requirement_metric": spec.requirements.metric,
            "confidence": gate.confidence, "significantly_better_on": better, "test": test, "feedback": fb,
            "requirements": chall_req, "champion_value": test.get("champion_mrr"),
            "challenger_value": test.get("challenger_mrr"), "test_examples": test["n"],
            "margin": gate.max_accuracy_drop}
