"""Recommendation: (user, item[, rating]) interactions -> a ranked list of items per user.

A task of the loop like any other: the loop runs its stages (load -> select -> fit -> assemble;
retrain: feedback -> fit_challenger -> assemble with the gate), and the registry, the feedback
store, the run records, lineage, ``models / promote / rollback / watch`` are the loop's own. What
differs is here: the data, the candidates (recommenders that fit by their own algorithm), the
ranking metrics, feedback on served lists, and the routes (``/recommend``, ``/similar``).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from ..data.interactions import Interactions, load_interactions, load_movielens_100k, stratified_split
from ..errors import DataError, InputError, RegistryError, SpecError
from ..evaluate.ranking import per_user_ranking
from ..feedback.sampling import feedback_fingerprint, is_holdout, trained_fingerprint
from ..registry.artifact import MANIFEST, PREPROCESSING, WEIGHTS, library_versions
from ..spec import DataSpec, RecommendationSpec, Spec, recommendation_candidate
from .base import Candidate, Task
from .stages import Context, FeedbackSet, Fitted, NewVersion, best_on_validation

__all__ = ["Recommendation", "RecModel", "RecData", "load_version", "load_data", "split_data", "evaluate",
           "top_lists", "PREDICT_HINT", "SPLIT_PROTOCOL", "BUILTINS", "load_splits",
           "register_recommender", "rec_spec", "RANKING_METRICS", "ALIASES", "candidate_configs", "K"]

log = logging.getLogger(__name__)
#: list length of every ranking metric and of the gate
K = 10
RANKING_METRICS = ("ndcg@10", "precision@10", "recall@10")
#: spec names -> (recommender kind, fixed settings); "mf" picks its loss from the data
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "popularity": ("popularity", {}),
    "mf": ("mf", {}),
    "bpr": ("mf", {"loss": "bpr", "lr": 0.005, "reg": 0.01, "negatives": 4, "epochs": 100}),
    "two-tower": ("two_tower", {}),
    "two_tower": ("two_tower", {}),
}
DEFAULT_EXPLICIT = ("popularity", "mf", "bpr", "ease", "two-tower")
DEFAULT_IMPLICIT = ("popularity", "bpr", "ease", "two-tower")

BUILTINS = ("movielens-100k",)
DUPLICATE_RULE = ("duplicated (user, item) rows: with a timestamp column the latest row wins (ties: the last in "
                  "file order); without one the ratings are averaged")
SPLIT_PROTOCOL = ("per-user stratified split (Microsoft Recommenders python_stratified_split): each user's "
                  "interactions shuffled with seed {seed}; round({keep:.2f} x n) stay and the rest go to test; of "
                  "those, round({train:.4f} x m) train and the rest validation (round half to even); every user "
                  "is in train")
PREDICT_HINT = ("this project serves recommendation; /predict is for classification projects; "
                "expected GET /recommend?user=USER&k=10 (or GET /similar?item=ITEM&k=10)")


# ------------------------------------------------------------------------------ candidates
def _known_kinds() -> list[str]:
    from ..models import recommend

    kinds = getattr(recommend, "_KINDS", {})
    return sorted(kinds)


def _resolve(c: str | dict[str, Any], explicit: bool) -> dict[str, Any]:
    """A candidate entry -> {"name", "config"} with config ready for ``build_recommender``.

    Raises ValueError naming what was received and what was expected.
    """
    name, settings, label = recommendation_candidate(c)
    if name in ALIASES:
        kind, fixed = ALIASES[name]
    else:
        kinds = _known_kinds()
        if name not in kinds:
            raise ValueError(f"unknown candidate {name!r}; expected some of "
                             f"{', '.join(dict.fromkeys([*ALIASES, *kinds]))}")
        kind, fixed = name, {}
    config = {"kind": kind, **fixed, **settings}
    if kind == "mf" and "loss" not in config:
        config["loss"] = "mse" if explicit else "bpr"
    try:
        from ..models.recommend import build_recommender

        build_recommender(config)
    except InputError as e:
        raise ValueError(f"candidate {label!r}: {e}") from None
    return {"name": label, "config": config}


def candidate_configs(rec: RecommendationSpec, explicit: bool) -> list[dict[str, Any]]:
    """The candidates to compete: [{"name", "config"}] for ``build_recommender``."""
    entries = rec.candidates or list(DEFAULT_EXPLICIT if explicit else DEFAULT_IMPLICIT)
    return [_resolve(c, explicit) for c in entries]


# ------------------------------------------------------------------------------------ data
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
    for name, part in splits.items():  # .npz, exact and without pyarrow (the optional 'parquet' extra)
        columns = {c: v.to_numpy(dtype=str) if c in ("user", "item") else v.to_numpy() for c, v in part.frame.items()}
        np.savez_compressed(folder / f"{name}.npz", **columns)
    (folder / "items.json").write_text(json.dumps(item_text))
    (folder / "report.json").write_text(json.dumps(report, indent=2))


def _read_split(folder: Path, name: str) -> pd.DataFrame:
    if not (folder / f"{name}.npz").is_file():  # a snapshot written as Parquet by an earlier release
        from ..data.parquet import require_pyarrow

        require_pyarrow(folder / f"{name}.parquet")
        return pd.read_parquet(folder / f"{name}.parquet")
    with np.load(folder / f"{name}.npz", allow_pickle=False) as z:
        return pd.DataFrame({c: z[c] for c in z.files})


def load_splits(data_dir: Path, fingerprint: str) -> tuple[dict[str, Interactions], dict[str, Any]]:
    folder = data_dir / f"rec-{fingerprint}"
    if not (folder / "train.npz").is_file() and not (folder / "train.parquet").is_file():
        raise RegistryError(f"dataset snapshot {fingerprint!r}: not found in {str(data_dir)!r}; expected the "
                            "snapshot written by 'modelloop run'")
    item_text = json.loads((folder / "items.json").read_text())
    splits = {n: Interactions(_read_split(folder, n), item_text, fingerprint) for n in ("train", "val", "test")}
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
    """p50/p95 ms of one user's top 10 (the users taken in turn)."""
    from ..evaluate.metrics import latency_ms

    return latency_ms(lambda i: model.recommend([users[i % len(users)]], K), runs=n, warmup=0)


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


# --------------------------------------------------------------------------- manifest, report
def _summary(version: str, family: str, m: dict[str, Any], passed: bool, champion: bool, report: str) -> str:
    return (f"version {version} ({family}): test NDCG@10 {m['ndcg@10']:.4f}, precision@10 {m['precision@10']:.4f}, "
            f"recall@10 {m['recall@10']:.4f}" + (f", RMSE {m['rmse']:.4f}" if m.get("rmse") is not None else "")
            + f"; requirements {'met' if passed else 'NOT met'}{'; champion' if champion else ''}\nreport: {report}")


def _manifest(spec, *, config, candidate, run_id, fingerprint, base_fingerprint, report, test, val, latency, size_mb,
              gate, selection, parent, feedback_examples, feedback_holdout, train_interactions, test_interactions,
              fit_s, decision=None) -> dict[str, Any]:
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


def _by_user(frame: pd.DataFrame) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for u, i in zip(frame["user"], frame["item"], strict=True):
        out.setdefault(str(u), set()).add(str(i))
    return out


# ------------------------------------------------------------------------------------ report
def write_report_page(path: Path, title: str, m: dict[str, Any]) -> None:
    """The version's HTML report from its manifest ``m``."""
    from ..evaluate.report import gate_section, html_table, requirements_table, version_line, write_page

    test = m["metrics"]["test"]
    keys = ["ndcg@10", "precision@10", "recall@10", "hit_rate@10", "rmse", "mae", "users"]
    parts = [f"<h1>{html.escape(title)}</h1>",
             version_line(m),
             "<h2>Data</h2>", html_table([[k, json.dumps(v) if isinstance(v, dict) else v]
                                      for k, v in m["dataset"]["report"].items() if k != "split_protocol"],
                                     ["field", "value"]),
             f"<p><b>Split protocol:</b> {html.escape(m['dataset'].get('split_protocol') or '')}</p>",
             "<h2>Test metrics</h2>", html_table([[k, test.get(k)] for k in keys], ["metric", "value"]),
             "<h2>Requirements</h2>", requirements_table(m["requirements"])]
    sel = m.get("selection")
    if sel:
        parts += ["<h2>Selection (validation split)</h2>",
                  html_table([[r["candidate"], *((r.get("val") or {}).get(k) for k in ("ndcg@10", "precision@10",
                                                                                    "recall@10", "rmse")),
                           r.get("fit_s"), r.get("p95_ms"), r.get("decision")] for r in sel["leaderboard"]],
                         ["candidate", "NDCG@10", "precision@10", "recall@10", "RMSE", "fit s", "p95 ms", "decision"])]
    write_page(path, title, parts + gate_section(m.get("gate")))




@dataclass
class RecData:
    """Interactions split per user (``splits``: train, val, test), with the data report."""

    splits: dict[str, Interactions]
    report: dict[str, Any]
    fingerprint: str

    @property
    def item_text(self) -> dict[str, str]:
        return self.splits["train"].item_text

    @property
    def explicit(self) -> bool:
        return bool(self.report["explicit_ratings"])


def feedback_interactions(events: list[dict[str, Any]], known_items: set[str],
                          click_rating: float) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Trusted feedback on recommendations (the store's ``feedback_events``) as interactions.

    Returns a frame (prediction_id, user, item, rating, feedback_at, slate) with one row per
    (prediction, item) (the latest feedback counts), and counts of what was skipped.
    """
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    skipped = {"not_a_recommendation": 0, "unknown_item": 0, "thumbs_down": 0}
    for r in events:
        try:
            user = str(json.loads(r["input"])["user"])
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
    return frame, {"feedback_rows": len(events), "interactions": len(frame), "skipped": skipped}


class Recommendation(Task):
    name = "recommendation"
    input_kind = "interactions"
    resumable = False  # a recommendation run is short: it starts again from its data
    candidates: dict[str, Candidate] = {}
    default_candidates: tuple[str, ...] = ()
    score_name = "val NDCG@10"
    metric_kind = "ranking"
    metrics = RANKING_METRICS
    default_metric = "ndcg@10"
    def _check_candidates(self, spec: Spec) -> None:
        """The candidates live in ``recommendation.candidates`` (not ``selection.candidates``), and
        each must be a recommender kind that takes its settings."""
        if spec.selection.candidates:
            raise SpecError(f"field 'selection.candidates': received {spec.selection.candidates!r}; expected "
                            "none for recommendation: list the candidates under recommendation.candidates "
                            "(names or {kind: ..., settings})")
        entries = spec.recommendation.candidates if spec.recommendation else None
        for c in entries or []:
            try:
                _resolve(c, explicit=True)
            except ValueError as e:
                raise SpecError(f"field 'recommendation.candidates': received {entries!r}; expected: {e}") from None

    # -- inputs (served through /recommend and /similar, not /predict) ---------------------------
    def prepare(self, data: DataSpec, base_dir: Path):
        raise InputError("recommendation data is loaded with the project's spec (its recommendation section); "
                         "expected 'modelloop run DIR'")

    def candidates_for(self, ds) -> tuple[list[str], dict[str, str]]:
        return [], {}

    def collate(self, items: list[Any], like) -> tuple[Any, list[bool]]:
        return [], [False] * len(items)

    def parse_json(self, body: Any, model, limits=None) -> tuple[Any, bool]:
        raise InputError(PREDICT_HINT)

    def describe_input(self, model) -> dict[str, Any]:
        return {"input": "user id", "endpoints": ["/recommend?user=USER&k=10&exclude_seen=true",
                                                  "/similar?item=ITEM&k=10"]}

    # -- run ------------------------------------------------------------------------------------
    def load(self, ctx: Context, run) -> RecData:
        spec = ctx.spec
        ctx.say(f"[data] loading and validating {spec.data.source}")
        data, report = load_data(spec, ctx.paths.root)
        splits, protocol = split_data(data, spec.data.split)
        fp = _fingerprint(data, spec.data.split)
        report.update(split_protocol=protocol, split={n: {"interactions": len(p), "users": p.n_users}
                                                      for n, p in splits.items()})
        _save_splits(ctx.paths.data / f"rec-{fp}", splits, data.item_text, report)
        run.save(dataset=fp)
        ctx.say(f"[data] {report['rows']} interactions ({report['duplicates_removed']} duplicates removed), "
                f"{report['users']} users, {report['items']} items, "
                f"{'explicit ratings' if report['explicit_ratings'] else 'implicit'}; split train "
                f"{len(splits['train'])}, validation {len(splits['val'])}, test {len(splits['test'])} "
                "(per-user stratified)")
        return RecData(splits, report, fp)

    def reload(self, ctx: Context, fingerprint: str) -> RecData:
        splits, report = load_splits(ctx.paths.data, fingerprint)
        return RecData(splits, report, fingerprint)

    def select(self, ctx: Context, data: RecData, run, time_left: float) -> tuple[dict[str, Any], Any]:
        """Every candidate fit on train and judged on validation by the requirement's metric."""
        spec, splits = ctx.spec, data.splits
        t0 = time.perf_counter()
        cands = candidate_configs(rec_spec(spec), data.explicit)
        metric = spec.requirements.metric
        ctx.say(f"[selection] candidates {', '.join(c['name'] for c in cands)} (by validation {metric})")
        board: list[dict[str, Any]] = []
        for c in cands:
            row: dict[str, Any] = {"candidate": c["name"], "kind": c["config"]["kind"], "config": c["config"]}
            if time.perf_counter() - t0 > time_left and board:
                row.update(decision="skipped: selection time budget spent", val=None)
                board.append(row)
                continue
            model, fit_s = ctx.backend.fit_with(_fit, c["config"], splits["train"], data.item_text)
            m, _, users = evaluate(model, c["config"], splits["val"], data.explicit)
            lat = _latency(model, users)
            row.update(val=m, fit_s=round(fit_s, 2), p50_ms=lat["p50_ms"], p95_ms=lat["p95_ms"],
                       size_mb=_size_mb(model))
            board.append(row)
            ctx.say(f"[selection] {c['name']}: val NDCG@10 {m['ndcg@10']:.4f}, precision@10 "
                    f"{m['precision@10']:.4f}, recall@10 {m['recall@10']:.4f}"
                    + (f", RMSE {m['rmse']:.4f}" if m["rmse"] is not None else "") + f" ({fit_s:.1f} s)")
        best = best_on_validation(board, metric, ctx.say)
        return {"chosen": best["candidate"], "shipped": best["candidate"], "rule": f"best validation {metric}",
                "warning": None, "excluded": {}, "leaderboard": board}, None

    def fit(self, ctx: Context, data: RecData, selection: dict[str, Any], fitted: Any, run, resume: bool,
            time_left) -> Fitted:
        """The chosen recommender refit on train + validation."""
        best = next(r for r in selection["leaderboard"] if r["candidate"] == selection["chosen"])
        splits = data.splits
        full = Interactions(pd.concat([splits["train"].frame, splits["val"].frame]), data.item_text, data.fingerprint)
        ctx.say(f"[training] {best['candidate']} on train + validation ({len(full)} interactions)")
        model, fit_s = ctx.backend.fit_with(_fit, best["config"], full, data.item_text)
        return Fitted(model, best["config"], {"seconds": fit_s},
                      {"candidate": best["candidate"], "val": best["val"], "train_interactions": len(full)})

    # -- retrain --------------------------------------------------------------------------------
    def feedback(self, ctx: Context, parent: RecModel, data: RecData) -> FeedbackSet:
        """Feedback on served lists as interactions: a click (or label, or thumbs up) is a positive
        (``recommendation.click_rating`` on explicit ratings), a rating counts its value, thumbs
        down is kept out; a share of predictions (by id) is held out for the gate."""
        spec = ctx.spec
        base = pd.concat([data.splits["train"].frame, data.splits["val"].frame], ignore_index=True)
        click = rec_spec(spec).click_rating
        if click is None:
            click = float(np.percentile(base["rating"], 75)) if data.explicit else 1.0
        known = set(parent.model.items) | set(data.item_text) | set(base["item"].astype(str))
        events = ctx.store().feedback_events(spec.feedback.untrusted_clients)
        fb, counts = feedback_interactions(events, known, click)
        fingerprint = feedback_fingerprint((f"{p}\\t{i}", float(r)) for p, i, r in
                                           zip(fb["prediction_id"], fb["item"], fb["rating"], strict=True))
        hold = np.array([is_holdout(p, spec.feedback.holdout_fraction) for p in fb["prediction_id"]], dtype=bool)
        fb_train, fb_hold = fb[~hold].reset_index(drop=True), fb[hold].reset_index(drop=True)
        return FeedbackSet(fingerprint, len(fb), sorted(set(fb_train["prediction_id"])), [],
                           sorted(set(fb_hold["prediction_id"])),
                           {"train": fb_train, "hold": fb_hold, "counts": counts, "click": click, "base": base})

    def fit_challenger(self, ctx: Context, parent: RecModel, data: RecData, fb: FeedbackSet, run) -> Fitted:
        """The champion's kind on train + validation + feedback (a feedback row replaces the same
        (user, item) of the data: the latest wins)."""
        fb_train, base = fb.data["train"], fb.data["base"]
        ctx.say(f"[retrain] champion {parent.version}; {len(fb_train)} feedback interactions to learn from "
                f"({len(fb.train_ids)} predictions), {len(fb.data['hold'])} held out for the gate "
                f"({len(fb.hold_ids)} predictions)")
        run.write("feedback_counts.json", fb.data["counts"])
        cols = ["user", "item", "rating"]
        train_frame = (pd.concat([base[cols], fb_train[cols]], ignore_index=True)
                       .drop_duplicates(["user", "item"], keep="last").reset_index(drop=True))
        train_frame["rating"] = train_frame["rating"].astype(np.float32)
        pm = parent.manifest
        config = pm["model"]["config"]
        ctx.say(f"[training] challenger {pm['model']['candidate']} on {len(train_frame)} interactions")
        model, fit_s = ctx.backend.fit_with(_fit, config, Interactions(train_frame, data.item_text, data.fingerprint),
                                            data.item_text)
        return Fitted(model, config, {"seconds": fit_s},
                      {"candidate": pm["model"]["candidate"], "val": None, "train_interactions": len(train_frame)})

    # -- a version ------------------------------------------------------------------------------
    def assemble(self, ctx: Context, data: RecData, fitted: Fitted, run, *, parent: RecModel | None = None,
                 selection=None, fb: FeedbackSet | None = None, title: str,
                 monitoring: dict[str, Any] | None = None) -> NewVersion:
        from ..gate import check_requirements, compare_ranking

        spec, model, config = ctx.spec, fitted.model, fitted.config
        candidate = fitted.extra["candidate"]
        decision = champ_m = None
        if parent is None:
            test = data.splits["test"]
            metrics, per_user, users = evaluate(model, config, test, data.explicit)
            fingerprint, removed = data.fingerprint, 0
        else:
            # gate test set: test minus what the challenger trained on; both models rank the same items
            fb_seen = _by_user(fb.data["train"])
            frame = data.splits["test"].frame
            in_fb = np.array([i in fb_seen.get(str(u), ()) for u, i in zip(frame["user"], frame["item"],
                                                                             strict=True)], dtype=bool)
            removed = int(in_fb.sum())
            test = Interactions(frame[~in_fb].reset_index(drop=True), data.item_text, data.fingerprint)
            champ_m, champ_per, users = evaluate(parent.model, config, test, data.explicit, exclude=fb_seen)
            metrics, chall_per, _ = evaluate(model, config, test, data.explicit, exclude=fb_seen)
            for mm in (champ_m, metrics):
                mm["evaluated_on"] = (f"test split minus {removed} (user, item) pairs learned from feedback; "
                                      "feedback items excluded from both models' lists")
            fingerprint = trained_fingerprint(data.fingerprint, fb.train_ids)
        latency = _latency(model, users)
        size_mb = _size_mb(model)
        baseline = None
        if spec.requirements.target is None:
            baseline = self.baseline(ctx, data, test, metrics, per_user if parent is None else chall_per,
                                     exclude=None if parent is None else fb_seen)
        gate = check_requirements(spec.requirements, metrics, latency, size_mb, baseline)
        if parent is None:
            ctx.say(f"[evaluation] test NDCG@10 {metrics['ndcg@10']:.4f}, precision@10 "
                    f"{metrics['precision@10']:.4f}, recall@10 {metrics['recall@10']:.4f}"
                    + (f", RMSE {metrics['rmse']:.4f}" if metrics["rmse"] is not None else "")
                    + f", p95 latency {latency['p95_ms']:.2f} ms")
        else:
            fb_seen = _by_user(fb.data["train"])
            hold = fb.data["hold"]
            evidence = slate_evidence(parent.model, model, hold, fb_seen, spec.gate.confidence)
            decision = compare_ranking(spec, champ_m, metrics, champ_per["ndcg"], chall_per["ndcg"], gate,
                                       evidence, removed_from_test=removed)
            ctx.say(f"[gate] test NDCG@10 champion {champ_m['ndcg@10']:.4f} vs challenger "
                    f"{metrics['ndcg@10']:.4f} on {len(users)} users")
        manifest = _manifest(spec, config=config, candidate=candidate, run_id=run.run_id, fingerprint=fingerprint,
                             base_fingerprint=data.fingerprint, report=data.report, test=metrics,
                             val=fitted.extra["val"], latency=latency, size_mb=size_mb, gate=gate,
                             selection=selection, parent=parent.version if parent else None,
                             feedback_examples=len(fb.train_ids) if fb else 0,
                             feedback_holdout=len(fb.hold_ids) if fb else 0,
                             train_interactions=fitted.extra["train_interactions"], test_interactions=len(test),
                             fit_s=fitted.result["seconds"], decision=decision)
        manifest["feedback_fingerprint"] = fb.fingerprint if fb else feedback_fingerprint([])
        if fb is not None:
            manifest["feedback"] = {**fb.data["counts"], "train_interactions": len(fb.data["train"]),
                                    "holdout_interactions": len(fb.data["hold"]), "click_rating": fb.data["click"]}
        preprocessing = {"recommender": model.get_config(), "input": "interactions",
                         "item_text": dict(data.item_text)}
        name = spec.name

        def report(path, version: str) -> None:
            write_report_page(path, f"{title}: {name} {version}", {**manifest, "version": version})

        result: dict[str, Any] = {
            "run_id": run.run_id, "parent": parent.version if parent else None, "metrics": metrics,
            "val_metrics": fitted.extra["val"], "latency": latency, "size_mb": size_mb, "gate": gate,
            "passed": gate["passed"], "champion": False, "family": candidate, "dataset": fingerprint,
            "feedback_examples": len(fb.train_ids) if fb else 0, "decision": None, "task": self.name}
        if parent is None:
            result.update(split_protocol=data.report.get("split_protocol"), data_report=data.report)
        else:
            result.update(feedback_validation=0, feedback_holdout=len(fb.hold_ids),
                          feedback_interactions=len(fb.data["train"]), decision=decision["decision"],
                          evidence=decision, champion_metrics=champ_m, challenger_metrics=metrics)
        return NewVersion(manifest, model, preprocessing, report, result)

    def baseline(self, ctx: Context, data: RecData, test: Interactions, metrics: dict[str, Any],
                 per_user: dict[str, np.ndarray], exclude: dict[str, set[str]] | None) -> dict[str, Any]:
        """Popularity ranking (fit on train + validation) on the same test users, paired per user:
        what a requirement without a target asks to beat."""
        from ..gate import beats_baseline

        config = {"kind": "popularity"}
        full = Interactions(pd.concat([data.splits["train"].frame, data.splits["val"].frame]), data.item_text,
                            data.fingerprint)
        model, _ = ctx.backend.fit_with(_fit, config, full, data.item_text)
        base, base_per, _ = evaluate(model, config, test, data.explicit, exclude=exclude)
        metric = ctx.spec.requirements.metric
        key = {"ndcg@10": "ndcg", "precision@10": "precision", "recall@10": "recall"}.get(metric, "ndcg")
        return beats_baseline(per_user[key], base_per[key], ctx.spec.gate.confidence, name="popularity ranking",
                              baseline_value=base.get(metric), binary=False, unit="user")

    # -- monitoring and the registry's views ------------------------------------------------------
    def monitor(self, ctx: Context, champ: RecModel) -> dict[str, Any]:
        """Traffic and feedback of the champion. Input drift is not measured for recommendation."""
        store = ctx.store()
        since = max(champ.manifest["created_at"], ctx.watch_state().get("last_retrain_at", 0.0))
        t = store.traffic(champ.version, since)
        served, clicked = t["served"], t["with_feedback"]
        return {
            "model_version": champ.version,
            "drift": {"detected": False, "statistic": None, "threshold": None, "p_value": None, "n_reference": 0,
                      "n_live": served, "reason": "input drift is not measured for recommendation"},
            "prediction_drift": {"psi": None, "threshold": ctx.spec.monitor.psi_threshold, "detected": False,
                                 "reference": {}, "live": {}},
            "live_accuracy": {"value": None, "low": None, "high": None, "n": 0,
                              "confidence": ctx.spec.gate.confidence},
            "click_through": {"recommendations": served, "with_feedback": clicked,
                              "rate": (clicked / served) if served else None},
            "feedback": {"labelled": t["feedback"], "new_since_last_training": t["feedback_since"], **store.counts()},
        }

    def models_row(self, m: dict[str, Any]) -> dict[str, Any]:
        test = m["metrics"]["test"]
        return {
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
        }

    # -- projects, the command line and the Python API -------------------------------------------
    default_data = "builtin:movielens-100k"
    #: ``init`` options: fields of the spec's ``recommendation`` section
    init_options = ("user_column", "item_column", "rating_column", "timestamp_column", "items", "item_id_column",
                    "item_text_columns", "candidates")

    def init_spec(self, spec: dict[str, Any], options: dict[str, Any]) -> None:
        """``rating_column`` ``"none"`` means implicit data; ``item_text_columns`` a list or a
        comma-separated string; ``items`` a path (stored absolute)."""
        rec: dict[str, Any] = {}
        for key, value in options.items():
            if key in ("rating_column", "timestamp_column") and str(value).lower() in ("", "none", "null"):
                value = None
            if key == "item_text_columns" and isinstance(value, str):
                value = [c.strip() for c in value.split(",") if c.strip()]
            if key == "items" and value is not None:
                value = str(Path(value).resolve())
            rec[key] = value
        if spec["data"]["source"].startswith("builtin:") and "rating_column" not in rec:
            rec["rating_column"] = "rating"
        spec["recommendation"] = rec

    def check_project(self, spec, root: Path) -> None:
        load_data(spec, root)  # columns, duplicates and sizes checked now, not at the first run

    def headline(self, metrics: dict[str, Any]) -> str:
        return (f"NDCG@10 {metrics['ndcg@10']:.4f}, precision@10 {metrics['precision@10']:.4f}, recall@10 "
                f"{metrics['recall@10']:.4f}" + (f", RMSE {metrics['rmse']:.4f}" if metrics.get("rmse") is not None
                                                  else ""))

    def offline_inputs(self, files, texts, rows):
        raise InputError("modelloop predict: this project serves recommendation; expected 'modelloop serve DIR' "
                         "and GET /recommend?user=USER&k=10 (or Project.recommend in Python)")

    predicts_offline = False

    def predict_offline(self, model, inputs: Any) -> list[dict[str, Any]]:
        raise InputError("a recommendation project has no predict; expected Project.recommend(user, k) or "
                         "Project.similar(item, k) (GET /recommend, GET /similar)")

    def recommend(self, model: RecModel, user: str, k: int = 10, exclude_seen: bool = True) -> dict[str, Any]:
        """The top-``k`` items of ``model`` for ``user``; a user without history gets the most
        popular items (``fallback``)."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise InputError(f"argument 'k': received {k!r}; expected a whole number >= 1")
        scores = model.model.score_matrix([str(user)], exclude_seen=exclude_seen)[0]
        top = torch.topk(scores, min(k, scores.shape[0]))
        items = [{"item": model.model.items[j], "score": float(v), "title": model.title(model.model.items[j])}
                 for j, v in zip(top.indices.tolist(), top.values.tolist(), strict=True) if v > -math.inf]
        return {"user": str(user), "items": items, "model_version": model.version,
                "fallback": None if str(user) in model.model.user_index else "popularity"}

    def similar(self, model: RecModel, item: str, k: int = 10) -> dict[str, Any]:
        """The ``k`` items most similar to ``item`` by ``model``'s item vectors."""
        if str(item) not in model.model.item_index:
            raise InputError(f"argument 'item': received {item!r}, not one of the {len(model.model.items)} items "
                             f"model {model.version} knows; expected a known item id")
        return {"item": str(item), "title": model.title(str(item)), "model_version": model.version,
                "items": [{"item": i, "title": model.title(i)} for i in model.model.similar_items(str(item), k)]}
    # -- serving: GET /recommend and /similar instead of POST /predict ---------------------------
    # The route code lives in tasks/recommendation_http.py (imported when a server asks for it).
    served_route = "/recommend"

    def serve_model(self, registry, version: str, *, backend: str | None = None, threads: int = 1):
        """The registered recommender (``RecModel``); it has one serving backend, PyTorch."""
        return load_version(registry, version)

    def routes(self, ctx):
        """``GET /recommend`` and ``GET /similar``."""
        from .recommendation_http import router

        return router(ctx)

    def check_predict(self) -> None:
        raise InputError(PREDICT_HINT)

    def check_feedback(self, label, predicted: str, version: str, ctx) -> str:
        """``label`` is the item the user clicked or rated: an item of the catalogue of the
        version that recommended (required, whatever ``predicted`` was)."""
        from .recommendation_http import check_item

        return check_item(ctx, version, label, lambda v: self.serve_model(ctx.registry, v))


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
    """Held-out clicks: each model's rank of the clicked item within its served slate, and whether
    it is in each model's catalogue top 10; judged by the gate's ``slate_test``."""
    from ..gate import slate_test

    users = [str(u) for u in hold["user"]]
    items = [str(i) for i in hold["item"]]
    slates = [list(s) for s in hold["slate"]]
    ra = _slate_ranks(champ_model, users, slates, items) if users else []
    rb = _slate_ranks(chall_model, users, slates, items) if users else []
    ex = {u: set(exclude.get(u, set())) for u in users}
    la = top_lists(champ_model, users, K, ex) if users else []
    lb = top_lists(chall_model, users, K, ex) if users else []
    ha = np.array([i in lst for i, lst in zip(items, la, strict=True)], dtype=bool)
    hb = np.array([i in lst for i, lst in zip(items, lb, strict=True)], dtype=bool)
    return slate_test(ra, rb, ha, hb, confidence)


def register_recommender(registry, manifest: dict[str, Any], model, item_text: dict[str, str],
                         complete=None) -> str:
    """Register a fitted recommender: weights (safetensors, buffers included), its config with the
    user and item vocabularies and the item texts (``preprocessing.json``), the manifest.
    ``complete(version)`` runs before the version appears (see ``LocalRegistry.register``)."""
    pre = {"recommender": model.get_config(), "input": "interactions", "item_text": dict(item_text)}
    return registry.register(manifest, model, pre, complete=complete)
