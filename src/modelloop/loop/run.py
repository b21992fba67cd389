"""Run and retrain: the same steps for every task.

run: data -> selection -> training -> evaluation, requirements, optimization -> report ->
registry -> promotion. retrain: feedback (and, where the task learns from them, served inputs
without feedback) -> challenger -> gate against the champion -> report -> registry -> promotion
or the challenger alias. The task says what each step does with its data
(see ``tasks.base.Task``); here is what every task shares: the run's records (so ``run
--resume`` continues and a crashed writer's version is finished by the next), the time budget,
"nothing new, nothing trained", and a version registered complete with its report.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import RegistryError
from ..feedback.ood import OOD_FILE
from ..tasks.stages import NewVersion
from .state import Progress, RunState

__all__ = ["run", "retrain", "register"]

log = logging.getLogger(__name__)


def register(loop: Any, new: NewVersion, progress: Progress | None) -> dict[str, Any]:
    """Register a version, its report written before the version appears (so no crash leaves a
    version without its report and gate)."""

    def complete(version: str) -> dict[str, Any]:
        report = loop.runs.write_report(version, lambda path: new.report(path, version))
        loop.say(progress, f"[report] {version}: {report}")
        return {"report": str(report)}

    extra = dict(new.extra_files)
    with tempfile.TemporaryDirectory() as tmp:
        ood = _ood_calibration(loop, new)
        if ood is not None:  # stored with the version: the server flags inputs outside the training distribution
            path = Path(tmp) / OOD_FILE
            ood.save(path)
            new.manifest["ood"] = ood.info()
            extra[OOD_FILE] = path
        version = loop.registry.register(new.manifest, new.model, new.preprocessing, extra_files=extra,
                                         complete=complete)
    return {"version": version, **new.result, "report": str(loop.registry.manifest(version)["report"])}


def _ood_calibration(loop: Any, new: NewVersion):
    """The task's OOD calibration of ``new`` (None: not applicable, or it failed: the version is
    then served without OOD scores, which the server says)."""
    try:
        return loop.task.ood_calibration(loop.context(None), new, loop.spec.monitor.ood_quantile)
    except Exception as e:  # a missing calibration must never cost a trained version
        log.warning("out-of-distribution calibration failed; the version will answer without OOD scores: %s", e)
        return None


def run(loop: Any, found: RunState | None, progress: Progress | None) -> dict[str, Any]:
    """One training run (or the rest of an interrupted one, ``found``); see ``Loop.run``."""
    task, spec = loop.task, loop.spec
    ctx = loop.context(progress)
    t_start = time.perf_counter()
    run = found or loop.runs.new("run")
    budget = spec.requirements.time_budget_s

    def elapsed() -> float:
        return run.elapsed(t_start)

    # 1. data: loaded, validated, split and snapshotted (or the snapshot resumed)
    data = task.load(ctx, run)
    # 2. technology selection (kept in the run's state: a resumed run does not search again)
    selection, fitted = task.select(ctx, data, run, max(1.0, budget * spec.selection.share_of_budget - elapsed()))
    if run.state.get("selection") is not selection:
        run.save(selection=selection, elapsed_s=elapsed())
    # 3. final training of the chosen candidate (from its last checkpoint when resumed)
    fit = task.fit(ctx, data, selection, fitted, run, resume=found is not None,
                   time_left=lambda: max(5.0, budget - elapsed()))
    # 4. evaluation, requirements, optimization for serving, report, registry
    out = register(loop, task.assemble(ctx, data, fit, run, selection=selection, title="Training run"), progress)
    # The version exists, complete with its report and gate; what follows (promotion) is
    # finished by a resume if this process dies now.
    run.save(registered=out["version"], elapsed_s=elapsed())
    done = loop.runs.complete(run, out["version"], progress)
    return {**out, "champion": done["champion"]}


def retrain(loop: Any, progress: Progress | None, promote: bool, force: bool) -> dict[str, Any]:
    """A challenger trained on the data plus feedback, judged against the champion; see ``Loop.retrain``."""
    task = loop.task
    ctx = loop.context(progress)
    champion = loop.registry.champion()
    if champion is None:
        raise RegistryError(f"project {str(loop.paths.root)!r}: no champion to retrain from; "
                            "expected a registered champion (run 'modelloop run DIR' first)")
    parent = task.load_model(ctx, champion)
    base = parent.manifest["dataset"]["base_fingerprint"]
    data = task.reload(ctx, base)
    fb = task.feedback(ctx, parent, data)
    reason = None if force else loop.runs.nothing_new(champion, fb.fingerprint, fb.rows)
    if reason is not None:
        return loop.runs.skipped(champion, reason, fb.rows, progress)
    if task.uses_unlabelled(loop.spec):  # served inputs without feedback, pseudo-labelled while training
        task.add_unlabelled(ctx, data, fb)
    try:
        monitoring = loop.monitor()  # what the loop saw when it decided to retrain, for the report
    except Exception as e:  # monitoring is evidence, never a reason to fail a retrain
        log.warning("monitor before retraining failed: %s", e)
        monitoring = None
    run = loop.runs.new("retrain", parent=champion, dataset=base, feedback_examples=len(fb.train_ids),
                        feedback_validation=len(fb.val_ids), feedback_holdout=len(fb.hold_ids), promote=promote,
                        feedback_fingerprint=fb.fingerprint, unlabelled_examples=len(fb.unlabelled_ids))
    run.write("holdout_ids.json", fb.hold_ids)
    if fb.unlabelled_ids:
        run.write("unlabelled_ids.json", fb.unlabelled_ids)
    run.write("validation_ids.json", fb.val_ids)
    fit = task.fit_challenger(ctx, parent, data, fb, run)
    new = task.assemble(ctx, data, fit, run, parent=parent, fb=fb, title="Retraining on feedback",
                        monitoring=monitoring)
    if fb.train_ids:  # lineage reads it; written first, since the version may be the last thing this process does
        run.write("feedback_ids.json", fb.train_ids)
    out = register(loop, new, progress)
    run.save(registered=out["version"])
    done = loop.runs.complete(run, out["version"], progress)
    return {**out, "champion": done["champion"], "champion_version": loop.registry.champion()}
