"""Choose a model family and its hyper-parameters with a short, budgeted Optuna search.

Every family in the spec gets one trial with sensible defaults first (so the leaderboard always
compares them all), then TPE explores the joint space until the trial count or the time budget
runs out. Trials report their validation score (accuracy, or R² for a regression) per epoch and
unpromising ones are pruned. The study lives in a SQLite file in the run folder, so an
interrupted search resumes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from ..models import PRETRAINED_FAMILIES, build_model, count_parameters
from ..train import TrainConfig, Trainer

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
        task: says the trials' loss (``Task.loss``) and validation score (R² for a regression,
            else accuracy); None: cross-entropy and accuracy.
    """

    def __init__(self, families: list[str], trials: int, epochs_per_trial: int, timeout_s: float,
                 batch_size: int = 64, shift: int = 0, seed: int = 0, study_name: str = "selection",
                 task: Task | None = None) -> None:
        self.families = list(families)
        self.trials = max(trials, len(self.families))
        self.epochs_per_trial = epochs_per_trial
        self.timeout_s = timeout_s
        self.batch_size = batch_size
        self.shift = shift
        self.seed = seed
        self.study_name = study_name
        self.task = task
        self.score_name = "r2" if task is not None and task.problem == "regression" else "accuracy"

    def run(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
            model_base: dict[str, Any], storage_path: Path | None = None, progress=None) -> SearchResult:
        """Run (or resume) the search. ``model_base`` holds input_shape and num_classes."""
        import optuna  # imported here: it costs every command's start-up a second otherwise

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = f"sqlite:///{storage_path}" if storage_path is not None else None
        study = optuna.create_study(
            study_name=self.study_name, storage=storage, load_if_exists=True, direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=self.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=len(self.families), n_warmup_steps=2),
        )
        finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                            optuna.trial.TrialState.PRUNED)]
        if not study.trials:
            for fam in self.families:
                study.enqueue_trial(_as_trial_params(fam, DEFAULTS[fam]))
        t0 = time.perf_counter()

        def objective(trial: optuna.Trial) -> float:
            family, params = _suggest(trial, self.families)
            config = {**model_base, "family": family, "params": params}
            torch.manual_seed(self.seed + trial.number)
            model = build_model(config)
            trainer = Trainer(TrainConfig(max_epochs=self.epochs_per_trial, patience=3, batch_size=self.batch_size,
                                          lr=params.get("lr", 1e-3), weight_decay=params.get("weight_decay", 0.0),
                                          shift=self.shift,
                                          seed=self.seed + trial.number),
                              loss=self.task.loss if self.task is not None else None, score=self.score_name)

            def report(epoch: int, row: dict[str, float]) -> None:
                trial.report(row["val_accuracy"], epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned()

            trial.set_user_attr("params", params)
            trial.set_user_attr("parameters", count_parameters(model))
            t = time.perf_counter()
            if hasattr(model, "fit_direct"):  # fit by its own algorithm (e.g. boosted trees), not by gradient steps
                fitted = model.fit_direct(train, val, params, self.seed + trial.number)
                result = SimpleNamespace(best_val_score=fitted["best_val_score"], history=fitted["history"])
            else:
                result = trainer.fit(model, train, val, on_epoch=report)
            trial.set_user_attr("seconds", time.perf_counter() - t)
            trial.set_user_attr("epochs", len(result.history))
            if progress:
                progress(f"trial {trial.number + 1}/{self.trials}: {family} val accuracy "
                         f"{result.best_val_score:.3f}")
            return result.best_val_score

        remaining = self.trials - len(finished)
        if remaining > 0:
            study.optimize(objective, n_trials=remaining, timeout=self.timeout_s, catch=())
        rows = []
        for t in study.trials:
            if t.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
                continue
            rows.append({
                "trial": t.number, "family": t.params["family"], "state": t.state.name.lower(),
                "val_accuracy": t.value if t.value is not None else (max(t.intermediate_values.values())
                                                                     if t.intermediate_values else None),
                "params": t.user_attrs.get("params", {}), "parameters": t.user_attrs.get("parameters"),
                "seconds": round(t.user_attrs.get("seconds", 0.0), 2), "epochs": t.user_attrs.get("epochs"),
            })
        rows.sort(key=lambda r: (r["state"] != "complete", -(r["val_accuracy"] or 0.0)))
        complete = [r for r in rows if r["state"] == "complete"]
        best = complete[0]
        return SearchResult(best["family"], best["params"], best["val_accuracy"], rows,
                            round(time.perf_counter() - t0, 2), score_name=self.score_name)
