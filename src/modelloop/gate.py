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
   that share contradicts both, targeted or not.

Every number behind the decision is returned as evidence, to be stored and shown.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import binomtest

from .spec import GateSpec, Requirements

__all__ = ["check_requirements", "paired_evidence", "drop_lower_bound", "judge", "compare"]


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


def judge(req: Requirements, gate: GateSpec, class_names: list[str], challenger_requirements: dict[str, Any],
          test: dict[str, Any], feedback: dict[str, Any] | None) -> dict[str, Any]:
    """The decision from the evidence of :func:`paired_evidence` on the test split and the feedback hold-out."""
    reasons: list[str] = []
    if not challenger_requirements["passed"]:
        failed = [c["name"] for c in challenger_requirements["checks"] if not c["passed"]]
        reasons.append("challenger misses requirements: " + ", ".join(failed))
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
        feedback["p_targeted"] = p_targeted
        if rate > 2 * gate.max_feedback_disagreement or (rate > gate.max_feedback_disagreement and p_targeted < 0.01):
            reasons.append(f"feedback looks unreliable: {rate:.0%} of held-out feedback labels contradict both "
                           f"models (> {gate.max_feedback_disagreement:.0%}), {claims[top]} of {c} of them claiming "
                           f"class {class_names[top]!r} (targeted p = {p_targeted:.2g}); possible poisoning")
    promoted = not reasons
    better = [s for s, ev in (("test split", test), ("held-out feedback", feedback if enough_feedback else None))
              if ev is not None and ev["significantly_better"]]
    if promoted:
        reasons.append("meets requirements and is not worse than the champion"
                       + (f"; significantly better on {' and '.join(better)}" if better else ""))
    return {
        "decision": "promoted" if promoted else "rejected",
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
