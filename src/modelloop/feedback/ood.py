"""Out-of-distribution scores: how far an input lies from what the model was trained on.

The space is the one the drift monitor uses (:func:`~.drift.embed`: the input of the model's last
linear layer). The score is the Mahalanobis distance to the nearest class mean of the training
embeddings under their pooled within-class covariance (Ledoit-Wolf shrinkage, so a few hundred
training inputs in a few hundred dimensions still give a usable precision matrix); regression
models have one mean. The threshold is a quantile (``monitor.ood_quantile``, 0.99) of the scores
of the validation split, which the model never trained on: by construction about 1% of
in-distribution inputs are flagged, and an input far outside (uniform noise given to a digit
classifier) is flagged however confidently the model answers it.

The calibration is computed once, at registration, and stored in the version's folder
(``ood.safetensors``; threshold and sizes in the manifest's ``ood``). Versions registered
without one have no OOD score: :func:`load_calibration` gives None for them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .drift import embed

__all__ = ["OodCalibration", "fit_calibration", "load_calibration", "outputs_and_embeddings", "OOD_FILE"]

log = logging.getLogger(__name__)

OOD_FILE = "ood.safetensors"
METHOD = "mahalanobis (nearest class mean, pooled Ledoit-Wolf covariance, embeddings of the last linear layer)"


@dataclass
class OodCalibration:
    """Class means (C, D) and a shared precision matrix (D, D) of training embeddings, and the
    validation-quantile threshold above which an input counts as out of distribution."""

    means: np.ndarray
    precision: np.ndarray
    threshold: float
    quantile: float
    n_train: int
    n_validation: int

    def score(self, emb: np.ndarray) -> np.ndarray:
        """Embeddings (N, D) -> distances (N,) to the nearest class mean."""
        e = np.asarray(emb, dtype=np.float64).reshape(len(emb), -1)
        if not len(e):
            return np.zeros(0)
        ep = e @ self.precision                                    # (N, D)
        mp = self.means @ self.precision                           # (C, D)
        d2 = (ep * e).sum(1)[:, None] - 2 * ep @ self.means.T + (mp * self.means).sum(1)[None, :]
        return np.sqrt(np.maximum(d2.min(1), 0.0))

    def info(self) -> dict[str, Any]:
        """What the manifest keeps (``ood``)."""
        return {"method": METHOD, "threshold": self.threshold, "quantile": self.quantile,
                "n_train": self.n_train, "n_validation": self.n_validation, "dim": int(self.means.shape[1]),
                "file": OOD_FILE}

    def save(self, path: Path) -> None:
        from safetensors.numpy import save_file

        save_file({"means": self.means.astype(np.float64), "precision": self.precision.astype(np.float64),
                   "threshold": np.array([self.threshold])}, str(path))


def fit_calibration(train_emb: np.ndarray, train_y: np.ndarray | None, val_emb: np.ndarray,
                    quantile: float = 0.99) -> OodCalibration:
    """Fit on training embeddings (N, D) with their class indices (None: one mean, regression)
    and set the threshold at the ``quantile`` of the validation embeddings' scores."""
    from sklearn.covariance import LedoitWolf

    x = np.asarray(train_emb, dtype=np.float64).reshape(len(train_emb), -1)
    y = np.zeros(len(x), dtype=np.int64) if train_y is None else np.asarray(train_y, dtype=np.int64)
    classes = np.unique(y)
    means = np.stack([x[y == c].mean(0) for c in classes])
    resid = x - means[np.searchsorted(classes, y)]
    precision = LedoitWolf(assume_centered=True).fit(resid).precision_
    cal = OodCalibration(means, precision, 0.0, quantile, len(x), len(val_emb))
    val_scores = cal.score(val_emb)
    cal.threshold = float(np.quantile(val_scores, quantile)) if len(val_scores) else float("inf")
    return cal


def load_calibration(folder: Path, manifest: dict[str, Any]) -> OodCalibration | None:
    """The calibration stored with a version, or None for a version registered without one."""
    info = manifest.get("ood")
    path = Path(folder) / OOD_FILE
    if not info or not path.is_file():
        return None
    from safetensors.numpy import load_file

    t = load_file(str(path))
    return OodCalibration(t["means"], t["precision"], float(info["threshold"]), float(info["quantile"]),
                          int(info["n_train"]), int(info["n_validation"]))


def _last_linear(model: nn.Module) -> nn.Linear | None:
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linear[-1] if linear else None


def outputs_and_embeddings(loaded: Any, x: Any, batch_size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """A loaded model's served outputs (probabilities (N, K), or values (N, 1)) and embeddings (N, D).

    One pass wherever the backend allows: an ONNX export that carries the embedding as a second
    output (:func:`~modelloop.compress.backends.export_onnx`) gives both; a model served by
    PyTorch (texts, pretrained image and audio encoders, tables, or pixels on ``torch``) computes
    both through a hook, so the encoder runs once; any other backend (an older export, bf16)
    answers through it and embeds through its PyTorch reference."""
    both = getattr(loaded.run, "with_embedding", None)
    if both is not None and isinstance(x, np.ndarray):  # an ONNX export that carries the embedding
        return both(np.ascontiguousarray(x, dtype=np.float32))
    linear = _last_linear(loaded.model)
    if (getattr(loaded.featurizer, "exportable", False) and loaded.backend != "torch") or linear is None:
        probs = loaded.run(x) if loaded.run is not None else loaded.predict_proba(x).numpy()
        feats = loaded.features(torch.from_numpy(x) if isinstance(x, np.ndarray) else x)
        return probs, embed(loaded.model, feats, batch_size)
    feats = loaded.features(torch.from_numpy(x) if isinstance(x, np.ndarray) else x)
    captured: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    hook = linear.register_forward_hook(lambda _m, inputs, _out: captured.append(inputs[0].detach()))
    try:
        loaded.model.eval()
        with torch.inference_mode():
            for i in range(0, len(feats), batch_size):
                outs.append(loaded.model(feats[i : i + batch_size]).float())
    finally:
        hook.remove()
    out = torch.cat(outs) if outs else torch.zeros((0, len(loaded.class_names)))
    probs = out if loaded.regression else torch.softmax(out, dim=1)
    emb = torch.cat(captured).reshape(len(feats), -1) if captured else torch.zeros((0, 0))
    return probs.numpy(), emb.numpy()
