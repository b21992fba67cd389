"""Where fits and searches run: the contract every backend keeps.

A :class:`Backend` is the one place a candidate is fitted (:meth:`Backend.fit`) and the one place
a search's trials are run (:meth:`Backend.search`). Callers (the candidate search, the loop's final
training and distillation) describe the work as small dataclasses and never look at the model: a
network is trained by ``train.Trainer`` with its task's loss, a model that fits by its own
algorithm (``models.FitsItself``) fits itself, and the backend says which.

``LocalBackend`` runs everything in this process; a distributed backend runs the same jobs on
other workers and hands back the same results.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..train.trainer import TrainConfig, TrainResult, Unlabelled

if TYPE_CHECKING:
    from ..tasks import Task

__all__ = ["Backend", "FitJob", "FitResult", "SearchJob", "SearchOutcome", "TrialRecord", "task_score"]


def task_score(task: Task | None) -> str:
    """How a fit of ``task``'s models is scored on validation (the task's ``val_score``: "r2" for
    a regression); "accuracy" without a task."""
    return getattr(task, "val_score", "accuracy")


@dataclass
class FitJob:
    """One candidate fit: which model, on which data, with which settings.

    Attributes:
        model_config: ``models.build_model``'s config (``family``, ``input_shape``,
            ``num_classes``, ``params``, the featurizer's settings, a regression's ``target``);
            ``params`` are the candidate's settings, ``lr`` and ``weight_decay`` included.
        train: (features, targets) of the training split, as the candidate's fitted featurizer
            made them.
        val: the same for the validation split (it picks the best epoch or what a self-fitting
            model tunes).
        training: optimization and hardware settings of a network's training (epochs, patience,
            batch size, shift, device, precision, ...). The job's own settings replace the fields
            of the same meaning: ``lr`` and ``weight_decay`` from ``params`` (1e-3 and 0.0 when
            absent), ``seed``, ``time_limit_s`` and ``checkpoint_path`` (see :meth:`train_config`).
        seed: seeds the model's initial weights, the batch order and a self-fitting model's algorithm.
        time_limit_s: a network's training stops after the epoch that passes it; None: no limit.
        checkpoint_path: a network's training state is written there after every epoch.
        resume: continue from ``checkpoint_path`` when it exists.
        task: says the loss (``Task.loss``) and the validation score (R² for a regression,
            else accuracy); None: cross-entropy and accuracy.
        on_start: called once the model is built, before it is fitted, with the model and how it
            will be fitted: "trainer" (gradient steps) or "itself" (its own algorithm).
        on_epoch: called after each epoch of a network's training with (epoch index, history
            row); may raise to stop the fit (e.g. a search pruning the trial).
        unlabelled: inputs without labels a network also learns from by consistency under the
            task's augmentation (see ``train.Unlabelled``); a model that fits itself ignores them.
    """

    model_config: dict[str, Any]
    train: tuple[Any, torch.Tensor]
    val: tuple[Any, torch.Tensor]
    training: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 0
    time_limit_s: float | None = None
    checkpoint_path: str | Path | None = None
    resume: bool = False
    task: Task | None = None
    on_start: Callable[[nn.Module, str], None] | None = None
    on_epoch: Callable[[int, dict[str, float]], None] | None = None
    unlabelled: Unlabelled | None = None

    @property
    def params(self) -> dict[str, Any]:
        return self.model_config.get("params", {})

    @property
    def score_name(self) -> str:
        return task_score(self.task)

    def train_config(self) -> TrainConfig:
        """``training`` with this job's optimizer settings, seed, time limit and checkpoint."""
        p = self.params
        return dataclasses.replace(self.training, lr=p.get("lr", 1e-3), weight_decay=p.get("weight_decay", 0.0),
                                   seed=self.seed, time_limit_s=self.time_limit_s,
                                   checkpoint_path=self.checkpoint_path)


@dataclass
class FitResult:
    """A fitted candidate.

    Attributes:
        model: the fitted module, holding its best weights, on the device it was built on.
        result: how the fit went: ``best_val_score`` (named by ``score_name``), ``history``,
            ``stopped`` ("fitted" for a model that fitted itself), how it used the hardware.
        method: "trainer" (gradient steps) or "itself" (the model's own algorithm).
        details: what a self-fitting model's algorithm chose (a ridge penalty, a number of rounds).
    """

    model: nn.Module
    result: TrainResult
    method: str = "trainer"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def best_val_score(self) -> float:
        return self.result.best_val_score

    @property
    def score_name(self) -> str:
        return self.result.score_name

    @property
    def history(self) -> list[dict[str, float]]:
        return self.result.history


@dataclass
class SearchJob:
    """A budgeted search: trials of ``objective`` until ``n_trials`` have finished or the time is up.

    Attributes:
        objective: one trial. It gets a trial handle with Optuna's interface (``number``,
            ``suggest_categorical`` / ``suggest_float`` / ..., ``set_user_attr``) whose
            ``report(value, step)`` raises to stop a trial the pruner gives up on; it fits
            (through :meth:`Backend.fit`) and returns the score to maximize.
        n_trials: how many finished trials the search holds when done, those of an earlier,
            interrupted search with the same ``study_name`` and ``storage_path`` included.
        timeout_s: wall-clock budget for this call's trials; None: no limit.
        seed: seeds the sampler.
        study_name: names the search in its storage.
        storage_path: a SQLite file the search is kept in, so an interrupted one resumes; None:
            in memory.
        first_trials: settings (the search space's names -> values) tried first, in order, when
            the search is new: each family's defaults, so every family is compared.
        startup_trials: trials that finish before any trial is pruned.
        warmup_steps: reports a trial makes before it may be pruned.
        space: the part of ``objective`` that only suggests (its ``trial.suggest_*`` calls, in
            the same order and with the same names). A backend that must choose a trial's settings
            before the trial runs elsewhere (Ray Tune's Optuna searcher) asks it; the objective
            then gets a trial whose ``suggest_*`` return those settings. None: only the local
            backend can run the search.
    """

    objective: Callable[[Any], float]
    n_trials: int
    timeout_s: float | None = None
    seed: int = 0
    study_name: str = "search"
    storage_path: Path | None = None
    first_trials: list[dict[str, Any]] = field(default_factory=list)
    startup_trials: int = 1
    warmup_steps: int = 2
    space: Callable[[Any], Any] | None = None


@dataclass
class TrialRecord:
    """One finished trial: ``state`` "complete" or "pruned"; ``value`` the objective's value (a
    pruned trial: the best value it reported, None if it reported none); ``params`` what it
    suggested (the search space's names); ``attrs`` what the objective recorded."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class SearchOutcome:
    """The leaderboard of a search: its finished trials, complete ones first, each group best
    first (by value, a missing one counted as 0), and the seconds this call took."""

    trials: list[TrialRecord]
    seconds: float = 0.0

    @property
    def best(self) -> TrialRecord | None:
        """The best complete trial, or None when no trial completed."""
        return next((t for t in self.trials if t.state == "complete"), None)


class Backend(ABC):
    """Where candidate fits and search trials run."""

    #: the name a spec or ``get_backend`` selects this backend by
    name: str

    @abstractmethod
    def fit(self, job: FitJob) -> FitResult:
        """Build ``job.model_config``'s model (``torch.manual_seed(job.seed)`` first) and fit it:
        by its own algorithm if it is a ``models.FitsItself``, else with ``train.Trainer`` and the
        task's loss.

        Raises:
            whatever ``job.on_epoch`` raises to stop the fit, and the trainer's errors.
        """

    @abstractmethod
    def search(self, job: SearchJob) -> SearchOutcome:
        """Run (or resume) the trials of ``job`` and return its leaderboard."""

    def fit_with(self, fit: Callable[..., Any], *args: Any) -> Any:
        """Run a fit that a task does by its own procedure on its own data (a recommender on
        interactions: ``fit(*args)`` -> whatever it returns). ``fit`` is a module-level function
        of plain arguments, so a distributed backend can run it on a worker; here, in process."""
        return fit(*args)
