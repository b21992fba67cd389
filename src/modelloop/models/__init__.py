"""Trainable model families, built from a JSON-able config.

Every model takes the tensor its featurizer makes (standardized images (N, C, H, W), embeddings
(N, D), TF-IDF vectors (N, V), token ids (N, 2, L), pretrained feature maps, log-mel
spectrograms (N, 1, n_mels, frames), featurized table rows (N, D)) and returns logits
(N, K). ``build_model(config)`` rebuilds exactly the architecture whose weights an artifact stores.

Most families learn by gradient steps (``train.Trainer``); a model that fits by its own algorithm
(closed-form ridge, boosted trees) says so by implementing :class:`FitsItself`, and whoever fits
models (``backends``) dispatches on that protocol.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

__all__ = ["build_model", "Regressor", "RidgeRegressor", "batched_logits", "PRETRAINED_FAMILIES", "FitsItself",
           "one_trial", "LinearNet", "MLPNet", "SmallCNN", "count_parameters"]


@runtime_checkable
class FitsItself(Protocol):
    """A model fitted by its own algorithm (closed form, boosted trees), not by gradient steps.

    ``fit_direct(train, val, params, seed)`` fits the module in place on feature tensors
    ``train = (x, y)`` and ``val = (x, y)`` (the validation split chooses what the algorithm tunes,
    such as a penalty or a number of rounds), with the candidate's ``params`` (keys it does not
    know, such as ``lr``, are ignored) and ``seed``. It returns ``{"best_val_score": float,
    "score_name": "accuracy" | "r2", "history": [{"epoch", "train_loss", "val_loss",
    "val_accuracy"}], ...}``: one history row shaped like the trainer's (its ``val_accuracy``
    holds the score), and whatever else the algorithm chose.
    """

    def fit_direct(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                   params: dict[str, Any], seed: int) -> dict[str, Any]: ...


class LinearNet(nn.Module):
    """Multinomial logistic regression on raw pixels: the honest baseline."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(math.prod(in_shape), num_classes)

    def forward(self, x):  # (N, *in_shape) -> (N, K)
        return self.fc(x.flatten(1))


class MLPNet(nn.Module):
    """One hidden layer with dropout."""

    def __init__(self, in_shape: tuple[int, ...], num_classes: int, hidden: int = 256,
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),                       # (N, prod(in_shape))
            nn.Linear(math.prod(in_shape), hidden),  # (N, hidden)
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),     # (N, K)
        )

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """Two conv blocks, then a small classifier. Any input size: pooled to 4x4 before the head."""

    def __init__(self, in_shape: tuple[int, int, int], num_classes: int, width: int = 32,
                 dropout: float = 0.25) -> None:
        super().__init__()
        c = in_shape[0]

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(
            block(c, width),                    # (N, w, H/2, W/2)
            block(width, 2 * width),            # (N, 2w, H/4, W/4)
            nn.AdaptiveAvgPool2d(4),            # (N, 2w, 4, 4)
        )
        self.head = nn.Sequential(
            nn.Flatten(),                       # (N, 32w)
            nn.Dropout(dropout),
            nn.Linear(2 * width * 16, 128),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, num_classes),        # (N, K)
        )

    def forward(self, x):
        return self.head(self.features(x))


_ARCH = {"linear": (LinearNet, ()), "mlp": (MLPNet, ("hidden", "dropout")), "cnn": (SmallCNN, ("width", "dropout"))}


#: families that continue a pretrained network: one architecture, only the optimizer varies
PRETRAINED_FAMILIES = ("efficientnet-suffix", "minilm-lora")


def one_trial(family: str) -> bool:
    """Whether a candidate search gives ``family`` its one default trial and no more: a pretrained
    network, whose trials cost the most and could vary only the optimizer's settings."""
    return family in PRETRAINED_FAMILIES


def build_model(config: dict[str, Any]) -> nn.Module:
    """config: {"family", "input_shape": [...], "num_classes", "params": {...}} (+ the featurizer's
    settings for families that continue a pretrained network).

    Only architecture parameters are passed on; optimizer parameters (lr, weight_decay) are ignored.
    """
    family = config["family"]
    params = config.get("params", {})
    if family == "efficientnet-suffix":
        from .transfer import build_suffix

        f = config["featurizer"]
        return build_suffix({"family": "efficientnet-lite0", "mode": f["mode"],
                             "finetune_blocks": f.get("finetune_blocks", 2), "image_size": f.get("image_size", 224),
                             "weights": f.get("weights"), "num_classes": int(config["num_classes"]),
                             "dropout": params.get("dropout", 0.2)})
    if family == "minilm-lora":
        from .text_encoder import MiniLMClassifier

        f = config["featurizer"]
        return MiniLMClassifier({"encoder": f.get("encoder", "all-MiniLM-L6-v2"),
                                 "num_classes": int(config["num_classes"]),
                                 "r": params.get("r", 8), "alpha": params.get("alpha", 16),
                                 "dropout": params.get("dropout", 0.1), "max_length": f.get("max_length", 64)})
    if family == "ds-cnn":
        from .audio import DSCNN

        kwargs = {k: v for k, v in params.items() if k in ("width", "blocks", "dropout")}
        return DSCNN(tuple(config["input_shape"]), int(config["num_classes"]), **kwargs)
    regression = config.get("target")  # {"mean", "std"} of the training targets: one output, in their units
    if family == "hgb":
        from .trees import HGBNet

        return HGBNet(tuple(config["input_shape"]), int(config["num_classes"]), regression=bool(regression), **params)
    if family not in _ARCH:
        known = (*_ARCH, "ds-cnn", "hgb", *PRETRAINED_FAMILIES)
        raise ValueError(f"model family {family!r}: unknown; expected one of {', '.join(known)}")
    cls, arch_keys = _ARCH[family]
    kwargs = {k: v for k, v in config.get("params", {}).items() if k in arch_keys}
    if regression and family == "linear":
        return RidgeRegressor(cls(tuple(config["input_shape"]), 1), regression["mean"], regression["std"])
    if regression:
        return Regressor(cls(tuple(config["input_shape"]), 1, **kwargs), regression["mean"], regression["std"])
    return cls(tuple(config["input_shape"]), int(config["num_classes"]), **kwargs)


class Regressor(nn.Module):
    """A network predicting one standardized value, answering in the target's units:
    ``net(x) * std + mean`` (N, 1). ``mean`` and ``std`` (of the training targets) are buffers, so
    they travel in the artifact; the net starts out predicting the mean."""

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std) if std > 0 else 1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).float() * self.std + self.mean


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def batched_logits(model: nn.Module, x, batch_size: int = 1024):
    """Logits for many inputs in eval mode, without autograd. x: (N, ...) model inputs -> (N, K)."""
    import torch

    model.eval()
    with torch.inference_mode():
        outs = [model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat(outs) if outs else torch.empty(0)


#: ridge penalties tried by :meth:`RidgeRegressor.fit_direct` (on standardized targets)
RIDGE_ALPHAS = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 3.0, 10.0, 30.0, 100.0)


class RidgeRegressor(Regressor):
    """Linear regression fitted in closed form (ridge), not by gradient steps (:class:`FitsItself`):
    exact on any table size, in milliseconds. The penalty is the one of ``RIDGE_ALPHAS`` with the
    best validation R²."""

    def fit_direct(self, train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                   params: dict[str, Any], seed: int) -> dict[str, Any]:
        """Scored by the validation R² (``score_name`` "r2"); ``params`` and ``seed`` are unused: the fit
        is deterministic. Returns ``{"best_val_score", "score_name", "history", "alpha"}``."""
        from ..evaluate.metrics import r2_score

        x = train[0].flatten(1).double()
        y = (train[1].double() - self.mean.double()) / self.std.double()
        xv, yv = val[0].flatten(1).double(), val[1].double()
        mx = x.mean(0)
        xc, yc = x - mx, y - y.mean()
        gram, rhs = xc.T @ xc, xc.T @ yc
        eye = torch.eye(x.shape[1], dtype=torch.float64)
        best = None
        for alpha in RIDGE_ALPHAS:
            w = torch.linalg.solve(gram + alpha * len(x) * eye, rhs)
            b = y.mean() - mx @ w
            pred = (xv @ w + b) * self.std.double() + self.mean.double()
            score = r2_score(yv.numpy(), pred.numpy()) if len(yv) else 0.0
            if best is None or score > best[0]:
                best = (score, alpha, w, b)
        score, alpha, w, b = best
        fc = self.net.fc
        with torch.no_grad():
            fc.weight.copy_(w.float().view(1, -1))
            fc.bias.copy_(b.float().view(1))
        with torch.inference_mode():
            tr = self(train[0])[:, 0].double()
            va = self(val[0])[:, 0].double()
        row = {"epoch": 1, "train_loss": float(((tr - train[1].double()) ** 2).mean()),
               "val_loss": float(((va - yv) ** 2).mean()) if len(yv) else 0.0, "val_accuracy": score}
        return {"best_val_score": score, "score_name": "r2", "history": [row], "alpha": alpha}
