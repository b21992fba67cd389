"""The labelling queue, the audit figure and Label Studio files, the same for every task that
serves ``POST /predict`` (``Task.labelling``).

``next_items`` hands out up to ``n`` logged predictions: each slot is an audit item with
probability ``feedback.audit_fraction`` (a uniformly random unaudited prediction of the
champion), the others the queue's most informative unlabelled predictions (out-of-distribution
first, then uncertain and diverse; see ``feedback.labelling``). Every item is leased in the store
for ``feedback.lease_seconds`` before it is returned, so two labellers (in any server process
sharing the store) never get the same prediction at once.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from ..errors import InputError, RegistryError
from ..feedback.labelling import audit_figure, from_label_studio, pick_active, pick_audit, uncertainty

__all__ = ["next_items", "live_quality", "export_tasks", "import_labels", "check_applicable", "MAX_ITEMS"]

log = logging.getLogger(__name__)

#: the most items one request may take
MAX_ITEMS = 100


def check_applicable(loop: Any) -> None:
    """Raises InputError for a task whose answers are not labelled from a queue."""
    if not loop.task.labelling:
        raise InputError(f"labelling queue: not applicable to task {loop.spec.task!r} (its answers are judged by "
                         "clicks and thumbs through POST /feedback); expected a project served through POST /predict")


def _check_n(n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_ITEMS:
        raise InputError(f"field 'n': received {n!r}; expected an integer from 1 to {MAX_ITEMS}")
    return n


def next_items(loop: Any, n: int, holder: str | None, model: Any = None, rng: np.random.Generator | None = None,
               lease_s: float | None = None, with_input: bool = True) -> list[dict[str, Any]]:
    """Lease and describe up to ``n`` items for ``holder`` (a client fingerprint or a name).

    ``model``: the champion as loaded (the server passes its own; None loads it). Items:
    ``prediction_id``, ``origin`` (``audit`` | ``active``), ``reason``, ``model_version``,
    ``predicted``, ``scores``, ``confidence``, ``ood`` (True/False, None without calibration),
    ``ood_score``, ``lease_expires_at`` and, with ``with_input``, ``input`` (``Task.show_input``).

    Raises:
        InputError: ``n`` out of range, or the task has no labelling queue.
        RegistryError: no champion yet.
    """
    import time

    check_applicable(loop)
    n = _check_n(n)
    spec, store, registry = loop.spec, loop.store, loop.registry
    champion = registry.champion()
    if champion is None:
        raise RegistryError(f"project {str(loop.paths.root)!r}: no champion yet, so nothing to label; "
                            "run 'modelloop run DIR' first")
    if model is None or model.version != champion:
        model = loop.load_champion()
    rng = rng or np.random.default_rng()
    lease = float(spec.feedback.lease_seconds if lease_s is None else lease_s)

    thresholds: dict[str, float | None] = {}

    def threshold(version: str) -> float | None:
        if version not in thresholds:
            try:
                thresholds[version] = (registry.manifest(version).get("ood") or {}).get("threshold")
            except RegistryError:  # a version cleaned away since it served
                thresholds[version] = None
        return thresholds[version]

    k_audit = int(rng.binomial(n, spec.feedback.audit_fraction)) if spec.feedback.audit_fraction > 0 else 0
    audit_ids = pick_audit(store.audit_candidates(champion), k_audit, rng) if k_audit else []
    picked: list[tuple[str, str, str]] = [(pid, "audit", "uniformly random audit sample") for pid in audit_ids]
    want = n - len(picked)
    got: list[tuple[str, str, str]] = []
    if picked:
        won = set(store.claim([(p, o) for p, o, _ in picked], holder, lease))
        got += [p for p in picked if p[0] in won]
        want = n - len(got)
    tried = {p for p, _, _ in picked}
    for _attempt in range(8):  # other labellers may win some of ours: fill the gap from what is left
        if want <= 0:
            break
        cands = [c for c in store.label_candidates(spec.feedback.queue_pool) if c["id"] not in tried]
        if not cands:
            break
        order = _rank(loop, model, cands, want, threshold)
        chosen = [(cands[i]["id"], "active", reason) for i, reason in order]
        tried.update(p for p, _, _ in chosen)
        won = set(store.claim([(p, o) for p, o, _ in chosen], holder, lease))
        got += [c for c in chosen if c[0] in won]
        want = n - len(got)
    return _describe(loop, model, got, time.time() + lease, with_input)


def _rank(loop: Any, model: Any, cands: list[dict[str, Any]], want: int, threshold) -> list[tuple[int, str]]:
    """Indices into ``cands`` in the order to hand out, with the reason of each."""
    scores = [json.loads(c["scores"]) for c in cands]
    u = np.array([uncertainty(s) for s in scores])
    ood = np.full(len(cands), np.nan)
    for i, c in enumerate(cands):
        t = threshold(c["model_version"])
        if c["ood_score"] is not None and t is not None and c["ood_score"] > t:
            ood[i] = c["ood_score"]
    # Embeddings for the most promising few: the uncertain ones and every OOD one.
    short = min(len(cands), max(10 * want, 100))
    top = sorted(set(np.argsort(-u, kind="stable")[:short].tolist()) | set(np.flatnonzero(np.isfinite(ood)).tolist()))
    emb = _embeddings(loop, model, [cands[i]["id"] for i in top])
    order = pick_active(u[top], emb, want, ood[top])
    out = []
    for j in order:
        i = top[j]
        reason = (f"out of distribution (score {ood[i]:.3g})" if np.isfinite(ood[i])
                  else f"uncertain (margin {1 - u[i]:.3f})" if u[i] > 0 else "diverse")
        out.append((i, reason))
    return out


def _embeddings(loop: Any, model: Any, ids: list[str]) -> np.ndarray | None:
    """The champion's embeddings of these stored inputs (rows of inputs it cannot take: the
    mean, so they neither attract nor repel); None when none can be embedded."""
    from ..feedback.drift import embed

    inputs = loop.store.get_inputs(ids)
    items = [inputs[i] for i in ids]
    try:
        x, keep = loop.task.collate(items, model)
        if len(x) == 0:
            return None
        e = embed(model.model, model.features(x))
    except Exception as exc:  # diversity is a refinement: rank by uncertainty alone rather than fail
        log.warning("labelling queue: could not embed candidates (%s); ranking by uncertainty alone", exc)
        return None
    full = np.tile(e.mean(0), (len(ids), 1))
    full[np.flatnonzero(keep)] = e
    return full


def _describe(loop: Any, model: Any, got: list[tuple[str, str, str]], expires: float,
              with_input: bool) -> list[dict[str, Any]]:
    if not got:
        return []
    store, task = loop.store, loop.task
    inputs = store.get_inputs([p for p, _, _ in got]) if with_input else {}
    out = []
    for pid, origin, reason in got:
        row = store.get_prediction(pid)
        scores = json.loads(row["scores"])
        t = (loop.registry.manifest(row["model_version"]).get("ood") or {}).get("threshold") \
            if row["ood_score"] is not None else None
        numeric = [v for v in scores.values() if isinstance(v, (int, float))]
        item = {"prediction_id": pid, "origin": origin, "reason": reason, "model_version": row["model_version"],
                "predicted": row["label"], "scores": scores, "confidence": max(numeric) if numeric else None,
                "ood": None if t is None else bool(row["ood_score"] > t), "ood_score": row["ood_score"],
                "lease_expires_at": expires}
        if with_input:
            item["input"] = task.show_input(inputs[pid], model)
        out.append(item)
    return out


def live_quality(loop: Any, version: str, class_names: list[str] | None, regression: bool) -> dict[str, Any]:
    """Live accuracy (regression: RMSE) of ``version`` on the audit sample alone, with its 95% interval."""
    rows = loop.store.labelled(None if regression else class_names, loop.spec.feedback.untrusted_clients,
                               model_version=version, thumbs_down_disagrees=True, origins=["audit"])
    return audit_figure(rows, regression, 0.95)


def export_tasks(loop: Any, n: int, holder: str, lease_s: float) -> list[dict[str, Any]]:
    """Lease ``n`` queue items for ``lease_s`` seconds and describe them as Label Studio tasks."""
    from ..feedback.labelling import to_label_studio

    return to_label_studio(next_items(loop, n, holder, lease_s=lease_s))


def import_labels(loop: Any, doc: Any, client: str | None = None) -> dict[str, Any]:
    """Store the labels of a Label Studio export as feedback with their origin (``active`` unless
    the task says otherwise). Everything is checked before anything is stored.

    Raises:
        InputError: naming the task and field (an unknown prediction, a label the model does not know).
    """
    from ..errors import NotFoundError

    check_applicable(loop)
    labels, skipped = from_label_studio(doc)
    handed = {h["prediction_id"]: h["origin"] for h in loop.store.handouts()}
    checked = []
    for i, lab in enumerate(labels):
        if lab["origin"] != "user" and handed.get(lab["prediction_id"]) != lab["origin"]:
            raise InputError(f"import file, label {i + 1} of {len(labels)}: field 'origin': received "
                             f"{lab['origin']!r} for prediction {lab['prediction_id']!r}, which the labelling queue "
                             f"handed out as {handed.get(lab['prediction_id'])!r}; expected the origin of the export")
        try:
            pred = loop.store.get_prediction(lab["prediction_id"])
        except NotFoundError as e:
            raise InputError(f"import file, label {i + 1} of {len(labels)}: {e}") from None
        try:
            label = loop.task.check_feedback(lab["label"], pred["label"], pred["model_version"], loop)
        except InputError as e:
            raise InputError(f"import file, prediction {lab['prediction_id']!r}: {e}") from None
        checked.append((lab, label))
    ids = []
    for lab, label in checked:
        try:
            ids.append(loop.store.add_feedback(lab["prediction_id"], label, client=client, kind="label",
                                               origin=lab["origin"]))
        except InputError as e:
            raise InputError(f"import file, prediction {lab['prediction_id']!r}: {e} ({len(ids)} labels stored "
                             "before this one)") from None
    by_origin: dict[str, int] = {}
    for lab, _ in checked:
        by_origin[lab["origin"]] = by_origin.get(lab["origin"], 0) + 1
    return {"imported": len(ids), "by_origin": by_origin, "without_annotation": skipped, "feedback_ids": ids}
