"""The stages of a supervised task: inputs with a label (a class, or a number) per example.

Image, text, audio and tabular classification and tabular regression share these stages; each
says only what differs (how its data loads, which candidates compete, how a request becomes
inputs). The data is a :class:`~modelloop.data.Dataset` of raw inputs and labels split into
train, validation and test; every candidate is a featurizer (fit on the training split only)
plus a network or a model that fits itself; the loop's gate compares a challenger with the
champion on the same frozen test split and on held-out feedback.

Regression (``problem == "regression"``) predicts one number per input, scored by R² where
classification is scored by accuracy; its feedback labels are numbers and its gate compares
squared errors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from typing import Any

import numpy as np
import torch

from ..data import Dataset
from ..evaluate import classification_metrics, regression_metrics
from ..feedback.sampling import feedback_fingerprint, is_holdout, trained_fingerprint
from ..models import batched_logits, count_parameters
from ..registry.artifact import library_versions
from .base import Task
from .features import featurizer_from_config
from .stages import Context, FeedbackSet, Fitted, NewVersion

__all__ = ["SupervisedTask", "as_number", "take", "concat"]

log = logging.getLogger(__name__)


def as_number(label: Any) -> float | None:
    """A fed-back label as a finite number, or None."""
    try:
        f = float(label)
    except (TypeError, ValueError):
        return None
    return f if np.isfinite(f) else None


def take(x: Any, mask: torch.Tensor | np.ndarray) -> Any:
    """Rows of a raw batch (tensor, or list of texts or rows) where ``mask`` is true."""
    m = torch.as_tensor(np.asarray(mask, dtype=bool))
    if isinstance(x, list):
        return [v for v, k in zip(x, m.tolist(), strict=True) if k]
    return x[m]


def concat(a: Any, b: Any) -> Any:
    return a + b if isinstance(a, list) else torch.cat([a.float(), b.float()])


def _content_keys(x: Any) -> list[str]:
    """One key per input of a raw batch (tensor rows, texts or table rows) that is equal exactly
    when the inputs are: a hash of a row's float32 values, or of its text."""
    if isinstance(x, list):
        return [hashlib.sha256(json.dumps(v, sort_keys=True, default=str).encode()).hexdigest() for v in x]
    rows = np.ascontiguousarray(torch.as_tensor(x).float().numpy().reshape(len(x), -1))
    return [hashlib.sha256(r.tobytes()).hexdigest() for r in rows]


def _proba(model: torch.nn.Module, feat, x: Any) -> np.ndarray:
    """Class probabilities of raw inputs through featurizer and model."""
    return torch.softmax(batched_logits(model, feat.transform(x)), 1).numpy()


class SupervisedTask(Task):
    """Stages shared by the tasks whose examples are (input, label) pairs."""

    #: what one input is called in progress lines ("images", "texts", ...)
    unit = "examples"

    # -- what a score is ---------------------------------------------------------------------
    @property
    def regression(self) -> bool:
        return self.problem == "regression"

    @property
    def score_name(self) -> str:
        return "val R²" if self.regression else "val accuracy"

    def outputs(self, model: torch.nn.Module, feat, x: Any) -> np.ndarray:
        """Raw inputs -> class probabilities (N, K), or predicted values (N,) for regression."""
        if self.regression:
            return batched_logits(model, feat.transform(x))[:, 0].float().numpy()
        return _proba(model, feat, x)

    def measure(self, y: torch.Tensor, out: np.ndarray, class_names: list[str]) -> dict[str, Any]:
        """Test-style metrics of model outputs (probabilities, or values for regression)."""
        if self.regression:
            return regression_metrics(y.numpy(), out)
        return classification_metrics(y.numpy(), out, class_names)

    def target(self, y: torch.Tensor) -> dict[str, float] | None:
        """Regression: the training targets' mean and spread, which the networks' outputs are scaled by."""
        if not self.regression:
            return None
        return {"mean": float(y.double().mean()), "std": float(y.double().std()) if len(y) > 1 else 1.0}

    def answers(self, model, probs: np.ndarray) -> list[dict[str, Any]]:
        """Model outputs -> one answer per input: ``label`` and ``scores`` per class, or (regression)
        ``value`` and its ``label`` as the feedback store keeps it (6 significant digits)."""
        if self.regression:
            return [{"value": float(p[0]), "label": f"{float(p[0]):.6g}", "model_version": model.version}
                    for p in probs]
        return [{"label": model.class_names[int(p.argmax())],
                 "scores": dict(zip(model.class_names, map(float, p), strict=True)),
                 "model_version": model.version} for p in probs]

    def headline(self, metrics: dict[str, Any]) -> str:
        if self.regression:
            return f"RMSE {metrics['rmse']:.4g}, MAE {metrics['mae']:.4g}, R² {metrics['r2']:.4f}"
        return f"accuracy {metrics['accuracy']:.4f}, F1 macro {metrics['f1_macro']:.4f}"

    # -- run: data, selection, training --------------------------------------------------------
    def load(self, ctx: Context, run) -> Dataset:
        if "dataset" in run.state:
            ds = Dataset.load(ctx.paths.data, run.state["dataset"])
            ctx.say(f"[data] resumed dataset snapshot {ds.fingerprint}")
        else:
            ctx.say(f"[data] loading and validating {ctx.spec.data.source}")
            ds = self.prepare(ctx.spec.data, ctx.paths.root)
            ds.save(ctx.paths.data)
            run.save(dataset=ds.fingerprint)
        rep = ds.report
        ctx.say(f"[data] {rep.kept} {self.unit} kept, {len(rep.dropped)} dropped; split "
                + ", ".join(f"{s} {sum(c.values())}" for s, c in rep.split_counts.items()))
        for d in rep.dropped[:20]:
            log.warning("dropped %s: %s", d["file"], d["reason"])
        if len(ds.splits["val"][1]) == 0:
            log.warning("no validation examples (classes too small); early stopping uses the training split")
        return ds

    def reload(self, ctx: Context, fingerprint: str) -> Dataset:
        return Dataset.load(ctx.paths.data, fingerprint)

    def select(self, ctx: Context, data: Dataset, run, time_left: float) -> tuple[dict[str, Any], Any]:
        from ..select.candidates import search_candidates

        spec = ctx.spec
        if "chosen" in run.state.get("selection", {}):
            selection = run.state["selection"]
            ctx.say(f"[selection] resumed: {selection['chosen']}")
            return selection, None
        (xtr, ytr), (xva, yva) = data.splits["train"], data.splits["val"]
        sel = spec.selection
        cands, excluded = self.choose_candidates(spec, data)
        for name, why in excluded.items():
            log.info("candidate %s: %s", name, why)
        ctx.say(f"[selection] candidates {', '.join(c.name for c in cands)} ({sel.trials} trials, rule: {sel.choose})")
        selection, fitted = search_candidates(cands, (xtr, ytr), (xva, yva), len(data.class_names), spec,
                                              timeout_s=time_left, run_dir=run.folder,
                                              cache_dir=ctx.paths.state / "cache", progress=ctx.progress,
                                              target=self.target(ytr), backend=ctx.backend, task=self)
        selection["excluded"] = excluded
        if selection["warning"]:
            log.warning("%s", selection["warning"])
        ctx.say(f"[selection] chose {selection['chosen']} ({self.score_name} {selection['best_val_accuracy']:.4f}; "
                + next(r["decision"] for r in selection["leaderboard"] if r["candidate"] == selection["chosen"])
                + ")")
        return selection, fitted

    def fit(self, ctx: Context, data: Dataset, selection: dict[str, Any], fitted: Any, run, resume: bool,
            time_left) -> Fitted:
        from ..select.candidates import prepare_features

        spec = ctx.spec
        (xtr, ytr), (xva, _) = data.splits["train"], data.splits["val"]
        cand = self.candidates[selection["chosen"]]
        feat, ftr, fva = fitted or prepare_features(cand, xtr, xva, ctx.paths.state / "cache")
        train = (ftr, ytr)
        val = (fva, data.splits["val"][1]) if fva is not None else train
        config = {"family": cand.family, "input_shape": list(ftr.shape[1:]), "num_classes": len(data.class_names),
                  "params": selection["best_params"], "featurizer": dict(cand.featurizer), "candidate": cand.name}
        if self.regression:
            config["target"] = self.target(ytr)
        result, model = self.train(ctx, config, train, val, run.folder, resume=resume, time_limit=time_left())
        if cand.pretrained and spec.selection.distill:
            student = self._distill(ctx, selection, cand, feat, model, result.best_val_score, data, run.folder,
                                    time_left())
            if student is not None:
                cand, feat, model, result, config = student
        return Fitted(model, config, result, {"featurizer": feat})

    def train(self, ctx: Context, config: dict[str, Any], train, val, run_dir, resume: bool, time_limit: float,
              unlabelled=None):
        """One candidate's final fit through the backend (gradient steps with early stopping and
        checkpoints, or the model's own algorithm) -> (how the fit went, the fitted model).
        ``unlabelled``: a ``train.Unlabelled`` the network also learns from (consistency training)."""
        from ..backends import FitJob
        from ..train import TrainConfig

        spec, say, progress = ctx.spec, ctx.say, ctx.progress
        name = config.get("candidate", config["family"])
        pixels = config.get("featurizer", {"kind": "pixels"})["kind"] == "pixels"

        def on_start(model: torch.nn.Module, method: str) -> None:
            if method == "trainer":
                say(f"[training] {name} on {len(train[1])} examples, up to {spec.training.max_epochs} epochs")

        def on_epoch(epoch: int, row: dict[str, float]) -> None:
            if progress:
                progress(f"[training] epoch {row['epoch']}: train loss {row['train_loss']:.4f}, "
                         f"{self.score_name} {row['val_accuracy']:.4f}")

        fit = ctx.backend.fit(FitJob(
            config, train, val,
            training=TrainConfig(max_epochs=spec.training.max_epochs, patience=spec.training.patience,
                                 batch_size=spec.training.batch_size,
                                 shift=spec.data.augmentation.shift if pixels else 0),
            seed=spec.seed, time_limit_s=time_limit, checkpoint_path=run_dir / "checkpoint.pt", resume=resume,
            task=self, on_start=on_start, on_epoch=on_epoch, unlabelled=unlabelled))
        result = fit.result
        if fit.method == "itself":
            say(f"[training] {name} fitted on {len(train[1])} examples, {self.score_name} {result.best_val_score:.4f}")
        else:
            say(f"[training] best epoch {result.best_epoch} of {len(result.history)} "
                f"({result.stopped}), {self.score_name} {result.best_val_score:.4f}")
        return result, fit.model

    def _distill(self, ctx: Context, selection: dict[str, Any], teacher_cand, teacher_feat, teacher,
                 teacher_val: float, ds: Dataset, run_dir, time_limit: float):
        """Knowledge distillation: the best small candidate learns the pretrained winner's soft
        predictions. The student competes with its teacher under the same rule (``choose``); the
        leaderboard gets its row either way. Returns (candidate, featurizer, model, result, config)
        of a student that wins, else None.
        """
        from ..compress.distill import soft_targets
        from ..select.candidates import choose, model_bytes, prepare_features, serving_latency

        board = selection["leaderboard"]
        small = [r for r in board if not r["pretrained"]]
        if not small:
            return None
        base = max(small, key=lambda r: r["val_accuracy"] or 0.0)
        scand = self.candidates[base["candidate"]]
        (xtr, ytr), (xva, yva) = ds.splits["train"], ds.splits["val"]
        teacher_probs = torch.from_numpy(_proba(teacher, teacher_feat, xtr))
        targets = soft_targets(teacher_probs, ytr, temperature=2.0, alpha=0.5)
        sfeat, str_, sva = prepare_features(scand, xtr, xva, ctx.paths.state / "cache")
        config = {"family": scand.family, "input_shape": list(str_.shape[1:]), "num_classes": len(ds.class_names),
                  "params": base["params"], "featurizer": dict(scand.featurizer), "candidate": scand.name,
                  "distilled_from": teacher_cand.name}
        ctx.say(f"[distillation] {scand.name} learns from {teacher_cand.name}'s soft predictions")
        (run_dir / "distill").mkdir(exist_ok=True)
        result, model = self.train(ctx, config, (str_, targets), (sva, yva) if sva is not None else (str_, ytr),
                                   run_dir / "distill", resume=False, time_limit=time_limit)
        lat = serving_latency(sfeat, model, (xva if len(yva) else xtr)[:1], threads=ctx.spec.serving.threads)
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
        winner, _ = choose(pair, ctx.spec, self.score_name)
        board.append(pair[1])
        for r in board:  # the decision between teacher and student replaces the teacher's
            if r["candidate"] == teacher_cand.name:
                r.update(decision=pair[0]["decision"] if winner is pair[0] else
                         f"distilled into {scand.name}, which ships: {pair[1]['decision'].removeprefix('chosen: ')}")
        ships = "student" if winner is pair[1] else "teacher"
        ctx.say(f"[distillation] student val accuracy {row['val_accuracy']:.4f} "
                f"(teacher {teacher_row['val_accuracy']:.4f}), p95 {row['p95_ms']:.2f} ms "
                f"(teacher {teacher_row['p95_ms']:.2f} ms): the {ships} ships")
        selection["shipped"] = row["candidate"] if ships == "student" else teacher_cand.name
        return (scand, sfeat, model, result, config) if ships == "student" else None

    def baseline(self, ctx: Context, data: Dataset, y: torch.Tensor, out: np.ndarray) -> dict[str, Any]:
        """The trivial baseline on the test split, paired with the model (what a requirement without
        a target asks to beat): the training split's majority class, or the mean of its targets."""
        from ..gate import beats_baseline

        ytr = data.splits["train"][1]
        confidence, metric = ctx.spec.gate.confidence, ctx.spec.requirements.metric
        if self.regression:
            mean = float(ytr.double().mean())
            yv = y.numpy().astype(np.float64)
            base = regression_metrics(yv, np.full(len(yv), mean))
            return beats_baseline(-(np.asarray(out, dtype=np.float64) - yv) ** 2, -(mean - yv) ** 2, confidence,
                                  name=f"mean of the training targets ({mean:.4g})", baseline_value=base.get(metric),
                                  binary=False)
        k = len(data.class_names)
        majority = int(torch.bincount(ytr.long(), minlength=k).argmax())
        yv = y.numpy()
        probs = np.zeros((len(yv), k))
        probs[:, majority] = 1.0
        base = classification_metrics(yv, probs, data.class_names)
        return beats_baseline(out.argmax(1) == yv, yv == majority, confidence,
                              name=f"majority class ({data.class_names[majority]!r})",
                              baseline_value=base.get(metric), binary=True)

    # -- retrain: feedback -> training data ----------------------------------------------------
    def feedback_split(self, ctx: Context, class_names: list[str], like) -> dict[str, Any]:
        """Trusted labelled feedback, split by prediction id into a training part and a hold-out part.

        ``like`` (a dataset or model) decides which stored inputs are usable (an image model takes
        images of its format). The split is a pure function of the prediction id (a hash), so an
        example never moves between the two as more feedback arrives. Returns raw inputs.
        """
        fs = ctx.spec.feedback
        items, labels, ids = ctx.store().labelled_inputs(class_names, exclude_clients=fs.untrusted_clients)
        x, usable = self.collate(items, like)
        labels = [lab for lab, k in zip(labels, usable, strict=True) if k]
        ids = [i for i, k in zip(ids, usable, strict=True) if k]
        if not all(usable):
            log.warning("skipped %d feedback rows whose input this model cannot take", usable.count(False))
        if self.regression:  # a label is the true value, as a number
            values = [as_number(lab) for lab in labels]
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
        hold = np.array([is_holdout(pid, fs.holdout_fraction) for pid in ids], dtype=bool)
        ids_arr = np.array(ids, dtype=object)
        out = {}
        for name, mask in (("train", keep & ~hold), ("holdout", keep & hold)):
            out[name] = (take(x, mask), y[torch.from_numpy(mask)], list(ids_arr[mask]) if len(ids) else [])
        return out

    def feedback(self, ctx: Context, parent, data: Dataset) -> FeedbackSet:
        fb = self.feedback_split(ctx, data.class_names, data)
        xf, yf, fb_all = fb["train"]
        xh, yh, hold_ids = fb["holdout"]
        fingerprint = feedback_fingerprint(zip(fb_all + hold_ids, yf.tolist() + yh.tolist(), strict=True))
        # A slice of the training feedback joins the validation split, so early stopping picks an
        # epoch that suits the traffic being served now, not only the original data.
        in_val = torch.tensor([is_holdout("validation:" + pid, 0.2) for pid in fb_all], dtype=torch.bool)
        train_ids = [pid for pid, v in zip(fb_all, in_val.tolist(), strict=True) if not v]
        val_ids = [pid for pid, v in zip(fb_all, in_val.tolist(), strict=True) if v]
        return FeedbackSet(fingerprint, len(fb_all) + len(hold_ids), train_ids, val_ids, list(hold_ids),
                           {"x": xf, "y": yf, "in_val": in_val, "xh": xh, "yh": yh})

    def add_unlabelled(self, ctx: Context, data: Dataset, fb: FeedbackSet) -> None:
        """Served inputs nobody gave feedback on, as unlabelled training inputs of the challenger:
        ``fb.data["xu"]`` (raw inputs) and ``fb.unlabelled_ids``.

        Left out (see ``feedback.unlabelled``): predictions with feedback of any kind or client,
        and inputs seen with feedback; here also inputs this model cannot take, and any input
        equal to one of the validation split, the test split or the labelled feedback (training,
        validation and hold-out alike), so a pseudo-label never reaches what validates or judges
        the challenger, and nothing counts twice.
        """
        from ..feedback.unlabelled import unlabelled_inputs

        items, ids = unlabelled_inputs(ctx.store(), limit=ctx.spec.feedback.max_unlabelled)
        x, usable = self.collate(items, data)
        ids = [i for i, k in zip(ids, usable, strict=True) if k]
        known = set()
        for part in (data.splits["val"][0], data.splits["test"][0], fb.data["x"], fb.data["xh"]):
            known.update(_content_keys(part))
        keep = np.array([k not in known for k in _content_keys(x)], dtype=bool)
        fb.data["xu"] = take(x, keep)
        fb.unlabelled_ids = [i for i, k in zip(ids, keep.tolist(), strict=True) if k]
        fb.data["unlabelled_left_out"] = {"unusable": usable.count(False), "equal_to_evaluated_or_labelled":
                                          int((~keep).sum())}
        ctx.say(f"[retrain] {len(fb.unlabelled_ids)} served inputs without feedback to learn from by pseudo-label "
                f"({usable.count(False)} unusable, {int((~keep).sum())} equal to a validation, test or labelled "
                "input left out)")

    def _semi_record(self, ctx: Context, fb: FeedbackSet, summary: dict[str, Any] | None,
                     class_names: list[str]) -> dict[str, Any]:
        """What the manifest and report say of the unlabelled inputs a challenger learned from."""
        fs = ctx.spec.feedback
        record: dict[str, Any] = {"mode": fs.semi_supervised, "used": summary is not None}
        if summary is None:
            if not self.uses_unlabelled(ctx.spec):
                record["reason"] = (f"feedback.semi_supervised is {fs.semi_supervised}" if fs.semi_supervised == "off"
                                    else f"{self.name} does not learn from unlabelled inputs by default")
            else:
                record["reason"] = "no usable served inputs without feedback"
            return record
        counts = summary.pop("pseudo_label_counts")
        return {**record, "unlabelled_examples": summary["examples"], "threshold": summary["threshold"],
                "passed": summary["passed"], "ratio": fs.unlabelled_ratio,
                "pseudo_labels": dict(zip(class_names, counts, strict=False)),
                "views": self.consistency_views(ctx.spec).describe(),
                "left_out": fb.data.get("unlabelled_left_out")}

    def fit_challenger(self, ctx: Context, parent, data: Dataset, fb: FeedbackSet, run) -> Fitted:
        ctx.say(f"[retrain] champion {parent.version}; {len(fb.train_ids)} feedback examples to learn from, "
                f"{len(fb.val_ids)} to validate on, {len(fb.hold_ids)} held out for the gate")
        xf, yf, in_val = fb.data["x"], fb.data["y"], fb.data["in_val"]
        xtr, ytr = data.splits["train"]
        x_all = concat(xtr, take(xf, ~in_val))
        y_all = torch.cat([ytr, yf[~in_val]])
        config = parent.manifest["model"]
        feat = featurizer_from_config(config.get("featurizer", {"kind": "pixels"}))
        feat.set_cache(ctx.paths.state / "cache")
        feat.fit(x_all)
        train = (feat.transform(x_all), y_all)
        xva, yva = data.splits["val"]
        xva = concat(xva, take(xf, in_val))
        yva = torch.cat([yva, yf[in_val]])
        val = (feat.transform(xva), yva) if len(yva) else train
        # The refit featurizer may be wider than the parent's (new words, new categories): the network
        # is trained from scratch anyway, on the shape the features have now.
        config = {**config, "input_shape": list(train[0].shape[1:])}
        if self.regression:
            config["target"] = self.target(y_all)
        unlabelled = None
        xu = fb.data.get("xu")
        if xu is not None and len(xu):
            from ..train.trainer import Unlabelled

            fs = ctx.spec.feedback
            # The featurizer stays fit on labelled training inputs only; the unlabelled ones only pass through it.
            unlabelled = Unlabelled(feat.transform(xu), self.consistency_views(ctx.spec),
                                    threshold=fs.pseudo_label_threshold, ratio=fs.unlabelled_ratio)
            ctx.say(f"[retrain] consistency training on {len(xu)} unlabelled {self.unit}: pseudo-labels at "
                    f"confidence >= {fs.pseudo_label_threshold:g}, {fs.unlabelled_ratio} per labelled example")
        result, model = self.train(ctx, config, train, val, run.folder, resume=False,
                                   time_limit=ctx.spec.requirements.time_budget_s, unlabelled=unlabelled)
        semi = self._semi_record(ctx, fb, dict(result.unlabelled) if result.unlabelled else None, data.class_names)
        if semi["used"]:
            ctx.say(f"[retrain] {semi['passed']} of {semi['unlabelled_examples']} unlabelled {self.unit} pass the "
                    f"threshold {semi['threshold']:g} at the best epoch")
        return Fitted(model, config, result, {"featurizer": feat, "semi_supervised": semi})

    def dataset_fingerprint(self, data: Dataset, fb: FeedbackSet | None) -> str:
        """The fingerprint of what a version learned from: the dataset, plus the feedback it trained on."""
        if fb is None:
            return data.fingerprint
        return trained_fingerprint(data.fingerprint, fb.train_ids + [f"unlabelled:{i}" for i in fb.unlabelled_ids])

    def judge(self, ctx: Context, parent, data: Dataset, fb: FeedbackSet, fitted: Fitted):
        """The champion re-evaluated now on the challenger's test split, and the function that
        decides between them: ``decide(challenger_metrics, challenger_outputs, requirements)``."""
        from ..gate import compare, compare_regression, paired_errors, paired_evidence

        xte, yte = data.splits["test"]
        champ_probs = parent.predict_proba(xte).numpy()
        if self.regression:
            champ_probs = champ_probs[:, 0]
        champ_metrics = self.measure(yte, champ_probs, data.class_names)
        gate_spec = ctx.spec.gate
        xh, yh = fb.data["xh"], fb.data["yh"]
        feat, model = fitted.extra["featurizer"], fitted.model
        fb_evidence = None
        if len(fb.hold_ids) and self.regression:
            fb_evidence = paired_errors(yh.numpy(), parent.predict_proba(xh).numpy()[:, 0],
                                        self.outputs(model, feat, xh), gate_spec.confidence,
                                        outlier_scale=champ_metrics["rmse"])
        elif len(fb.hold_ids):
            champ_h = parent.predict_proba(xh).numpy().argmax(1)
            chall_h = _proba(model, feat, xh).argmax(1)
            fb_evidence = paired_evidence(yh.numpy(), champ_h, chall_h, len(data.class_names), gate_spec.confidence)
        req = ctx.spec.requirements

        def decide(chall_metrics, chall_pred, chall_gate):
            if self.regression:
                return compare_regression(req, champ_metrics, chall_metrics, yte.numpy(),
                                          champ_probs, chall_pred, chall_gate, gate=gate_spec, feedback=fb_evidence)
            return compare(req, champ_metrics, chall_metrics, yte.numpy(), champ_probs.argmax(1),
                           chall_pred, chall_gate, gate=gate_spec, class_names=data.class_names, feedback=fb_evidence)

        return champ_metrics, decide

    # -- a version: evaluation, requirements, optimization for serving, manifest, report ------------
    def assemble(self, ctx: Context, data: Dataset, fitted: Fitted, run, *, parent=None, selection=None,
                 fb: FeedbackSet | None = None, title: str, monitoring: dict[str, Any] | None = None
                 ) -> NewVersion:
        from ..compress import ServingModule, choose_backend
        from ..evaluate.report import write_report
        from ..gate import check_requirements
        from ..select.candidates import model_bytes, serving_latency
        from ..train.trainer import describe

        spec = ctx.spec
        model, config, feat, train_result = fitted.model, fitted.config, fitted.extra["featurizer"], fitted.result
        ds = data
        xte, yte = ds.splits["test"]
        probs = self.outputs(model, feat, xte)
        metrics = self.measure(yte, probs, ds.class_names)
        xva, yva = ds.splits["val"]
        val_metrics = self.measure(yva, self.outputs(model, feat, xva), ds.class_names) if len(yva) else None
        latency = serving_latency(feat, model, (xte if len(xte) else ds.splits["train"][0])[:1],
                                  threads=spec.serving.threads)
        size_mb = (model_bytes(model) + feat.frozen_bytes()) / 1e6
        if self.regression:
            ctx.say(f"[evaluation] test RMSE {metrics['rmse']:.4g}, MAE {metrics['mae']:.4g}, "
                    f"R² {metrics['r2']:.4f}, p95 latency {latency['p95_ms']:.2f} ms")
        else:
            ctx.say(f"[evaluation] test accuracy {metrics['accuracy']:.4f}, F1 macro "
                    f"{metrics['f1_macro']:.4f}, p95 latency {latency['p95_ms']:.2f} ms")
        baseline = self.baseline(ctx, ds, yte, probs) if spec.requirements.target is None else None
        gate = check_requirements(spec.requirements, metrics, latency, size_mb, baseline)
        decision = champ_metrics = None
        if parent is not None:
            champ_metrics, decide = self.judge(ctx, parent, ds, fb, fitted)
            decision = decide(metrics, probs if self.regression else probs.argmax(1), gate)

        # Optimization for serving: export and time each backend, keep the fastest that agrees.
        export_dir = run.folder / "export"
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
        ctx.say(f"[optimization] serving backend {serving['backend']}: " + ", ".join(
            f"{r['backend']} {r['p50_ms_batch1']:.2f} ms" if r["ok"] else f"{r['backend']} rejected"
            for r in serving["candidates"]))
        onnx = {p.name: p for p in export_dir.glob("*.onnx")}

        fingerprint = self.dataset_fingerprint(ds, fb)
        feedback_examples = len(fb.train_ids) if fb else 0
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
            "run_id": run.run_id, "parent": parent.version if parent else None,
            "feedback_examples": feedback_examples,
            "feedback_holdout": len(fb.hold_ids) if fb else 0, "feedback_validation": len(fb.val_ids) if fb else 0,
            "training": describe(train_result), "spec": spec.to_dict(), "libraries": library_versions(),
        }
        manifest["serving"] = serving
        if fitted.extra.get("semi_supervised") is not None:
            manifest["semi_supervised"] = fitted.extra["semi_supervised"]
        manifest["feedback_fingerprint"] = fb.fingerprint if fb else feedback_fingerprint([])
        if decision is not None:
            manifest["gate"] = decision
        preprocessing = {"featurizer": feat.config(), "class_names": ds.class_names, "input": ds.kind}
        if ds.fmt is not None:
            preprocessing.update(format=ds.fmt.to_dict(), pixel_range=[0, 255])
        parent_version = parent.version if parent else None

        def report(path, version: str) -> None:
            write_report(path, {
                "title": f"{title}: {spec.name} {version}", "version": version,
                "family": config.get("candidate", config["family"]),
                "fingerprint": fingerprint, "parent": parent_version, "class_names": ds.class_names,
                "metrics": metrics, "score_name": self.score_name,
                "predicted": (yte.numpy(), probs) if self.regression else None,
                "gate": gate, "history": train_result.history, "latency": latency,
                "leaderboard": (selection or {}).get("leaderboard"), "trials": (selection or {}).get("trials"),
                "selection_warning": (selection or {}).get("warning"), "excluded": (selection or {}).get("excluded"),
                "requirements": spec.requirements.model_dump(),
                "size_mb": size_mb, "data_report": ds.report.to_dict(), "decision": decision,
                "feedback_examples": feedback_examples, "serving": serving, "monitor": monitoring,
                "semi_supervised": fitted.extra.get("semi_supervised"),
            })

        result = {"run_id": run.run_id, "parent": parent_version, "metrics": metrics,
                  "val_metrics": val_metrics, "latency": latency, "size_mb": size_mb, "gate": gate,
                  "passed": gate["passed"], "champion": False,
                  "family": config.get("candidate", config["family"]),
                  "dataset": fingerprint, "feedback_examples": feedback_examples, "decision": decision}
        if parent is not None:
            result.update(evidence=decision, champion_metrics=champ_metrics, challenger_metrics=metrics,
                          feedback_holdout=len(fb.hold_ids), feedback_validation=len(fb.val_ids),
                          decision=decision["decision"], semi_supervised=fitted.extra.get("semi_supervised"))
        return NewVersion(manifest, model, preprocessing, report, result, onnx)

    # -- monitoring ------------------------------------------------------------------------------
    def monitor(self, ctx: Context, champ) -> dict[str, Any]:
        """Input drift (embeddings of live inputs against the training split), prediction drift,
        live accuracy (regression: live errors) of the champion ``champ`` (a loaded model)."""
        from ..feedback.drift import embed, mmd_test, psi

        spec, store = ctx.spec, ctx.store()
        ms = spec.monitor
        ds = Dataset.load(ctx.paths.data, champ.manifest["dataset"]["base_fingerprint"])
        xtr = ds.splits["train"][0]
        rng = np.random.default_rng(spec.seed)
        ref_idx = rng.choice(len(xtr), size=min(ms.reference_size, len(xtr)), replace=False)
        ref_mask = np.zeros(len(xtr), dtype=bool)
        ref_mask[ref_idx] = True
        x_ref = take(xtr, ref_mask)
        items, served = store.recent_raw(limit=ms.window)
        x_live, usable = self.collate(items, champ)
        live_labels = [lab for lab, k in zip(served, usable, strict=True) if k]
        ref_emb = embed(champ.model, champ.features(x_ref))
        if len(x_live) >= 20:
            live_emb = embed(champ.model, champ.features(x_live))
            drift = mmd_test(ref_emb, live_emb, ms.permutations, ms.drift_p_value, seed=spec.seed)
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
            live_labels = binned([v for v in map(as_number, live_labels) if v is not None])
        else:
            ref_pred = [names[i] for i in champ.predict_proba(x_ref).numpy().argmax(1)]
        value = psi(ref_pred, live_labels, names) if live_labels else None
        pred_drift = {"psi": value, "threshold": ms.psi_threshold,
                      "detected": value is not None and value > ms.psi_threshold,
                      "reference": {c: ref_pred.count(c) for c in names},
                      "live": {c: live_labels.count(c) for c in names}}
        untrusted = spec.feedback.untrusted_clients
        stats = store.feedback_stats(untrusted, model_version=champ.version,
                                     class_names=None if self.regression else names)
        if self.regression:  # exact agreement means nothing for numbers: live errors instead
            stats.update(live_accuracy=None, low=None, high=None)
        since = max(champ.manifest["created_at"], ctx.watch_state().get("last_retrain_at", 0.0))
        rows = store.labelled(None if self.regression else names, untrusted)
        return {
            "model_version": champ.version,
            "drift": drift,
            "prediction_drift": pred_drift,
            "live_accuracy": {"value": stats["live_accuracy"], "low": stats["low"], "high": stats["high"],
                              "n": stats["labelled"], "confidence": stats["confidence"]},
            "feedback": {"labelled": len(rows), "new_since_last_training": sum(1 for r in rows
                                                                               if r["feedback_at"] > since),
                         **store.counts()},
            "live_error": self._live_error(ctx, champ.version) if self.regression else None,
        }

    def _live_errors(self, ctx: Context, version: str) -> np.ndarray:
        """Regression: the served value minus the value fed back, per labelled prediction of ``version``."""
        rows = ctx.store().labelled(None, ctx.spec.feedback.untrusted_clients, model_version=version)
        pairs = [(as_number(r["predicted"]), as_number(r["label"])) for r in rows]
        return np.array([p - t for p, t in pairs if p is not None and t is not None])

    def _live_error(self, ctx: Context, version: str) -> dict[str, Any]:
        """Regression: RMSE and MAE of the values served by ``version`` against the values fed back."""
        e = self._live_errors(ctx, version)
        if not len(e):
            return {"n": 0, "rmse": None, "mae": None}
        return {"n": len(e), "rmse": float(np.sqrt(np.mean(e ** 2))), "mae": float(np.mean(np.abs(e)))}

    def shadow_report(self, ctx: Context, version: str) -> dict[str, Any]:
        """Agreement of a shadow model with what was served, and both models' accuracy on feedback."""
        return shadow_agreement(ctx, version, ctx.registry.manifest(version)["class_names"])

    def rollback_check(self, ctx: Context, cur: str, prev: str) -> dict[str, Any]:
        """Is the champion ``cur``'s live accuracy significantly below its predecessor ``prev``'s
        (regression: its live squared errors significantly above, by a one-sided Welch t-test)?"""
        need = ctx.spec.policy.rollback_min_feedback
        if self.regression:
            from scipy.stats import ttest_ind

            a, b = self._live_errors(ctx, cur) ** 2, self._live_errors(ctx, prev) ** 2
            out = {"champion": cur, "predecessor": prev, "measure": "live RMSE",
                   "champion_live": float(np.sqrt(a.mean())) if len(a) else None, "champion_n": len(a),
                   "predecessor_live": float(np.sqrt(b.mean())) if len(b) else None, "predecessor_n": len(b),
                   "p_value": None, "rollback": False}
            if len(a) < need or len(b) < need:
                return out
            out["p_value"] = float(ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)
            out["rollback"] = out["p_value"] < 1 - ctx.spec.gate.confidence
            return out
        return live_accuracy_rollback(ctx, cur, prev, ctx.registry.manifest(cur)["class_names"])

    def models_row(self, m: dict[str, Any]) -> dict[str, Any]:
        """What ``modelloop models`` shows of one version (its manifest ``m``)."""
        test = m["metrics"]["test"]
        return {
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
        }


def live_accuracy_rollback(ctx: Context, cur: str, prev: str, class_names: list[str] | None) -> dict[str, Any]:
    """Is the champion ``cur``'s live accuracy (its served answers that feedback confirmed)
    significantly below its predecessor ``prev``'s? A one-sided two-proportion z-test at
    ``gate.confidence``, once each has ``policy.rollback_min_feedback`` labelled predictions."""
    from scipy.stats import norm as normal

    need = ctx.spec.policy.rollback_min_feedback
    store = ctx.store()
    untrusted = ctx.spec.feedback.untrusted_clients
    a = store.feedback_stats(untrusted, model_version=cur, class_names=class_names)
    b = store.feedback_stats(untrusted, model_version=prev, class_names=class_names)
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
    out["rollback"] = out["p_value"] < 1 - ctx.spec.gate.confidence
    return out


def shadow_agreement(ctx: Context, version: str, class_names: list[str] | None) -> dict[str, Any]:
    """How often shadow ``version``'s label agreed with the served one, and each one's accuracy on
    the predictions whose feedback names the right label."""
    store = ctx.store()
    rows = store.shadow_rows(version)
    labels = {r["id"]: r["label"] for r in store.labelled(class_names, ctx.spec.feedback.untrusted_clients)}
    agree = sum(r["shadow_label"] == r["served_label"] for r in rows)
    with_fb = [r for r in rows if r["prediction_id"] in labels]
    shadow_right = sum(r["shadow_label"] == labels[r["prediction_id"]] for r in with_fb)
    served_right = sum(r["served_label"] == labels[r["prediction_id"]] for r in with_fb)
    n = len(with_fb)
    return {"version": version, "scored": len(rows), "agreement": agree / len(rows) if rows else None,
            "with_feedback": n, "shadow_accuracy": shadow_right / n if n else None,
            "served_accuracy": served_right / n if n else None}
