"""Lineage: from any prediction to the model version, run and dataset behind it, and back."""

from __future__ import annotations

import json
from typing import Any

from ..errors import RegistryError

__all__ = ["lineage"]


def lineage(loop: Any, prediction_id: str | None = None, version: str | None = None) -> dict[str, Any]:
    """Walk prediction -> model version -> run -> dataset (+ feedback used) -> parent, and back:
    which later versions trained on this prediction's feedback, which versions descend from this one."""
    out: dict[str, Any] = {}
    store = loop.store
    if prediction_id is not None:
        pred = store.get_prediction(prediction_id)
        version = pred["model_version"]
        out.update(prediction_id=prediction_id, predicted=pred["label"], created_at=pred["created_at"],
                   input_hash=pred["input_hash"],
                   feedback=[{k: r[k] for k in ("id", "kind", "label", "value", "client", "created_at")}
                             for r in store.feedback_history(prediction_id)])
    if version is None:
        raise RegistryError("lineage: expected --prediction ID or --version VERSION")
    m = loop.registry.manifest(version)
    run_dir = loop.paths.runs / m["run_id"]

    def ids(name: str) -> list[str]:
        f = run_dir / name
        return json.loads(f.read_text()) if f.is_file() else []

    chain, cur = [], m.get("parent")
    while cur:
        chain.append(cur)
        cur = loop.registry.manifest(cur).get("parent")
    versions = loop.registry.versions()
    out.update(model_version=version, run=m["run_id"], dataset_fingerprint=m["dataset"]["fingerprint"],
               base_dataset=m["dataset"]["base_fingerprint"], data_source=m["dataset"]["source"],
               feedback_ids=ids("feedback_ids.json"), feedback_validation_ids=ids("validation_ids.json"),
               feedback_holdout_ids=ids("holdout_ids.json"),
               parent=m.get("parent"), ancestors=chain,
               children=[v["version"] for v in versions if v.get("parent") == version],
               predictions_served=store.predictions_for(version), gate=(m.get("gate") or {}).get("decision"))
    if prediction_id is not None:
        trained_into = []
        for v in versions:
            f = loop.paths.runs / v["run_id"] / "feedback_ids.json"
            if f.is_file() and prediction_id in json.loads(f.read_text()):
                trained_into.append(v["version"])
        out["trained_into"] = trained_into
    return out
