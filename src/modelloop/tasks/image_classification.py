"""Image classification: folders of images per class (or built-in digits) -> class labels.

Candidates: from-scratch networks on standardized pixels (linear, MLP, small CNN) and transfer
from EfficientNet-Lite0's ImageNet weights (frozen features + a linear head, or fine-tuning of
its last blocks). Transfer is considered by default where it pays: colour photos, or few
examples per class.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data import prepare_dataset
from ..data.image import IMAGE_TYPES, NPY_TYPE, decode_images, parse_npy_pixels, parse_pixels
from ..errors import DataError, InputError
from ..spec import DataSpec, ServingSpec
from .base import Candidate, fields_of, file_inputs
from .supervised import SupervisedTask

__all__ = ["ImageClassification", "FEW_PER_CLASS"]

#: below this many training images in the smallest class, transfer learning is considered by default
FEW_PER_CLASS = 100

_EFF = {"kind": "efficientnet", "image_size": 224}


class ImageClassification(SupervisedTask):
    unit = "images"
    name = "image-classification"
    input_kind = "image"
    json_example = '{"pixels": [...]}'
    uploads = "image files"
    binary_types = (NPY_TYPE, *IMAGE_TYPES)
    candidates = {
        "linear": Candidate("linear", "linear", {"kind": "pixels"}, about="logistic regression on pixels"),
        "mlp": Candidate("mlp", "mlp", {"kind": "pixels"}, about="one hidden layer on pixels"),
        "cnn": Candidate("cnn", "cnn", {"kind": "pixels"}, about="small convolutional network from scratch"),
        "efficientnet": Candidate("efficientnet", "linear", {**_EFF, "mode": "frozen"}, pretrained=True,
                                  about="frozen EfficientNet-Lite0 ImageNet features + linear head"),
        "efficientnet-finetune": Candidate(
            "efficientnet-finetune", "efficientnet-suffix", {**_EFF, "mode": "finetune", "finetune_blocks": 2},
            pretrained=True, about="EfficientNet-Lite0 with its last blocks fine-tuned"),
    }
    default_candidates = ("linear", "mlp", "cnn")

    def prepare(self, data: DataSpec, base_dir: Path):
        return prepare_dataset(data, base_dir)

    # Unlabelled served images: FixMatch-style consistency, on request. Measured on the founding case
    # (bench/learning.py) it matched the feedback-only retrain, not beat it, at about four times the
    # fit time: so "auto" leaves it off until a recipe is measured to help.
    semi_supervised = "on"

    def consistency_views(self, spec):
        """Weak view: the training shift (``data.augmentation.shift``, at least 1 pixel); strong
        view: a larger shift, rotation up to 15 degrees, zoom up to 15% and a cut-out square a
        third of the shorter side."""
        from ..data.transforms import ImageViews

        shift = max(1, spec.data.augmentation.shift)
        return ImageViews(weak_shift=shift, strong_shift=max(3.0, 1.5 * shift), degrees=15.0, scale=0.15,
                          cutout=1 / 3)

    def candidates_for(self, ds) -> tuple[list[str], dict[str, str]]:
        counts = ds.report.split_counts.get("train", {})
        fewest = min(counts.values()) if counts else 0
        colour = ds.fmt is not None and ds.fmt.channels == 3
        chosen = list(self.default_candidates)
        why: dict[str, str] = {}
        if colour or fewest < FEW_PER_CLASS:
            chosen.append("efficientnet")
            reason = "colour images" if colour else f"the smallest class has {fewest} training images"
            why["efficientnet"] = f"considered: {reason} (transfer pays with colour photos or few examples)"
            why["efficientnet-finetune"] = "not considered by default (slower); list it in selection.candidates"
        else:
            for c in ("efficientnet", "efficientnet-finetune"):
                why[c] = (f"not considered: gray images with at least {fewest} training images per class, where "
                          "small models from scratch do as well at a fraction of the cost; list it in "
                          "selection.candidates to try it")
        return chosen, why

    def collate(self, items: list[Any], like) -> tuple[Any, list[bool]]:
        import torch

        if isinstance(like, tuple):
            shape = like
        else:
            f = like.fmt
            shape = (f.channels, f.height, f.width)
        keep = [isinstance(a, np.ndarray) and a.shape == shape for a in items]
        arrays = [a for a, k in zip(items, keep, strict=True) if k]
        x = np.stack(arrays).astype(np.float32) if arrays else np.zeros((0, *shape), np.float32)
        return torch.from_numpy(x), keep

    def decode_uploads(self, files: list[tuple[str, bytes]], model, limits: ServingSpec) -> np.ndarray:
        """Image files -> (n, C, H, W) float32 in the model's format; sizes checked from the headers."""
        return decode_images(files, model.fmt, limits.max_image_pixels).astype(np.float32)

    def parse_binary(self, content_type: str, body: bytes, model, limits: ServingSpec) -> tuple[Any, bool]:
        """``application/x-npy``: pixels 0-255 as a NumPy array, one image or a batch (the fastest
        body to parse); an image file's bytes (``image/png``, ``image/jpeg``, ...) as the whole body."""
        if content_type == NPY_TYPE:
            return parse_npy_pixels(body, model.fmt, MAX_ITEMS)
        return self.decode_uploads([("request body", body)], model, limits), False

    def parse_json(self, body: Any, model, limits: ServingSpec | None = None) -> tuple[Any, bool]:
        fmt = model.fmt
        if isinstance(body, dict):
            if "instances" in body:
                items = body["instances"]
                _check_items(items, "images")
                return np.stack([parse_pixels(v, fmt, f"instances[{i}]") for i, v in enumerate(items)]), True
            if "pixels" not in body:
                raise InputError(f"request body: received fields {fields_of(body)}; expected a field 'pixels' "
                                 "(one image) or 'instances' (a list)")
            body = body["pixels"]
        return parse_pixels(body, fmt)[None], False

    def describe_input(self, model) -> dict[str, Any]:
        return {"format": model.fmt.to_dict()}

    def request_schema(self, model, limits: ServingSpec | None = None) -> dict[str, Any]:
        fmt = getattr(model, "fmt", None)
        pixel = {"type": "number", "minimum": 0, "maximum": 255}
        flat: dict[str, Any] = {"type": "array", "items": pixel, "description": "C*H*W pixel values, 0-255"}
        nested = {"type": "array", "items": {"type": "array", "items": pixel}, "description": "[H][W] (gray)"}
        if fmt is not None:
            flat.update(minItems=fmt.size, maxItems=fmt.size)
            nested.update(minItems=fmt.height, maxItems=fmt.height)
            nested["items"].update(minItems=fmt.width, maxItems=fmt.width)
        one = {"anyOf": [flat, nested]} if fmt is None or fmt.channels == 1 else flat
        return {"anyOf": [
            {"type": "object", "required": ["pixels"], "properties": {"pixels": one}},
            {"type": "object", "required": ["instances"], "properties": {"instances": {
                "type": "array", "minItems": 1, "maxItems": MAX_ITEMS, "items": one}}},
            one]}

    # -- projects and the command line -------------------------------------------------------
    default_data = "builtin:seed-case"

    def check_source(self, source: str, base: Path) -> None:
        from ..data.builtin import BUILTINS

        if source.startswith("builtin:"):
            if source.removeprefix("builtin:") not in BUILTINS:
                raise DataError(f"data source {source!r}: unknown built-in dataset for {self.name}; expected one of "
                                + ", ".join(f"builtin:{n}" for n in BUILTINS))
            return
        path = Path(source) if Path(source).is_absolute() else base / source
        if not path.is_dir():
            raise DataError(f"data source {source!r}: no such folder; expected a folder of class subfolders of "
                            "images (PNG/JPEG/BMP) or builtin:NAME ("
                            + ", ".join(f"builtin:{n}" for n in BUILTINS) + ")")

    def offline_inputs(self, files: list[Path], texts: list[str], rows: list[str]) -> tuple[list[str], Any, str]:
        return file_inputs(files, "image files", "an image model", "a PNG, JPEG or BMP image")

    def predict_offline(self, model, inputs: Any) -> list[dict[str, Any]]:
        """Image file paths or pixel arrays (one image (C, H, W) / (H, W) / flat, or a batch (N, ...)),
        values 0-255."""
        import torch

        from ..data.image import decode_image

        fmt = model.fmt
        if isinstance(inputs, (str, Path)) or (isinstance(inputs, list) and inputs and
                                               isinstance(inputs[0], (str, Path))):
            files = [inputs] if isinstance(inputs, (str, Path)) else inputs
            x = np.stack([decode_image(Path(f).read_bytes(), fmt, str(f)) for f in files]).astype(np.float32)
        else:
            arr = np.asarray(inputs, dtype=np.float32)
            if arr.size % fmt.size != 0:
                raise InputError(f"inputs: received {arr.size} values (shape {list(arr.shape)}); expected a "
                                 f"multiple of {fmt.size} ({fmt.channels}x{fmt.height}x{fmt.width} pixels)")
            x = arr.reshape(-1, fmt.channels, fmt.height, fmt.width)
        return self.answers(model, model.predict_proba(torch.from_numpy(x)).numpy())


MAX_ITEMS = 1024


def _check_items(items: Any, what: str, field: str = "instances") -> None:
    from ..data.image import json_type

    if not isinstance(items, list) or not items or len(items) > MAX_ITEMS:
        got = f"an array of {len(items)} items" if isinstance(items, list) else json_type(items)
        raise InputError(f"field {field!r}: received {got}; expected a list of 1 to {MAX_ITEMS} {what}")
