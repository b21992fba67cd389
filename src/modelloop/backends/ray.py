"""The Ray backend: search trials run as Ray Tune trials, a network's final fit as a Ray Train
``TorchTrainer`` with data-parallel workers, a task's own fit as a Ray task.

- **Search** (:meth:`RayBackend.search`): Tune's Optuna searcher (TPE, seeded, in the same
  SQLite study file as a local search, so an interrupted search resumes and later calls see
  earlier trials) suggests each trial's settings from the job's ``space``; the trial runs the
  job's objective on a worker with ``cpus_per_worker`` / ``gpus_per_worker``, at most ``workers``
  at once. Tune's median stopping rule stops a trial whose validation score lags (recorded as
  "pruned", as a local search's pruner does). What the objective records (its settings, size,
  seconds) and the node it ran on come back into the leaderboard.
- **A network's fit** (:meth:`RayBackend.fit`): ``workers`` processes (gloo on CPU, NCCL on GPU)
  train one model with ``DistributedDataParallel``: each takes its share of every batch, so the
  effective batch and the recipe are a local fit's (see ``train.Trainer``). The first worker's
  checkpoint goes to the run's storage after every epoch, and a fit whose worker dies restarts
  (``max_failures`` times) from the last one.
- **A model that fits by its own algorithm**, and a task's own fit (:meth:`RayBackend.fit_with`):
  one Ray task on a worker.

Every node needs this package (and the same Python packages) installed; the storage must be a
folder every node sees, or a cloud URI. See docs/scaling.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelloopError
from ..models import FitsItself, build_model
from ..spec import ComputeSpec
from ..train.trainer import Trainer, TrainResult
from .base import Backend, FitJob, FitResult, SearchJob, SearchOutcome
from .local import LocalBackend, study_records

__all__ = ["RayBackend", "BackendError"]

log = logging.getLogger(__name__)

#: the trial's number, handed from the searcher to the trial with its settings
_NUMBER = "__trial_number"
#: set in a process that runs a trial: a fit there runs in that process
_IN_TRIAL = False


class BackendError(ModelloopError):
    """The backend cannot run: Ray is not installed, or the cluster cannot be reached."""


def ray_installed() -> bool:
    """Whether Ray can be imported here (the ``modelloop[ray]`` extra)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


class RayBackend(Backend):
    """Fits and searches on a Ray cluster.

    Args:
        compute: the spec's ``compute`` section (address, workers, resources, storage).
        storage: where checkpoints and trial results go when ``compute.storage`` is not set (the
            project's ``.modelloop/ray``).

    Raises:
        BackendError: Ray is not installed (``pip install 'modelloop[ray]'``).
    """

    name = "ray"

    def __init__(self, compute: ComputeSpec | None = None, storage: str | Path | None = None) -> None:
        if not ray_installed():
            raise BackendError("compute.backend: received 'ray', but Ray is not installed; expected "
                               "pip install 'modelloop[ray]' (or compute.backend: local)")
        self.compute = compute if compute is not None else ComputeSpec(backend="ray")
        where = self.compute.storage or storage or Path(tempfile.gettempdir()) / "modelloop-ray"
        # Tune and Train want an absolute path or a URI.
        self.storage = where if "://" in str(where) else str(Path(where).expanduser().resolve())

    # -- the cluster ---------------------------------------------------------------------------
    def connect(self) -> dict[str, Any]:
        """Join the cluster (once per process) -> its resources ({"CPU": ..., "nodes": ...})."""
        import ray

        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            address = self.compute.address
            kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False,
                                      "configure_logging": False}
            if address == "local":  # a private cluster of this machine, for this command
                cpus = max(1, int(self.compute.workers * self.compute.cpus_per_worker))
                kwargs.update(num_cpus=cpus, include_dashboard=False)
            elif address != "auto":
                _reachable(address)
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise BackendError(
                    f"compute.address: could not join a Ray cluster at {address!r} ({e}); expected the "
                    "HOST:PORT of a running head node ('ray start --head'), 'auto', or 'local'") from e
        resources = ray.cluster_resources()
        return {"CPU": resources.get("CPU", 0.0), "GPU": resources.get("GPU", 0.0),
                "nodes": len([n for n in ray.nodes() if n.get("Alive")])}

    def _resources(self) -> dict[str, float]:
        return {"CPU": self.compute.cpus_per_worker, "GPU": self.compute.gpus_per_worker}

    def _threads(self) -> int:
        return max(1, int(self.compute.cpus_per_worker))

    # -- fits ----------------------------------------------------------------------------------
    def fit(self, job: FitJob) -> FitResult:
        if _IN_TRIAL:  # a trial's fit runs in the trial's process, with the trial's CPUs
            return LocalBackend().fit(dataclasses.replace(
                job, training=dataclasses.replace(job.training, threads=job.training.threads or self._threads())))
        self.connect()
        torch.manual_seed(job.seed)
        model = build_model(job.model_config)
        itself = isinstance(model, FitsItself)
        if job.on_start is not None:
            job.on_start(model, "itself" if itself else "trainer")
        bare = dataclasses.replace(job, on_start=None, on_epoch=None)
        if itself:
            return self.fit_with(_fit_here, bare, self._threads())
        result = self._train(bare)
        model.load_state_dict(result.best_state)
        if job.on_epoch is not None:  # the workers' epochs, told once the fit is done
            for i, row in enumerate(result.history):
                job.on_epoch(i, row)
        return FitResult(model, result, "trainer")

    def _train(self, job: FitJob) -> TrainResult:
        """A data-parallel ``TorchTrainer`` fit of ``job`` -> the first worker's result."""
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        gpus = self.compute.gpus_per_worker
        resume_from = str(job.checkpoint_path) if job.resume and job.checkpoint_path else None
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={"job": job, "threads": self._threads(), "cuda": gpus > 0, "resume_from": resume_from},
            scaling_config=ScalingConfig(num_workers=self.compute.workers, use_gpu=gpus > 0,
                                         resources_per_worker=self._resources()),
            run_config=RunConfig(name=f"fit-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}",
                                 storage_path=self.storage,
                                 failure_config=FailureConfig(max_failures=self.compute.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
        )
        from ray.train import TrainingFailedError

        try:
            with _quiet():
                out = trainer.fit()
        except TrainingFailedError as e:
            raise BackendError(f"the fit on Ray failed after {self.compute.max_failures} restarts "
                               f"(compute.max_failures): {_last_line(e)}") from e
        if out.checkpoint is None:
            raise BackendError(f"Ray Train fit under {self.storage!r} ended without a result checkpoint")
        with out.checkpoint.as_directory() as d:
            saved = torch.load(Path(d) / "result.pt", weights_only=True, map_location="cpu")
        return TrainResult(**saved)

    def fit_with(self, fit: Callable[..., Any], *args: Any) -> Any:
        if _IN_TRIAL:
            return fit(*args)
        import ray

        self.connect()
        remote = ray.remote(fit).options(num_cpus=self.compute.cpus_per_worker, num_gpus=self.compute.gpus_per_worker)
        return ray.get(remote.remote(*args))

    # -- searches ------------------------------------------------------------------------------
    def search(self, job: SearchJob) -> SearchOutcome:
        import optuna
        from ray import tune
        from ray.tune.schedulers import MedianStoppingRule
        from ray.tune.search import ConcurrencyLimiter

        if job.space is None:
            raise BackendError("a search on Ray needs the job's search space (SearchJob.space); this search has none")
        self.connect()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = (optuna.storages.RDBStorage(f"sqlite:///{job.storage_path}") if job.storage_path is not None
                   else optuna.storages.InMemoryStorage())
        study = optuna.create_study(study_name=job.study_name, storage=storage, load_if_exists=True,
                                    direction="maximize")
        finished = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                           optuna.trial.TrialState.PRUNED)]
        remaining = job.n_trials - len(finished)
        t0 = time.perf_counter()
        if remaining > 0:
            searcher = _searcher(space=_NumberedSpace(job.space), metric="score", mode="max",
                                 sampler=optuna.samplers.TPESampler(seed=job.seed), study_name=job.study_name,
                                 storage=storage, points_to_evaluate=None if study.trials else job.first_trials or None)
            trainable = tune.with_resources(tune.with_parameters(_run_trial, objective=job.objective),
                                            {"cpu": self.compute.cpus_per_worker, "gpu": self.compute.gpus_per_worker})
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=ConcurrencyLimiter(searcher, max_concurrent=self.compute.workers),
                    scheduler=MedianStoppingRule(time_attr="training_iteration", metric="score", mode="max",
                                                 grace_period=job.warmup_steps,
                                                 min_samples_required=max(1, job.startup_trials)),
                    num_samples=remaining, time_budget_s=job.timeout_s,
                    reuse_actors=True),  # a trial's process serves the next: torch and the task are imported once
                run_config=tune.RunConfig(name=f"{job.study_name}-{uuid.uuid4().hex[:8]}", storage_path=self.storage,
                                          verbose=0),
            )
            with _quiet():
                grid = tuner.fit()
            if grid.errors:
                raise BackendError(f"a search trial failed on Ray ({job.study_name}): {_last_line(grid.errors[0])}") \
                    from grid.errors[0]
        return SearchOutcome(study_records(optuna.load_study(study_name=job.study_name, storage=storage)),
                             round(time.perf_counter() - t0, 2))


def _last_line(error: BaseException) -> str:
    """The gist of an error that crossed from a worker (its message ends with the worker's own)."""
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def _reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail fast when nothing listens at a head node's address (Ray itself retries for a minute)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise BackendError(f"compute.address: could not join a Ray cluster at {address!r} (nothing answers there: "
                           f"{e}); expected the HOST:PORT of a running head node ('ray start --head'), 'auto', "
                           "or 'local'") from None


# -- what runs on the workers ------------------------------------------------------------------
def _fit_here(job: FitJob, threads: int) -> FitResult:
    """A fit in this (worker) process, with the worker's CPUs."""
    return LocalBackend().fit(dataclasses.replace(
        job, training=dataclasses.replace(job.training, threads=job.training.threads or threads)))


class _TuneTrial:
    """A Tune trial seen through Optuna's trial interface: ``suggest_*`` return the settings the
    searcher chose (an Optuna ``FixedTrial``), ``report`` goes to Tune (whose scheduler may stop
    the trial there) and ``set_user_attr`` travels with every report."""

    def __init__(self, params: dict[str, Any], number: int) -> None:
        import optuna
        import ray

        self._fixed = optuna.trial.FixedTrial(params, number)
        self.attrs: dict[str, Any] = {"node": ray.get_runtime_context().get_node_id()}

    @property
    def number(self) -> int:
        return self._fixed.number

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fixed, name)

    def set_user_attr(self, key: str, value: Any) -> None:
        self.attrs[key] = value

    def report(self, value: float, step: int) -> None:
        from ray import tune

        tune.report({"score": float(value), "step": int(step), "attrs": json.dumps(self.attrs)})


def _run_trial(config: dict[str, Any], objective: Callable[[Any], float]) -> None:
    """One Tune trial: the search's objective with the searcher's settings."""
    global _IN_TRIAL
    from ray import tune

    _IN_TRIAL = True
    params = dict(config)
    number = int(params.pop(_NUMBER))
    trial = _TuneTrial(params, number)
    value = objective(trial)
    tune.report({"score": float(value), "final": 1, "attrs": json.dumps(trial.attrs)})


class _NumberedSpace:
    """The job's space, handing each trial its Optuna number along with its settings."""

    def __init__(self, space: Callable[[Any], Any]) -> None:
        self.space = space

    def __call__(self, trial: Any) -> dict[str, Any]:
        self.space(trial)
        return {_NUMBER: trial.number}


_SEARCHER: type | None = None


def _searcher(**kwargs: Any) -> Any:
    """Tune's Optuna searcher, keeping a trial in the study as a local search would: reports at the
    objective's own steps, what the objective recorded as the trial's user attributes, and a trial
    the scheduler stopped as pruned (its best report stays its value). The class is made on first
    use: importing Tune costs every command otherwise."""
    global _SEARCHER
    if _SEARCHER is None:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        class Searcher(OptunaSearch):
            def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
                ot = self._ot_trials.get(trial_id)
                if ot is None or result.get("final") or "step" not in result or trial_id in self._completed_trials:
                    return
                seen = self.__dict__.setdefault("_steps", set())
                if (trial_id, result["step"]) not in seen:
                    seen.add((trial_id, result["step"]))
                    ot.report(result["score"], result["step"])

            def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None,
                                  error: bool = False) -> None:
                ot = self._ot_trials.get(trial_id)
                if ot is not None and result and trial_id not in self._completed_trials:
                    for k, v in json.loads(result.get("attrs", "{}")).items():
                        ot.set_user_attr(k, v)
                    if not error and not result.get("final"):
                        self._ot_study.tell(ot, state=optuna.trial.TrialState.PRUNED)
                        self._completed_trials.add(trial_id)
                        return
                super().on_trial_complete(trial_id, result, error)

        _SEARCHER = Searcher
    return _SEARCHER(**kwargs)


def _train_loop(config: dict[str, Any]) -> None:
    """One data-parallel worker of a ``TorchTrainer`` fit (see ``train.Trainer`` for how the
    processes share a batch). It resumes from the run's last checkpoint when Ray restarted it
    after a failure; the first worker reports a checkpoint after every epoch and the result at the end."""
    import ray.train
    from ray.train import Checkpoint

    job: FitJob = config["job"]
    rank = ray.train.get_context().get_world_rank()
    work = Path(tempfile.mkdtemp(prefix="modelloop-fit-"))
    ckpt = work / "state" / "checkpoint.pt"
    ckpt.parent.mkdir()
    resume = False
    last = ray.train.get_checkpoint()
    if last is not None:
        with last.as_directory() as d:
            if (Path(d) / "checkpoint.pt").is_file():
                shutil.copy(Path(d) / "checkpoint.pt", ckpt)
                resume = True
    elif config["resume_from"] and Path(config["resume_from"]).is_file():
        shutil.copy(config["resume_from"], ckpt)
        resume = True
    torch.manual_seed(job.seed)
    model = build_model(job.model_config)
    cfg = dataclasses.replace(job.train_config(), checkpoint_path=ckpt,
                              threads=job.training.threads or config["threads"],
                              device="cuda" if config["cuda"] else job.training.device)

    def on_epoch(epoch: int, row: dict[str, float]) -> None:
        ray.train.report(dict(row), checkpoint=Checkpoint.from_directory(str(ckpt.parent)) if rank == 0 else None)

    result = Trainer(cfg, loss=job.task.loss if job.task is not None else None, score=job.score_name).fit(
        model, job.train, job.val, on_epoch=on_epoch, resume=resume, unlabelled=job.unlabelled)
    done = None
    if rank == 0:
        (work / "result").mkdir()
        torch.save(dataclasses.asdict(result), work / "result" / "result.pt")
        done = Checkpoint.from_directory(str(work / "result"))
    ray.train.report({"final": 1, "best_val_score": result.best_val_score}, checkpoint=done)
    shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def _quiet():
    """Tune and Train print progress tables to stdout, which a command's ``--json`` owns: send
    them to stderr."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
