"""The loop itself: run (data -> selection -> training -> evaluation -> gate -> registry),
retrain on feedback, promote and roll back.

``Loop`` works on a project folder holding ``modelloop.yaml``. It never prints; it logs, and
reports progress through an optional callback the CLI turns into a display.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .compress import ServingModule, choose_backend
from .data import Dataset, Normalizer, prepare_dataset
from .errors import RegistryError
from .evaluate import classification_metrics, measure_latency
from .evaluate.report import write_report
from .feedback import FeedbackStore, open_store
from .gate import check_requirements, compare
from .models import build_model, count_parameters
from .registry import LoadedModel, LocalRegistry
from .registry.artifact import library_versions
from .select import CandidateSearch
from .settings import ProjectPaths
from .spec import Spec, load_spec
from .train import TrainConfig, Trainer
from .train.trainer import describe

__all__ = ["Loop"]

log = logging.getLogger(__name__)
Progress = Callable[[str], None]

STAGES = ("data", "selection", "training", "evaluation", "report", "gate", "registry")


def _state_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


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
        self.registry = LocalRegistry(self.paths.registry)
        self._store: FeedbackStore | None = None

    @property
    def store(self) -> FeedbackStore:
        if self._store is None:
            self._store = open_store(self.paths.store_url)
        return self._store

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
        run_dir.mkdir(parents=True)
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
        tmp = run_dir / "state.json.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(run_dir / "state.json")

    def run(self, resume: bool = False, progress: Progress | None = None) -> dict[str, Any]:
        """Train, select, evaluate, gate and register a new version.

        With ``resume``, an interrupted run continues: same dataset snapshot, the finished part of
        the search kept, training from its last checkpoint.

        Returns a dict with ``version``, ``metrics`` (test split), ``champion`` (bool), ``passed``,
        ``gate``, ``report`` and more.
        """
        spec = self.spec
        t_start = time.perf_counter()
        found = self._unfinished_run() if resume else None
        if resume and found is None:
            self._say(progress, "nothing to resume: no interrupted run in this project, starting a new run")
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
            ds = prepare_dataset(spec.data, self.paths.root)
            ds.save(self.paths.data)
            state["dataset"] = ds.fingerprint
            self._save_state(run_dir, state)
        rep = ds.report
        self._say(progress, f"[data] {rep.kept} images kept, {len(rep.dropped)} dropped; split "
                  + ", ".join(f"{s} {sum(c.values())}" for s, c in rep.split_counts.items()))
        for d in rep.dropped[:20]:
            log.warning("dropped %s: %s", d["file"], d["reason"])

        # 2. preprocessing fit on the training split only
        (xtr, ytr), (xva, yva) = ds.splits["train"], ds.splits["val"]
        norm = Normalizer().fit(xtr)
        train, val = (norm.transform(xtr), ytr), (norm.transform(xva), yva)
        if len(yva) == 0:
            val = train  # too few images for a validation split: early stopping watches training data
            log.warning("no validation images (classes too small); early stopping uses the training split")
        base = {"input_shape": [ds.fmt.channels, ds.fmt.height, ds.fmt.width], "num_classes": len(ds.class_names)}

        # 3. technology selection
        if "selection" in state:
            selection = state["selection"]
            self._say(progress, f"[selection] resumed: {selection['best_family']}")
        else:
            sel = spec.selection
            self._say(progress, f"[selection] searching {', '.join(sel.candidates)} ({sel.trials} trials)")
            search = CandidateSearch(sel.candidates, sel.trials, sel.epochs_per_trial,
                                     timeout_s=max(1.0, budget * sel.share_of_budget - elapsed()),
                                     batch_size=spec.training.batch_size, shift=spec.data.augmentation.shift,
                                     seed=spec.seed)
            selection = search.run(train, val, base, storage_path=run_dir / "selection.db",
                                   progress=progress).to_dict()
            state["selection"] = selection
            state["elapsed_s"] = elapsed()
            self._save_state(run_dir, state)
            self._say(progress, f"[selection] chose {selection['best_family']} "
                      f"(val accuracy {selection['best_val_accuracy']:.4f})")

        # 4. final training with early stopping and checkpoints
        config = {**base, "family": selection["best_family"], "params": selection["best_params"]}
        result, model = self._train(config, train, val, run_dir, resume=found is not None,
                                     time_limit=max(5.0, budget - elapsed()), progress=progress)

        # 5. evaluation, 6. gate, 7. registry, 8. report
        out = self._finish(model=model, config=config, norm=norm, ds=ds, run_id=run_id, train_result=result,
                           parent=None, feedback_examples=0, feedback_ids=[], leaderboard=selection["leaderboard"],
                           fingerprint=ds.fingerprint, progress=progress, title="Training run")
        gate = out["gate"]
        if gate["passed"] and self.registry.champion() is None:
            self.registry.promote(out["version"], reason="first version meeting the requirements")
            out["champion"] = True
        state.update(status="done", version=out["version"], elapsed_s=elapsed())
        self._save_state(run_dir, state)
        self._say(progress, f"[registry] registered {out['version']}"
                  + (" as champion" if out["champion"] else "")
                  + ("" if gate["passed"] else " (requirements not met)"))
        return out

    def _train(self, config: dict[str, Any], train, val, run_dir: Path, resume: bool, time_limit: float,
               progress: Progress | None) -> tuple[Any, torch.nn.Module]:
        spec = self.spec
        params = config["params"]
        torch.manual_seed(spec.seed)
        model = build_model(config)
        trainer = Trainer(TrainConfig(
            max_epochs=spec.training.max_epochs, patience=spec.training.patience,
            batch_size=spec.training.batch_size, lr=params["lr"], weight_decay=params["weight_decay"],
            shift=spec.data.augmentation.shift, seed=spec.seed, time_limit_s=time_limit,
            checkpoint_path=run_dir / "checkpoint.pt"))
        self._say(progress, f"[training] {config['family']} on {len(train[1])} images, "
                  f"up to {spec.training.max_epochs} epochs")

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            if progress:
                progress(f"[training] epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
                         f"val accuracy {row['val_accuracy']:.4f}")

        result = trainer.fit(model, train, val, on_epoch=on_epoch, resume=resume)
        self._say(progress, f"[training] best epoch {result.best_epoch} of {len(result.history)} "
                  f"({result.stopped}), val accuracy {result.best_val_accuracy:.4f}")
        return result, model

    def _finish(self, *, model, config, norm: Normalizer, ds: Dataset, run_id: str, train_result, parent,
                feedback_examples: int, feedback_ids: list[str], leaderboard, fingerprint: str,
                progress: Progress | None, title: str, decide=None) -> dict[str, Any]:
        spec = self.spec
        xte, yte = ds.splits["test"]
        probs = torch.softmax(self._logits(model, norm.transform(xte)), 1).numpy()
        metrics = classification_metrics(yte.numpy(), probs, ds.class_names)
        xva, yva = ds.splits["val"]
        val_metrics = (classification_metrics(yva.numpy(), torch.softmax(self._logits(model, norm.transform(xva)),
                                                                          1).numpy(), ds.class_names)
                       if len(yva) else None)
        latency = measure_latency(model, norm.transform(xte[:1] if len(xte) else ds.splits["train"][0][:1]))
        size_mb = _state_bytes(model) / 1e6
        self._say(progress, f"[evaluation] test accuracy {metrics['accuracy']:.4f}, F1 macro "
                  f"{metrics['f1_macro']:.4f}, p95 latency {latency['p95_ms']:.2f} ms")
        gate = check_requirements(spec.requirements, metrics, latency, size_mb)
        decision = decide(metrics, probs.argmax(1), gate) if decide else None

        # Optimization for serving: export and time each backend, keep the fastest that agrees.
        xva_pixels = (xva if len(yva) else ds.splits["train"][0]).float().numpy()
        yva_labels = (yva if len(yva) else ds.splits["train"][1]).numpy()
        export_dir = self.paths.runs / run_id / "export"
        module = ServingModule(model, norm.mean_, norm.std_)
        serving = choose_backend(module, xva_pixels, yva_labels, export_dir,
                                 max_accuracy_drop=spec.serving.max_accuracy_drop,
                                 candidates=tuple(spec.serving.backends))
        self._say(progress, f"[optimization] serving backend {serving['backend']}: " + ", ".join(
            f"{r['backend']} {r['p50_ms_batch1']:.2f} ms" if r["ok"] else f"{r['backend']} rejected"
            for r in serving["candidates"]))
        extra = {p.name: p for p in export_dir.glob("*.onnx")}

        manifest = {
            "task": spec.task, "name": spec.name, "model": config, "parameters": count_parameters(model),
            "class_names": ds.class_names, "metrics": {"test": metrics, "val": val_metrics},
            "latency": latency, "size_mb": size_mb, "requirements": gate,
            "dataset": {"fingerprint": fingerprint, "base_fingerprint": ds.fingerprint, "source": spec.data.source,
                        "train_examples": int(len(ds.splits["train"][1])) + feedback_examples,
                        "test_examples": int(len(yte))},
            "run_id": run_id, "parent": parent, "feedback_examples": feedback_examples,
            "training": describe(train_result), "spec": spec.to_dict(), "libraries": library_versions(),
        }
        manifest["serving"] = serving
        if decision is not None:
            manifest["gate"] = decision
        preprocessing = {"format": ds.fmt.to_dict(), "normalizer": norm.state_dict(),
                         "class_names": ds.class_names, "pixel_range": [0, 255]}
        version = self.registry.register(manifest, model, preprocessing, extra_files=extra)
        if feedback_ids:
            (self.paths.runs / run_id / "feedback_ids.json").write_text(json.dumps(feedback_ids))
        report = write_report(self.paths.reports / f"{version}.html", {
            "title": f"{title}: {spec.name} {version}", "version": version, "family": config["family"],
            "fingerprint": fingerprint, "parent": parent, "class_names": ds.class_names, "metrics": metrics,
            "gate": gate, "history": train_result.history, "leaderboard": leaderboard, "latency": latency,
            "size_mb": size_mb, "data_report": ds.report.to_dict(), "decision": decision,
            "feedback_examples": feedback_examples, "serving": serving,
        })
        self.registry.update_manifest(version, report=str(report))
        return {"version": version, "run_id": run_id, "parent": parent, "metrics": metrics,
                "val_metrics": val_metrics, "latency": latency, "size_mb": size_mb, "gate": gate,
                "passed": gate["passed"], "champion": False, "report": str(report), "family": config["family"],
                "dataset": fingerprint, "feedback_examples": feedback_examples, "decision": decision}

    @staticmethod
    def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        from .models import batched_logits

        return batched_logits(model, x)

    # -- retrain -----------------------------------------------------------------------------
    def retrain(self, progress: Progress | None = None) -> dict[str, Any]:
        """Train a challenger on the training split plus feedback-labelled inputs and gate it.

        The champion and the challenger are evaluated on the same frozen test split; the
        challenger is promoted only if it meets the requirements and is not worse. The decision
        and its evidence are stored in the registry either way.
        """
        champion = self.registry.champion()
        if champion is None:
            raise RegistryError(f"project {str(self.paths.root)!r}: no champion to retrain from; "
                                "expected a registered champion (run 'modelloop run DIR' first)")
        parent = self.registry.load(champion)
        pm = parent.manifest
        ds = Dataset.load(self.paths.data, pm["dataset"]["base_fingerprint"])
        fmt = ds.fmt
        xf, labels, ids = self.store.labelled_examples((fmt.channels, fmt.height, fmt.width))
        index = {c: i for i, c in enumerate(ds.class_names)}
        keep = [i for i, lab in enumerate(labels) if lab in index]
        if len(keep) < len(labels):
            log.warning("skipped %d feedback rows whose label is not a class of this model", len(labels) - len(keep))
        xf = torch.from_numpy(xf[keep])
        yf = torch.tensor([index[labels[i]] for i in keep], dtype=torch.int64)
        fb_ids = [ids[i] for i in keep]
        self._say(progress, f"[retrain] champion {champion}; {len(fb_ids)} feedback examples to learn from")

        xtr, ytr = ds.splits["train"]
        x_all = torch.cat([xtr.float(), xf.float()])
        y_all = torch.cat([ytr, yf])
        norm = Normalizer().fit(x_all)
        train = (norm.transform(x_all), y_all)
        xva, yva = ds.splits["val"]
        val = (norm.transform(xva), yva) if len(yva) else train
        h = hashlib.sha256(ds.fingerprint.encode())
        for pid in fb_ids:
            h.update(pid.encode())
        fingerprint = h.hexdigest()[:16]

        run_id, run_dir, state = self._new_run()
        state.update(kind="retrain", parent=champion, dataset=ds.fingerprint, feedback_examples=len(fb_ids))
        self._save_state(run_dir, state)
        config = pm["model"]
        result, model = self._train(config, train, val, run_dir, resume=False,
                                    time_limit=self.spec.requirements.time_budget_s, progress=progress)

        # The champion is evaluated again, now, on the same test images as the challenger.
        xte, yte = ds.splits["test"]
        champ_probs = parent.predict_proba(xte).numpy()
        champ_metrics = classification_metrics(yte.numpy(), champ_probs, ds.class_names)

        def decide(chall_metrics, chall_pred, chall_gate):
            return compare(self.spec.requirements, champ_metrics, chall_metrics, yte.numpy(),
                           champ_probs.argmax(1), chall_pred, chall_gate)

        out = self._finish(model=model, config=config, norm=norm, ds=ds, run_id=run_id, train_result=result,
                           parent=champion, feedback_examples=len(fb_ids), feedback_ids=fb_ids,
                           leaderboard=None, fingerprint=fingerprint, progress=progress,
                           title="Retraining on feedback", decide=decide)
        decision = out["decision"]
        version = out["version"]
        self.registry.record({"event": "gate", "version": version, "champion": champion, **decision})
        if decision["decision"] == "promoted":
            self.registry.promote(version, reason="gate passed after retraining on feedback")
            out["champion"] = True
        state.update(status="done", version=version)
        self._save_state(run_dir, state)
        self._say(progress, f"[gate] {version} {decision['decision']}: {'; '.join(decision['reasons'])}")
        return {**out, "decision": decision["decision"], "evidence": decision,
                "champion_metrics": champ_metrics, "challenger_metrics": out["metrics"],
                "champion_version": self.registry.champion()}

    # -- registry ----------------------------------------------------------------------------
    def models(self) -> list[dict[str, Any]]:
        rows = []
        for m in self.registry.versions():
            test = m["metrics"]["test"]
            rows.append({
                "version": m["version"], "aliases": m["aliases"], "family": m["model"]["family"],
                "accuracy": test["accuracy"], "f1_macro": test["f1_macro"], "parent": m.get("parent"),
                "dataset": m["dataset"]["fingerprint"], "feedback_examples": m.get("feedback_examples", 0),
                "created_at": m["created_at"], "requirements_passed": m["requirements"]["passed"],
                "gate": (m.get("gate") or {}).get("decision"), "report": m.get("report"),
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

