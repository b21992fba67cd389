"""A model artifact is a directory that describes itself; nothing in it is pickled.

- ``manifest.json``: task, model config, class names, metrics, dataset fingerprint, parent
  version, training run, library versions.
- ``weights.safetensors``: the model's state dict.
- ``preprocessing.json``: the input format and the normalization fit on the training split.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..data.image import ImageFormat
from ..data.transforms import Normalizer
from ..errors import RegistryError
from ..models import batched_logits, build_model

__all__ = ["write_artifact", "load_artifact", "LoadedModel", "library_versions"]

MANIFEST, WEIGHTS, PREPROCESSING = "manifest.json", "weights.safetensors", "preprocessing.json"


def library_versions() -> dict[str, str]:
    import fastapi
    import sklearn

    from .. import __version__

    return {"modelloop": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "fastapi": fastapi.__version__,
            "python": platform.python_version()}


def write_artifact(folder: Path, manifest: dict[str, Any], model: torch.nn.Module,
                   preprocessing: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=False)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    (folder / PREPROCESSING).write_text(json.dumps(preprocessing, indent=2))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


@dataclass
class LoadedModel:
    """A registered model ready to predict: raw 0-255 pixels in, class probabilities out."""

    version: str
    manifest: dict[str, Any]
    model: torch.nn.Module
    fmt: ImageFormat
    normalizer: Normalizer
    class_names: list[str]

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) pixels 0-255 (any numeric dtype) -> (N, K) probabilities."""
        return torch.softmax(batched_logits(self.model, self.normalizer.transform(x)), dim=1)


def load_artifact(folder: Path) -> LoadedModel:
    """Rebuild a model from its artifact directory (safetensors: loading runs no code)."""
    missing = [name for name in (MANIFEST, WEIGHTS, PREPROCESSING) if not (folder / name).is_file()]
    if missing:
        raise RegistryError(f"model artifact {str(folder)!r}: missing {', '.join(missing)}; "
                            f"expected {MANIFEST}, {WEIGHTS} and {PREPROCESSING}")
    manifest = json.loads((folder / MANIFEST).read_text())
    pre = json.loads((folder / PREPROCESSING).read_text())
    state = load_file(str(folder / WEIGHTS))
    model = build_model(manifest["model"])
    model.load_state_dict(state)
    model.eval()
    return LoadedModel(manifest["version"], manifest, model, ImageFormat(**pre["format"]),
                       Normalizer.from_state(pre["normalizer"]), list(pre["class_names"]))
