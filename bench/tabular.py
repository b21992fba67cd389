"""Tabular classification benchmark: modelloop's candidates vs scikit-learn's own pipelines.

Breast cancer (569 x 30, binary) and wine (178 x 13, 3 classes), both from scikit-learn. For each
of ``--seeds`` seeds: the task's own stratified 70/15/15 split (``data.split.seed``), the
``tabular`` featurizer fit on the training part, then

- linear, mlp: the generic Trainer (search defaults, early stopping on validation);
- hgb: ``HGBNet.fit_direct`` (scikit-learn HistGradientBoostingClassifier, rounds chosen on
  validation, evaluated by the torch tree module);

and, on the same training rows (train + validation, as they use no validation), the baselines
``SimpleImputer(median) + StandardScaler + LogisticRegression`` and a default
``HistGradientBoostingClassifier`` on the raw columns. Every model is scored on the same held-out
test rows; the table prints the mean test accuracy over seeds (min-max in brackets).

    python bench/tabular.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from modelloop.models import build_model
from modelloop.select.search import DEFAULTS
from modelloop.spec import DataSpec
from modelloop.tasks import get_task
from modelloop.tasks.tabular_features import TabularFeaturizer
from modelloop.train import TrainConfig, Trainer

TARGETS = {"breast-cancer": 0.96, "wine": 0.95}


def _matrix(rows: list[dict]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in r.values()] for r in rows], dtype=np.float64)


def run_seed(name: str, seed: int) -> dict[str, tuple[float, float]]:
    """{model: (test accuracy, fit seconds)} for one split."""
    task = get_task("tabular-classification")
    ds = task.prepare(DataSpec(source=f"builtin:{name}", split={"seed": seed}), ".")
    (xtr, ytr), (xva, yva), (xte, yte) = (ds.splits[s] for s in ("train", "val", "test"))
    feat = TabularFeaturizer().fit(xtr)
    ftr, fva, fte = feat.transform(xtr), feat.transform(xva), feat.transform(xte)
    k = len(ds.class_names)
    out = {}
    for family in ("linear", "mlp"):
        params = DEFAULTS[family]
        torch.manual_seed(seed)
        model = build_model({"family": family, "input_shape": [ftr.shape[1]], "num_classes": k, "params": params})
        t = time.perf_counter()
        Trainer(TrainConfig(max_epochs=200, patience=20, batch_size=32, lr=params["lr"],
                            weight_decay=params["weight_decay"], seed=seed)).fit(model, (ftr, ytr), (fva, yva))
        out[family] = (_accuracy(model, fte, yte), time.perf_counter() - t)
    model = build_model({"family": "hgb", "input_shape": [ftr.shape[1]], "num_classes": k, "params": {}})
    t = time.perf_counter()
    model.fit_direct((ftr, ytr), (fva, yva), {}, seed)
    out["hgb"] = (_accuracy(model, fte, yte), time.perf_counter() - t)

    xall, yall = _matrix(xtr + xva), torch.cat([ytr, yva]).numpy()
    with threadpool_limits(limits=1, user_api="openmp"):
        for label, est in (("sklearn LogisticRegression", make_pipeline(
                SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(max_iter=2000))),
                           ("sklearn HGB", HistGradientBoostingClassifier(random_state=seed))):
            t = time.perf_counter()
            est.fit(xall, yall)
            out[label] = (float((est.predict(_matrix(xte)) == yte.numpy()).mean()), time.perf_counter() - t)
    return out


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.inference_mode():
        return float((model(x).argmax(1) == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    print("| dataset | model | test accuracy, mean (min-max) | vs sklearn same kind | fit s | target met |")
    print("|---|---|---|---|---|---|")
    for name in ("breast-cancer", "wine"):
        runs = [run_seed(name, s) for s in range(args.seeds)]
        acc = {m: np.array([r[m][0] for r in runs]) for m in runs[0]}
        secs = {m: float(np.mean([r[m][1] for r in runs])) for m in runs[0]}
        ref = {"linear": "sklearn LogisticRegression", "mlp": "sklearn LogisticRegression", "hgb": "sklearn HGB"}
        for m, a in acc.items():
            vs = f"{(a.mean() - acc[ref[m]].mean()) * 100:+.1f} pts" if m in ref else "(baseline)"
            met = ("yes" if a.mean() >= TARGETS[name] else "no") if m in ref else ""
            print(f"| {name} | {m} | {a.mean():.3f} ({a.min():.3f}-{a.max():.3f}) | {vs} | {secs[m]:.2f} | {met} |")


if __name__ == "__main__":
    main()
