"""A model artifact is a directory that describes itself; nothing in it is pickled.

- ``manifest.json``: task, model config, class names, metrics, dataset fingerprint, parent
  version, training run, library versions.
- ``weights.safetensors``: the model's state dict.
- ``preprocessing.json``: the input format and the normalization fit on the training split.
"""

from __future__ import annotations

import json
import logging
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

__all__ = ["write_artifact", "load_artifact", "LoadedModel", "library_versions"]

log = logging.getLogger(__name__)

MANIFEST, WEIGHTS, PREPROCESSING = "manifest.json", "weights.safetensors", "preprocessing.json"


def library_versions() -> dict[str, str]:
    import fastapi
    import sklearn

    from .. import __version__

    return {"modelloop": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scikit-learn": sklearn.__version__, "fastapi": fastapi.__version__,
            "python": platform.python_version()}


def write_artifact(folder: Path, manifest: dict[str, Any], model: torch.nn.Module,
                   preprocessing: dict[str, Any], extra_files: dict[str, Path] | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=False)
    for name, src in (extra_files or {}).items():
        shutil.copyfile(src, folder / name)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    (folder / PREPROCESSING).write_text(json.dumps(preprocessing, indent=2))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))


@dataclass
class LoadedModel:
    """A registered model ready to predict: raw 0-255 pixels in, class probabilities out.

    ``run`` is the serving backend recorded in the manifest (PyTorch, ONNX Runtime, ...);
    ``model`` is always the PyTorch module, the reference.
    """

    version: str
    manifest: dict[str, Any]
    model: torch.nn.Module
    fmt: ImageFormat
    normalizer: Normalizer
    class_names: list[str]
    backend: str = "torch"
    run: Callable[[np.ndarray], np.ndarray] | None = None

    def predict_proba(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        """x: (N, C, H, W) pixels 0-255 (any numeric dtype) -> (N, K) probabilities."""
        if self.run is not None:
            arr = x.numpy() if isinstance(x, torch.Tensor) else x
            return torch.from_numpy(self.run(np.ascontiguousarray(arr, dtype=np.float32)))
        x = torch.as_tensor(x)
        return torch.softmax(batched_logits(self.model, self.normalizer.transform(x)), dim=1)


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
    model.load_state_dict(state)
    model.eval()
    norm = Normalizer.from_state(pre["normalizer"])
    backend = (manifest.get("serving") or {}).get("backend", "torch")
    if backend_override is not None:
        backend = backend_override
    from ..compress import ServingModule, make_runner

    module = ServingModule(model, norm.mean_, norm.std_)
    try:
        run = make_runner(backend, module, folder, threads=threads)
    except Exception as e:  # e.g. onnxruntime missing on this machine: the PyTorch reference still serves
        log.warning("model %s: backend %s unavailable here (%s); using torch", manifest["version"], backend, e)
        backend, run = "torch", make_runner("torch", module)
    return LoadedModel(manifest["version"], manifest, model, ImageFormat(**pre["format"]), norm,
                       list(pre["class_names"]), backend, run)
