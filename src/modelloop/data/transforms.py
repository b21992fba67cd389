"""Tensor transforms: normalization fit on the training split only, and batched augmentation."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["Normalizer", "random_shift"]


class Normalizer:
    """Per-channel standardization of 0-255 pixels. Fit on training data only.

    Learned state: ``mean_`` and ``std_`` (lists, one value per channel), saved as JSON.
    """

    def __init__(self, eps: float = 1e-3) -> None:
        self.eps = eps

    def fit(self, x: torch.Tensor) -> Normalizer:
        """x: (N, C, H, W), any numeric dtype, values 0-255."""
        xf = x.float()
        self.mean_ = xf.mean(dim=(0, 2, 3)).tolist()
        self.std_ = [max(s, self.eps) for s in xf.std(dim=(0, 2, 3)).tolist()]
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) 0-255 -> float32 standardized."""
        mean = torch.tensor(self.mean_, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.std_, dtype=torch.float32).view(1, -1, 1, 1)
        return (x.float() - mean) / std

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean_, "std": self.std_}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Normalizer:
        n = cls()
        n.mean_, n.std_ = list(state["mean"]), list(state["std"])
        return n


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of a batch by its own random whole-pixel offset in [-max_shift, max_shift].

    Vectorized: one padded copy of the batch and one gather, no per-sample Python.
    x: (N, C, H, W) float; pixels shifted in from outside repeat the border (the background).
    """
    if max_shift <= 0:
        return x
    n, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), mode="replicate")  # (N, C, H+2s, W+2s)
    dy = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=generator)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1).expand(n, c, h, w + 2 * s)
    out = padded.gather(2, rows)  # (N, C, H, W+2s)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w).expand(n, c, h, w)
    return out.gather(3, cols)  # (N, C, H, W)
