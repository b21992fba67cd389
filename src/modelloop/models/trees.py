"""Gradient-boosted trees as a torch module: scikit-learn's HistGradientBoostingClassifier (or
...Regressor), no pickle.

:class:`HGBNet` holds a fitted ensemble as plain tensors (one row of node arrays per tree) and
evaluates every tree for every row at once: each step moves all (row, tree) pairs one level down,
so the Python loop runs ``depth`` times, never once per row or per tree. Its logits equal
scikit-learn's ``decision_function`` (binary: ``logits[:, 1] - logits[:, 0]``; multi-class: the
logits themselves), within float32 rounding of the sum; a regression ensemble's single output
equals the regressor's ``predict``.

``fit_direct`` fits the scikit-learn estimator on the given features and copies its trees into the
module's buffers: the module fits itself (``models.FitsItself``), so it is fitted by that instead of
the gradient-descent trainer. Buffers take the
shapes of whatever ensemble is loaded (``load_state_dict`` resizes them), so an artifact rebuilt by
``build_model`` from its config loads trees of any size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["HGBNet", "HGB_DEFAULTS", "suggest_hgb"]

#: settings of the boosted ensemble when a search gives none (scikit-learn's defaults, more rounds)
HGB_DEFAULTS: dict[str, Any] = {"max_iter": 200, "learning_rate": 0.1, "max_leaf_nodes": 31, "max_depth": None,
                                "min_samples_leaf": 20, "l2_regularization": 0.0}

_BUFFERS = ("feature_idx", "threshold", "missing_left", "left", "right", "is_leaf", "value", "tree_class",
            "baseline", "depth")


def suggest_hgb(trial) -> dict[str, Any]:
    """A search space for an Optuna ``trial`` (duck-typed): the ensemble's settings, no optimizer."""
    return {"max_iter": trial.suggest_categorical("hgb_max_iter", [100, 200, 400]),
            "learning_rate": trial.suggest_float("hgb_learning_rate", 0.03, 0.3, log=True),
            "max_leaf_nodes": trial.suggest_categorical("hgb_max_leaf_nodes", [7, 15, 31]),
            "min_samples_leaf": trial.suggest_categorical("hgb_min_samples_leaf", [5, 10, 20]),
            "l2_regularization": trial.suggest_float("hgb_l2_regularization", 1e-6, 1.0, log=True)}


def _settings(params: dict[str, Any]) -> dict[str, Any]:
    """The ensemble's settings from ``params`` (optimizer keys such as lr are not the ensemble's)."""
    return {k: params.get(k, v) for k, v in HGB_DEFAULTS.items()}


class HGBNet(nn.Module):
    """A boosted tree ensemble over a feature vector (N, D) -> logits (N, K).

    Args:
        in_shape: ``(D,)``, the feature vector's length.
        num_classes: K >= 2. Binary ensembles have one tree per round, multi-class ones K.
        params: ensemble settings (see ``HGB_DEFAULTS``); before fitting they only size the
            placeholder ensemble (every tree a single leaf of value 0, walked to ``max_depth``),
            so latency measured on an unfitted module is close to the fitted one's.
    """

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, regression: bool = False, **params: Any) -> None:
        super().__init__()
        self.in_features = math.prod(in_shape)
        self.regression = bool(regression)
        self.num_classes = 1 if self.regression else int(num_classes)
        s = _settings(params)
        per_round = 1 if self.num_classes == 2 else self.num_classes
        trees, nodes = int(s["max_iter"]) * per_round, 2 * int(s["max_leaf_nodes"]) - 1
        depth = int(s["max_leaf_nodes"]) - 1 if s["max_depth"] is None else int(s["max_depth"])
        depth = min(depth, max(1, math.ceil(math.log2(max(2, int(s["max_leaf_nodes"])))) + 2))
        self._set({
            "feature_idx": torch.zeros(trees, nodes, dtype=torch.int64),
            "threshold": torch.zeros(trees, nodes, dtype=torch.float64),
            "missing_left": torch.zeros(trees, nodes, dtype=torch.bool),
            "left": torch.zeros(trees, nodes, dtype=torch.int64),
            "right": torch.zeros(trees, nodes, dtype=torch.int64),
            "is_leaf": torch.ones(trees, nodes, dtype=torch.bool),
            "value": torch.zeros(trees, nodes, dtype=torch.float64),
            "tree_class": torch.arange(trees, dtype=torch.int64) % per_round,
            "baseline": torch.zeros(per_round, dtype=torch.float64),
            "depth": torch.tensor(depth, dtype=torch.int64),
        })

    def _set(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, t in tensors.items():
            self.register_buffer(name, t)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The ensemble's size is learned: take the stored shapes before copying the values.
        for name in _BUFFERS:
            t = state_dict.get(prefix + name)
            if t is not None and t.shape != getattr(self, name).shape:
                self.register_buffer(name, torch.empty_like(t))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, D) -> (N, K)
        x = x.flatten(1).to(torch.float64)                      # thresholds are float64, as in scikit-learn
        n = x.shape[0]
        trees, width = self.feature_idx.shape
        # Node arrays flattened to (T * M,): node j of tree t sits at t * M + j.
        feature, threshold = self.feature_idx.reshape(-1), self.threshold.reshape(-1)
        missing_left, is_leaf = self.missing_left.reshape(-1), self.is_leaf.reshape(-1)
        left, right = self.left.reshape(-1), self.right.reshape(-1)
        base = (torch.arange(trees) * width).expand(n, trees)  # (N, T) offset of each tree's root
        node = base.clone()                                     # (N, T): every row at every tree's root
        for _ in range(int(self.depth)):
            done = is_leaf[node]                                # (N, T)
            if bool(done.all()):
                break
            v = torch.gather(x, 1, feature[node])               # (N, T) the tested feature's value per row
            go_left = torch.where(torch.isnan(v), missing_left[node], v <= threshold[node])
            nxt = base + torch.where(go_left, left[node], right[node])
            node = torch.where(done, node, nxt)
        leaf = self.value.reshape(-1)[node]                     # (N, T)
        per_round = self.baseline.shape[0]
        raw = self.baseline.expand(n, per_round).clone()        # (N, K') K' = 1 (binary) or K
        raw.index_add_(1, self.tree_class, leaf)
        raw = raw.to(torch.float32)
        if per_round == 1 and not self.regression:              # binary: softmax([0, r]) = sigmoid(r)
            return torch.cat([torch.zeros_like(raw), raw], dim=1)
        return raw

    # -- fitting -------------------------------------------------------------------------------
    def load_sklearn(self, clf) -> HGBNet:
        """Copy a fitted ``HistGradientBoostingClassifier``'s trees into this module's buffers.

        Raises:
            ValueError: the estimator uses categorical splits, or its class count differs.
        """
        if not self.regression and len(clf.classes_) != self.num_classes:
            raise ValueError(f"estimator: received {len(clf.classes_)} classes; expected {self.num_classes}")
        rounds = clf._predictors
        per_round = 1 if self.num_classes == 2 else self.num_classes
        trees = [p.nodes for r in rounds for p in r]            # round-major: tree i predicts class i % K'
        if any(nd["is_categorical"].any() for nd in trees):
            raise ValueError("estimator: received categorical splits; expected numeric features only")
        m = max((len(nd) for nd in trees), default=1)
        T = len(trees)

        def pad(field: str, dtype, fill) -> torch.Tensor:
            out = np.full((T, m), fill, dtype=dtype)
            for i, nd in enumerate(trees):
                out[i, : len(nd)] = nd[field]
            return torch.from_numpy(out)

        depth = max((int(nd["depth"].max()) for nd in trees), default=0)
        self._set({
            "feature_idx": pad("feature_idx", np.int64, 0),
            "threshold": pad("num_threshold", np.float64, 0.0),
            "missing_left": pad("missing_go_to_left", np.bool_, False),
            "left": pad("left", np.int64, 0),
            "right": pad("right", np.int64, 0),
            "is_leaf": pad("is_leaf", np.bool_, True),
            "value": pad("value", np.float64, 0.0),
            "tree_class": torch.arange(T, dtype=torch.int64) % per_round,
            "baseline": torch.from_numpy(np.asarray(clf._baseline_prediction, dtype=np.float64).reshape(-1).copy()),
            "depth": torch.tensor(depth, dtype=torch.int64),
        })
        return self

    def fit_direct(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                   params: dict[str, Any], seed: int) -> dict[str, Any]:
        """Fit the ensemble on ``train`` features, keep the number of rounds with the lowest
        validation log-loss, and load the trees into this module.

        Args:
            train: features (N, D) float and labels (N,) int64.
            val: the same for validation (may be the training split when there is none).
            params: ensemble settings (``HGB_DEFAULTS`` keys; others, such as lr, are ignored).
            seed: the estimator's random state.
        Returns:
            ``{"best_val_score", "score_name", "history": [{"epoch": 1, "train_loss", "val_loss",
            "val_accuracy"}], "rounds"}``: the validation accuracy (score "accuracy"), or for a
            regression ensemble the validation R² (score "r2").
        """
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        s = _settings(params)
        xtr, ytr = train[0].flatten(1).double().numpy(), train[1].numpy()
        xva, yva = val[0].flatten(1).double().numpy(), val[1].numpy()
        if self.regression:
            return self._fit_regression(xtr, ytr, xva, yva, s, seed, HistGradientBoostingRegressor)
        clf = HistGradientBoostingClassifier(
            max_iter=int(s["max_iter"]), learning_rate=float(s["learning_rate"]),
            max_leaf_nodes=int(s["max_leaf_nodes"]), max_depth=s["max_depth"],
            min_samples_leaf=int(s["min_samples_leaf"]), l2_regularization=float(s["l2_regularization"]),
            early_stopping=False, categorical_features=None, random_state=seed)
        # Labels are class indices; a class absent from training would shift them, so fit on all K.
        present = np.unique(ytr)
        if len(present) != self.num_classes:
            raise ValueError(f"training labels: received {len(present)} of {self.num_classes} classes; "
                             "expected every class in the training split")
        from threadpoolctl import threadpool_limits

        # One OpenMP thread: next to torch's own pool on a shared machine, scikit-learn's threads
        # spin against each other (a 0.3 s fit took 20 s with two threads here).
        with threadpool_limits(limits=1, user_api="openmp"):
            clf.fit(xtr, ytr)
            if len(yva):
                losses = [_log_loss(raw, yva) for raw in clf._staged_raw_predict(xva)]
                best = int(np.argmin(losses)) + 1               # fewest rounds at the lowest loss
                clf._predictors = clf._predictors[:best]
        self.load_sklearn(clf)
        with torch.inference_mode():
            tr_logits = self(train[0]).double().numpy()
            va_logits = self(val[0]).double().numpy()
        va_acc = float((va_logits.argmax(1) == yva).mean()) if len(yva) else 0.0
        row = {"epoch": 1, "train_loss": _ce(tr_logits, ytr), "val_loss": _ce(va_logits, yva) if len(yva) else 0.0,
               "val_accuracy": va_acc}
        return {"best_val_score": va_acc, "score_name": "accuracy", "history": [row], "rounds": len(clf._predictors)}


    def _fit_regression(self, xtr, ytr, xva, yva, s: dict[str, Any], seed: int, estimator) -> dict[str, Any]:
        """The regressor's half of :meth:`fit_direct`: rounds chosen by validation squared error,
        scored by the validation R² (``score_name`` "r2")."""
        from threadpoolctl import threadpool_limits

        from ..evaluate.metrics import r2_score

        reg = estimator(max_iter=int(s["max_iter"]), learning_rate=float(s["learning_rate"]),
                        max_leaf_nodes=int(s["max_leaf_nodes"]), max_depth=s["max_depth"],
                        min_samples_leaf=int(s["min_samples_leaf"]), l2_regularization=float(s["l2_regularization"]),
                        early_stopping=False, categorical_features=None, random_state=seed)
        ytr64, yva64 = ytr.astype(np.float64), yva.astype(np.float64)
        with threadpool_limits(limits=1, user_api="openmp"):
            reg.fit(xtr, ytr64)
            if len(yva):
                losses = [float(np.mean((p - yva64) ** 2)) for p in reg.staged_predict(xva)]
                reg._predictors = reg._predictors[: int(np.argmin(losses)) + 1]
        self.load_sklearn(reg)
        with torch.inference_mode():
            tr = self(torch.from_numpy(xtr)).double().numpy()[:, 0]
            va = self(torch.from_numpy(xva)).double().numpy()[:, 0]
        r2 = r2_score(yva64, va) if len(yva) else 0.0
        row = {"epoch": 1, "train_loss": float(np.mean((tr - ytr64) ** 2)),
               "val_loss": float(np.mean((va - yva64) ** 2)) if len(yva) else 0.0, "val_accuracy": r2}
        return {"best_val_score": r2, "score_name": "r2", "history": [row], "rounds": len(reg._predictors)}


def _ce(logits: np.ndarray, y: np.ndarray) -> float:
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())


def _log_loss(raw: np.ndarray, y: np.ndarray) -> float:
    """Log-loss of scikit-learn raw predictions (N, 1) binary or (N, K)."""
    raw = np.asarray(raw, dtype=np.float64)
    if raw.ndim == 1 or raw.shape[1] == 1:
        raw = raw.reshape(-1, 1)
        raw = np.concatenate([np.zeros_like(raw), raw], axis=1)
    return _ce(raw, y)
