"""Image folders: class subfolders of PNG/JPEG/BMP files of any size, gray or colour.

Everything is brought to one :class:`ImageFormat` (channels, height, width) with pixel values
0-255, the scale the JSON API also speaks. Unreadable files are either dropped and reported or
raised, as the spec's ``on_bad_file`` says.

Uploaded images are bounded before they are decoded: Pillow opens lazily, so the header's width
and height are checked against a pixel limit (``serving.max_image_pixels``) first, and a small
file that would decode to gigabytes (a 12000x12000 palette PNG is 17 KB) is refused without
being decoded. Decoding then does no more than the model needs: JPEG decodes at a reduced scale,
palette and 1-bit images go straight to the channels the model takes, and a large image is
shrunk (box-averaged) before its transparency is composited.
"""

from __future__ import annotations

import io
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DataError, InputError

__all__ = ["IMAGE_SUFFIXES", "MAX_IMAGE_PIXELS", "ImageFormat", "decode_image", "decode_images", "open_image",
           "load_image_folder", "parse_pixels", "parse_npy_pixels", "json_type", "NPY_TYPE", "IMAGE_TYPES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
#: Pillow formats an upload may be (what the suffixes above mean); others are never parsed
UPLOAD_FORMATS = ("PNG", "JPEG", "BMP")
#: default largest upload, width x height (``serving.max_image_pixels``)
MAX_IMAGE_PIXELS = 40_000_000
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P;gray"}
_EXPECTED = "a PNG, JPEG or BMP image"
#: the content type of a NumPy ``.npy`` request body (``np.save`` of pixels 0-255)
NPY_TYPE = "application/x-npy"
#: content types of an image file sent as the whole request body
IMAGE_TYPES = ("image/png", "image/jpeg", "image/bmp")


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
    """PIL image -> uint8 array (C, H, W) in ``fmt``.

    Work is bounded by what the model needs: palette and 1-bit images go straight to the channels
    needed (never a full-size RGBA of a gray palette), and an image at least four times the
    model's size on an axis is box-reduced before its transparency is composited and it is resized.
    """
    want = "L" if fmt.channels == 1 else "RGB"
    if img.mode == "P":
        alpha = "transparency" in img.info or (img.palette is not None and img.palette.mode == "RGBA")
        img = img.convert(("LA" if want == "L" else "RGBA") if alpha else want)
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert(want)
    xf, yf = img.width // (2 * fmt.width), img.height // (2 * fmt.height)
    if xf > 1 or yf > 1:
        img = img.reduce((max(1, xf), max(1, yf)))
    if img.mode in ("RGBA", "LA"):
        # Composite transparency on white, the usual background of a drawn or scanned image.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(bg, rgba)
    img = img.convert(want)
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
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"not a readable PNG/JPEG/BMP image ({e.__class__.__name__}: {e})") from None
    return img


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.3g} megapixels"


def open_image(data: bytes, name: str = "upload", max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Open an upload lazily (its header only) and check its size before anything is decoded.

    Raises:
        InputError: empty, not a PNG/JPEG/BMP, or more than ``max_pixels`` pixels (including
            Pillow's decompression-bomb refusal); the message names ``name`` and the size.
    """
    limit = f"expected at most {_megapixels(max_pixels)} (serving.max_image_pixels)"
    if len(data) == 0:
        raise InputError(f"file {name!r}: empty file (0 bytes); expected {_EXPECTED}")
    try:
        img = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except Image.DecompressionBombError as e:
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"an image of {_megapixels(int(found.group(1)))}" if found else "an image too large to decode"
        raise InputError(f"file {name!r}: {size}, refused as a decompression bomb; {limit}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise InputError(f"file {name!r}: not a readable PNG/JPEG/BMP image ({e.__class__.__name__}: {e}); "
                         f"expected {_EXPECTED}") from None
    w, h = img.size
    if w * h > max_pixels:
        raise InputError(f"file {name!r}: a {w}×{h} image ({_megapixels(w * h)}); {limit}")
    if w < 1 or h < 1:
        raise InputError(f"file {name!r}: a {w}×{h} image (no pixels); expected {_EXPECTED}")
    return img


def _decode_opened(img: Image.Image, fmt: ImageFormat, name: str) -> np.ndarray:
    if img.format == "JPEG":  # decode at 1/2, 1/4 or 1/8 scale when the model needs far fewer pixels
        img.draft(None, (2 * fmt.width, 2 * fmt.height))
    try:
        img.load()
        return _to_array(img, fmt)
    except Image.DecompressionBombError as e:  # pragma: no cover - open_image refuses these first
        raise InputError(f"file {name!r}: refused as a decompression bomb ({e}); expected {_EXPECTED}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise InputError(f"file {name!r}: not a readable PNG/JPEG/BMP image ({e.__class__.__name__}: {e}); "
                         f"expected {_EXPECTED}") from None


def decode_image(data: bytes, fmt: ImageFormat, name: str = "upload",
                 max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode one uploaded image to a uint8 array (C, H, W) in ``fmt``.

    Raises:
        InputError: unreadable, not a PNG/JPEG/BMP, or larger than ``max_pixels`` (checked from
            the header, before decoding); the message names ``name``.
    """
    return _decode_opened(open_image(data, name, max_pixels), fmt, name)


def decode_images(files: list[tuple[str, bytes]], fmt: ImageFormat,
                  max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode uploads ``[(name, bytes), ...]`` -> uint8 (n, C, H, W) in ``fmt``.

    Every file's header is checked before any file is decoded, so a request holding one
    oversized image does no decoding work at all. Raises InputError as :func:`decode_image`.
    """
    opened = [(name, open_image(data, name, max_pixels)) for name, data in files]
    return np.stack([_decode_opened(img, fmt, name) for name, img in opened])


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


def json_type(v: Any) -> str:
    """How a JSON value is named in messages: its type, and the value itself only when short."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"a boolean ({str(v).lower()})"
    if isinstance(v, str):
        return f"a string ({v!r})" if len(v) <= 20 else f"a string of {len(v)} characters"
    if isinstance(v, dict):
        return "an object"
    if isinstance(v, list):
        return f"an array of {len(v)} items"
    if isinstance(v, (int, float)):
        return f"the number {v!r}" if len(repr(v)) <= 30 else f"an integer of {len(str(abs(v)))} digits"
    return type(v).__name__


_PLAIN_NUMBERS, _LIST = {int, float}, {list}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _non_number(value: list, max_numbers: int, max_depth: int = 3) -> str | None:
    """What is wrong with nested lists of numbers (deeper than ``max_depth``, more than
    ``max_numbers`` numbers, or a leaf that is not a number), or None. Stops at the first problem."""
    stack, count = [(value, 1)], 0
    while stack:
        items, depth = stack.pop()
        if depth > max_depth:
            return f"an array nested deeper than {max_depth} levels"
        kinds = set(map(type, items))  # one pass in C: a row of plain numbers needs no per-value check
        if kinds <= _PLAIN_NUMBERS:
            count += len(items)
            if count > max_numbers:
                return f"more than {max_numbers} numbers"
            continue
        if kinds == _LIST:
            stack.extend((v, depth + 1) for v in items)
            continue
        for v in items:
            if isinstance(v, list):
                stack.append((v, depth + 1))
            elif _is_number(v):
                count += 1
            else:
                return f"a non-numeric value, {json_type(v)}, where a number belongs"
        if count > max_numbers:
            return f"more than {max_numbers} numbers"
    return None


def parse_pixels(value: Any, fmt: ImageFormat, field: str = "pixels") -> np.ndarray:
    """JSON pixels -> float32 (C, H, W). Accepts a flat list of C*H*W numbers, [H][W] (gray) or [C][H][W].

    Only numbers count as pixels: booleans, strings (even "12") and nulls are refused, as are
    values outside 0-255 and more numbers than the model's format holds.

    Raises InputError naming the field, what was received and what was expected.
    """
    expected = (f"{fmt.size} numbers from 0 to 255 (flat), or nested as "
                + (f"[{fmt.height}][{fmt.width}]" if fmt.channels == 1 else
                   f"[{fmt.channels}][{fmt.height}][{fmt.width}]"))
    if not isinstance(value, list):
        raise InputError(f"field {field!r}: received {json_type(value)}; expected a JSON array of {expected}")
    problem = _non_number(value, fmt.size)
    if problem:
        raise InputError(f"field {field!r}: received {problem}; expected {expected}")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        raise InputError(f"field {field!r}: received a ragged array (rows of different lengths); "
                         f"expected {expected}") from None
    if arr.size == fmt.size and arr.ndim == 1:
        arr = arr.reshape(fmt.channels, fmt.height, fmt.width)
    elif arr.shape == (fmt.height, fmt.width) and fmt.channels == 1:
        arr = arr[None]
    elif arr.shape != (fmt.channels, fmt.height, fmt.width):
        raise InputError(f"field {field!r}: received an array of shape {list(arr.shape)}; expected {expected}")
    bad = ~np.isfinite(arr) | (arr < 0) | (arr > 255)
    if bad.any():
        raise InputError(f"field {field!r}: received a value of {float(arr[bad][0]):.6g}; expected pixel values "
                         "from 0 to 255")
    return arr.astype(np.float32)


def parse_npy_pixels(body: bytes, fmt: ImageFormat, max_items: int) -> tuple[np.ndarray, bool]:
    """An ``application/x-npy`` body (``np.save`` of pixels 0-255, any integer or float dtype) ->
    (float32 (n, C, H, W), whether it was a batch).

    One image is (C, H, W), (H, W) for gray, or C*H*W flat; a batch adds a leading dimension
    ((n, C, H, W), (n, H, W) gray, or (n, C*H*W)). Object arrays (pickles) are never loaded.
    Raises InputError naming the body, what was received and what was expected.
    """
    one = (fmt.channels, fmt.height, fmt.width)
    gray = fmt.channels == 1
    expected = (f"a .npy array (np.save) of pixels 0-255 shaped {list(one)}"
                + (f", [{fmt.height}, {fmt.width}]" if gray else "") + f" or [{fmt.size}] for one image, "
                f"with a leading batch dimension of 1 to {max_items} for several")
    try:
        arr = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as e:  # a bad header, a truncated array, a pickled object array
        raise InputError(f"request body: not a readable .npy array ({str(e)[:200]}); expected {expected}") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "uif":
        kind = f"dtype {arr.dtype}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise InputError(f"request body: received a .npy array of {kind}; expected numbers: {expected}")
    shape = tuple(arr.shape)
    if shape == one or (gray and shape == one[1:]) or shape == (fmt.size,):
        batch, x = False, arr.reshape(1, *one)
    elif len(shape) >= 2 and (shape[1:] == one or (gray and shape[1:] == one[1:]) or shape[1:] == (fmt.size,)):
        if not 1 <= shape[0] <= max_items:
            raise InputError(f"request body: received a batch of {shape[0]} images; expected 1 to {max_items}")
        batch, x = True, arr.reshape(shape[0], *one)
    else:
        raise InputError(f"request body: received a .npy array of shape {list(shape)}; expected {expected}")
    x = x.astype(np.float32)
    bad = ~np.isfinite(x) | (x < 0) | (x > 255)
    if bad.any():
        raise InputError(f"request body: received a value of {float(x[bad][0]):.6g}; expected pixel values "
                         "from 0 to 255")
    return np.ascontiguousarray(x), batch
