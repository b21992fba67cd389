"""Which predictions a labeller should see, and what the labels of a random sample say.

- **Active items**: the labels that teach the model most. Out-of-distribution inputs come first
  (most distant first); the rest are ranked by uncertainty (one minus the margin between the two
  most probable classes of the stored scores) and picked greedily for diversity: each next item
  maximizes its uncertainty times its embedding distance to the items already picked (a weighted
  k-center step), so a batch is not twenty copies of one confusion.
- **Audit items**: a uniformly random sample of the champion's served predictions, whatever
  feedback they got. Users correct wrong answers more often than they confirm right ones, so
  accuracy on user feedback is biased low; accuracy on the audit sample is not, and its Wilson
  interval is honest.
- **Label Studio** files: tasks out (``data`` with the input, the prediction id and the origin;
  the served answer as a ``prediction``), annotations back in.

Pure functions over rows, embeddings and a random generator: the loop wires them to the store
and the champion (``loop/labelling.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError
from .store import wilson_interval

__all__ = ["uncertainty", "pick_active", "pick_audit", "audit_figure", "to_label_studio", "from_label_studio"]


def uncertainty(scores: dict[str, float] | None) -> float:
    """1 - (p1 - p2) of stored class probabilities (1: a coin toss between two classes, 0: sure);
    0 for scores that are not class probabilities (regression values)."""
    if not scores or len(scores) < 2:
        return 0.0
    p = sorted((float(v) for v in scores.values() if isinstance(v, (int, float))), reverse=True)
    if len(p) < 2 or not all(0.0 <= v <= 1.0 for v in p):
        return 0.0
    return float(1.0 - (p[0] - p[1]))


def pick_active(uncert: np.ndarray, emb: np.ndarray | None, n: int, ood: np.ndarray | None = None) -> list[int]:
    """Indices of ``n`` candidates: out-of-distribution ones first (``ood``: their scores, NaN or
    -inf where in distribution; most distant first), then a weighted k-center greedy over the
    rest: the most uncertain first, then each next one maximizing uncertainty x distance (in
    ``emb`` (N, D)) to everything picked. Without embeddings: by uncertainty alone."""
    m = len(uncert)
    n = min(n, m)
    chosen: list[int] = []
    if ood is not None:
        flagged = [i for i in np.argsort(-np.nan_to_num(ood, nan=-np.inf)) if np.isfinite(ood[i])]
        chosen = [int(i) for i in flagged[:n]]
    if len(chosen) >= n:
        return chosen
    u = np.asarray(uncert, dtype=np.float64) + 1e-3  # ties between sure answers broken by diversity
    if emb is None or len(emb) != m or emb.ndim != 2 or emb.shape[1] == 0:
        rest = [int(i) for i in np.argsort(-u, kind="stable") if int(i) not in chosen]
        return chosen + rest[: n - len(chosen)]
    e = np.asarray(emb, dtype=np.float64)
    scale = float(np.median(np.linalg.norm(e - e.mean(0), axis=1))) or 1.0
    dist = np.full(m, np.inf)
    for i in chosen:
        dist = np.minimum(dist, np.linalg.norm(e - e[i], axis=1) / scale)
    taken = np.zeros(m, dtype=bool)
    taken[chosen] = True
    while len(chosen) < n:
        gain = u * np.where(np.isfinite(dist), dist, 1.0)
        gain[taken] = -np.inf
        i = int(np.argmax(gain))
        chosen.append(i)
        taken[i] = True
        dist = np.minimum(dist, np.linalg.norm(e - e[i], axis=1) / scale)
    return chosen


def pick_audit(candidates: Sequence[str], k: int, rng: np.random.Generator) -> list[str]:
    """``k`` of ``candidates`` uniformly at random without replacement (every candidate equally likely)."""
    k = min(k, len(candidates))
    if k <= 0:
        return []
    return [candidates[int(i)] for i in rng.choice(len(candidates), size=k, replace=False)]


def audit_figure(rows: list[dict[str, Any]], regression: bool, confidence: float = 0.95) -> dict[str, Any]:
    """Live quality on the audit sample: classification accuracy with its Wilson interval, or for
    regression the RMSE with a normal-approximation interval on the mean squared error.
    ``rows``: the audit-labelled predictions (``label``, ``predicted``)."""
    out: dict[str, Any] = {"source": "audit", "n": 0, "confidence": confidence, "value": None, "low": None,
                           "high": None, "biased": False}
    if regression:
        pairs = []
        for r in rows:
            try:
                p, t = float(r["predicted"]), float(r["label"])
            except (TypeError, ValueError):
                continue
            if math.isfinite(p) and math.isfinite(t):
                pairs.append(p - t)
        e2 = np.square(np.array(pairs))
        out.update(measure="rmse", n=len(e2))
        if len(e2):
            from scipy.stats import norm

            z = float(norm.ppf(0.5 + confidence / 2))
            half = z * float(e2.std(ddof=1)) / math.sqrt(len(e2)) if len(e2) > 1 else float("inf")
            mse = float(e2.mean())
            out.update(value=math.sqrt(mse), low=math.sqrt(max(0.0, mse - half)),
                       high=math.sqrt(mse + half) if math.isfinite(half) else None)
        return out
    n = len(rows)
    agree = sum(1 for r in rows if r["label"] == r["predicted"])
    low, high = wilson_interval(agree, n, confidence)
    out.update(measure="accuracy", n=n, agreed=agree, value=agree / n if n else None, low=low, high=high)
    return out


# -- Label Studio ------------------------------------------------------------------------------
_DATA_KEYS = {"image": "image", "audio": "audio", "text": "text", "row": "text"}


def to_label_studio(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Queue items (with ``input`` from ``Task.show_input``) -> Label Studio tasks: ``data`` holds
    the input (``image``/``audio`` as data URLs, ``text``; a table row as JSON text and its
    fields), ``prediction_id``, ``origin`` and ``model_version``; the served answer is a
    pre-annotation (``predictions``) on a ``choices`` control named ``label``."""
    tasks = []
    for i, it in enumerate(items):
        shown = it["input"]
        data: dict[str, Any] = {"prediction_id": it["prediction_id"], "origin": it["origin"],
                                "model_version": it["model_version"]}
        if shown["kind"] == "image":
            data["image"] = "data:image/png;base64," + shown["png"]
        elif shown["kind"] == "audio":
            data["audio"] = "data:audio/wav;base64," + shown["wav"]
        elif shown["kind"] == "row":
            data["text"] = json.dumps(shown["row"])
            data.update({f"col_{k}": v for k, v in shown["row"].items()})
        else:
            data["text"] = shown["text"]
        to_name = _DATA_KEYS[shown["kind"]]
        tasks.append({"id": i + 1, "data": data, "predictions": [{
            "model_version": it["model_version"], "score": it.get("confidence"),
            "result": [{"from_name": "label", "to_name": to_name, "type": "choices",
                        "value": {"choices": [str(it["predicted"])]}}]}]})
    return tasks


def from_label_studio(doc: Any, default_origin: str = "active") -> tuple[list[dict[str, Any]], int]:
    """A Label Studio export (a JSON list of tasks with ``annotations``) -> labels
    ``[{prediction_id, label, origin}]`` and the number of tasks without an annotation.
    The latest annotation that is not cancelled counts; its ``choices`` (first choice),
    ``number`` or ``textarea`` result is the label.

    Raises:
        InputError: naming the task and field, what was received and what was expected.
    """
    from .store import FEEDBACK_ORIGINS

    if not isinstance(doc, list):
        raise InputError(f"import file: received a JSON {type(doc).__name__}; expected a list of Label Studio tasks")
    out, skipped = [], 0
    for i, t in enumerate(doc):
        where = f"tasks[{i}]"
        if not isinstance(t, dict) or not isinstance(t.get("data"), dict):
            raise InputError(f"import file {where}.data: missing or not an object; expected a task with 'data'")
        pid = t["data"].get("prediction_id")
        if not isinstance(pid, str) or not pid:
            raise InputError(f"import file {where}.data.prediction_id: received {pid!r}; expected the prediction "
                             "id the export wrote")
        origin = t["data"].get("origin", default_origin)
        if origin not in FEEDBACK_ORIGINS:
            raise InputError(f"import file {where}.data.origin: received {origin!r}; expected one of "
                             f"{', '.join(FEEDBACK_ORIGINS)}")
        anns = t.get("annotations", [])
        if not isinstance(anns, list):
            raise InputError(f"import file {where}.annotations: received {type(anns).__name__}; expected a list")
        anns = [a for a in anns if isinstance(a, dict) and not a.get("was_cancelled")]
        if not anns:
            skipped += 1
            continue
        result = anns[-1].get("result")
        label = None
        for r in result if isinstance(result, list) else []:
            v = r.get("value") if isinstance(r, dict) else None
            if not isinstance(v, dict):
                continue
            if isinstance(v.get("choices"), list) and v["choices"]:
                label = v["choices"][0]
            elif isinstance(v.get("number"), (int, float)) and not isinstance(v.get("number"), bool):
                label = v["number"]
            elif isinstance(v.get("text"), list) and v["text"]:
                label = v["text"][0]
            if label is not None:
                break
        if label is None or (isinstance(label, float) and not math.isfinite(label)):
            raise InputError(f"import file {where}.annotations[{len(anns) - 1}].result: received "
                             f"{json.dumps(result)[:200]}; expected a 'choices', 'number' or 'textarea' result")
        out.append({"prediction_id": pid, "label": label, "origin": origin})
    return out, skipped
