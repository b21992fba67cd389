"""Choose a model family and its hyper-parameters with a short, budgeted Optuna search.

Every family in the spec gets one trial with sensible defaults first (so the leaderboard always
compares them all), then TPE explores the joint space until the trial count or the time budget
runs out. Trials report their validation score (accuracy, or R² for a regression) per epoch and
unpromising ones are pruned. The study lives in a SQLite file in the run folder, so an
interrupted search resumes.

This module says what a trial is (the search space, the candidate's config); a backend
(``backends``) fits each trial and runs the trials.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..backends import Backend, FitJob, SearchJob, get_backend, task_score
from ..models import PRETRAINED_FAMILIES, count_parameters
from ..train import TrainConfig

if TYPE_CHECKING:
    import optuna

    from ..tasks import Task

__all__ = ["CandidateSearch", "SearchResult", "DEFAULTS"]

log = logging.getLogger(__name__)

DEFAULTS: dict[str, dict[str, Any]] = {
    "linear": {"lr": 3e-3, "weight_decay": 1e-4},
    "mlp": {"hidden": 256, "dropout": 0.2, "lr": 1e-3, "weight_decay": 1e-4},
    "cnn": {"width": 32, "dropout": 0.25, "lr": 2e-3, "weight_decay": 1e-4},
    "ds-cnn": {"lr": 3e-3, "weight_decay": 1e-4},
    "efficientnet-suffix": {"dropout": 0.2, "lr": 1e-3, "weight_decay": 1e-4},
    "minilm-lora": {"r": 8, "alpha": 16, "dropout": 0.1, "lr": 5e-4, "weight_decay": 0.0},
    "hgb": {"max_iter": 200, "learning_rate": 0.1, "max_leaf_nodes": 31, "min_samples_leaf": 20,
            "l2_regularization": 1e-6},  # inside the searched range (log scale: 0 is not in it)
}


def _suggest(trial: optuna.Trial, families: list[str]) -> tuple[str, dict[str, Any]]:
    family = trial.suggest_categorical("family", families)
    p: dict[str, Any] = {}
    if family == "mlp":
        p["hidden"] = trial.suggest_categorical("hidden", [128, 256, 512])
        p["dropout"] = trial.suggest_float("mlp_dropout", 0.0, 0.5)
    elif family == "cnn":
        p["width"] = trial.suggest_categorical("width", [16, 32])
        p["dropout"] = trial.suggest_float("cnn_dropout", 0.0, 0.5)
    elif family == "hgb":
        from ..models.trees import suggest_hgb

        return family, suggest_hgb(trial)  # boosted trees: no optimizer settings
    elif family in PRETRAINED_FAMILIES:
        # Pretrained networks: one architecture, only the optimizer is searched.
        p = {k: v for k, v in DEFAULTS[family].items() if k not in ("lr", "weight_decay")}
    p["lr"] = trial.suggest_float(f"{family}_lr", 3e-4, 1e-2, log=True)
    p["weight_decay"] = trial.suggest_float(f"{family}_weight_decay", 1e-6, 1e-2, log=True)
    return family, p


class _Space:
    """The search space alone (``backends.SearchJob.space``): a picklable callable, so a backend
    may ask it wherever its searcher runs."""

    def __init__(self, families: list[str]) -> None:
        self.families = list(families)

    def __call__(self, trial: optuna.Trial) -> None:
        _suggest(trial, self.families)


def _as_trial_params(family: str, params: dict[str, Any]) -> dict[str, Any]:
    if family == "hgb":
        return {"family": family, **{f"hgb_{k}": v for k, v in params.items() if v is not None}}
    out: dict[str, Any] = {"family": family, f"{family}_lr": params["lr"],
                           f"{family}_weight_decay": params["weight_decay"]}
    if family == "mlp":
        out.update(hidden=params["hidden"], mlp_dropout=params["dropout"])
    if family == "cnn":
        out.update(width=params["width"], cnn_dropout=params["dropout"])
    return out


@dataclass
class SearchResult:
    """The best trial's family, settings and validation score (named by ``score_name``:
    "accuracy", or "r2" for a regression), and the leaderboard: one row per trial, best first,
    each holding its score under ``val_accuracy``."""

    best_family: str
    best_params: dict[str, Any]
    best_val_score: float
    leaderboard: list[dict[str, Any]] = field(default_factory=list)  # one row per trial, best first
    seconds: float = 0.0
    score_name: str = "accuracy"

    def to_dict(self) -> dict[str, Any]:
        return {"best_family": self.best_family, "best_params": self.best_params,
                "best_val_score": self.best_val_score, "score_name": self.score_name,
                "leaderboard": self.leaderboard, "seconds": self.seconds}


class CandidateSearch:
    """Budgeted search over model families.

    Args:
        families: candidate families (``linear``, ``mlp``, ``cnn``).
        trials: total trials, including one default trial per family.
        epochs_per_trial: training epochs each trial gets at most.
        timeout_s: wall-clock budget for the whole search.
        seed: seeds the sampler and every trial's training.
        task: says the trials' loss and validation score (see ``backends.FitJob``); None:
            cross-entropy and accuracy.
        backend: fits the trials and runs them; None: the local backend.
    """

    def __init__(self, families: list[str], trials: int, epochs_per_trial: int, timeout_s: float,
                 batch_size: int = 64, shift: int = 0, seed: int = 0, study_name: str = "selection",
                 task: Task | None = None, backend: Backend | None = None) -> None:
        self.families = list(families)
        self.trials = max(trials, len(self.families))
        self.epochs_per_trial = epochs_per_trial
        self.timeout_s = timeout_s
        self.batch_size = batch_size
        self.shift = shift
        self.seed = seed
        self.study_name = study_name
        self.task = task
        self.backend = backend

    def run(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
            model_base: dict[str, Any], storage_path: Path | None = None, progress=None) -> SearchResult:
        """Run (or resume) the search. ``model_base`` holds input_shape and num_classes."""
        backend = get_backend(self.backend)

        def objective(trial) -> float:
            family, params = _suggest(trial, self.families)
            trial.set_user_attr("params", params)
            started: dict[str, float] = {}

            def start(model: torch.nn.Module, method: str) -> None:
                trial.set_user_attr("parameters", count_parameters(model))
                started["t"] = time.perf_counter()

            def report(epoch: int, row: dict[str, float]) -> None:
                trial.report(row["val_accuracy"], epoch)  # raises when the trial is pruned

            fit = backend.fit(FitJob(
                {**model_base, "family": family, "params": params}, train, val,
                training=TrainConfig(max_epochs=self.epochs_per_trial, patience=3, batch_size=self.batch_size,
                                     shift=self.shift),
                seed=self.seed + trial.number, task=self.task, on_start=start, on_epoch=report))
            trial.set_user_attr("seconds", time.perf_counter() - started["t"])
            trial.set_user_attr("epochs", len(fit.history))
            if progress:
                progress(f"trial {trial.number + 1}/{self.trials}: {family} val accuracy "
                         f"{fit.best_val_score:.3f}")
            return fit.best_val_score

        out = backend.search(SearchJob(
            objective, n_trials=self.trials, timeout_s=self.timeout_s, seed=self.seed, study_name=self.study_name,
            storage_path=storage_path, first_trials=[_as_trial_params(fam, DEFAULTS[fam]) for fam in self.families],
            startup_trials=len(self.families), warmup_steps=2, space=_Space(self.families)))
        rows = [{
            "trial": t.number, "family": t.params["family"], "state": t.state, "val_accuracy": t.value,
            "params": t.attrs.get("params", {}), "parameters": t.attrs.get("parameters"),
            "seconds": round(t.attrs.get("seconds", 0.0), 2), "epochs": t.attrs.get("epochs"),
            **({"node": t.attrs["node"]} if "node" in t.attrs else {}),  # where a distributed backend ran it
        } for t in out.trials]
        complete = [r for r in rows if r["state"] == "complete"]
        best = complete[0]
        return SearchResult(best["family"], best["params"], best["val_accuracy"], rows, out.seconds,
                            score_name=task_score(self.task))
