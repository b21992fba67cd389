"""Tensor transforms: normalization fit on the training split only, and batched augmentation."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ImageViews", "Normalizer", "random_affine", "random_cutout", "random_shift"]


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


def random_affine(x: torch.Tensor, generator: torch.Generator, *, max_shift: float = 0.0, max_degrees: float = 0.0,
                  max_scale: float = 0.0) -> torch.Tensor:
    """Rotate, scale and translate each image of a batch by its own random draw (one ``affine_grid``
    and one ``grid_sample`` for the batch).

    x: (N, C, H, W) float. ``max_shift`` in pixels, ``max_degrees`` of rotation either way,
    ``max_scale`` a relative zoom either way (0.1: 0.9-1.1x). Pixels from outside repeat the border.
    """
    n, _, h, w = x.shape
    if n == 0 or (max_shift <= 0 and max_degrees <= 0 and max_scale <= 0):
        return x

    def uniform(limit: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * limit

    angle = uniform(max_degrees) * torch.pi / 180
    scale = 1 + uniform(max_scale)
    tx, ty = uniform(max_shift) * 2 / w, uniform(max_shift) * 2 / h  # in grid units (-1..1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)  # (N, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_cutout(x: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Cover one random ``size`` x ``size`` square of each image with its top-left pixel's value
    (the background), vectorized. x: (N, C, H, W) float."""
    n, _, h, w = x.shape
    if n == 0 or size <= 0:
        return x
    cy = torch.randint(0, h, (n, 1, 1), generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), generator=generator)
    ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
    inside = ((ys - cy).abs() <= size // 2) & ((xs - cx).abs() <= size // 2)  # (N, H, W)
    return torch.where(inside.unsqueeze(1), x[:, :, :1, :1].expand_as(x), x)


class ImageViews:
    """The two views of an unlabelled image that consistency training compares (FixMatch): a weak
    one (a small random shift) whose confident prediction becomes the pseudo-label, and a strong
    one (a larger shift, rotation, zoom and a cut-out square) that must be given the same label.

    Works on standardized pixel batches (N, C, H, W) float; picklable, so it travels to workers.
    ``cutout`` is the square's side as a fraction of the image's shorter side (0: none).
    """

    def __init__(self, weak_shift: int = 2, strong_shift: float = 3.0, degrees: float = 15.0, scale: float = 0.15,
                 cutout: float = 1 / 3) -> None:
        self.weak_shift, self.strong_shift, self.degrees, self.scale, self.cutout = (
            weak_shift, strong_shift, degrees, scale, cutout)

    def weak(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_shift(x, self.weak_shift, generator)

    def strong(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = random_affine(x, generator, max_shift=self.strong_shift, max_degrees=self.degrees, max_scale=self.scale)
        return random_cutout(x, round(self.cutout * min(x.shape[-2:])), generator)

    def describe(self) -> dict[str, Any]:
        return {"weak": {"shift": self.weak_shift},
                "strong": {"shift": self.strong_shift, "degrees": self.degrees, "scale": self.scale,
                           "cutout": round(self.cutout, 3)}}
