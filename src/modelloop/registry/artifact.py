"""A model artifact is a directory that describes itself; nothing in it is pickled.

- ``manifest.json``: task, model config, class names, metrics, dataset fingerprint, parent
  version, training run, library versions.
- ``weights.safetensors``: the model's state dict.
- ``preprocessing.json``: the featurizer (kind, settings, what it learned on the training split:
  pixel statistics, a TF-IDF vocabulary), the input format of image models, the class names.
  Pretrained weights a featurizer runs come from their installed package, not the artifact.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
from collections.abc import Callable
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
from ..settings import PRIVATE_DIR, PRIVATE_FILE

__all__ = ["write_artifact", "seal", "fsync_dir", "load_artifact", "LoadedModel", "library_versions",
           "trainable_state", "featurizer_runner", "read_featurizer"]

log = logging.getLogger(__name__)

MANIFEST, WEIGHTS, PREPROCESSING = "manifest.json", "weights.safetensors", "preprocessing.json"


def library_versions() -> dict[str, str]:
    import fastapi
    import sklearn

    from .. import __version__

    return {"modelloop": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "fastapi": fastapi.__version__,
            "python": platform.python_version()}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What an artifact stores: a fine-tuned pretrained model stores only what training changed."""
    state = model.trainable_state_dict() if hasattr(model, "trainable_state_dict") else model.state_dict()
    return {k: v.detach().contiguous() for k, v in state.items()}


def write_artifact(folder: Path, manifest: dict[str, Any], model: torch.nn.Module,
                   preprocessing: dict[str, Any], extra_files: dict[str, Path] | None = None,
                   fsync: bool = False) -> None:
    """Write an artifact into a new folder (mode 0700, files 0600), the manifest last.

    With ``fsync`` every file and the folder are on disk when this returns (the registry renames
    the folder into place only then).
    """
    folder.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=False)
    folder.chmod(PRIVATE_DIR)
    for name, src in (extra_files or {}).items():
        shutil.copyfile(src, folder / name)
    state = trainable_state(model)
    save_file(state, str(folder / WEIGHTS))
    (folder / PREPROCESSING).write_text(json.dumps(preprocessing, indent=2))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    seal(folder, fsync)


def seal(folder: Path, fsync: bool = True) -> None:
    """Make every file of ``folder`` 0600 and, with ``fsync``, flush the files and the folder to disk."""
    for p in folder.iterdir():
        if p.is_file():
            p.chmod(PRIVATE_FILE)
            if fsync:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
    if fsync:
        fsync_dir(folder)


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename into it, a new file) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class LoadedModel:
    """A registered model ready to predict: raw inputs in (pixels 0-255 (N, C, H, W), or a list of
    texts), class probabilities out.

    ``run`` is the serving backend recorded in the manifest (PyTorch, ONNX Runtime, ...) over raw
    inputs; ``model`` is always the PyTorch network, the reference, over ``featurizer`` outputs.
    """

    version: str
    manifest: dict[str, Any]
    model: torch.nn.Module
    fmt: ImageFormat | None
    featurizer: Any
    class_names: list[str]
    backend: str = "torch"
    run: Callable[[Any], np.ndarray] | None = None

    @property
    def task(self) -> str:
        return self.manifest.get("task", "image-classification")

    @property
    def regression(self) -> bool:
        """One value per input (``predict_proba`` then gives (N, 1) values, not probabilities)."""
        return bool(self.manifest.get("model", {}).get("target"))

    @property
    def normalizer(self) -> Normalizer:
        """The pixel statistics of an image model trained from scratch."""
        return self.featurizer.normalizer

    def features(self, x: Any) -> torch.Tensor:
        """Raw inputs -> what the network takes."""
        return self.featurizer.transform(x)

    def predict_proba(self, x: Any) -> torch.Tensor:
        """Raw inputs (N items) -> (N, K) probabilities, through the serving backend; for a
        regression model (N, 1) predicted values."""
        if self.run is not None:
            if isinstance(x, (torch.Tensor, np.ndarray)):
                arr = x.numpy() if isinstance(x, torch.Tensor) else x
                x = np.ascontiguousarray(arr, dtype=np.float32)
            return torch.from_numpy(self.run(x))
        out = batched_logits(self.model, self.features(x))
        return out.float() if self.regression else torch.softmax(out, dim=1)


def featurizer_runner(model: torch.nn.Module, featurizer: Any, regression: bool = False
                      ) -> Callable[[Any], np.ndarray]:
    """The torch serving function of a model whose featurizer is not exportable (texts, pretrained,
    tables): probabilities (N, K), or values (N, 1) for regression."""

    def run(x: Any) -> np.ndarray:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        out = batched_logits(model, featurizer.transform(x))
        return out.float().numpy() if regression else torch.softmax(out, dim=1).numpy()

    return run


def read_featurizer(pre: dict[str, Any]):
    from ..tasks.features import PixelFeaturizer, featurizer_from_config

    if "featurizer" in pre:
        return featurizer_from_config(pre["featurizer"])
    return PixelFeaturizer(Normalizer.from_state(pre["normalizer"]))  # artifacts from before featurizers


def load_artifact(folder: Path, backend_override: str | None = None, threads: int = 1) -> LoadedModel:
    """Rebuild a model from its artifact directory (safetensors: loading runs no code)."""
    missing = [name for name in (MANIFEST, WEIGHTS, PREPROCESSING) if not (folder / name).is_file()]
    if missing:
        raise RegistryError(f"model artifact {str(folder)!r}: missing {', '.join(missing)}; "
                            f"expected {MANIFEST}, {WEIGHTS} and {PREPROCESSING}")
    manifest = json.loads((folder / MANIFEST).read_text())
    pre = json.loads((folder / PREPROCESSING).read_text())
    state = load_file(str(folder / WEIGHTS))
    model = build_model(manifest["model"])
    if hasattr(model, "load_trainable_state"):
        model.load_trainable_state(state)
    else:
        model.load_state_dict(state)
    model.eval()
    featurizer = read_featurizer(pre)
    fmt = ImageFormat(**pre["format"]) if pre.get("format") else None
    names = list(pre["class_names"])
    if not getattr(featurizer, "exportable", False):
        return LoadedModel(manifest["version"], manifest, model, fmt, featurizer, names, "torch",
                           featurizer_runner(model, featurizer, bool(manifest["model"].get("target"))))
    backend = (manifest.get("serving") or {}).get("backend", "torch")
    if backend_override is not None:
        backend = backend_override
    from ..compress import ServingModule, make_runner

    norm = featurizer.normalizer
    module = ServingModule(model, norm.mean_, norm.std_)
    try:
        run = make_runner(backend, module, folder, threads=threads)
    except Exception as e:  # e.g. onnxruntime missing on this machine: the PyTorch reference still serves
        log.warning("model %s: backend %s unavailable here (%s); using torch", manifest["version"], backend, e)
        backend, run = "torch", make_runner("torch", module)
    return LoadedModel(manifest["version"], manifest, model, fmt, featurizer, names, backend, run)
