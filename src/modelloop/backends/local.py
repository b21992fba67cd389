"""The in-process backend: fits run here, one after another, and searches are Optuna studies.

A network is trained by :class:`~modelloop.train.Trainer` (the device, precision and threads it
picks for this machine); a model that fits by its own algorithm (:class:`~modelloop.models.FitsItself`)
fits itself. A search is a TPE study with median pruning, kept in a SQLite file when given one,
so an interrupted search resumes where it stopped.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from ..models import FitsItself, build_model
from ..train.trainer import Trainer, TrainResult
from .base import Backend, FitJob, FitResult, SearchJob, SearchOutcome, TrialRecord

__all__ = ["LocalBackend", "study_records"]

log = logging.getLogger(__name__)


class _Trial:
    """An Optuna trial whose ``report`` also prunes: it raises ``optuna.TrialPruned`` when the
    pruner gives up on the trial. Everything else is the Optuna trial's."""

    def __init__(self, trial: Any) -> None:
        self._trial = trial

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def report(self, value: float, step: int) -> None:
        import optuna

        self._trial.report(value, step)
        if self._trial.should_prune():
            raise optuna.TrialPruned()


class LocalBackend(Backend):
    """Fits and searches in this process."""

    name = "local"

    def fit(self, job: FitJob) -> FitResult:
        torch.manual_seed(job.seed)
        model = build_model(job.model_config)
        itself = isinstance(model, FitsItself)
        if job.on_start is not None:
            job.on_start(model, "itself" if itself else "trainer")
        if itself:
            if job.unlabelled is not None:
                log.info("%s fits by its own algorithm: the %d unlabelled inputs are not used",
                         job.model_config.get("family"), len(job.unlabelled.x))
            t = time.perf_counter()
            fitted = model.fit_direct(job.train, job.val, job.params, job.seed)
            result = TrainResult(best_state=model.state_dict(), best_epoch=len(fitted["history"]),
                                 best_val_score=fitted["best_val_score"], history=fitted["history"],
                                 stopped="fitted", seconds=time.perf_counter() - t, score_name=fitted["score_name"])
            details = {k: v for k, v in fitted.items() if k not in ("best_val_score", "score_name", "history")}
            return FitResult(model, result, "itself", details)
        trainer = Trainer(job.train_config(), loss=job.task.loss if job.task is not None else None,
                          score=job.score_name)
        result = trainer.fit(model, job.train, job.val, on_epoch=job.on_epoch, resume=job.resume,
                             unlabelled=job.unlabelled)
        return FitResult(model, result, "trainer")

    def search(self, job: SearchJob) -> SearchOutcome:
        import optuna  # imported here: it costs every command's start-up a second otherwise

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = f"sqlite:///{job.storage_path}" if job.storage_path is not None else None
        study = optuna.create_study(
            study_name=job.study_name, storage=storage, load_if_exists=True, direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=job.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=job.startup_trials, n_warmup_steps=job.warmup_steps),
        )
        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        finished = [t for t in study.trials if t.state in done]
        if not study.trials:
            for params in job.first_trials:
                study.enqueue_trial(params)
        t0 = time.perf_counter()
        remaining = job.n_trials - len(finished)
        if remaining > 0:
            study.optimize(lambda trial: job.objective(_Trial(trial)), n_trials=remaining, timeout=job.timeout_s,
                           catch=())
        return SearchOutcome(study_records(study), round(time.perf_counter() - t0, 2))


def study_records(study: Any) -> list[TrialRecord]:
    """An Optuna study's finished trials as the leaderboard's records: complete ones first, each
    group best first (a pruned trial's value is the best it reported)."""
    import optuna

    records = []
    for t in study.trials:
        if t.state not in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED):
            continue
        value = t.value if t.value is not None else (max(t.intermediate_values.values())
                                                     if t.intermediate_values else None)
        records.append(TrialRecord(t.number, t.state.name.lower(), value, dict(t.params), dict(t.user_attrs)))
    records.sort(key=lambda r: (r.state != "complete", -(r.value or 0.0)))
    return records
