"""The loop on one project folder: run, retrain, promote, roll back, monitor, watch, lineage.

``Loop`` ties the stages together; each lives in its own module (``run``, ``monitor``,
``lineage``) over the public run records of ``state``. It never prints; it logs, and reports
progress through an optional callback the CLI turns into a display.

One writer per project: a run, a retrain, a watch round and every registry change hold the
project's writer lock (``registry/lock.py``); a second writer is refused with ``BusyError``
naming the holder, or waits (``wait``). A version is registered complete, its report and gate
included, and a run's state records it before the steps that follow (promotion, records); a
crash anywhere leaves either no version or a complete one, and the next writer finishes what a
crashed one registered (``Runs.recover``); ``run --resume`` finishes its own run's version
instead of training another.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..backends import get_backend
from ..errors import RegistryError
from ..feedback import FeedbackStore, open_store
from ..registry import LoadedModel
from ..registry.lock import ProjectLock, Wait
from ..registry.store import Registry, open_registry
from ..settings import ProjectPaths
from ..spec import SPEC_FILE, Spec, load_spec
from ..tasks import Task, check_spec, get_task
from ..tasks.stages import Context
from . import lineage as _lineage
from . import monitor as _monitor
from . import run as _run
from .state import Progress, Runs

__all__ = ["Loop", "Progress"]

log = logging.getLogger(__name__)

class Loop:
    """The product loop on one project folder.

    Args:
        project_dir: a folder with ``modelloop.yaml`` (see ``modelloop init``).
        ray: run fits and searches on this Ray cluster ("auto", "HOST:PORT", "local"; see
            ``spec.ComputeSpec.address``) instead of where the spec's ``compute`` section says.
    Raises:
        SpecError: the spec is missing or invalid.
        BackendError: Ray is asked for but not installed.
    """

    def __init__(self, project_dir: str | Path, ray: str | None = None) -> None:
        self.paths = ProjectPaths(project_dir)
        self.spec: Spec = load_spec(self.paths.root)
        if ray is not None:  # fits and searches on this Ray cluster, whatever the spec's compute section says
            self.spec = self.spec.model_copy(update={"compute": self.spec.compute.model_copy(
                update={"backend": "ray", "address": ray})})
        check_spec(self.spec, where=self.paths.root / SPEC_FILE)  # what only the task can check (and its defaults)
        self.task: Task = get_task(self.spec.task)
        url = self.paths.store_url(self.spec.feedback.store_url)
        shared = url.startswith(("postgresql", "postgres://"))
        #: one writer per project: runs, retrains, watch rounds and registry changes hold it (see registry/lock.py)
        self.lock = ProjectLock(self.paths.lock, name=self.spec.name, where=f"project {str(self.paths.root)!r}",
                                pg=self._pg_engine if shared else None)
        self.registry: Registry = open_registry(self.paths.registry, lock=self.lock)
        self.runs = Runs(self.paths, self.registry, self.lock, self.say, resumable=self.task.resumable)
        self._store: FeedbackStore | None = None
        #: where fits and searches run (see ``backends``)
        self.backend = get_backend(self.spec, storage=self.paths.state / "ray")

    @property
    def store(self) -> FeedbackStore:
        if self._store is None:
            self._store = open_store(self.paths.store_url(self.spec.feedback.store_url))
        return self._store

    def _pg_engine(self):
        """The PostgreSQL feedback store's engine: the writer lock also takes an advisory lock there."""
        return self.store.engine if self.store.dialect == "postgresql" else None

    def say(self, progress: Progress | None, msg: str) -> None:
        if progress is None:
            log.info(msg)
        else:
            log.debug(msg)
            progress(msg)

    def context(self, progress: Progress | None) -> Context:
        """What the task's stages see of this project."""
        return Context(spec=self.spec, paths=self.paths, registry=self.registry, store=lambda: self.store,
                       say=lambda msg: self.say(progress, msg), progress=progress,
                       watch_state=lambda: _monitor.watch_state(self),
                       backend=self.backend)

    @contextlib.contextmanager
    def _writer(self, operation: str, wait: Wait, progress: Progress | None) -> Iterator[None]:
        """Hold the project's writer lock, after what every writer does first: tidy what crashed
        writers left half-written and finish the versions they registered."""
        with self.lock.hold(operation, wait=wait):
            self.runs.prepare_writer()
            self.runs.recover(progress)
            yield

    # -- run and retrain -------------------------------------------------------------------------
    def run(self, resume: bool = False, progress: Progress | None = None, wait: Wait = False) -> dict[str, Any]:
        """Train, select, evaluate, gate and register a new version.

        With ``resume``, an interrupted run continues: same dataset snapshot, the finished part of
        the search kept, training from its last checkpoint; a run interrupted after its version
        was registered is finished (promotion, records), not trained again. A task that does not
        resume (``Task.resumable``) starts a new run.

        The run holds the project's writer lock from start to end (see ``registry/lock.py``):
        another run, retrain, watch round or registry change on the project is refused, or waits
        with ``wait`` (True: until free; a number: that many seconds).

        Returns a dict with ``version``, ``metrics`` (test split), ``champion`` (bool), ``passed``,
        ``gate``, ``report`` and more.

        Raises:
            BusyError: another writer holds the project's lock.
        """
        with self.lock.hold("run", wait=wait):
            self.runs.prepare_writer()
            found = self.runs.unfinished() if resume else None
            if found is not None:
                version = self.runs.registered_version(found)
                if version is not None:
                    self.say(progress, f"[registry] {version} of run {found.run_id} was registered before the "
                             "interruption: finishing it")
                    return self.runs.complete(found, version, progress)
            self.runs.recover(progress)
            if resume and found is not None and not self.task.resumable:
                found = None
                self.say(progress, f"[run] {self.spec.task} runs start again from their data: starting a new run")
            elif resume and found is None:
                self.say(progress, "nothing to resume: no interrupted run in this project, starting a new run")
            return _run.run(self, found, progress)

    def retrain(self, progress: Progress | None = None, promote: bool = True, force: bool = False,
                wait: Wait = False) -> dict[str, Any]:
        """Train a challenger on the training split plus feedback and gate it.

        Champion and challenger are compared on the frozen test split and on the feedback
        hold-out (see ``gate.py``). With ``promote``, a challenger the gate passes becomes
        champion; otherwise it gets the ``challenger`` alias and waits for ``promote``. The
        decision and its evidence are stored in the registry either way.

        Nothing new, nothing trained: when the usable feedback is exactly what the champion, or
        the latest challenger trained from it, was trained on (the same rows, the same labels),
        a retrain would only repeat that training; it is skipped and the result says why
        (``decision`` ``"skipped"``, ``reason``, ``version`` None), unless ``force``.

        Holds the project's writer lock (see :meth:`run`); a retrain interrupted after its
        version was registered is finished first (gate record, promotion).

        Raises:
            BusyError: another writer holds the project's lock.
            RegistryError: no champion to retrain from.
        """
        with self._writer("retrain", wait, progress):
            return _run.retrain(self, progress, promote, force)

    def feedback_split(self, class_names: list[str], like) -> dict[str, Any]:
        """Trusted labelled feedback split into training and hold-out parts (see the task's
        ``feedback_split``)."""
        return self.task.feedback_split(self.context(None), class_names, like)

    # -- after a crash ---------------------------------------------------------------------------
    def recover(self, progress: Progress | None = None, wait: Wait = False) -> list[str]:
        """What every writer does first, on its own: remove what crashed writers left
        half-written and finish versions they registered. Returns :meth:`check`'s findings
        afterwards (empty: every promise kept).

        Raises:
            BusyError: another writer holds the project's lock.
        """
        with self._writer("recover", wait, progress):
            return self.check()

    def check(self, finished: bool = True) -> list[str]:
        """What breaks the registry's promises, as sentences (empty: all kept); see ``Runs.check``."""
        return self.runs.check(finished)

    # -- registry ----------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        return [self.task.models_row(m) for m in self.registry.versions()]

    def promote(self, version: str) -> str:
        self.registry.promote(version, reason="manual")
        return version

    def rollback(self) -> str:
        return self.registry.rollback()

    def load_champion(self) -> LoadedModel:
        v = self.registry.champion()
        if v is None:
            raise RegistryError(f"project {str(self.paths.root)!r}: no champion yet; run 'modelloop run DIR' "
                                "(a version becomes champion when it meets the requirements) or "
                                "'modelloop promote DIR VERSION'")
        return self.task.load_model(self.context(None), v)

    # -- monitoring, shadow, lineage, policy -------------------------------------------------
    def monitor(self) -> dict[str, Any]:
        """Input drift, prediction drift and live quality of the champion, plus shadow results."""
        return _monitor.monitor(self)

    def shadow(self, version: str | None) -> dict[str, Any]:
        return _monitor.shadow(self, version)

    def shadow_report(self, version: str) -> dict[str, Any] | None:
        return _monitor.shadow_report(self, version)

    def lineage(self, prediction_id: str | None = None, version: str | None = None) -> dict[str, Any]:
        return _lineage.lineage(self, prediction_id, version)

    def _rollback_check(self) -> dict[str, Any] | None:
        return _monitor.rollback_check(self)

    def watch_once(self, progress: Progress | None = None, force: bool = False, wait: Wait = False) -> dict[str, Any]:
        """One policy check: roll back a failing new champion, or retrain when a trigger fires.

        Triggers: enough new labelled feedback (``policy.min_new_feedback``), input drift (only
        with at least ``gate.min_feedback_for_evidence`` new labelled rows: drift without labels
        gives a retrain nothing to learn the drifted inputs from), or live accuracy below the
        floor. A fired trigger retrains only when there is feedback the latest version of this
        lineage did not learn from (see :meth:`retrain`); otherwise the round's ``action`` is
        ``"skipped"`` with the ``reason``, unless ``force``. Holds the writer lock for the round.

        Raises:
            BusyError: another writer holds the project's lock.
        """
        with self._writer("watch", wait, progress):
            return _monitor.watch_once(self, progress, force)
