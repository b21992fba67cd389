"""Technology selection under requirements.

Every candidate (a featurizer + a trainable network family, see ``tasks``) gets a short budgeted
search on the validation split; its best trial is then measured for what shipping it costs on this
machine: p95 single-item latency of the whole serving path (featurizer + network, raw input in)
and size (trained weights + the frozen weights and learned state the featurizer needs).

:func:`choose` takes the cheapest candidate (lowest p95 latency, then size) that meets every
requirement, or the best one, with a warning, when none does. The leaderboard keeps one row per
candidate with the reason it was or was not chosen.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from ..backends import Backend, get_backend, task_score
from ..models import build_model, count_parameters, one_trial
from ..spec import LOWER_IS_BETTER, Spec
from ..tasks import Candidate, Task, featurizer_from_config, get_task
from .search import CandidateSearch

__all__ = ["prepare_features", "search_candidates", "choose", "serving_latency", "model_bytes"]

log = logging.getLogger(__name__)


def model_bytes(model: torch.nn.Module) -> int:
    from ..registry.artifact import trainable_state

    return sum(t.numel() * t.element_size() for t in trainable_state(model).values())


def serving_latency(featurizer, model: torch.nn.Module, item: Any, runs: int = 30, warmup: int = 5,
                    threads: int = 1) -> dict[str, float]:
    """p50/p95 ms of one raw input through featurizer and network (what a single request costs),
    on ``threads`` intra-op threads (the server's ``serving.threads``)."""
    from ..evaluate.metrics import latency_ms

    model.eval()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return latency_ms(lambda _: model(featurizer.transform(item)), runs, warmup)
    finally:
        torch.set_num_threads(before)


def _one(x: Any) -> Any:
    return x[:1]


def prepare_features(candidate: Candidate, train_x: Any, val_x: Any, cache_dir: Path | None):
    """Fit the candidate's featurizer on the training inputs; features of train and validation."""
    feat = featurizer_from_config(candidate.featurizer)
    feat.set_cache(cache_dir)
    feat.fit(train_x)
    return feat, feat.transform(train_x), feat.transform(val_x) if len(val_x) else None


def search_candidates(candidates: list[Candidate], train: tuple[Any, torch.Tensor], val: tuple[Any, torch.Tensor],
                      num_classes: int, spec: Spec, timeout_s: float, run_dir: Path, cache_dir: Path | None,
                      progress=None, target: dict[str, float] | None = None,
                      backend: Backend | None = None, task: Task | None = None) -> dict[str, Any]:
    """Search each candidate; measure latency and size of its best trial; choose one.

    ``target`` (regression: the training targets' mean and std) makes every candidate predict one
    value; ``val_accuracy`` in its rows is then the validation R² (the spec's task says the loss
    and the score). Every trial is fitted and run by ``backend`` (None: the spec's, see
    ``backends.get_backend``).

    Returns the selection record (JSON-able: ``leaderboard`` (one row per candidate), ``trials``
    (every trial), ``chosen`` (the candidate name), ``best_family``, ``best_params``,
    ``best_val_score`` and its ``score_name`` (also written as ``best_val_accuracy``, which
    stored runs hold), ``warning``) and the chosen candidate's (fitted featurizer, training
    features, validation features or None).
    """
    sel = spec.selection
    (xtr, ytr), (xva, yva) = train, val
    t0 = time.perf_counter()
    task = task if task is not None else get_task(spec.task)
    backend = get_backend(backend if backend is not None else spec)
    state: dict[str, dict[str, Any]] = {}

    def search(cand: Candidate, n_trials: int) -> None:
        st = state[cand.name]
        left = timeout_s - (time.perf_counter() - t0)
        srch = CandidateSearch([cand.family], n_trials, sel.epochs_per_trial, timeout_s=max(1.0, left),
                               batch_size=spec.training.batch_size, shift=st["shift"], seed=spec.seed,
                               study_name=f"selection-{cand.name}", task=task, backend=backend)
        st["res"] = srch.run(st["train"], st["val"], st["base"], storage_path=run_dir / "selection.db")
        st["search_s"] = st.get("search_s", 0.0) + st["res"].seconds

    # 1. every candidate: its features, and one trial with default settings
    for cand in candidates:
        if progress:
            progress(f"[selection] {cand.name}: {cand.about}")
        t = time.perf_counter()
        feat, ftr, fva = prepare_features(cand, xtr, xva, cache_dir)
        state[cand.name] = {
            "feat": feat, "feat_s": time.perf_counter() - t, "train": (ftr, ytr),
            "val": (fva, yva) if fva is not None else (ftr, ytr),
            "base": {"input_shape": list(ftr.shape[1:]), "num_classes": num_classes,
                     "featurizer": dict(cand.featurizer), "candidate": cand.name,
                     **({"target": target} if target else {})},
            "shift": spec.data.augmentation.shift if cand.featurizer["kind"] == "pixels" else 0,
            "trials": 1,
        }
        search(cand, 1)
        if progress:
            progress(f"[selection] {cand.name}: default trial val accuracy "
                     f"{state[cand.name]['res'].best_val_score:.4f}")

    # 2. the remaining trials go to the searchable candidates, more to the more promising ones
    #    (rank r of n gets a share proportional to n - r), while the time budget lasts. A pretrained
    #    network keeps its one trial (see models.one_trial).
    searchable = sorted((c for c in candidates if not one_trial(c.family)),
                        key=lambda c: -state[c.name]["res"].best_val_score)
    remaining = max(0, sel.trials - len(candidates))
    weights = [len(searchable) - r for r in range(len(searchable))]
    extra = [int(remaining * w / max(1, sum(weights))) for w in weights]
    for r in range(remaining - sum(extra)):
        extra[r % max(1, len(extra))] += 1
    for cand, more in zip(searchable, extra, strict=True):
        if more and time.perf_counter() - t0 < timeout_s:
            state[cand.name]["trials"] += more
            search(cand, state[cand.name]["trials"])

    # 3. what shipping each candidate's best trial would cost
    rows, trials = [], []
    for cand in candidates:
        st = state[cand.name]
        res, feat = st["res"], st["feat"]
        config = {**st["base"], "family": cand.family, "params": res.best_params}
        model = build_model(config)
        lat = serving_latency(feat, model, _one(xva if len(yva) else xtr), threads=spec.serving.threads)
        size_mb = (model_bytes(model) + feat.frozen_bytes()) / 1e6
        rows.append({"candidate": cand.name, "family": cand.family, "featurizer": cand.featurizer["kind"],
                     "pretrained": cand.pretrained, "val_accuracy": res.best_val_score,
                     "params": res.best_params, "parameters": count_parameters(model),
                     "p50_ms": lat["p50_ms"], "p95_ms": lat["p95_ms"], "size_mb": size_mb,
                     "featurize_s": round(st["feat_s"], 2), "search_s": round(st["search_s"], 2),
                     "trials": len(res.leaderboard)})
        trials += [{**r, "candidate": cand.name} for r in res.leaderboard]
        if progress:
            progress(f"[selection] {cand.name}: val accuracy {res.best_val_score:.4f}, p95 {lat['p95_ms']:.2f} ms, "
                     f"{size_mb:.2f} MB ({len(res.leaderboard)} trials)")
    chosen, warning = choose(rows, spec, getattr(task, "score_name", "val accuracy"))
    st = state[chosen["candidate"]]
    record = {"leaderboard": rows, "trials": trials, "chosen": chosen["candidate"], "best_family": chosen["family"],
              "best_params": chosen["params"], "best_val_score": chosen["val_accuracy"], "score_name": task_score(task),
              "best_val_accuracy": chosen["val_accuracy"], "warning": warning,
              "rule": sel.choose, "seconds": round(time.perf_counter() - t0, 2)}
    # The chosen candidate's fitted featurizer and features: final training needs them, no need to recompute.
    return record, (st["feat"], st["train"][0], st["val"][0] if len(yva) else None)


def choose(rows: list[dict[str, Any]], spec: Spec, score: str = "val accuracy") -> tuple[dict[str, Any], str | None]:
    """Mark each row with whether it meets the requirements and why; return the chosen row and a warning.

    ``score`` names the rows' ``val_accuracy`` in messages (the task's ``score_name``: "val R²" for a
    regression). Quality is validation accuracy (R² for regression) against ``requirements.target +
    selection.quality_margin`` (other metrics are checked on the test split by the gate). For an
    error metric (rmse, mae), or without a target (the requirement is then to beat the task's
    trivial baseline), there is no validation score to hold against a target, so the most
    accurate candidate is taken.
    """
    req, sel = spec.requirements, spec.selection
    # No target (beat the trivial baseline) or an error metric: no validation score to hold against
    # a target, so the most accurate candidate is taken.
    need = None if req.metric in LOWER_IS_BETTER or req.target is None else req.target + sel.quality_margin
    for r in rows:
        misses = []
        if r["val_accuracy"] is None or (need is not None and r["val_accuracy"] < need):
            misses.append(f"{score} {r['val_accuracy'] or 0:.4f} < {need if need is not None else 0:.4f}")
        if req.p95_latency_ms is not None and r["p95_ms"] > req.p95_latency_ms:
            misses.append(f"p95 {r['p95_ms']:.2f} ms > {req.p95_latency_ms} ms")
        if req.max_model_size_mb is not None and r["size_mb"] > req.max_model_size_mb:
            misses.append(f"size {r['size_mb']:.2f} MB > {req.max_model_size_mb} MB")
        r["meets_requirements"] = not misses
        r["misses"] = misses
    best = max(rows, key=lambda r: (r["val_accuracy"] if r["val_accuracy"] is not None else float("-inf"),
                                    -r["p95_ms"]))
    ok = [r for r in rows if r["meets_requirements"]]
    warning = None
    if sel.choose == "best" or need is None:
        chosen = best
        why = (f"best {score} (selection.choose: best)" if need is not None
               else f"best {score} (no target: the requirement is to beat the trivial baseline)"
               if req.target is None else f"best {score} (requirements.metric {req.metric} has no validation target)")
    elif ok:
        chosen = min(ok, key=lambda r: (r["p95_ms"], r["size_mb"]))
        why = "cheapest (lowest p95 latency) of those meeting every requirement"
    else:
        chosen = best
        why = f"best {score}: no candidate meets every requirement"
        warning = ("no candidate meets every requirement (" + "; ".join(
            f"{r['candidate']}: {', '.join(r['misses'])}" for r in rows) + "); took the most accurate")
    for r in rows:
        if r is chosen:
            r["decision"] = f"chosen: {why}"
        elif not r["meets_requirements"]:
            r["decision"] = "misses " + ", ".join(r["misses"])
        else:
            r["decision"] = ("meets the requirements but is slower or larger"
                             if sel.choose == "cheapest" and need is not None else f"lower {score}")
    return chosen, warning
