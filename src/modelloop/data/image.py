"""Image folders: class subfolders of PNG/JPEG/BMP files of any size, gray or colour.

Everything is brought to one :class:`ImageFormat` (channels, height, width) with pixel values
0-255, the scale the JSON API also speaks. Unreadable files are either dropped and reported or
raised, as the spec's ``on_bad_file`` says.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, InputError

__all__ = ["IMAGE_SUFFIXES", "ImageFormat", "decode_image", "load_image_folder", "parse_pixels"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;gray"}


@dataclass(frozen=True)
class ImageFormat:
    """The one shape every image is brought to: (channels, height, width), values 0-255."""

    channels: int
    height: int
    width: int

    @property
    def size(self) -> int:
        return self.channels * self.height * self.width

    def to_dict(self) -> dict[str, int]:
        return {"channels": self.channels, "height": self.height, "width": self.width}


def _is_gray(img: Image.Image) -> bool:
    if img.mode == "P":
        return img.convert("RGB").convert("L").convert("RGB").tobytes() == img.convert("RGB").tobytes()
    return img.mode in _GRAY_MODES


def _to_array(img: Image.Image, fmt: ImageFormat) -> np.ndarray:
    """PIL image -> uint8 array (C, H, W) in ``fmt``."""
    if img.mode in ("RGBA", "LA", "P"):
        # Composite transparency on white, the usual background of a drawn or scanned image.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    img = img.convert("L" if fmt.channels == 1 else "RGB")
    if img.size != (fmt.width, fmt.height):
        img = img.resize((fmt.width, fmt.height), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if fmt.channels == 1 else arr.transpose(2, 0, 1)


def _open(data: bytes, name: str) -> Image.Image:
    if len(data) == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"not a readable PNG/JPEG/BMP image ({e.__class__.__name__}: {e})") from None
    return img


def decode_image(data: bytes, fmt: ImageFormat, name: str = "upload") -> np.ndarray:
    """Decode one uploaded image to a uint8 array (C, H, W) in ``fmt``. Raises InputError."""
    try:
        return _to_array(_open(data, name), fmt)
    except ValueError as e:
        raise InputError(f"file {name!r}: {e}; expected a PNG, JPEG or BMP image") from None


@dataclass
class FolderImages:
    x: np.ndarray  # (N, C, H, W) uint8
    y: np.ndarray  # (N,) int64
    class_names: list[str]
    files: list[str]
    fmt: ImageFormat
    dropped: list[dict[str, str]]


def load_image_folder(
    root: str | Path, image_size: tuple[int, int] | None = None, on_bad_file: str = "drop"
) -> FolderImages:
    """Read ``root/<class>/<image>`` into arrays.

    Raises:
        DataError: the folder is missing or empty, has fewer than two class subfolders, or (with
            ``on_bad_file='error'``) holds an unreadable image.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(
            f"data source {str(root)!r}: no such folder; expected a folder of class subfolders of images "
            "(PNG/JPEG/BMP) or builtin:NAME (builtin:seed-case, builtin:mnist784)"
        )
    if not root.is_dir():
        raise DataError(f"data source {str(root)!r}: is a file; expected a folder of class subfolders of images")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(
            f"data source {str(root)!r}: no class subfolders found; expected one subfolder per class, "
            "each holding that class's images"
        )
    if len(class_dirs) < 2:
        raise DataError(
            f"data source {str(root)!r}: found 1 class subfolder ({class_dirs[0].name!r}); "
            "expected at least 2 classes to classify"
        )

    dropped: list[dict[str, str]] = []
    opened: list[tuple[Image.Image, int, str]] = []
    for label, cdir in enumerate(class_dirs):
        files = sorted(p for p in cdir.rglob("*") if p.is_file() and not p.name.startswith("."))
        for f in files:
            if f.suffix.lower() not in IMAGE_SUFFIXES:
                dropped.append({"file": str(f), "reason": f"not an image file (suffix {f.suffix!r})"})
                continue
            try:
                img = _open(f.read_bytes(), str(f))
            except ValueError as e:
                if on_bad_file == "error":
                    raise DataError(f"image file {str(f)!r}: {e}; expected a PNG, JPEG or BMP image") from None
                dropped.append({"file": str(f), "reason": str(e)})
                continue
            opened.append((img, label, str(f)))

    if not opened:
        raise DataError(
            f"data source {str(root)!r}: no readable images in its class subfolders; expected PNG, JPEG or BMP files"
        )
    if image_size is None:
        (w, h), _ = Counter(img.size for img, _, _ in opened).most_common(1)[0]
    else:
        h, w = image_size
    channels = 1 if all(_is_gray(img) for img, _, _ in opened) else 3
    fmt = ImageFormat(channels, h, w)
    x = np.stack([_to_array(img, fmt) for img, _, _ in opened])
    y = np.array([label for _, label, _ in opened], dtype=np.int64)
    return FolderImages(x, y, [c.name for c in class_dirs], [f for _, _, f in opened], fmt, dropped)


def parse_pixels(value: Any, fmt: ImageFormat, field: str = "pixels") -> np.ndarray:
    """JSON pixels -> float32 (C, H, W). Accepts a flat list of C*H*W numbers, [H][W] (gray) or [C][H][W].

    Raises InputError naming the field, what was received and what was expected.
    """
    expected = (f"{fmt.size} numbers from 0 to 255 (flat), or nested as "
                + (f"[{fmt.height}][{fmt.width}]" if fmt.channels == 1 else
                   f"[{fmt.channels}][{fmt.height}][{fmt.width}]"))
    if not isinstance(value, list):
        raise InputError(f"field {field!r}: received {type(value).__name__}; expected a JSON array of {expected}")
    try:
        arr = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        raise InputError(f"field {field!r}: received a ragged or non-numeric array; expected {expected}") from None
    if arr.size == fmt.size and arr.ndim == 1:
        arr = arr.reshape(fmt.channels, fmt.height, fmt.width)
    elif arr.shape == (fmt.height, fmt.width) and fmt.channels == 1:
        arr = arr[None]
    elif arr.shape != (fmt.channels, fmt.height, fmt.width):
        raise InputError(f"field {field!r}: received an array of shape {list(arr.shape)}; expected {expected}")
    if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 255:
        bad = arr[~np.isfinite(arr) | (arr < 0) | (arr > 255)][0]
        raise InputError(f"field {field!r}: received a value of {bad!r}; expected pixel values from 0 to 255")
    return arr
