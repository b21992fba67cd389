"""Tabular regression benchmark: modelloop's candidates vs scikit-learn's own pipelines.

Diabetes (442 x 10, disease progression after one year, from scikit-learn). For each of ``--seeds``
seeds: the task's own 70/15/15 split balanced over the target's deciles (``data.split.seed``), the
``tabular`` featurizer fit on the training part, then

- linear: ``RidgeRegressor.fit_direct`` (closed-form ridge, penalty chosen on validation);
- mlp: the generic Trainer with the task's loss (squared error; the network predicts the standardized
  target, scaled back to its units), search defaults, early stopping on validation R²;
- hgb: ``HGBNet.fit_direct`` (HistGradientBoostingRegressor, rounds chosen on validation, evaluated
  by the torch tree module);

and, on the same training rows (train + validation, as they choose their settings by internal
cross-validation or use none), the baselines ``SimpleImputer(median) + StandardScaler + RidgeCV``
and a default ``HistGradientBoostingRegressor`` on the raw columns. Every model is scored on the
same held-out test rows; the table prints mean test RMSE and R² over seeds. modelloop's models are
fitted the way the loop fits them, through ``LocalBackend.fit`` (fit seconds include building the
module, microseconds).

    python bench/regression.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.impute import SimpleImputer
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from modelloop.backends import FitJob, LocalBackend
from modelloop.evaluate.metrics import regression_metrics
from modelloop.select.search import DEFAULTS
from modelloop.spec import DataSpec
from modelloop.tasks import get_task
from modelloop.tasks.tabular_features import TabularFeaturizer
from modelloop.train import TrainConfig


def _matrix(rows: list[dict]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in r.values()] for r in rows], dtype=np.float64)


def run_seed(seed: int) -> dict[str, tuple[float, float, float]]:
    """{model: (test RMSE, test R², fit seconds)} for one split."""
    task = get_task("tabular-regression")
    ds = task.prepare(DataSpec(source="builtin:diabetes", split={"seed": seed}), ".")
    (xtr, ytr), (xva, yva), (xte, yte) = (ds.splits[s] for s in ("train", "val", "test"))
    feat = TabularFeaturizer().fit(xtr)
    ftr, fva, fte = feat.transform(xtr), feat.transform(xva), feat.transform(xte)
    target = {"mean": float(ytr.mean()), "std": float(ytr.std())}
    out = {}
    backend = LocalBackend()
    for family in ("linear", "mlp", "hgb"):
        params = DEFAULTS[family]
        t = time.perf_counter()
        # ridge and boosted trees fit themselves; the MLP trains with lr and weight decay from params
        model = backend.fit(FitJob({"family": family, "input_shape": [ftr.shape[1]], "num_classes": 1,
                                    "params": params, "target": target}, (ftr, ytr), (fva, yva),
                                   training=TrainConfig(max_epochs=300, patience=20, batch_size=32),
                                   seed=seed, task=task)).model
        secs = time.perf_counter() - t
        model.eval()
        with torch.inference_mode():
            m = regression_metrics(yte.numpy(), model(fte)[:, 0].numpy())
        out[family] = (m["rmse"], m["r2"], secs)

    xall, yall = _matrix(xtr + xva), torch.cat([ytr, yva]).numpy()
    with threadpool_limits(limits=1, user_api="openmp"):
        for label, est in (("sklearn RidgeCV", make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                                                              RidgeCV(alphas=np.logspace(-3, 3, 13)))),
                           ("sklearn HGB", HistGradientBoostingRegressor(random_state=seed))):
            t = time.perf_counter()
            est.fit(xall, yall)
            m = regression_metrics(yte.numpy(), est.predict(_matrix(xte)))
            out[label] = (m["rmse"], m["r2"], time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    args = ap.parse_args()
    runs = [run_seed(s) for s in range(args.seeds)]
    ref = {"linear": "sklearn RidgeCV", "mlp": "sklearn RidgeCV", "hgb": "sklearn HGB"}
    print("| model | test RMSE, mean (min-max) | test R², mean | RMSE vs sklearn same kind | fit s |")
    print("|---|---|---|---|---|")
    for m in runs[0]:
        rmse = np.array([r[m][0] for r in runs])
        r2 = np.mean([r[m][1] for r in runs])
        secs = np.mean([r[m][2] for r in runs])
        vs = (f"{rmse.mean() / np.mean([r[ref[m]][0] for r in runs]):.3f}×" if m in ref else "(baseline)")
        print(f"| {m} | {rmse.mean():.2f} ({rmse.min():.2f}-{rmse.max():.2f}) | {r2:.3f} | {vs} | {secs:.2f} |")


if __name__ == "__main__":
    main()
