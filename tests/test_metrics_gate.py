"""Classification metrics against hand-computed values, and the quality gate's decisions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelloop.evaluate.metrics import classification_metrics
from modelloop.gate import check_requirements, compare
from modelloop.spec import GateSpec, Requirements

# -- metrics --------------------------------------------------------------------------------------


def test_binary_metrics_match_hand_computed_values() -> None:
    y = np.array([0, 0, 1, 1, 1])
    p1 = np.array([0.1, 0.6, 0.8, 0.4, 0.9])
    probs = np.stack([1 - p1, p1], axis=1)
    m = classification_metrics(y, probs, ["neg", "pos"])
    # predictions: [0, 1, 1, 0, 1]
    assert m["n"] == 5
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["per_class"]["neg"] == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2})
    assert m["per_class"]["pos"] == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3})
    assert m["precision_macro"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["recall_macro"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["f1_macro"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # AUC: of the 3 x 2 (positive, negative) pairs, 5 rank the positive higher (0.4 < 0.6 is the miss).
    assert m["roc_auc"] == pytest.approx(5 / 6)
    assert json.loads(json.dumps(m)) == m  # JSON-able as stored in manifests


Y3 = np.array([0, 0, 1, 1, 2, 2, 2])
P3 = np.array([
    [0.7, 0.2, 0.1],  # true 0, pred 0
    [0.3, 0.6, 0.1],  # true 0, pred 1
    [0.1, 0.8, 0.1],  # true 1, pred 1
    [0.2, 0.5, 0.3],  # true 1, pred 1
    [0.1, 0.1, 0.8],  # true 2, pred 2
    [0.5, 0.1, 0.4],  # true 2, pred 0
    [0.2, 0.2, 0.6],  # true 2, pred 2
])


def test_three_class_metrics_match_hand_computed_values() -> None:
    m = classification_metrics(Y3, P3, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    pc = m["per_class"]
    assert pc["a"] == pytest.approx({"precision": 1 / 2, "recall": 1 / 2, "f1": 1 / 2, "support": 2})
    assert pc["b"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2})
    assert pc["c"] == pytest.approx({"precision": 1.0, "recall": 2 / 3, "f1": 0.8, "support": 3})
    assert m["precision_macro"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["recall_macro"] == pytest.approx((1 / 2 + 1 + 2 / 3) / 3)
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 0.8) / 3)
    # One-vs-rest AUC by counting pairs: a 9/10, b 9/10, c 12/12.
    assert m["roc_auc"] == pytest.approx((0.9 + 0.9 + 1.0) / 3)


def test_multiclass_auc_does_not_depend_on_probability_scale() -> None:
    a = classification_metrics(Y3, P3, ["a", "b", "c"])
    b = classification_metrics(Y3, P3 * 3.0, ["a", "b", "c"])
    assert b["roc_auc"] == pytest.approx(a["roc_auc"])
    assert b["accuracy"] == a["accuracy"]


def test_roc_auc_is_none_when_a_class_is_absent() -> None:
    m3 = classification_metrics(np.array([0, 0, 1, 1]), P3[:4], ["a", "b", "c"])
    assert m3["roc_auc"] is None
    assert m3["per_class"]["c"]["support"] == 0
    assert m3["accuracy"] == pytest.approx(3 / 4)
    m2 = classification_metrics(np.array([1, 1, 1]), np.array([[0.2, 0.8], [0.6, 0.4], [0.1, 0.9]]), ["x", "y"])
    assert m2["roc_auc"] is None
    assert m2["accuracy"] == pytest.approx(2 / 3)
    assert m2["per_class"]["x"]["precision"] == 0.0  # zero_division: no warning, 0


def test_perfect_predictions() -> None:
    y = np.array([2, 0, 1, 2])
    m = classification_metrics(y, np.eye(3)[y], ["a", "b", "c"])
    assert m["accuracy"] == m["f1_macro"] == m["precision_macro"] == m["recall_macro"] == 1.0
    assert m["roc_auc"] == 1.0
    assert m["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 0, 2]]


# -- requirements ---------------------------------------------------------------------------------

REQ = Requirements(metric="accuracy", target=0.9, p95_latency_ms=5.0, max_model_size_mb=1.0)


def names(result: dict) -> dict[str, bool]:
    return {c["name"]: c["passed"] for c in result["checks"]}


def test_all_requirements_met() -> None:
    r = check_requirements(REQ, {"accuracy": 0.92}, {"p50_ms": 1.0, "p95_ms": 4.0}, 0.5)
    assert r["passed"] is True
    assert names(r) == {"test accuracy": True, "p95 latency (ms)": True, "model size (MB)": True}
    first = r["checks"][0]
    assert first["value"] == 0.92 and first["target"] == ">= 0.9"


def test_limits_are_inclusive() -> None:
    r = check_requirements(REQ, {"accuracy": 0.9}, {"p95_ms": 5.0}, 1.0)
    assert r["passed"] is True


@pytest.mark.parametrize(
    ("metrics", "latency", "size", "failed"),
    [
        ({"accuracy": 0.89}, {"p95_ms": 1.0}, 0.1, "test accuracy"),
        ({"accuracy": 0.99}, {"p95_ms": 5.01}, 0.1, "p95 latency (ms)"),
        ({"accuracy": 0.99}, {"p95_ms": 1.0}, 1.2, "model size (MB)"),
    ],
)
def test_each_budget_can_fail_the_gate(metrics, latency, size, failed: str) -> None:
    r = check_requirements(REQ, metrics, latency, size)
    assert r["passed"] is False
    assert [n for n, ok in names(r).items() if not ok] == [failed]


def test_budgets_only_checked_when_required() -> None:
    req = Requirements(metric="f1_macro", target=0.5)
    r = check_requirements(req, {"f1_macro": 0.6, "accuracy": 0.1}, {"p95_ms": 1e6}, 1e6)
    assert names(r) == {"test f1_macro": True}
    assert r["passed"] is True


# -- champion vs challenger -----------------------------------------------------------------------

Y = np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, 1])


def metrics_of(pred: np.ndarray) -> dict:
    return classification_metrics(Y, np.eye(2)[pred], ["even", "odd"])


def passing(req: Requirements, m: dict) -> dict:
    return check_requirements(req, m, {"p95_ms": 1.0}, 0.1)


def test_better_challenger_is_promoted_with_mcnemar_counts() -> None:
    champ = Y.copy()
    champ[[0, 1, 2]] ^= 1         # champion wrong on 0, 1, 2
    chall = Y.copy()
    chall[[3]] ^= 1               # challenger wrong on 3 only
    req = Requirements(target=0.5)
    cm, hm = metrics_of(champ), metrics_of(chall)
    assert (cm["accuracy"], hm["accuracy"]) == (pytest.approx(0.7), pytest.approx(0.9))
    d = compare(req, cm, hm, Y, champ, chall, passing(req, hm))
    assert d["decision"] == "promoted"
    assert d["metric"] == "accuracy"
    assert d["champion_value"] == pytest.approx(0.7) and d["challenger_value"] == pytest.approx(0.9)
    assert d["test_examples"] == 10
    assert d["mcnemar"]["only_champion_right"] == 1      # example 3
    assert d["mcnemar"]["only_challenger_right"] == 3    # examples 0, 1, 2
    # Exact two-sided binomial test, n = 4, k = 1: (1 + 4 + 4 + 1) / 16.
    assert d["mcnemar"]["p_value"] == pytest.approx(10 / 16)
    assert d["reasons"] == ["meets requirements and is not worse than the champion"]
    assert d["requirements"]["passed"] is True


def test_equal_challenger_is_promoted() -> None:
    req = Requirements(target=0.5)
    champ = Y.copy()
    champ[0] ^= 1
    chall = Y.copy()
    chall[1] ^= 1
    m1, m2 = metrics_of(champ), metrics_of(chall)
    # Equal accuracy; one image's swing in a class of five is chance, not evidence.
    d = compare(req, m1, m2, Y, champ, chall, passing(req, m2))
    assert d["decision"] == "promoted"
    assert d["mcnemar"]["only_champion_right"] == 1 and d["mcnemar"]["only_challenger_right"] == 1
    assert d["mcnemar"]["p_value"] == pytest.approx(1.0)


def test_identical_predictions_give_p_value_one() -> None:
    req = Requirements(target=0.5)
    m = metrics_of(Y)
    d = compare(req, m, m, Y, Y, Y, passing(req, m))
    assert d["mcnemar"] == {"only_champion_right": 0, "only_challenger_right": 0, "p_value": 1.0}
    assert d["decision"] == "promoted"


def test_worse_challenger_is_rejected_with_the_reason() -> None:
    req = Requirements(target=0.5)
    champ = Y.copy()
    champ[0] ^= 1
    chall = Y.copy()
    chall[[0, 1, 2, 3]] ^= 1
    m1, m2 = metrics_of(champ), metrics_of(chall)
    d = compare(req, m1, m2, Y, champ, chall, passing(req, m2))
    assert d["decision"] == "rejected"
    assert any(r.startswith("test accuracy drops by 0.3000: 0.6000 vs champion 0.9000") for r in d["reasons"])
    assert d["mcnemar"]["only_champion_right"] == 3 and d["mcnemar"]["only_challenger_right"] == 0


def test_challenger_missing_requirements_is_rejected_even_if_better() -> None:
    req = Requirements(target=0.5, p95_latency_ms=2.0)
    champ = Y.copy()
    champ[[0, 1]] ^= 1
    m1, m2 = metrics_of(champ), metrics_of(Y)
    slow = check_requirements(req, m2, {"p95_ms": 3.0}, 0.1)
    d = compare(req, m1, m2, Y, champ, Y, slow)
    assert d["decision"] == "rejected"
    assert d["reasons"] == ["challenger misses requirements: p95 latency (ms)"]
    assert d["requirements"] is slow


def test_worse_and_failing_challenger_lists_both_reasons() -> None:
    req = Requirements(metric="f1_macro", target=0.95)
    chall = Y.copy()
    chall[[0, 1]] ^= 1
    m1, m2 = metrics_of(Y), metrics_of(chall)
    d = compare(req, m1, m2, Y, Y, chall, check_requirements(req, m2, None, None))
    assert d["decision"] == "rejected"
    assert d["metric"] == "f1_macro"
    assert d["reasons"][0] == "challenger misses requirements: test f1_macro"
    assert json.loads(json.dumps(d)) == d  # stored in events.jsonl and manifests


def test_margins_allow_chance_but_not_a_real_drop() -> None:
    from modelloop.gate import drop_lower_bound

    # 3 of 100 test images lost, none gained: could be chance at 95%.
    assert drop_lower_bound(3, 0, 100, 0.95) < 0.02
    # 10 of 100 lost: the drop is real even at its lower bound.
    assert drop_lower_bound(10, 0, 100, 0.95) > 0.02
    assert drop_lower_bound(0, 5, 100, 0.95) < 0  # a gain is never a drop


def test_feedback_evidence_rejects_unreliable_or_worse_feedback() -> None:
    from modelloop.gate import judge, paired_evidence

    req, gate = Requirements(target=0.5), GateSpec()
    y = np.array([0, 1] * 50)
    test = paired_evidence(y, y, y, 2, 0.95)
    ok = check_requirements(req, {"accuracy": 1.0}, None, None)
    # 25% of held-out feedback labels contradict both models, all claiming class 'b': targeted poisoning.
    fy = y.copy()
    evens = np.flatnonzero(y == 0)[:25]
    fy[evens] = 1
    d = judge(req, gate, ["a", "b"], ok, test, paired_evidence(fy, y, y, 2, 0.95))
    assert d["decision"] == "rejected" and "feedback looks unreliable: 25%" in d["reasons"][0]
    assert "25 of 25 of them claiming class 'b'" in d["reasons"][0]
    # As many contradictions spread over both classes: a hard distribution, not an attack.
    fy = y.copy()
    fy[:25] = 1 - fy[:25]
    d = judge(req, gate, ["a", "b"], ok, test, paired_evidence(fy, y, y, 2, 0.95))
    assert d["decision"] == "promoted", d["reasons"]
    # Beyond twice the allowed share, targeted or not, the feedback is refused.
    fy = y.copy()
    fy[:34] = 1 - fy[:34]
    d = judge(req, gate, ["a", "b"], ok, test, paired_evidence(fy, y, y, 2, 0.95))
    assert d["decision"] == "rejected" and "feedback looks unreliable: 34%" in d["reasons"][0]
    # The challenger is significantly worse on recent feedback.
    worse = y.copy()
    worse[:20] = 1 - worse[:20]
    d = judge(req, gate, ["a", "b"], ok, test, paired_evidence(y, y, worse, 2, 0.95))
    assert d["decision"] == "rejected" and "significantly worse on held-out feedback" in d["reasons"][0]
    # Significantly better on recent feedback, same on the test split: promoted, and said so.
    champ = y.copy()
    champ[:20] = 1 - champ[:20]
    d = judge(req, gate, ["a", "b"], ok, test, paired_evidence(y, champ, y, 2, 0.95))
    assert d["decision"] == "promoted" and d["significantly_better_on"] == ["held-out feedback"]


def test_hard_task_allows_honest_corrections_both_models_miss() -> None:
    """On a task where both models get 30% of the test split wrong, honest feedback contradicts both
    that often too: the allowed share grows to twice the test rate; targeted poisoning is still caught."""
    from modelloop.gate import judge, paired_evidence

    req, gate = Requirements(target=0.5), GateSpec()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    wrong = y.copy()
    wrong[:60] = 1 - wrong[:60]  # 30% wrong, the same examples for both models
    test = paired_evidence(y, wrong, wrong, 2, 0.95)
    ok = check_requirements(req, {"accuracy": 0.7}, None, None)
    fy = rng.integers(0, 2, 100)
    pred = fy.copy()
    pred[:40] = 1 - pred[:40]  # 40% of honest labels contradict both, spread over both classes
    d = judge(req, gate, ["a", "b"], ok, test, paired_evidence(fy, pred, pred, 2, 0.95))
    assert d["decision"] == "promoted", d["reasons"]
    assert d["feedback"]["disagreement_limit"] == pytest.approx(0.6)
    # The same 40%, all claiming one class beyond chance, with an easy test split: refused.
    easy = paired_evidence(y, y, y, 2, 0.95)
    fy2 = pred.copy()
    fy2[:40] = 1
    pred2 = fy2.copy()
    pred2[:40] = 0
    d = judge(req, gate, ["a", "b"], ok, easy, paired_evidence(fy2, pred2, pred2, 2, 0.95))
    assert d["decision"] == "rejected" and "possible poisoning" in d["reasons"][0]


def test_regression_metrics_match_hand_computed_values() -> None:
    from modelloop.evaluate.metrics import regression_metrics

    m = regression_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.0, 4.5]))
    assert m["rmse"] == pytest.approx(np.sqrt((0.25 + 0 + 1 + 0.25) / 4))
    assert m["mae"] == pytest.approx(0.5)
    assert m["r2"] == pytest.approx(1 - 1.5 / 5.0)
    assert m["mean_error"] == pytest.approx(0.0) and m["n"] == 4
    assert regression_metrics(np.array([]), np.array([]))["rmse"] is None


def test_error_metric_requirements_are_upper_bounds() -> None:
    req = Requirements(metric="rmse", target=10.0)
    assert check_requirements(req, {"rmse": 9.5}, None, None)["passed"]
    bad = check_requirements(req, {"rmse": 10.5}, None, None)
    assert not bad["passed"] and bad["checks"][0]["target"] == "<= 10.0"


def test_regression_gate_on_paired_squared_errors() -> None:
    from modelloop.gate import compare_regression, paired_errors

    rng = np.random.default_rng(0)
    y = rng.normal(100, 20, 300)
    champ = y + rng.normal(0, 10, 300)
    req = Requirements(metric="r2", target=0.5)
    ok = check_requirements(req, {"r2": 0.7}, None, None)
    m = {"r2": 0.75, "rmse": 10.0}
    # A clearly better challenger: promoted, and significantly better.
    better = y + rng.normal(0, 5, 300)
    d = compare_regression(req, m, {"r2": 0.9}, y, champ, better, ok)
    assert d["decision"] == "promoted" and d["significantly_better_on"] == ["test split"], d["reasons"]
    assert d["test"]["challenger_rmse"] < d["test"]["champion_rmse"]
    # A clearly worse one: rejected, with the test and the RMSE-ratio reasons.
    worse = y + rng.normal(0, 20, 300)
    d = compare_regression(req, m, {"r2": 0.4}, y, champ, worse, ok)
    assert d["decision"] == "rejected"
    assert any("significantly worse" in r for r in d["reasons"]) and any("RMSE rises" in r for r in d["reasons"])
    # The same model: promoted, nothing significant either way.
    d = compare_regression(req, m, m, y, champ, champ, ok)
    assert d["decision"] == "promoted" and d["significantly_better_on"] == []
    # Feedback pushed far above both models' predictions: possible poisoning.
    fy = y[:100].copy()
    fy[:30] += 200  # 30% of the feedback: 20 test RMSEs too high
    fb = paired_errors(fy, champ[:100], champ[:100], 0.95, outlier_scale=10.0)
    assert fb["contradicted_by_both"] == 30 and fb["contradicting_labels"] == [0, 30]
    d = compare_regression(req, m, m, y, champ, champ, ok, feedback=fb)
    assert d["decision"] == "rejected" and "possible poisoning" in d["reasons"][0] and "above" in d["reasons"][0]
