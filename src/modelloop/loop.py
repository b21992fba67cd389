"""The loop itself: run (data -> selection -> training -> evaluation -> gate -> registry),
retrain on feedback, promote and roll back.

``Loop`` works on a project folder holding ``modelloop.yaml``. It never prints; it logs, and
reports progress through an optional callback the CLI turns into a display.

One writer per project: a run, a retrain, a watch round and every registry change hold the
project's writer lock (``registry/lock.py``); a second writer is refused with ``BusyError``
naming the holder, or waits (``wait``). A version is registered complete, its report and gate
included, and a run's state records it before the steps that follow (promotion, records); a
crash anywhere leaves either no version or a complete one, and the next writer finishes what a
crashed one registered (``_recover``); ``run --resume`` finishes its own run's version instead of
training another.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .backends import FitJob, get_backend
from .compress import ServingModule, choose_backend
from .data import Dataset
from .errors import InputError, RegistryError
from .evaluate import classification_metrics, regression_metrics
from .evaluate.report import write_report
from .feedback import FeedbackStore, open_store
from .gate import check_requirements, compare, compare_regression, paired_errors, paired_evidence
from .models import batched_logits, count_parameters
from .registry import LoadedModel, LocalRegistry
from .registry.artifact import library_versions
from .registry.lock import ProjectLock, Wait
from .select.candidates import model_bytes, prepare_features, search_candidates, serving_latency
from .settings import PRIVATE_FILE, ProjectPaths, private_dir, write_private
from .spec import Spec, load_spec
from .tasks import Task, featurizer_from_config, get_task
from .train import TrainConfig
from .train.trainer import TrainResult, describe

__all__ = ["Loop"]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

STAGES = ("data", "selection", "training", "evaluation", "report", "gate", "registry")


def _is_holdout(prediction_id: str, fraction: float) -> bool:
    return int(hashlib.sha1(prediction_id.encode()).hexdigest()[:8], 16) / 0x100000000 < fraction


def _proba(model: torch.nn.Module, feat, x: Any) -> np.ndarray:
    """Class probabilities of raw inputs (pixels 0-255 (N, C, H, W), or texts) through featurizer and model."""
    return torch.softmax(batched_logits(model, feat.transform(x)), 1).numpy()


def _outputs(model: torch.nn.Module, feat, x: Any, regression: bool) -> np.ndarray:
    """Raw inputs -> class probabilities (N, K), or predicted values (N,) for regression."""
    if regression:
        return batched_logits(model, feat.transform(x))[:, 0].float().numpy()
    return _proba(model, feat, x)


def _value_label(v: float) -> str:
    """A predicted or fed-back number as the feedback store keeps it (6 significant digits)."""
    return f"{float(v):.6g}"


def _as_number(label: Any) -> float | None:
    try:
        f = float(label)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def _take(x: Any, mask: torch.Tensor | np.ndarray) -> Any:
    """Rows of a raw batch (tensor, or list of texts) where ``mask`` is true."""
    m = torch.as_tensor(np.asarray(mask, dtype=bool))
    if isinstance(x, list):
        return [v for v, k in zip(x, m.tolist(), strict=True) if k]
    return x[m]


def _cat(a: Any, b: Any) -> Any:
    return a + b if isinstance(a, list) else torch.cat([a.float(), b.float()])


def _feedback_fingerprint(rows: Iterable[tuple[Any, Any]]) -> str:
    """Which feedback a version learned from: a hash of its (prediction id, label) pairs, in any order."""
    h = hashlib.sha256()
    for pid, label in sorted((str(p), str(v)) for p, v in rows):
        h.update(f"{pid}\t{label}\n".encode())
    return h.hexdigest()[:16]


class Loop:
    """The product loop on one project folder.

    Args:
        project_dir: a folder with ``modelloop.yaml`` (see ``modelloop init``).
    Raises:
        SpecError: the spec is missing or invalid.
    """

    def __init__(self, project_dir: str | Path) -> None:
        self.paths = ProjectPaths(project_dir)
        self.spec: Spec = load_spec(self.paths.root)
        url = self.paths.store_url(self.spec.feedback.store_url)
        shared = url.startswith(("postgresql", "postgres://"))
        #: one writer per project: runs, retrains, watch rounds and registry changes hold it (see registry/lock.py)
        self.lock = ProjectLock(self.paths.lock, name=self.spec.name, where=f"project {str(self.paths.root)!r}",
                                pg=self._pg_engine if shared else None)
        self.registry = LocalRegistry(self.paths.registry, lock=self.lock)
        self.task: Task = get_task(self.spec.task)
        self._store: FeedbackStore | None = None
        #: regression: one number per input, scored by R² (which plays validation accuracy's part)
        self.regression = self.task.problem == "regression"
        self._score = "val R²" if self.regression else "val accuracy"

    def _metrics(self, y: torch.Tensor, out: np.ndarray, class_names: list[str]) -> dict[str, Any]:
        """Test-style metrics of model outputs (probabilities, or values for regression)."""
        if self.regression:
            return regression_metrics(y.numpy(), out)
        return classification_metrics(y.numpy(), out, class_names)

    def _target(self, y: torch.Tensor) -> dict[str, float] | None:
        """Regression: the training targets' mean and spread, which the networks' outputs are scaled by."""
        if not self.regression:
            return None
        return {"mean": float(y.double().mean()), "std": float(y.double().std()) if len(y) > 1 else 1.0}

    @property
    def store(self) -> FeedbackStore:
        if self._store is None:
            self._store = open_store(self.paths.store_url(self.spec.feedback.store_url))
        return self._store

    def _pg_engine(self):
        """The PostgreSQL feedback store's engine: the writer lock also takes an advisory lock there."""
        return self.store.engine if self.store.dialect == "postgresql" else None

    def _say(self, progress: Progress | None, msg: str) -> None:
        if progress is None:
            log.info(msg)
        else:
            log.debug(msg)
            progress(msg)

    # -- run ---------------------------------------------------------------------------------
    def _new_run(self) -> tuple[str, Path, dict[str, Any]]:
        run_id = time.strftime("r%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        run_dir = self.paths.runs / run_id
        private_dir(self.paths.runs)
        run_dir.mkdir(mode=0o700)
        run_dir.chmod(0o700)
        state = {"run_id": run_id, "status": "running", "kind": "run", "started_at": time.time()}
        return run_id, run_dir, state

    def _unfinished_run(self) -> tuple[str, Path, dict[str, Any]] | None:
        if not self.paths.runs.is_dir():
            return None
        for run_dir in sorted(self.paths.runs.iterdir(), reverse=True):
            f = run_dir / "state.json"
            if f.is_file():
                state = json.loads(f.read_text())
                if state.get("status") == "running" and state.get("kind") == "run":
                    return state["run_id"], run_dir, state
        return None

    @staticmethod
    def _save_state(run_dir: Path, state: dict[str, Any]) -> None:
        write_private(run_dir / "state.json", json.dumps(state, indent=2), fsync=True)

    def run(self, resume: bool = False, progress: Progress | None = None, wait: Wait = False) -> dict[str, Any]:
        """Train, select, evaluate, gate and register a new version.

        With ``resume``, an interrupted run continues: same dataset snapshot, the finished part of
        the search kept, training from its last checkpoint; a run interrupted after its version
        was registered is finished (promotion, records), not trained again.

        The run holds the project's writer lock from start to end (see ``registry/lock.py``):
        another run, retrain, watch round or registry change on the project is refused, or waits
        with ``wait`` (True: until free; a number: that many seconds).

        Returns a dict with ``version``, ``metrics`` (test split), ``champion`` (bool), ``passed``,
        ``gate``, ``report`` and more.

        Raises:
            BusyError: another writer holds the project's lock.
        """
        with self.lock.hold("run", wait=wait):
            self._prepare_writer()
            found = self._unfinished_run() if resume else None
            if found is not None:
                version = self._registered_version(found[0], found[2])
                if version is not None:
                    self._say(progress, f"[registry] {version} of run {found[0]} was registered before the "
                              "interruption: finishing it")
                    return self._complete(found[1], found[2], version, progress)
            self._recover(progress)
            if self.spec.task == "recommendation":
                from .recommendation import core as rec

                return rec.run(self, resume=resume, progress=progress)
            if resume and found is None:
                self._say(progress, "nothing to resume: no interrupted run in this project, starting a new run")
            return self._run(found, progress)

    def _run(self, found: tuple[str, Path, dict[str, Any]] | None, progress: Progress | None) -> dict[str, Any]:
        spec = self.spec
        t_start = time.perf_counter()
        run_id, run_dir, state = found if found else self._new_run()
        elapsed_before = float(state.get("elapsed_s", 0.0))
        budget = spec.requirements.time_budget_s

        def elapsed() -> float:
            return elapsed_before + time.perf_counter() - t_start

        # 1. data
        if "dataset" in state:
            ds = Dataset.load(self.paths.data, state["dataset"])
            self._say(progress, f"[data] resumed dataset snapshot {ds.fingerprint}")
        else:
            self._say(progress, f"[data] loading and validating {spec.data.source}")
            ds = self.task.prepare(spec.data, self.paths.root)
            ds.save(self.paths.data)
            state["dataset"] = ds.fingerprint
            self._save_state(run_dir, state)
        rep = ds.report
        what = {"text": "texts", "audio": "clips", "tabular": "rows"}.get(ds.kind, "images")
        self._say(progress, f"[data] {rep.kept} {what} kept, {len(rep.dropped)} dropped; split "
                  + ", ".join(f"{s} {sum(c.values())}" for s, c in rep.split_counts.items()))
        for d in rep.dropped[:20]:
            log.warning("dropped %s: %s", d["file"], d["reason"])

        # 2. technology selection: each candidate's featurizer is fit on the training split only
        (xtr, ytr), (xva, yva) = ds.splits["train"], ds.splits["val"]
        if len(yva) == 0:
            log.warning("no validation examples (classes too small); early stopping uses the training split")
        fitted = None
        if "chosen" in state.get("selection", {}):
            selection = state["selection"]
            self._say(progress, f"[selection] resumed: {selection['chosen']}")
        else:
            sel = spec.selection
            cands, excluded = self.task.choose_candidates(spec, ds)
            for name, why in excluded.items():
                log.info("candidate %s: %s", name, why)
            self._say(progress, f"[selection] candidates {', '.join(c.name for c in cands)} "
                      f"({sel.trials} trials, rule: {sel.choose})")
            selection, fitted = search_candidates(cands, (xtr, ytr), (xva, yva), len(ds.class_names), spec,
                                          timeout_s=max(1.0, budget * sel.share_of_budget - elapsed()),
                                          run_dir=run_dir, cache_dir=self.paths.state / "cache", progress=progress,
                                          target=self._target(ytr))
            selection["excluded"] = excluded
            state["selection"] = selection
            state["elapsed_s"] = elapsed()
            self._save_state(run_dir, state)
            if selection["warning"]:
                log.warning("%s", selection["warning"])
            self._say(progress, f"[selection] chose {selection['chosen']} "
                      f"({self._score} {selection['best_val_accuracy']:.4f}; "
                      + next(r["decision"] for r in selection["leaderboard"] if r["candidate"] == selection["chosen"])
                      + ")")

        # 3. final training of the chosen candidate, with early stopping and checkpoints
        cand = self.task.candidates[selection["chosen"]]
        feat, ftr, fva = fitted or prepare_features(cand, xtr, xva, self.paths.state / "cache")
        train = (ftr, ytr)
        val = (fva, yva) if fva is not None else train
        config = {"family": cand.family, "input_shape": list(ftr.shape[1:]), "num_classes": len(ds.class_names),
                  "params": selection["best_params"], "featurizer": dict(cand.featurizer), "candidate": cand.name}
        if self.regression:
            config["target"] = self._target(ytr)
        result, model = self._train(config, train, val, run_dir, resume=found is not None,
                                     time_limit=max(5.0, budget - elapsed()), progress=progress)
        if cand.pretrained and spec.selection.distill:
            student = self._distill(selection, cand, feat, model, result.best_val_accuracy, ds, run_dir,
                                    max(5.0, budget - elapsed()), progress)
            if student is not None:
                cand, feat, model, result, config = student

        # 5. evaluation, 6. gate, 7. registry, 8. report
        out = self._finish(model=model, config=config, feat=feat, ds=ds, run_id=run_id, train_result=result,
                           parent=None, feedback_examples=0, feedback_ids=[], selection=selection,
                           fingerprint=ds.fingerprint, progress=progress, title="Training run",
                           manifest_extra={"feedback_fingerprint": _feedback_fingerprint([])})
        # The version exists, complete with its report and gate; what follows (promotion) is
        # finished by a resume if this process dies now.
        state.update(registered=out["version"], elapsed_s=elapsed())
        self._save_state(run_dir, state)
        done = self._complete(run_dir, state, out["version"], progress)
        return {**out, "champion": done["champion"]}

    def _distill(self, selection: dict[str, Any], teacher_cand, teacher_feat, teacher, teacher_val: float,
                 ds: Dataset, run_dir: Path, time_limit: float, progress: Progress | None):
        """Knowledge distillation: the best small candidate learns the pretrained winner's soft
        predictions. The student competes with its teacher under the same rule (``choose``); the
        leaderboard gets its row either way. Returns (candidate, featurizer, model, result, config)
        of a student that wins, else None.
        """
        from .compress.distill import soft_targets
        from .select.candidates import choose

        board = selection["leaderboard"]
        small = [r for r in board if not r["pretrained"]]
        if not small:
            return None
        base = max(small, key=lambda r: r["val_accuracy"] or 0.0)
        scand = self.task.candidates[base["candidate"]]
        (xtr, ytr), (xva, yva) = ds.splits["train"], ds.splits["val"]
        teacher_probs = torch.from_numpy(_proba(teacher, teacher_feat, xtr))
        targets = soft_targets(teacher_probs, ytr, temperature=2.0, alpha=0.5)
        sfeat, str_, sva = prepare_features(scand, xtr, xva, self.paths.state / "cache")
        config = {"family": scand.family, "input_shape": list(str_.shape[1:]), "num_classes": len(ds.class_names),
                  "params": base["params"], "featurizer": dict(scand.featurizer), "candidate": scand.name,
                  "distilled_from": teacher_cand.name}
        self._say(progress, f"[distillation] {scand.name} learns from {teacher_cand.name}'s soft predictions")
        (run_dir / "distill").mkdir(exist_ok=True)
        result, model = self._train(config, (str_, targets), (sva, yva) if sva is not None else (str_, ytr),
                                    run_dir / "distill", resume=False, time_limit=time_limit, progress=progress)
        lat = serving_latency(sfeat, model, (xva if len(yva) else xtr)[:1], threads=self.spec.serving.threads)
        row = {"candidate": f"{scand.name} (distilled from {teacher_cand.name})", "family": scand.family,
               "featurizer": scand.featurizer["kind"], "pretrained": False, "distilled_from": teacher_cand.name,
               "val_accuracy": result.best_val_score, "params": base["params"], "parameters":
               count_parameters(model), "p50_ms": lat["p50_ms"], "p95_ms": lat["p95_ms"],
               "size_mb": (model_bytes(model) + sfeat.frozen_bytes()) / 1e6, "featurize_s": None,
               "search_s": round(result.seconds, 2), "trials": 1}
        teacher_row = next(r for r in board if r["candidate"] == teacher_cand.name)
        # Both fully trained: the teacher's score is its final training's, not its short search trial's.
        teacher_row["val_accuracy"] = teacher_val
        pair = [dict(teacher_row), row]
        winner, _ = choose(pair, self.spec)
        board.append(pair[1])
        for r in board:  # the decision between teacher and student replaces the teacher's
            if r["candidate"] == teacher_cand.name:
                r.update(decision=pair[0]["decision"] if winner is pair[0] else
                         f"distilled into {scand.name}, which ships: {pair[1]['decision'].removeprefix('chosen: ')}")
        ships = "student" if winner is pair[1] else "teacher"
        self._say(progress, f"[distillation] student val accuracy {row['val_accuracy']:.4f} "
                  f"(teacher {teacher_row['val_accuracy']:.4f}), p95 {row['p95_ms']:.2f} ms "
                  f"(teacher {teacher_row['p95_ms']:.2f} ms): the {ships} ships")
        selection["shipped"] = row["candidate"] if ships == "student" else teacher_cand.name
        return (scand, sfeat, model, result, config) if ships == "student" else None

    def _train(self, config: dict[str, Any], train, val, run_dir: Path, resume: bool, time_limit: float,
               progress: Progress | None) -> tuple[TrainResult, torch.nn.Module]:
        """Fit ``config``'s model through the backend (gradient steps with early stopping and
        checkpoints, or the model's own algorithm); (how the fit went, the fitted model)."""
        spec = self.spec
        if getattr(self, "backend", None) is None:
            self.backend = get_backend(spec)
        name = config.get("candidate", config["family"])
        pixels = config.get("featurizer", {"kind": "pixels"})["kind"] == "pixels"

        def on_start(model: torch.nn.Module, method: str) -> None:
            if method == "trainer":
                self._say(progress, f"[training] {name} on {len(train[1])} examples, "
                          f"up to {spec.training.max_epochs} epochs")

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            if progress:
                progress(f"[training] epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
                         f"{self._score} {row['val_accuracy']:.4f}")

        fit = self.backend.fit(FitJob(
            config, train, val,
            training=TrainConfig(max_epochs=spec.training.max_epochs, patience=spec.training.patience,
                                 batch_size=spec.training.batch_size,
                                 shift=spec.data.augmentation.shift if pixels else 0),
            seed=spec.seed, time_limit_s=time_limit, checkpoint_path=run_dir / "checkpoint.pt", resume=resume,
            task=self.task, on_start=on_start, on_epoch=on_epoch))
        result = fit.result
        if fit.method == "itself":
            self._say(progress, f"[training] {name} fitted on {len(train[1])} examples, "
                      f"{self._score} {result.best_val_score:.4f}")
        else:
            self._say(progress, f"[training] best epoch {result.best_epoch} of {len(result.history)} "
                      f"({result.stopped}), {self._score} {result.best_val_score:.4f}")
        return result, fit.model

    def _finish(self, *, model, config, feat, ds: Dataset, run_id: str, train_result, parent,
                feedback_examples: int, feedback_ids: list[str], selection, fingerprint: str,
                progress: Progress | None, title: str, decide=None, feedback_holdout: int = 0,
                monitoring: dict[str, Any] | None = None, feedback_validation: int = 0,
                manifest_extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Evaluate, choose the serving backend and register the version, its report written
        before the version appears (so no crash leaves a version without its report and gate)."""
        spec = self.spec
        xte, yte = ds.splits["test"]
        probs = _outputs(model, feat, xte, self.regression)
        metrics = self._metrics(yte, probs, ds.class_names)
        xva, yva = ds.splits["val"]
        val_metrics = (self._metrics(yva, _outputs(model, feat, xva, self.regression), ds.class_names)
                       if len(yva) else None)
        latency = serving_latency(feat, model, (xte if len(xte) else ds.splits["train"][0])[:1],
                                  threads=spec.serving.threads)
        size_mb = (model_bytes(model) + feat.frozen_bytes()) / 1e6
        if self.regression:
            self._say(progress, f"[evaluation] test RMSE {metrics['rmse']:.4g}, MAE {metrics['mae']:.4g}, "
                      f"R² {metrics['r2']:.4f}, p95 latency {latency['p95_ms']:.2f} ms")
        else:
            self._say(progress, f"[evaluation] test accuracy {metrics['accuracy']:.4f}, F1 macro "
                      f"{metrics['f1_macro']:.4f}, p95 latency {latency['p95_ms']:.2f} ms")
        gate = check_requirements(spec.requirements, metrics, latency, size_mb)
        decision = decide(metrics, probs if self.regression else probs.argmax(1), gate) if decide else None

        # Optimization for serving: export and time each backend, keep the fastest that agrees.
        export_dir = self.paths.runs / run_id / "export"
        shutil.rmtree(export_dir, ignore_errors=True)  # what an interrupted attempt exported is not this model's
        if feat.exportable:
            xva_raw = (xva if len(yva) else ds.splits["train"][0]).float().numpy()
            yva_labels = (yva if len(yva) else ds.splits["train"][1]).numpy()
            module = ServingModule(model, feat.normalizer.mean_, feat.normalizer.std_)
            serving = choose_backend(module, xva_raw, yva_labels, export_dir,
                                     max_accuracy_drop=spec.serving.max_accuracy_drop,
                                     candidates=tuple(spec.serving.backends))
        else:
            serving = {"backend": "torch", "candidates": [{
                "backend": "torch", "ok": True, "reason": "", "p50_ms_batch1": latency["p50_ms"]}],
                "note": f"featurizer {feat.kind}: served by PyTorch (featurizer and network in one process)"}
        self._say(progress, f"[optimization] serving backend {serving['backend']}: " + ", ".join(
            f"{r['backend']} {r['p50_ms_batch1']:.2f} ms" if r["ok"] else f"{r['backend']} rejected"
            for r in serving["candidates"]))
        onnx = {p.name: p for p in export_dir.glob("*.onnx")}

        manifest = {
            "task": spec.task, "name": spec.name, "model": config, "parameters": count_parameters(model),
            "class_names": ds.class_names, "metrics": {"test": metrics, "val": val_metrics},
            "latency": latency, "size_mb": size_mb, "requirements": gate,
            "dataset": {"fingerprint": fingerprint, "base_fingerprint": ds.fingerprint, "source": spec.data.source,
                        "train_examples": int(len(ds.splits["train"][1])) + feedback_examples,
                        "test_examples": int(len(yte))},
            "selection": ({k: selection.get(k) for k in ("chosen", "shipped", "rule", "warning", "excluded",
                                                         "leaderboard")}
                          if selection else None),
            "run_id": run_id, "parent": parent, "feedback_examples": feedback_examples,
            "feedback_holdout": feedback_holdout, "feedback_validation": feedback_validation,
            "training": describe(train_result), "spec": spec.to_dict(), "libraries": library_versions(),
        }
        manifest["serving"] = serving
        manifest.update(manifest_extra or {})
        if decision is not None:
            manifest["gate"] = decision
        preprocessing = {"featurizer": feat.config(), "class_names": ds.class_names, "input": ds.kind}
        if ds.fmt is not None:
            preprocessing.update(format=ds.fmt.to_dict(), pixel_range=[0, 255])
        if feedback_ids:  # lineage reads it; written first, since the version may be the last thing this process does
            write_private(self.paths.runs / run_id / "feedback_ids.json", json.dumps(feedback_ids))

        def complete(version: str) -> dict[str, Any]:
            report = self._write_report(version, lambda path: write_report(path, {
                "title": f"{title}: {spec.name} {version}", "version": version,
                "family": config.get("candidate", config["family"]),
                "fingerprint": fingerprint, "parent": parent, "class_names": ds.class_names, "metrics": metrics,
                "score_name": self._score, "predicted": (yte.numpy(), probs) if self.regression else None,
                "gate": gate, "history": train_result.history, "latency": latency,
                "leaderboard": (selection or {}).get("leaderboard"), "trials": (selection or {}).get("trials"),
                "selection_warning": (selection or {}).get("warning"), "excluded": (selection or {}).get("excluded"),
                "requirements": spec.requirements.model_dump(),
                "size_mb": size_mb, "data_report": ds.report.to_dict(), "decision": decision,
                "feedback_examples": feedback_examples, "serving": serving, "monitor": monitoring,
            }))
            self._say(progress, f"[report] {version}: {report}")
            return {"report": str(report)}

        version = self.registry.register(manifest, model, preprocessing, extra_files=onnx, complete=complete)
        report = self.registry.manifest(version)["report"]
        return {"version": version, "run_id": run_id, "parent": parent, "metrics": metrics,
                "val_metrics": val_metrics, "latency": latency, "size_mb": size_mb, "gate": gate,
                "passed": gate["passed"], "champion": False, "report": str(report),
                "family": config.get("candidate", config["family"]),
                "dataset": fingerprint, "feedback_examples": feedback_examples, "decision": decision}


    # -- retrain -----------------------------------------------------------------------------
    def feedback_split(self, class_names: list[str], like) -> dict[str, Any]:
        """Trusted labelled feedback, split by prediction id into a training part and a hold-out part.

        ``like`` (a dataset or model) decides which stored inputs are usable (an image model takes
        images of its format). The split is a pure function of the prediction id (a hash), so an
        example never moves between the two as more feedback arrives. Returns raw inputs.
        """
        fs = self.spec.feedback
        items, labels, ids = self.store.labelled_inputs(class_names, exclude_clients=fs.untrusted_clients)
        x, usable = self.task.collate(items, like)
        labels = [lab for lab, k in zip(labels, usable, strict=True) if k]
        ids = [i for i, k in zip(ids, usable, strict=True) if k]
        if not all(usable):
            log.warning("skipped %d feedback rows whose input this model cannot take", usable.count(False))
        if self.regression:  # a label is the true value, as a number
            values = [_as_number(lab) for lab in labels]
            keep = np.array([v is not None for v in values], dtype=bool)
            if not keep.all():
                log.warning("skipped %d feedback rows whose label is not a number", int((~keep).sum()))
            y = torch.tensor([v if v is not None else 0.0 for v in values], dtype=torch.float32)
        else:
            index = {c: i for i, c in enumerate(class_names)}
            keep = np.array([lab in index for lab in labels], dtype=bool)
            if not keep.all():
                log.warning("skipped %d feedback rows whose label is not a class of this model", int((~keep).sum()))
            y = torch.tensor([index.get(lab, -1) for lab in labels], dtype=torch.int64)
        hold = np.array([_is_holdout(pid, fs.holdout_fraction) for pid in ids], dtype=bool)
        ids_arr = np.array(ids, dtype=object)
        out = {}
        for name, mask in (("train", keep & ~hold), ("holdout", keep & hold)):
            out[name] = (_take(x, mask), y[torch.from_numpy(mask)], list(ids_arr[mask]) if len(ids) else [])
        return out

    def retrain(self, progress: Progress | None = None, promote: bool = True, force: bool = False,
                wait: Wait = False) -> dict[str, Any]:
        """Train a challenger on the training split plus feedback-labelled inputs and gate it.

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
        with self.lock.hold("retrain", wait=wait):
            self._prepare_writer()
            self._recover(progress)
            if self.spec.task == "recommendation":
                from .recommendation import core as rec

                return rec.retrain(self, progress=progress, promote=promote, force=force)
            return self._retrain(progress, promote, force)

    def _retrain(self, progress: Progress | None, promote: bool, force: bool) -> dict[str, Any]:
        champion = self.registry.champion()
        if champion is None:
            raise RegistryError(f"project {str(self.paths.root)!r}: no champion to retrain from; "
                                "expected a registered champion (run 'modelloop run DIR' first)")
        parent = self.registry.load(champion)
        pm = parent.manifest
        ds = Dataset.load(self.paths.data, pm["dataset"]["base_fingerprint"])
        fb = self.feedback_split(ds.class_names, ds)
        xf, yf, fb_all = fb["train"]
        xh, yh, hold_ids = fb["holdout"]
        rows = len(fb_all) + len(hold_ids)
        fb_fingerprint = _feedback_fingerprint(zip(fb_all + hold_ids, yf.tolist() + yh.tolist(), strict=True))
        reason = None if force else self.nothing_new(champion, fb_fingerprint, rows)
        if reason is not None:
            return self._skipped(champion, reason, rows, progress)
        try:
            monitoring = self.monitor()  # what the loop saw when it decided to retrain, for the report
        except Exception as e:  # monitoring is evidence, never a reason to fail a retrain
            log.warning("monitor before retraining failed: %s", e)
            monitoring = None
        # A slice of the training feedback joins the validation split, so early stopping picks an
        # epoch that suits the traffic being served now, not only the original data.
        in_val = torch.tensor([_is_holdout("validation:" + pid, 0.2) for pid in fb_all], dtype=torch.bool)
        fb_ids = [pid for pid, v in zip(fb_all, in_val.tolist(), strict=True) if not v]
        val_ids = [pid for pid, v in zip(fb_all, in_val.tolist(), strict=True) if v]
        self._say(progress, f"[retrain] champion {champion}; {len(fb_ids)} feedback examples to learn from, "
                  f"{len(val_ids)} to validate on, {len(hold_ids)} held out for the gate")

        xtr, ytr = ds.splits["train"]
        x_all = _cat(xtr, _take(xf, ~in_val))
        y_all = torch.cat([ytr, yf[~in_val]])
        config = pm["model"]
        feat = featurizer_from_config(config.get("featurizer", {"kind": "pixels"}))
        feat.set_cache(self.paths.state / "cache")
        feat.fit(x_all)
        train = (feat.transform(x_all), y_all)
        xva, yva = ds.splits["val"]
        xva = _cat(xva, _take(xf, in_val))
        yva = torch.cat([yva, yf[in_val]])
        val = (feat.transform(xva), yva) if len(yva) else train
        # The refit featurizer may be wider than the parent's (new words, new categories): the network
        # is trained from scratch anyway, on the shape the features have now.
        config = {**config, "input_shape": list(train[0].shape[1:])}
        if self.regression:
            config["target"] = self._target(y_all)
        h = hashlib.sha256(ds.fingerprint.encode())
        for pid in fb_ids:
            h.update(pid.encode())
        fingerprint = h.hexdigest()[:16]

        run_id, run_dir, state = self._new_run()
        state.update(kind="retrain", parent=champion, dataset=ds.fingerprint, feedback_examples=len(fb_ids),
                     feedback_validation=len(val_ids), feedback_holdout=len(hold_ids), promote=promote,
                     feedback_fingerprint=fb_fingerprint)
        self._save_state(run_dir, state)
        write_private(run_dir / "holdout_ids.json", json.dumps(hold_ids))
        write_private(run_dir / "validation_ids.json", json.dumps(val_ids))
        result, model = self._train(config, train, val, run_dir, resume=False,
                                    time_limit=self.spec.requirements.time_budget_s, progress=progress)

        # The champion is evaluated again, now, on the same images as the challenger.
        xte, yte = ds.splits["test"]
        champ_probs = parent.predict_proba(xte).numpy()
        if self.regression:
            champ_probs = champ_probs[:, 0]
        champ_metrics = self._metrics(yte, champ_probs, ds.class_names)
        gate_spec = self.spec.gate
        fb_evidence = None
        if len(hold_ids) and self.regression:
            fb_evidence = paired_errors(yh.numpy(), parent.predict_proba(xh).numpy()[:, 0],
                                        _outputs(model, feat, xh, True), gate_spec.confidence,
                                        outlier_scale=champ_metrics["rmse"])
        elif len(hold_ids):
            champ_h = parent.predict_proba(xh).numpy().argmax(1)
            chall_h = _proba(model, feat, xh).argmax(1)
            fb_evidence = paired_evidence(yh.numpy(), champ_h, chall_h, len(ds.class_names), gate_spec.confidence)

        def decide(chall_metrics, chall_pred, chall_gate):
            if self.regression:
                return compare_regression(self.spec.requirements, champ_metrics, chall_metrics, yte.numpy(),
                                          champ_probs, chall_pred, chall_gate, gate=gate_spec, feedback=fb_evidence)
            return compare(self.spec.requirements, champ_metrics, chall_metrics, yte.numpy(), champ_probs.argmax(1),
                           chall_pred, chall_gate, gate=gate_spec, class_names=ds.class_names, feedback=fb_evidence)

        out = self._finish(model=model, config=config, feat=feat, ds=ds, run_id=run_id, train_result=result,
                           parent=champion, feedback_examples=len(fb_ids), feedback_ids=fb_ids,
                           selection=None, fingerprint=fingerprint, progress=progress,
                           title="Retraining on feedback", decide=decide, feedback_holdout=len(hold_ids),
                           monitoring=monitoring, feedback_validation=len(val_ids),
                           manifest_extra={"feedback_fingerprint": fb_fingerprint})
        decision = out["decision"]
        state["registered"] = out["version"]
        self._save_state(run_dir, state)
        done = self._complete(run_dir, state, out["version"], progress)
        return {**out, "champion": done["champion"], "decision": decision["decision"], "evidence": decision,
                "feedback_holdout": len(hold_ids), "feedback_validation": len(val_ids),
                "champion_metrics": champ_metrics, "challenger_metrics": out["metrics"],
                "champion_version": self.registry.champion()}

    # -- after a registration, and after a crash -----------------------------------------------
    def nothing_new(self, champion: str, fingerprint: str, rows: int) -> str | None:
        """Why a retrain from ``champion`` would learn nothing new, or None.

        ``fingerprint`` identifies the usable labelled feedback now (:func:`_feedback_fingerprint`
        of its prediction ids and labels). Nothing is new when it equals that of the latest version
        trained from this lineage: the champion itself or its latest challenger (a rejected
        challenger, retrained on the same rows, would come out the same). Versions registered
        before fingerprints were recorded never count as "the same".
        """
        latest = self.registry.manifest(champion)
        for m in self.registry.versions():
            if m.get("parent") == champion and int(m["version"][1:]) > int(latest["version"][1:]):
                latest = m
        if latest.get("feedback_fingerprint") != fingerprint:
            return None
        used = f"{rows} labelled feedback rows, all already used" if rows else "no usable labelled feedback yet"
        return f"no new feedback since {latest['version']} was trained ({used})"

    def _skipped(self, champion: str, reason: str, rows: int, progress: Progress | None) -> dict[str, Any]:
        self._say(progress, f"[retrain] nothing to do: {reason}; --force retrains anyway")
        return {"version": None, "run_id": None, "parent": champion, "decision": "skipped", "reason": reason,
                "evidence": {"decision": "skipped", "reasons": [reason]}, "feedback_rows": rows,
                "feedback_examples": 0, "feedback_validation": 0, "feedback_holdout": 0, "champion": False,
                "champion_version": champion, "report": None, "metrics": None, "passed": None,
                "champion_metrics": None, "challenger_metrics": None}

    def _prepare_writer(self) -> None:
        """Under the writer lock: make the project's folders private, and remove what crashed
        writers left half-written (temporary version folders, reports of versions that never
        came to exist, temporary state files). Nothing here can belong to a live writer."""
        self.paths.make_private()
        self.registry.clean()
        reports = self.paths.reports
        for p in reports.iterdir():
            stale_tmp = p.name.startswith(".") and p.name.endswith(".tmp")
            orphan = (p.suffix == ".html" and p.stem.startswith("v") and p.stem[1:].isdigit()
                      and not (self.registry.path(p.stem) / "manifest.json").is_file())
            if stale_tmp or orphan:
                p.unlink(missing_ok=True)
        for p in self.paths.runs.glob("*/.*.tmp"):
            p.unlink(missing_ok=True)

    def _write_report(self, version: str, write: Callable[[Path], Any]) -> Path:
        """``reports/VERSION.html``, mode 0600, atomically: ``write(path)`` writes a temporary
        file, which is flushed to disk and renamed into place."""
        private_dir(self.paths.reports)
        final = self.paths.reports / f"{version}.html"
        tmp = self.paths.reports / f".{version}.html.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            write(tmp)
            os.chmod(tmp, PRIVATE_FILE)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def _registered_version(self, run_id: str, state: dict[str, Any]) -> str | None:
        """The version a run registered: the one its state names, else the one whose manifest
        names the run (a crash can fall between the registration and the state's update)."""
        v = state.get("registered")
        if v and (self.registry.path(v) / "manifest.json").is_file():
            return v
        return next((m["version"] for m in self.registry.versions() if m.get("run_id") == run_id), None)

    def _complete(self, run_dir: Path, state: dict[str, Any], version: str,
                  progress: Progress | None) -> dict[str, Any]:
        """The steps after a version is registered, each done once even when repeated after a
        crash: the registration and gate records, the promotion (a run's first version meeting
        the requirements; a retrain's challenger the gate passed, if its champion is still the
        champion) or the challenger alias, and the run's state "done". Returns the run's result."""
        m = self.registry.manifest(version)
        events = [e for e in self.registry.events() if e.get("version") == version]
        if not any(e.get("event") == "registered" for e in events):
            self.registry.record({"event": "registered", "version": version, "parent": m.get("parent"),
                                  "recovered": True})
        champion = self.registry.champion()
        passed = bool(m["requirements"]["passed"])
        if state.get("kind", "run") != "retrain":
            if passed and champion is None:
                self.registry.promote(version, reason="first version meeting the requirements")
            message = (f"[registry] registered {version}" + (" as champion" if self.registry.champion() == version
                                                               else "") + ("" if passed else " (requirements not met)"))
        else:
            decision = m.get("gate") or {}
            if not any(e.get("event") == "gate" for e in events):
                self.registry.record({"event": "gate", "version": version, "champion": m.get("parent"),
                                      "decision": decision.get("decision"), "reasons": decision.get("reasons", [])})
            if decision.get("decision") == "promoted":
                if not state.get("promote", True):
                    if self.registry.alias("challenger") != version:
                        self.registry.set_alias("challenger", version)
                elif champion == m.get("parent"):
                    self.registry.promote(version, reason="gate passed after retraining on feedback")
                elif champion != version:  # someone promoted or rolled back since: that decision stands
                    log.warning("%s passed the gate against %s, but the champion is now %s: not promoted",
                                version, m.get("parent"), champion)
                    self.registry.record({"event": "not_promoted", "version": version, "champion": champion,
                                          "reason": f"the champion moved from {m.get('parent')} to {champion}"})
            message = f"[gate] {version} {decision.get('decision')}: {'; '.join(decision.get('reasons', []))}"
        state.update(status="done", version=version)
        self._save_state(run_dir, state)
        self._say(progress, message)
        return {"version": version, "run_id": m.get("run_id"), "parent": m.get("parent"),
                "metrics": m["metrics"]["test"], "val_metrics": m["metrics"].get("val"), "latency": m.get("latency"),
                "size_mb": m.get("size_mb"), "gate": m["requirements"], "passed": passed,
                "champion": self.registry.champion() == version, "report": m.get("report"),
                "family": m["model"].get("candidate", m["model"].get("family")),
                "dataset": m["dataset"]["fingerprint"], "feedback_examples": m.get("feedback_examples", 0),
                "decision": m.get("gate"), "task": m.get("task")}

    def recover(self, progress: Progress | None = None, wait: Wait = False) -> list[str]:
        """What every writer does first, on its own: remove what crashed writers left
        half-written and finish versions they registered (see :meth:`_recover`). Returns
        :meth:`check`'s findings afterwards (empty: every promise kept).

        Raises:
            BusyError: another writer holds the project's lock.
        """
        with self.lock.hold("recover", wait=wait):
            self._prepare_writer()
            self._recover(progress)
            return self.check()

    def _recover(self, progress: Progress | None) -> None:
        """Finish what crashed writers left. Called under the writer lock, so every run still
        marked running belongs to a process that is gone: one that registered its version is
        finished (:meth:`_complete`); an interrupted retrain is marked so; an interrupted run
        stays resumable (``run --resume``)."""
        if not self.paths.runs.is_dir():
            return
        by_run: dict[str, str] | None = None
        for run_dir in sorted(self.paths.runs.iterdir()):
            f = run_dir / "state.json"
            try:
                state = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if state.get("status") != "running":
                continue
            if by_run is None:
                by_run = {}
                for m in self.registry.versions():
                    by_run.setdefault(m.get("run_id"), m["version"])
            version = state.get("registered")
            if not (version and (self.registry.path(version) / "manifest.json").is_file()):
                version = by_run.get(state.get("run_id"))
            if version is not None:
                self._say(progress, f"[registry] {version} of interrupted {state.get('kind', 'run')} "
                          f"{state.get('run_id')} was registered: finishing it")
                self._complete(run_dir, state, version, progress)
            elif state.get("kind") != "run" or not self.task.resumable:
                state["status"] = "interrupted"
                self._save_state(run_dir, state)

    def check(self, finished: bool = True) -> list[str]:
        """What breaks the registry's promises, as sentences (empty: all kept). The promises: every
        version is complete (manifest, weights, preprocessing) and has its report and its gate
        (requirements checked; a retrained version's decision); the champion and every alias
        point at such a version; no run registered two versions. With ``finished`` (and no writer
        at work), also: no registered version waits for its run to finish, as one does between a
        crash after its registration and the next writer (which finishes it)."""
        from .registry.artifact import PREPROCESSING, WEIGHTS

        problems: list[str] = []
        seen_runs: dict[str, str] = {}
        versions = self.registry.versions()
        complete = set()
        for m in versions:
            v = m["version"]
            folder = self.registry.path(v)
            missing = [n for n in ("manifest.json", WEIGHTS, PREPROCESSING) if not (folder / n).is_file()]
            if missing:
                problems.append(f"{v}: missing {', '.join(missing)}")
            report = self.paths.reports / f"{v}.html"
            if not m.get("report") or not report.is_file():
                problems.append(f"{v}: no report ({str(report)!r}, manifest {m.get('report')!r})")
            if "passed" not in (m.get("requirements") or {}):
                problems.append(f"{v}: no requirements check")
            if m.get("parent") and "decision" not in (m.get("gate") or {}):
                problems.append(f"{v}: retrained from {m['parent']} but no gate decision")
            run_id = m.get("run_id")
            if run_id in seen_runs:
                problems.append(f"{v}: run {run_id} already registered {seen_runs[run_id]}")
            seen_runs.setdefault(run_id, v)
            if not missing:
                complete.add(v)
        state = self.registry._read_state()
        for alias, v in state["aliases"].items():
            if v not in complete:
                problems.append(f"alias {alias} -> {v}: not a complete version")
        for v in state["champion_history"]:
            if v not in complete:
                problems.append(f"champion history names {v}: not a complete version")
        someone_else_writing = self.lock.holder() is not None and not self.lock.held_here()
        if finished and not someone_else_writing and self.paths.runs.is_dir():
            for f in self.paths.runs.glob("*/state.json"):
                try:
                    st = json.loads(f.read_text())
                except ValueError:
                    problems.append(f"{f}: unreadable")
                    continue
                if st.get("status") == "running" and st.get("run_id") in seen_runs:
                    problems.append(f"{seen_runs[st['run_id']]}: registered, but its {st.get('kind')} "
                                    f"{st['run_id']} never finished")
        return problems

    # -- registry ----------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        if self.spec.task == "recommendation":
            from .recommendation import core as rec

            return rec.models(self)
        rows = []
        for m in self.registry.versions():
            test = m["metrics"]["test"]
            rows.append({
                "version": m["version"], "aliases": m["aliases"],
                "family": m["model"].get("candidate", m["model"]["family"]),
                "accuracy": test.get("accuracy"), "f1_macro": test.get("f1_macro"), "parent": m.get("parent"),
                **({k: test.get(k) for k in ("rmse", "mae", "r2")} if "rmse" in test else {}),
                # the two test metrics tables show, named: accuracy and F1, or RMSE and R²
                "headline": ([["RMSE", test.get("rmse")], ["R²", test.get("r2")]] if "rmse" in test
                             else [["accuracy", test.get("accuracy")], ["F1 macro", test.get("f1_macro")]]),
                "dataset": m["dataset"]["fingerprint"], "feedback_examples": m.get("feedback_examples", 0),
                "created_at": m["created_at"], "requirements_passed": m["requirements"]["passed"],
                "gate": (m.get("gate") or {}).get("decision"), "gate_reasons": (m.get("gate") or {}).get("reasons"),
                "report": m.get("report"),
            })
        return rows

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
        return self.registry.load(v)


    # -- monitoring, shadow, lineage, policy -------------------------------------------------
    def monitor(self) -> dict[str, Any]:
        """Input drift, prediction drift and live accuracy of the champion, plus shadow results."""
        if self.spec.task == "recommendation":
            from .recommendation import core as rec

            return rec.monitor(self)
        from .feedback.drift import embed, mmd_test, psi

        champ = self.load_champion()
        ms = self.spec.monitor
        ds = Dataset.load(self.paths.data, champ.manifest["dataset"]["base_fingerprint"])
        xtr = ds.splits["train"][0]
        rng = np.random.default_rng(self.spec.seed)
        ref_idx = rng.choice(len(xtr), size=min(ms.reference_size, len(xtr)), replace=False)
        ref_mask = np.zeros(len(xtr), dtype=bool)
        ref_mask[ref_idx] = True
        x_ref = _take(xtr, ref_mask)
        items, served = self.store.recent_raw(limit=ms.window)
        x_live, usable = self.task.collate(items, champ)
        live_labels = [lab for lab, k in zip(served, usable, strict=True) if k]
        ref_emb = embed(champ.model, champ.features(x_ref))
        if len(x_live) >= 20:
            live_emb = embed(champ.model, champ.features(x_live))
            drift = mmd_test(ref_emb, live_emb, ms.permutations, ms.drift_p_value, seed=self.spec.seed)
        else:
            drift = {"detected": False, "statistic": None, "threshold": None, "p_value": None,
                     "n_reference": len(ref_emb), "n_live": len(x_live),
                     "reason": f"{len(x_live)} live inputs; at least 20 needed"}
        names = champ.class_names
        if self.regression:  # predicted values binned by the reference predictions' deciles
            ref_values = champ.predict_proba(x_ref).numpy()[:, 0]
            edges = np.unique(np.quantile(ref_values, np.linspace(0, 1, 11)[1:-1]))
            names = [f"decile {i + 1}" for i in range(len(edges) + 1)]

            def binned(values) -> list[str]:
                return [names[int(i)] for i in np.searchsorted(edges, np.asarray(values, dtype=float), side="right")]

            ref_pred = binned(ref_values)
            live_labels = binned([v for v in map(_as_number, live_labels) if v is not None])
        else:
            ref_pred = [names[i] for i in champ.predict_proba(x_ref).numpy().argmax(1)]
        value = psi(ref_pred, live_labels, names) if live_labels else None
        pred_drift = {"psi": value, "threshold": ms.psi_threshold,
                      "detected": value is not None and value > ms.psi_threshold,
                      "reference": {c: ref_pred.count(c) for c in names},
                      "live": {c: live_labels.count(c) for c in names}}
        stats = self.store.feedback_stats(self.spec.feedback.untrusted_clients, model_version=champ.version,
                                          class_names=None if self.regression else names)
        if self.regression:  # exact agreement means nothing for numbers: live errors instead
            stats.update(live_accuracy=None, low=None, high=None)
        since = max(champ.manifest["created_at"], self._watch_state().get("last_retrain_at", 0.0))
        rows = self.store.labelled(None if self.regression else names, self.spec.feedback.untrusted_clients)
        new = len(rows)
        new_since = sum(1 for r in rows if r["feedback_at"] > since)
        out = {
            "model_version": champ.version,
            "drift": drift,
            "prediction_drift": pred_drift,
            "live_accuracy": {"value": stats["live_accuracy"], "low": stats["low"], "high": stats["high"],
                              "n": stats["labelled"], "confidence": stats["confidence"]},
            "feedback": {"labelled": new, "new_since_last_training": new_since, **self.store.counts()},
            "live_error": self._live_error(champ.version) if self.regression else None,
            "clients": [{**c, "trusted": c["client"] not in self.spec.feedback.untrusted_clients}
                        for c in self.store.clients()],
        }
        shadow = self.registry.alias("shadow")
        if shadow:
            out["shadow"] = self.shadow_report(shadow)
        return out

    def _live_error(self, version: str) -> dict[str, Any]:
        """Regression: RMSE and MAE of the values served by ``version`` against the values fed back."""
        pairs = [(_as_number(r["predicted"]), _as_number(r["label"]))
                 for r in self.store.labelled(None, self.spec.feedback.untrusted_clients, model_version=version)]
        pairs = [(p, t) for p, t in pairs if p is not None and t is not None]
        if not pairs:
            return {"n": 0, "rmse": None, "mae": None}
        e = np.array([p - t for p, t in pairs])
        return {"n": len(e), "rmse": float(np.sqrt(np.mean(e ** 2))), "mae": float(np.mean(np.abs(e)))}

    def shadow(self, version: str | None) -> dict[str, Any]:
        """Put ``version`` in shadow mode (it scores live traffic next to the champion, silently),
        or stop shadowing with None."""
        if version is not None and version == self.registry.champion():
            raise InputError(f"model version {version!r}: is the champion; expected another version to shadow it")
        self.registry.set_alias("shadow", version, reason="shadow mode" if version else "shadow stopped")
        return {"shadow": version, "champion": self.registry.champion()}

    def shadow_report(self, version: str) -> dict[str, Any]:
        """Agreement of a shadow model with what was served, and both models' accuracy on feedback."""
        rows = self.store.shadow_rows(version)
        names = self.registry.manifest(version)["class_names"]
        labels = {r["id"]: r["label"] for r in self.store.labelled(names, self.spec.feedback.untrusted_clients)}
        agree = sum(r["shadow_label"] == r["served_label"] for r in rows)
        with_fb = [r for r in rows if r["prediction_id"] in labels]
        shadow_right = sum(r["shadow_label"] == labels[r["prediction_id"]] for r in with_fb)
        served_right = sum(r["served_label"] == labels[r["prediction_id"]] for r in with_fb)
        n = len(with_fb)
        return {"version": version, "scored": len(rows), "agreement": agree / len(rows) if rows else None,
                "with_feedback": n, "shadow_accuracy": shadow_right / n if n else None,
                "served_accuracy": served_right / n if n else None}

    def lineage(self, prediction_id: str | None = None, version: str | None = None) -> dict[str, Any]:
        """Walk prediction -> model version -> run -> dataset (+ feedback used) -> parent, and back:
        which later versions trained on this prediction's feedback, which versions descend from this one."""
        out: dict[str, Any] = {}
        if prediction_id is not None:
            pred = self.store.get_prediction(prediction_id)
            version = pred["model_version"]
            out.update(prediction_id=prediction_id, predicted=pred["label"], created_at=pred["created_at"],
                       input_hash=pred["input_hash"],
                       feedback=[{k: r[k] for k in ("id", "kind", "label", "value", "client", "created_at")}
                                 for r in self.store.feedback_history(prediction_id)])
        if version is None:
            raise RegistryError("lineage: expected --prediction ID or --version VERSION")
        m = self.registry.manifest(version)
        run_dir = self.paths.runs / m["run_id"]

        def ids(name: str) -> list[str]:
            f = run_dir / name
            return json.loads(f.read_text()) if f.is_file() else []

        chain, cur = [], m.get("parent")
        while cur:
            chain.append(cur)
            cur = self.registry.manifest(cur).get("parent")
        versions = self.registry.versions()
        out.update(model_version=version, run=m["run_id"], dataset_fingerprint=m["dataset"]["fingerprint"],
                   base_dataset=m["dataset"]["base_fingerprint"], data_source=m["dataset"]["source"],
                   feedback_ids=ids("feedback_ids.json"), feedback_validation_ids=ids("validation_ids.json"),
                   feedback_holdout_ids=ids("holdout_ids.json"),
                   parent=m.get("parent"), ancestors=chain,
                   children=[v["version"] for v in versions if v.get("parent") == version],
                   predictions_served=self.store.predictions_for(version), gate=(m.get("gate") or {}).get("decision"))
        if prediction_id is not None:
            trained_into = []
            for v in versions:
                f = self.paths.runs / v["run_id"] / "feedback_ids.json"
                if f.is_file() and prediction_id in json.loads(f.read_text()):
                    trained_into.append(v["version"])
            out["trained_into"] = trained_into
        return out

    def _watch_state(self) -> dict[str, Any]:
        f = self.paths.state / "watch.json"
        return json.loads(f.read_text()) if f.is_file() else {}

    def _rollback_check(self) -> dict[str, Any] | None:
        """Is the champion's live accuracy significantly below its predecessor's (regression: its
        live squared errors significantly above, by a one-sided Welch t-test)?"""
        from scipy.stats import norm as normal

        history = self.registry.champion_history()
        if len(history) < 2:
            return None
        cur, prev = history[-1], history[-2]
        if self.regression:
            return self._rollback_check_errors(cur, prev)
        names = self.registry.manifest(cur)["class_names"]
        untrusted = self.spec.feedback.untrusted_clients
        a = self.store.feedback_stats(untrusted, model_version=cur, class_names=names)
        b = self.store.feedback_stats(untrusted, model_version=prev, class_names=names)
        need = self.spec.policy.rollback_min_feedback
        out = {"champion": cur, "predecessor": prev, "champion_live": a["live_accuracy"], "champion_n": a["labelled"],
               "predecessor_live": b["live_accuracy"], "predecessor_n": b["labelled"], "p_value": None,
               "rollback": False}
        if a["labelled"] < need or b["labelled"] < need:
            return out
        p1, p2, n1, n2 = a["live_accuracy"], b["live_accuracy"], a["labelled"], b["labelled"]
        pooled = (a["agreed"] + b["agreed"]) / (n1 + n2)
        se = (pooled * (1 - pooled) * (1 / n1 + 1 / n2)) ** 0.5
        z = (p1 - p2) / se if se > 0 else 0.0
        out["p_value"] = float(normal.cdf(z))  # one-sided: champion worse than predecessor
        out["rollback"] = out["p_value"] < 1 - self.spec.gate.confidence
        return out

    def _rollback_check_errors(self, cur: str, prev: str) -> dict[str, Any]:
        from scipy.stats import ttest_ind

        def squared_errors(version: str) -> np.ndarray:
            rows = self.store.labelled(None, self.spec.feedback.untrusted_clients, model_version=version)
            pairs = [(_as_number(r["predicted"]), _as_number(r["label"])) for r in rows]
            return np.array([(p - t) ** 2 for p, t in pairs if p is not None and t is not None])

        a, b = squared_errors(cur), squared_errors(prev)
        out = {"champion": cur, "predecessor": prev, "measure": "live RMSE",
               "champion_live": float(np.sqrt(a.mean())) if len(a) else None, "champion_n": len(a),
               "predecessor_live": float(np.sqrt(b.mean())) if len(b) else None, "predecessor_n": len(b),
               "p_value": None, "rollback": False}
        need = self.spec.policy.rollback_min_feedback
        if len(a) < need or len(b) < need:
            return out
        out["p_value"] = float(ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
        out["rollback"] = out["p_value"] < 1 - self.spec.gate.confidence
        return out

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
        with self.lock.hold("watch", wait=wait):
            self._prepare_writer()
            self._recover(progress)
            return self._watch_once(progress, force)

    def _watch_once(self, progress: Progress | None, force: bool) -> dict[str, Any]:
        pol = self.spec.policy
        champion = self.registry.champion()
        if champion is None:
            raise RegistryError(f"project {str(self.paths.root)!r}: no champion to watch; "
                                "run 'modelloop run DIR' first")
        rb = self._rollback_check()
        if rb and rb["rollback"]:
            back = self.registry.rollback()
            self.registry.record({"event": "auto_rollback", **rb})
            self._say(progress, f"[watch] rolled back {rb['champion']} -> {back}: {rb.get('measure', 'live accuracy')} "
                      f"{rb['champion_live']:.4g} vs {rb['predecessor_live']:.4g} (p = {rb['p_value']:.3g})")
            return {"action": "rolled_back", "champion": back, "rollback": rb, "triggers": {}}
        mon = self.monitor()
        target = pol.live_accuracy_floor if pol.live_accuracy_floor is not None else self.spec.requirements.target
        new = mon["feedback"]["new_since_last_training"]
        live = mon["live_accuracy"]
        triggers = {
            "new_feedback": {"value": new, "threshold": pol.min_new_feedback, "fired": new >= pol.min_new_feedback},
            "drift": {"detected": mon["drift"]["detected"], "fired": pol.retrain_on_drift and mon["drift"]["detected"]
                      and new >= self.spec.gate.min_feedback_for_evidence},
            "live_accuracy": {"high": live["high"], "floor": target,
                              "fired": live["high"] is not None and live["high"] < target},
        }
        out: dict[str, Any] = {"action": "none", "champion": champion, "triggers": triggers, "rollback": rb,
                               "monitor": {"drift": mon["drift"], "live_accuracy": live}}
        fired = [k for k, t in triggers.items() if t["fired"]]
        if not fired:
            self._say(progress, f"[watch] nothing to do ({new} new labelled feedback, drift "
                      f"{'detected' if mon['drift']['detected'] else 'not detected'})")
            return out
        self._say(progress, f"[watch] retraining: {', '.join(fired)}")
        state = {**self._watch_state(), "last_retrain_at": time.time()}
        res = self.retrain(progress=progress, promote=pol.promote == "auto", force=force)
        if res["decision"] == "skipped":
            self._say(progress, f"[watch] not retrained: {res['reason']}")
            out.update(action="skipped", reason=res["reason"], fired=fired)
            return out
        write_private(self.paths.state / "watch.json", json.dumps(state))
        self.registry.record({"event": "watch", "fired": fired, "version": res["version"],
                              "decision": res["decision"]})
        out.update(action="retrained", version=res["version"], decision=res["decision"],
                   reasons=res["evidence"]["reasons"], champion=self.registry.champion(),
                   challenger=self.registry.alias("challenger"))
        return out
