"""Recommendation through the loop: data -> split -> selection -> training -> evaluation ->
requirements -> registry, and retraining on feedback with the ranking gate.

:class:`~modelloop.loop.Loop` hands a project whose task is ``recommendation`` to the functions
here (``run``, ``retrain``, ``models``, ``monitor``); the registry, the feedback store, the run
folders and lineage are the loop's own, so ``modelloop models / promote / rollback / lineage``
work the same for every task.

Data
    Interactions come from ``data.source`` (``builtin:movielens-100k`` or a CSV/TSV/Parquet
    file; columns named in the spec's ``recommendation`` section). Duplicated (user, item) rows
    are collapsed by one rule (:func:`modelloop.data.interactions.deduplicate`): with a timestamp
    column the latest row wins (equal timestamps: the last one in file order); without one the
    ratings are averaged. The data report counts how many rows the rule removed.

Split protocol (recorded in the manifest and the report)
    Per-user stratified, as Microsoft Recommenders' ``python_stratified_split``: each user's
    interactions are shuffled with ``data.split.seed`` and ``round((1 - test) * n)`` of them
    stay, the rest go to **test**; of those that stay, ``round((1 - validation / (1 - test)) * m)``
    go to **train** and the rest to **validation** (round half to even). Every user is in train;
    a user with one or two interactions has all of them in train.

Selection and evaluation
    Each candidate is fit on train and evaluated on validation: precision@10, recall@10 and
    NDCG@10 (binary relevance; each user's training items excluded from the list) and, on
    explicit ratings, RMSE/MAE of the models that estimate ratings (popularity, MSE-trained MF).
    The best by the requirement's ranking metric is refit on train + validation and evaluated on
    test.

Retraining
    Feedback on served recommendations becomes interactions: the user comes from the logged
    request, the item is the feedback's ``label``; a ``click`` (or ``label``, or thumbs up)
    counts as an implicit positive (rating 1 on implicit data; on explicit ratings
    ``recommendation.click_rating``, by default the 75th percentile of the training ratings),
    a ``rating`` counts its value, thumbs down is kept but not trained on. The feedback of a
    share of predictions (``feedback.holdout_fraction``, chosen by a hash of the prediction id)
    is held out for the gate (see :mod:`.gate`).
"""

from __future__ import annotations

import hashlib
import html
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from ..data.interactions import Interactions, load_interactions, load_movielens_100k, stratified_split
from ..errors import DataError, InputError, RegistryError
from ..registry.artifact import MANIFEST, PREPROCESSING, WEIGHTS, library_versions
from ..settings import write_private
from .config import K, RecommendationSpec, candidate_configs

__all__ = ["run", "retrain", "models", "monitor", "load_version", "register_recommender", "RecModel", "load_data",
           "split_data", "evaluate", "per_user_ranking", "feedback_interactions", "SPLIT_PROTOCOL", "BUILTINS"]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]
BUILTINS = ("movielens-100k",)
DUPLICATE_RULE = ("duplicated (user, item) rows: with a timestamp column the latest row wins (ties: the last in "
                  "file order); without one the ratings are averaged")
SPLIT_PROTOCOL = ("per-user stratified split (Microsoft Recommenders python_stratified_split): each user's "
                  "interactions shuffled with seed {seed}; round({keep:.2f} x n) stay and the rest go to test; of "
                  "those, round({train:.4f} x m) train and the rest validation (round half to even); every user "
                  "is in train")


def _say(progress: Progress | None, msg: str) -> None:
    if progress is None:
        log.info(msg)
    else:
        progress(msg)


def rec_spec(spec) -> RecommendationSpec:
    return spec.recommendation or RecommendationSpec()


# ------------------------------------------------------------------------------------ data
def load_data(spec, root: Path) -> tuple[Interactions, dict[str, Any]]:
    """Load and validate the interactions named by the spec. Returns (data, data report).

    Raises:
        DataError: unknown built-in, missing/unreadable file, a named column absent, non-numeric
            ratings, or too little data to split.
    """
    rec = rec_spec(spec)
    src = spec.data.source
    if src.startswith("builtin:"):
        name = src.removeprefix("builtin:")
        if name not in BUILTINS:
            raise DataError(f"data source {src!r}: unknown built-in dataset for recommendation; expected "
                            + ", ".join(f"builtin:{n}" for n in BUILTINS) + " or a CSV/TSV/Parquet file")
        data = load_movielens_100k()
        raw_rows, explicit = len(data.frame), True
    else:
        path = Path(src) if Path(src).is_absolute() else root / src
        items = None
        if rec.items:
            items = Path(rec.items) if Path(rec.items).is_absolute() else root / rec.items
        if rec.items and not rec.item_text_columns:
            raise DataError(f"recommendation.items {rec.items!r}: no item_text_columns; expected the columns of "
                            "the item table to use as item text (e.g. [title, genres])")
        from ..data.interactions import _read_table

        raw_rows = len(_read_table(path, None))
        data = load_interactions(path, user_col=rec.user_column, item_col=rec.item_column,
                                 rating_col=rec.rating_column, timestamp_col=rec.timestamp_column,
                                 items_path=items, item_id_col=rec.item_id_column,
                                 item_text_cols=list(rec.item_text_columns) or None)
        explicit = rec.rating_column is not None and data.frame["rating"].nunique() > 1
    f = data.frame
    users, n_items = f["user"].nunique(), f["item"].nunique()
    per_user = f.groupby("user")["item"].size()
    if users < 2 or n_items < 2:
        raise DataError(f"data source {src!r}: {users} user(s) and {n_items} item(s) after removing duplicates; "
                        "expected at least 2 of each")
    if int((per_user >= 3).sum()) == 0:
        raise DataError(f"data source {src!r}: no user has 3 or more interactions; expected some users with at "
                        "least 3 so that validation and test are not empty")
    report = {"source": src, "rows_read": int(raw_rows), "rows": int(len(f)),
              "duplicates_removed": int(raw_rows - len(f)), "duplicate_rule": DUPLICATE_RULE,
              "users": int(users), "items": int(n_items), "items_with_text": len(data.item_text),
              "explicit_ratings": bool(explicit),
              "rating_range": [float(f["rating"].min()), float(f["rating"].max())],
              "density": float(len(f) / (users * n_items)),
              "interactions_per_user": {"min": int(per_user.min()), "median": float(per_user.median()),
                                        "max": int(per_user.max())}}
    return data, report


def split_data(data: Interactions, split) -> tuple[dict[str, Interactions], str]:
    """Per-user stratified train / validation / test (see the module docs). Returns (splits, protocol)."""
    keep = 1 - split.test
    train_share = 1 - split.validation / keep
    rest, test = stratified_split(data, ratio=keep, seed=split.seed)
    train, val = stratified_split(rest, ratio=train_share, seed=split.seed + 1)
    protocol = SPLIT_PROTOCOL.format(seed=split.seed, keep=keep, train=train_share)
    for name, part in (("validation", val), ("test", test)):
        if len(part) == 0:
            raise DataError(f"data source {data.source!r}: the {name} split is empty; expected users with enough "
                            "interactions (or larger data.split fractions)")
    return {"train": train, "val": val, "test": test}, protocol


def _fingerprint(data: Interactions, split) -> str:
    h = hashlib.sha256()
    h.update(pd.util.hash_pandas_object(data.frame, index=False).to_numpy().tobytes())
    h.update(json.dumps(sorted(data.item_text.items())).encode())
    h.update(json.dumps(split.model_dump()).encode())
    return h.hexdigest()[:16]


def _save_splits(folder: Path, splits: dict[str, Interactions], item_text: dict[str, str],
                 report: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        part.frame.to_parquet(folder / f"{name}.parquet", index=False)
    (folder / "items.json").write_text(json.dumps(item_text))
    (folder / "report.json").write_text(json.dumps(report, indent=2))


def load_splits(data_dir: Path, fingerprint: str) -> tuple[dict[str, Interactions], dict[str, Any]]:
    folder = data_dir / f"rec-{fingerprint}"
    if not (folder / "train.parquet").is_file():
        raise RegistryError(f"dataset snapshot {fingerprint!r}: not found in {str(data_dir)!r}; expected the "
                            "snapshot written by 'modelloop run'")
    item_text = json.loads((folder / "items.json").read_text())
    splits = {n: Interactions(pd.read_parquet(folder / f"{n}.parquet"), item_text, fingerprint)
              for n in ("train", "val", "test")}
    return splits, json.loads((folder / "report.json").read_text())


# ------------------------------------------------------------------------------ evaluation
def _relevant(part: Interactions | pd.DataFrame) -> dict[str, set[str]]:
    frame = part.frame if isinstance(part, Interactions) else part
    out: dict[str, set[str]] = {}
    for u, i in zip(frame["user"].astype(str), frame["item"].astype(str), strict=True):
        out.setdefault(u, set()).add(i)
    return out


@torch.no_grad()
def top_lists(model, users: list[str], k: int = K, exclude: dict[str, set[str]] | None = None,
              batch: int = 512) -> list[list[str]]:
    """Top-k per user as ``model.recommend`` ranks them (training items excluded), with ``exclude``
    (user -> extra items) removed as well, so two models can be ranked over the same items."""
    out: list[list[str]] = []
    for s in range(0, len(users), batch):
        chunk = users[s:s + batch]
        scores = model.score_matrix(chunk, exclude_seen=True)
        if exclude:
            for row, u in enumerate(chunk):
                cols = [model.item_index[i] for i in exclude.get(u, ()) if i in model.item_index]
                if cols:
                    scores[row, cols] = -math.inf
        top = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        out += [[model.items[j] for j, v in zip(idx, val, strict=True) if v > -math.inf]
                for idx, val in zip(top.indices.tolist(), top.values.tolist(), strict=True)]
    return out


def per_user_ranking(lists: list[list[str]], users: list[str], relevant: dict[str, set[str]],
                     k: int = K) -> dict[str, np.ndarray]:
    """Per-user precision@k, recall@k, NDCG@k (binary relevance) and hit@k, aligned with ``users``."""
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    prec, rec, ndcg, hit = [], [], [], []
    for u, lst in zip(users, lists, strict=True):
        truth = relevant[u]
        hits = np.array([i in truth for i in lst[:k]], dtype=np.float64)
        n_hit = hits.sum()
        prec.append(n_hit / k)
        rec.append(n_hit / len(truth))
        ndcg.append(float((hits * disc[:len(hits)]).sum() / disc[:min(len(truth), k)].sum()))
        hit.append(float(n_hit > 0))
    return {"precision": np.array(prec), "recall": np.array(rec), "ndcg": np.array(ndcg), "hit": np.array(hit)}


def _rates_ratings(config: dict[str, Any]) -> bool:
    return config["kind"] == "popularity" or (config["kind"] == "mf" and config.get("loss", "mse") == "mse")


def evaluate(model, config: dict[str, Any], part: Interactions, explicit: bool,
             exclude: dict[str, set[str]] | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray], list[str]]:
    """Metrics of ``model`` on ``part`` (ranking @10; RMSE/MAE when ratings are explicit and the
    model estimates ratings). Returns (metrics, per-user arrays, users)."""
    relevant = _relevant(part)
    users = sorted(relevant)
    per = per_user_ranking(top_lists(model, users, K, exclude), users, relevant)
    metrics: dict[str, Any] = {"ndcg@10": float(per["ndcg"].mean()), "precision@10": float(per["precision"].mean()),
                               "recall@10": float(per["recall"].mean()), "hit_rate@10": float(per["hit"].mean()),
                               "users": len(users), "interactions": int(len(part)), "rmse": None, "mae": None}
    if explicit and _rates_ratings(config):
        from ..evaluate.ranking import mae, rmse

        f = part.frame
        pred = model.predict(f["user"].astype(str).tolist(), f["item"].astype(str).tolist())
        metrics["rmse"], metrics["mae"] = rmse(f["rating"], pred), mae(f["rating"], pred)
    return metrics, per, users


def _latency(model, users: list[str], n: int = 60) -> dict[str, float]:
    times = []
    for u in (users * (n // max(len(users), 1) + 1))[:n]:
        t = time.perf_counter()
        model.recommend([u], K)
        times.append((time.perf_counter() - t) * 1000)
    return {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95))}


def _size_mb(model) -> float:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 1e6


def _fit(config: dict[str, Any], train: Interactions, item_text: dict[str, str]):
    from ..models.recommend import build_recommender

    model = build_recommender(dict(config))
    t = time.perf_counter()
    model.fit(train, item_text=item_text)
    return model, time.perf_counter() - t


# ------------------------------------------------------------------------------- artifacts
@dataclass
class RecModel:
    """A registered recommender ready to serve (what the server and the gate load)."""

    version: str
    manifest: dict[str, Any]
    model: Any
    item_text: dict[str, str] = field(default_factory=dict)
    backend: str = "torch"
    class_names: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return "recommendation"

    def knows_item(self, item: str) -> bool:
        return item in self.model.item_index or item in self.item_text

    def title(self, item: str) -> str | None:
        text = self.item_text.get(item)
        return text.split(" | ")[0] if text else None


def register_recommender(registry, manifest: dict[str, Any], model, item_text: dict[str, str],
                         complete: Callable[[str], dict[str, Any]] | None = None) -> str:
    """Register a fitted recommender: weights (safetensors, buffers included), its config with the
    user and item vocabularies and the item texts (``preprocessing.json``), the manifest.
    ``complete(version)`` runs before the version appears (see ``LocalRegistry.register``)."""
    pre = {"recommender": model.get_config(), "input": "interactions", "item_text": dict(item_text)}
    return registry.register(manifest, model, pre, complete=complete)


def _register_with_report(loop, manifest: dict[str, Any], model, item_text: dict[str, str], title: str,
                          progress: Progress | None) -> str:
    """Register with the version's report written before the version appears."""

    def complete(version: str) -> dict[str, Any]:
        path = report_file(loop, version, f"{title}: {loop.spec.name} {version}", {**manifest, "version": version})
        _say(progress, f"[report] {version}: {path}")
        return {"report": path}

    return register_recommender(loop.registry, manifest, model, item_text, complete=complete)


def load_version(registry, version: str) -> RecModel:
    """Rebuild a registered recommender from its artifact folder (safetensors: loading runs no code)."""
    from ..models.recommend import build_recommender

    manifest = registry.manifest(version)
    if manifest.get("task") != "recommendation":
        raise RegistryError(f"model version {version!r}: a {manifest.get('task')} model; expected a "
                            "recommendation model")
    folder = registry.path(version)
    missing = [n for n in (MANIFEST, WEIGHTS, PREPROCESSING) if not (folder / n).is_file()]
    if missing:
        raise RegistryError(f"model artifact {str(folder)!r}: missing {', '.join(missing)}")
    pre = json.loads((folder / PREPROCESSING).read_text())
    model = build_recommender(pre["recommender"])
    model.load_state_dict(load_file(str(folder / WEIGHTS)))
    model.eval()
    return RecModel(version, manifest, model, pre.get("item_text", {}))


# -------------------------------------------------------------------------------------- run
def run(loop, resume: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Load, split, select, train, evaluate, check requirements and register (see the module docs)."""
    spec = loop.spec
    rec = rec_spec(spec)
    t0 = time.perf_counter()
    budget = spec.requirements.time_budget_s
    if resume:
        _say(progress, "[run] recommendation runs are short: starting a new run")
    from ..loop import _feedback_fingerprint

    run_id, run_dir, state = loop._new_run()

    _say(progress, f"[data] loading and validating {spec.data.source}")
    data, report = load_data(spec, loop.paths.root)
    splits, protocol = split_data(data, spec.data.split)
    fp = _fingerprint(data, spec.data.split)
    report.update(split_protocol=protocol, split={n: {"interactions": len(p), "users": p.n_users}
                                                  for n, p in splits.items()})
    _save_splits(loop.paths.data / f"rec-{fp}", splits, data.item_text, report)
    state["dataset"] = fp
    loop._save_state(run_dir, state)
    explicit = report["explicit_ratings"]
    _say(progress, f"[data] {report['rows']} interactions ({report['duplicates_removed']} duplicates removed), "
         f"{report['users']} users, {report['items']} items, {'explicit ratings' if explicit else 'implicit'}; "
         f"split train {len(splits['train'])}, validation {len(splits['val'])}, test {len(splits['test'])} "
         "(per-user stratified)")

    # selection: every candidate fit on train, judged on validation
    cands = candidate_configs(rec, explicit)
    metric = spec.requirements.metric
    _say(progress, f"[selection] candidates {', '.join(c['name'] for c in cands)} (by validation {metric})")
    board: list[dict[str, Any]] = []
    for c in cands:
        row: dict[str, Any] = {"candidate": c["name"], "kind": c["config"]["kind"], "config": c["config"]}
        if time.perf_counter() - t0 > budget * spec.selection.share_of_budget and board:
            row.update(decision="skipped: selection time budget spent", val=None)
            board.append(row)
            continue
        model, fit_s = _fit(c["config"], splits["train"], data.item_text)
        m, _, users = evaluate(model, c["config"], splits["val"], explicit)
        lat = _latency(model, users)
        row.update(val=m, fit_s=round(fit_s, 2), p50_ms=lat["p50_ms"], p95_ms=lat["p95_ms"], size_mb=_size_mb(model))
        board.append(row)
        _say(progress, f"[selection] {c['name']}: val NDCG@10 {m['ndcg@10']:.4f}, precision@10 "
             f"{m['precision@10']:.4f}, recall@10 {m['recall@10']:.4f}"
             + (f", RMSE {m['rmse']:.4f}" if m["rmse"] is not None else "") + f" ({fit_s:.1f} s)")
    ranked = [r for r in board if r.get("val")]
    best = max(ranked, key=lambda r: r["val"][metric])
    for r in board:
        if r is best:
            r["decision"] = f"chosen: best validation {metric}"
        elif "decision" not in r:
            r["decision"] = f"validation {metric} {r['val'][metric]:.4f} < {best['val'][metric]:.4f}"
    selection = {"chosen": best["candidate"], "shipped": best["candidate"], "rule": f"best validation {metric}",
                 "warning": None, "excluded": {}, "leaderboard": board}
    _say(progress, f"[selection] chose {best['candidate']} (val {metric} {best['val'][metric]:.4f})")

    # final model: refit on train + validation, evaluated on test
    config = best["config"]
    full = data.subset(pd.concat([splits["train"].frame, splits["val"].frame]))
    _say(progress, f"[training] {best['candidate']} on train + validation ({len(full)} interactions)")
    model, fit_s = _fit(config, full, data.item_text)
    val_metrics = best["val"]
    test_metrics, _, users = evaluate(model, config, splits["test"], explicit)
    latency = _latency(model, users)
    size_mb = _size_mb(model)
    _say(progress, f"[evaluation] test NDCG@10 {test_metrics['ndcg@10']:.4f}, precision@10 "
         f"{test_metrics['precision@10']:.4f}, recall@10 {test_metrics['recall@10']:.4f}"
         + (f", RMSE {test_metrics['rmse']:.4f}" if test_metrics["rmse"] is not None else "")
         + f", p95 latency {latency['p95_ms']:.2f} ms")
    from ..gate import check_requirements

    gate = check_requirements(spec.requirements, test_metrics, latency, size_mb)
    manifest = _manifest(loop, config=config, candidate=best["candidate"], run_id=run_id, fingerprint=fp,
                         base_fingerprint=fp, report=report, test=test_metrics, val=val_metrics, latency=latency,
                         size_mb=size_mb, gate=gate, selection=selection, parent=None, feedback_examples=0,
                         feedback_holdout=0, train_interactions=len(full), test_interactions=len(splits["test"]),
                         fit_s=fit_s)
    manifest["feedback_fingerprint"] = _feedback_fingerprint([])
    version = _register_with_report(loop, manifest, model, data.item_text, "Training run", progress)
    report_path = loop.registry.manifest(version)["report"]
    state.update(registered=version, elapsed_s=time.perf_counter() - t0)
    loop._save_state(run_dir, state)
    champion = loop._complete(run_dir, state, version, progress)["champion"]
    return {"version": version, "run_id": run_id, "parent": None, "metrics": test_metrics, "val_metrics": val_metrics,
            "latency": latency, "size_mb": size_mb, "gate": gate, "passed": gate["passed"], "champion": champion,
            "report": report_path, "family": best["candidate"], "dataset": fp, "feedback_examples": 0,
            "decision": None, "task": "recommendation", "split_protocol": protocol, "data_report": report,
            "summary": _summary(version, best["candidate"], test_metrics, gate["passed"], champion, report_path)}


def _summary(version: str, family: str, m: dict[str, Any], passed: bool, champion: bool, report: str) -> str:
    return (f"version {version} ({family}): test NDCG@10 {m['ndcg@10']:.4f}, precision@10 {m['precision@10']:.4f}, "
            f"recall@10 {m['recall@10']:.4f}" + (f", RMSE {m['rmse']:.4f}" if m.get("rmse") is not None else "")
            + f"; requirements {'met' if passed else 'NOT met'}{'; champion' if champion else ''}\nreport: {report}")


def _manifest(loop, *, config, candidate, run_id, fingerprint, base_fingerprint, report, test, val, latency, size_mb,
              gate, selection, parent, feedback_examples, feedback_holdout, train_interactions, test_interactions,
              fit_s, decision=None) -> dict[str, Any]:
    spec = loop.spec
    params = {k: v for k, v in config.items() if k != "kind"}
    m = {
        "task": "recommendation", "name": spec.name,
        "model": {"kind": config["kind"], "candidate": candidate, "family": candidate, "params": params,
                  "config": config},
        "class_names": [], "metrics": {"test": test, "val": val}, "latency": latency, "size_mb": size_mb,
        "requirements": gate,
        "dataset": {"fingerprint": fingerprint, "base_fingerprint": base_fingerprint, "source": spec.data.source,
                    "train_examples": int(train_interactions), "test_examples": int(test_interactions),
                    "split_protocol": report.get("split_protocol"), "duplicate_rule": DUPLICATE_RULE,
                    "report": report},
        "split": {"protocol": report.get("split_protocol"), **spec.data.split.model_dump()},
        "selection": selection, "run_id": run_id, "parent": parent, "feedback_examples": feedback_examples,
        "feedback_holdout": feedback_holdout, "feedback_validation": 0,
        "training": {"seconds": round(fit_s, 2), "stopped": "fitted"},
        "serving": {"backend": "torch", "note": "recommenders are served by PyTorch"},
        "spec": spec.to_dict(), "libraries": library_versions(),
    }
    if decision is not None:
        m["gate"] = decision
    return m


# ---------------------------------------------------------------------------------- feedback
def feedback_interactions(loop, known_items: set[str], click_rating: float) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Trusted feedback on recommendations as interactions.

    Returns a frame (prediction_id, user, item, rating, feedback_at, slate) with one row per
    (prediction, item) (the latest feedback counts), and counts of what was skipped.
    """
    import sqlalchemy as sa

    from ..feedback.store import _decode_input, feedback, predictions

    untrusted = [c for c in loop.spec.feedback.untrusted_clients if c]
    q = (sa.select(feedback.c.id, feedback.c.prediction_id, feedback.c.label, feedback.c.kind, feedback.c.value,
                   feedback.c.client, feedback.c.created_at, predictions.c.input_shape, predictions.c.input_dtype,
                   predictions.c.input_data, predictions.c.scores)
         .join(predictions, predictions.c.id == feedback.c.prediction_id).order_by(feedback.c.id))
    if untrusted:
        q = q.where(sa.or_(feedback.c.client.is_(None), feedback.c.client.not_in(untrusted)))
    with loop.store.long_read() as c:  # training data: no statement timeout
        rows = [dict(r) for r in c.execute(q).mappings()]
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    skipped = {"not_a_recommendation": 0, "unknown_item": 0, "thumbs_down": 0}
    for r in rows:
        try:
            request = json.loads(_decode_input(r["input_shape"], r["input_dtype"], r["input_data"]))
            user = str(request["user"])
        except (ValueError, KeyError, TypeError):
            skipped["not_a_recommendation"] += 1
            continue
        item = str(r["label"])
        if item not in known_items:
            skipped["unknown_item"] += 1
            continue
        latest[(r["prediction_id"], item)] = {**r, "user": user, "item": item}
    out = []
    for (pid, item), r in latest.items():
        if r["kind"] == "thumbs" and (r["value"] or 0) < 0:
            skipped["thumbs_down"] += 1
            continue
        rating = float(r["value"]) if r["kind"] == "rating" and r["value"] is not None else click_rating
        out.append({"prediction_id": pid, "user": r["user"], "item": item, "rating": np.float32(rating),
                    "feedback_at": r["created_at"], "slate": list(json.loads(r["scores"] or "{}"))})
    frame = pd.DataFrame(out, columns=["prediction_id", "user", "item", "rating", "feedback_at", "slate"])
    return frame, {"feedback_rows": len(rows), "interactions": len(frame), "skipped": skipped}


def _by_user(frame: pd.DataFrame) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for u, i in zip(frame["user"], frame["item"], strict=True):
        out.setdefault(str(u), set()).add(str(i))
    return out


def retrain(loop, progress: Progress | None = None, promote: bool = True, force: bool = False) -> dict[str, Any]:
    """Challenger of the champion's kind on train + validation + feedback; the ranking gate decides.

    Skipped (``decision`` ``"skipped"``) when the feedback is what the latest version of this
    lineage learned from, unless ``force`` (see ``Loop.retrain``). The caller holds the writer lock.
    """
    from ..loop import _feedback_fingerprint, _is_holdout
    from .gate import judge

    spec = loop.spec
    champion = loop.registry.champion()
    if champion is None:
        raise RegistryError(f"project {str(loop.paths.root)!r}: no champion to retrain from; expected a registered "
                            "champion (run 'modelloop run DIR' first)")
    champ = load_version(loop.registry, champion)
    pm = champ.manifest
    base_fp = pm["dataset"]["base_fingerprint"]
    splits, report = load_splits(loop.paths.data, base_fp)
    item_text = splits["train"].item_text
    explicit = report["explicit_ratings"]
    base = pd.concat([splits["train"].frame, splits["val"].frame], ignore_index=True)
    rec = rec_spec(spec)
    click = rec.click_rating
    if click is None:
        click = float(np.percentile(base["rating"], 75)) if explicit else 1.0
    known = set(champ.model.items) | set(item_text) | set(base["item"].astype(str))
    fb, fb_counts = feedback_interactions(loop, known, click)
    fb_fingerprint = _feedback_fingerprint((f"{p}\t{i}", float(r)) for p, i, r in
                                           zip(fb["prediction_id"], fb["item"], fb["rating"], strict=True))
    reason = None if force else loop.nothing_new(champion, fb_fingerprint, len(fb))
    if reason is not None:
        return loop._skipped(champion, reason, len(fb), progress)
    hold = np.array([_is_holdout(p, spec.feedback.holdout_fraction) for p in fb["prediction_id"]], dtype=bool)
    fb_train, fb_hold = fb[~hold].reset_index(drop=True), fb[hold].reset_index(drop=True)
    fb_ids = sorted(set(fb_train["prediction_id"]))
    hold_ids = sorted(set(fb_hold["prediction_id"]))
    _say(progress, f"[retrain] champion {champion}; {len(fb_train)} feedback interactions to learn from "
         f"({len(fb_ids)} predictions), {len(fb_hold)} held out for the gate ({len(hold_ids)} predictions)")

    # training data: base + feedback; a feedback row replaces the same (user, item) of the base (latest wins)
    add = fb_train[["user", "item", "rating"]].copy()
    cols = ["user", "item", "rating"]
    train_frame = (pd.concat([base[cols], add[cols]], ignore_index=True)
                   .drop_duplicates(["user", "item"], keep="last").reset_index(drop=True))
    train_frame["rating"] = train_frame["rating"].astype(np.float32)
    h = hashlib.sha256(base_fp.encode())
    for pid in fb_ids:
        h.update(pid.encode())
    fingerprint = h.hexdigest()[:16]

    run_id, run_dir, state = loop._new_run()
    state.update(kind="retrain", parent=champion, dataset=base_fp, feedback_examples=len(fb_ids),
                 feedback_holdout=len(hold_ids), promote=promote, feedback_fingerprint=fb_fingerprint)
    loop._save_state(run_dir, state)
    write_private(run_dir / "holdout_ids.json", json.dumps(hold_ids))
    write_private(run_dir / "validation_ids.json", json.dumps([]))
    write_private(run_dir / "feedback_counts.json", json.dumps(fb_counts))
    config = pm["model"]["config"]
    _say(progress, f"[training] challenger {pm['model']['candidate']} on {len(train_frame)} interactions")
    model, fit_s = _fit(config, Interactions(train_frame, item_text, base_fp), item_text)

    # gate test set: test minus what the challenger trained on; both models rank the same items
    fb_seen = _by_user(fb_train)
    test = splits["test"].frame
    in_fb = np.array([i in fb_seen.get(str(u), ()) for u, i in zip(test["user"], test["item"], strict=True)],
                     dtype=bool)
    gate_test = Interactions(test[~in_fb].reset_index(drop=True), item_text, base_fp)
    champ_m, champ_per, users = evaluate(champ.model, config, gate_test, explicit, exclude=fb_seen)
    chall_m, chall_per, _ = evaluate(model, config, gate_test, explicit, exclude=fb_seen)
    for mm in (champ_m, chall_m):
        mm["evaluated_on"] = (f"test split minus {int(in_fb.sum())} (user, item) pairs learned from feedback; "
                              "feedback items excluded from both models' lists")
    latency = _latency(model, users)
    size_mb = _size_mb(model)
    from ..gate import check_requirements

    chall_req = check_requirements(spec.requirements, chall_m, latency, size_mb)
    decision = judge(spec, champ.model, model, champ_m, chall_m, champ_per, chall_per, chall_req, fb_hold,
                     fb_seen, removed_from_test=int(in_fb.sum()))
    _say(progress, f"[gate] test NDCG@10 champion {champ_m['ndcg@10']:.4f} vs challenger {chall_m['ndcg@10']:.4f} "
         f"on {len(users)} users")

    manifest = _manifest(loop, config=config, candidate=pm["model"]["candidate"], run_id=run_id,
                         fingerprint=fingerprint, base_fingerprint=base_fp, report=report, test=chall_m,
                         val=None, latency=latency, size_mb=size_mb, gate=chall_req,
                         selection=None, parent=champion, feedback_examples=len(fb_ids),
                         feedback_holdout=len(hold_ids), train_interactions=len(train_frame),
                         test_interactions=len(gate_test), fit_s=fit_s, decision=decision)
    manifest["feedback"] = {**fb_counts, "train_interactions": len(fb_train), "holdout_interactions": len(fb_hold),
                            "click_rating": click}
    manifest["feedback_fingerprint"] = fb_fingerprint
    write_private(run_dir / "feedback_ids.json", json.dumps(fb_ids))  # lineage reads it
    version = _register_with_report(loop, manifest, model, item_text, "Retraining on feedback", progress)
    report_path = loop.registry.manifest(version)["report"]
    state["registered"] = version
    loop._save_state(run_dir, state)
    is_champion = loop._complete(run_dir, state, version, progress)["champion"]
    return {"version": version, "run_id": run_id, "parent": champion, "metrics": chall_m, "val_metrics": None,
            "latency": latency, "size_mb": size_mb, "gate": chall_req, "passed": chall_req["passed"],
            "champion": is_champion, "report": report_path, "family": pm["model"]["candidate"],
            "dataset": fingerprint, "feedback_examples": len(fb_ids), "feedback_validation": 0,
            "feedback_holdout": len(hold_ids), "feedback_interactions": len(fb_train),
            "decision": decision["decision"], "evidence": decision, "champion_metrics": champ_m,
            "challenger_metrics": chall_m, "champion_version": loop.registry.champion(), "task": "recommendation"}


# ----------------------------------------------------------------------------- registry views
def models(loop) -> list[dict[str, Any]]:
    rows = []
    for m in loop.registry.versions():
        test = m["metrics"]["test"]
        rows.append({
            "version": m["version"], "aliases": m["aliases"], "family": m["model"].get("candidate", m["model"]["kind"]),
            "task": "recommendation", "ndcg@10": test["ndcg@10"], "precision@10": test["precision@10"],
            "recall@10": test["recall@10"], "rmse": test.get("rmse"),
            "accuracy": None, "f1_macro": None,
            "headline": [["NDCG@10", test["ndcg@10"]], ["precision@10", test["precision@10"]]],
            "parent": m.get("parent"), "dataset": m["dataset"]["fingerprint"],
            "feedback_examples": m.get("feedback_examples", 0), "created_at": m["created_at"],
            "requirements_passed": m["requirements"]["passed"], "gate": (m.get("gate") or {}).get("decision"),
            "gate_reasons": (m.get("gate") or {}).get("reasons"), "report": m.get("report"),
            "split_protocol": m["dataset"].get("split_protocol"),
        })
    return rows


def monitor(loop) -> dict[str, Any]:
    """Traffic and feedback of the champion. Input drift is not measured for recommendation."""
    import sqlalchemy as sa

    from ..feedback.store import feedback, predictions

    champion = loop.registry.champion()
    if champion is None:
        raise RegistryError(f"project {str(loop.paths.root)!r}: no champion yet; run 'modelloop run DIR'")
    m = loop.registry.manifest(champion)
    since = max(m["created_at"], loop._watch_state().get("last_retrain_at", 0.0))
    with loop.store.engine.connect() as c:
        served = c.execute(sa.select(sa.func.count()).select_from(predictions)
                           .where(predictions.c.model_version == champion)).scalar_one()
        clicked = c.execute(sa.select(sa.func.count(sa.distinct(feedback.c.prediction_id)))
                            .select_from(feedback.join(predictions, predictions.c.id == feedback.c.prediction_id))
                            .where(predictions.c.model_version == champion)).scalar_one()
        fb_all = c.execute(sa.select(sa.func.count()).select_from(feedback)).scalar_one()
        fb_new = c.execute(sa.select(sa.func.count()).select_from(feedback)
                           .where(feedback.c.created_at > since)).scalar_one()
    return {
        "model_version": champion,
        "drift": {"detected": False, "statistic": None, "threshold": None, "p_value": None, "n_reference": 0,
                  "n_live": int(served), "reason": "input drift is not measured for recommendation"},
        "prediction_drift": {"psi": None, "threshold": loop.spec.monitor.psi_threshold, "detected": False,
                             "reference": {}, "live": {}},
        "live_accuracy": {"value": None, "low": None, "high": None, "n": 0, "confidence": loop.spec.gate.confidence},
        "click_through": {"recommendations": int(served), "with_feedback": int(clicked),
                          "rate": (clicked / served) if served else None},
        "feedback": {"labelled": int(fb_all), "new_since_last_training": int(fb_new), **loop.store.counts()},
        "clients": [{**c, "trusted": c["client"] not in loop.spec.feedback.untrusted_clients}
                    for c in loop.store.clients()],
    }


# ------------------------------------------------------------------------------------ report
def _table(rows: list[list[Any]], head: list[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return html.escape("-" if v is None else str(v))

    return ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows) + "</table>")


def report_file(loop, version: str, title: str, m: dict[str, Any]) -> str:
    """Write ``reports/VERSION.html`` (atomically, mode 0600) from manifest ``m``; returns its path."""
    test = m["metrics"]["test"]
    keys = ["ndcg@10", "precision@10", "recall@10", "hit_rate@10", "rmse", "mae", "users"]
    parts = [f"<h1>{html.escape(title)}</h1>",
             f"<p>model <b>{html.escape(m['model']['candidate'])}</b> ({html.escape(m['model']['kind'])}), run "
             f"<code>{m['run_id']}</code>, dataset <code>{m['dataset']['fingerprint']}</code>, parent "
             f"{html.escape(str(m.get('parent') or '-'))}</p>",
             "<h2>Data</h2>", _table([[k, json.dumps(v) if isinstance(v, dict) else v]
                                      for k, v in m["dataset"]["report"].items() if k != "split_protocol"],
                                     ["field", "value"]),
             f"<p><b>Split protocol:</b> {html.escape(m['dataset'].get('split_protocol') or '')}</p>",
             "<h2>Test metrics</h2>", _table([[k, test.get(k)] for k in keys], ["metric", "value"]),
             "<h2>Requirements</h2>", _table([[c["name"], c["value"], c["target"], "pass" if c["passed"] else "FAIL"]
                                              for c in m["requirements"]["checks"]],
                                             ["requirement", "value", "target", "result"])]
    sel = m.get("selection")
    if sel:
        parts += ["<h2>Selection (validation split)</h2>",
                  _table([[r["candidate"], *((r.get("val") or {}).get(k) for k in ("ndcg@10", "precision@10",
                                                                                    "recall@10", "rmse")),
                           r.get("fit_s"), r.get("p95_ms"), r.get("decision")] for r in sel["leaderboard"]],
                         ["candidate", "NDCG@10", "precision@10", "recall@10", "RMSE", "fit s", "p95 ms", "decision"])]
    gate = m.get("gate")
    if gate:
        parts += ["<h2>Gate: challenger vs champion</h2>",
                  f"<p><b>{html.escape(gate['decision'])}</b>: {html.escape('; '.join(gate['reasons']))}</p>",
                  f"<pre>{html.escape(json.dumps({k: gate[k] for k in ('test', 'feedback')}, indent=2))}</pre>"]
    page = ("<!doctype html><meta charset='utf-8'><title>" + html.escape(title)
            + "</title><style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2rem auto}"
              "table{border-collapse:collapse}td,th{border:1px solid #ccd;padding:.25rem .5rem}</style>"
            + "".join(parts))
    return str(loop._write_report(version, lambda path: Path(path).write_text(page)))


def _check_k(k: Any, max_k: int, field_name: str = "k") -> int:
    try:
        value = int(str(k))
    except ValueError:
        raise InputError(f"query parameter {field_name!r}: received {k!r}; expected an integer from 1 to "
                         f"{max_k}") from None
    if not 1 <= value <= max_k:
        raise InputError(f"query parameter {field_name!r}: received {value}; expected an integer from 1 to {max_k}")
    return value
