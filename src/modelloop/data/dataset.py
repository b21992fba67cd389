"""From a data source to a frozen, fingerprinted train/validation/test dataset.

``prepare_dataset`` loads the source, validates and cleans it (unreadable files, duplicates,
constant images: each drop listed with its reason), checks every class has enough images and
splits it stratified with a fixed seed. The result is saved in the project
(``.modelloop/data/<fingerprint>.safetensors``) so that retraining and the gate evaluate on the
very same held-out test images.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ..errors import DataError
from ..spec import DataSpec
from .builtin import load_builtin
from .image import ImageFormat, load_image_folder

__all__ = ["DataReport", "Dataset", "prepare_dataset", "prepare_text_dataset", "stratified_split", "fingerprint"]

SPLITS = ("train", "val", "test")


@dataclass
class DataReport:
    """What the cleaning step saw and did."""

    source: str
    found: int = 0
    kept: int = 0
    dropped: list[dict[str, str]] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)
    split_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    image_format: dict[str, int] = field(default_factory=dict)
    text: dict[str, Any] = field(default_factory=dict)  # text sources: truncation and length statistics
    audio: dict[str, Any] = field(default_factory=dict)  # audio sources: clip format and augmentation
    table: dict[str, Any] = field(default_factory=dict)  # tables: target and feature columns, missing cells

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pack_texts(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> (uint8 UTF-8 bytes, int64 end offsets): a tensor form safetensors can store."""
    encoded = [t.encode("utf-8") for t in texts]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64) if encoded else np.zeros(0, np.int64)
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return torch.from_numpy(data), torch.from_numpy(ends)


def _unpack_texts(data: torch.Tensor, ends: torch.Tensor) -> list[str]:
    raw = data.numpy().tobytes()
    starts = [0, *ends.tolist()[:-1]]
    return [raw[a:b].decode("utf-8") for a, b in zip(starts, ends.tolist(), strict=True)]


@dataclass
class Dataset:
    """Frozen splits and int64 labels. Images (``kind`` "image"): uint8 tensors (N, C, H, W); texts
    ("text"): lists of str; audio ("audio"): float32 16 kHz waveforms (N, 1, T); tables ("tabular"):
    lists of row dicts ``{column: float | str | None}``."""

    splits: dict[str, tuple[Any, torch.Tensor]]
    class_names: list[str]
    fmt: ImageFormat | None
    report: DataReport
    fingerprint: str
    kind: str = "image"

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {}
        for name, (x, y) in self.splits.items():
            if self.kind == "text":
                tensors[f"{name}_x_bytes"], tensors[f"{name}_x_ends"] = _pack_texts(x)
            elif self.kind == "tabular":  # rows as JSON lines, packed like texts
                tensors[f"{name}_x_bytes"], tensors[f"{name}_x_ends"] = _pack_texts([json.dumps(r) for r in x])
            else:
                tensors[f"{name}_x"] = x.contiguous()
            tensors[f"{name}_y"] = y.contiguous()
        path = folder / f"{self.fingerprint}.safetensors"
        meta = {
            "kind": self.kind,
            "class_names": json.dumps(self.class_names),
            "format": json.dumps(self.fmt.to_dict() if self.fmt else None),
            "report": json.dumps(self.report.to_dict()),
        }
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=meta)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, folder: str | Path, fp: str) -> Dataset:
        from safetensors import safe_open

        path = Path(folder) / f"{fp}.safetensors"
        if not path.is_file():
            raise DataError(f"dataset snapshot {str(path)!r}: missing; expected the file written by 'modelloop run'")
        with safe_open(str(path), "pt") as f:
            meta = f.metadata()
        t = load_file(str(path))
        kind = meta.get("kind", "image")
        if kind == "text":
            splits = {s: (_unpack_texts(t[f"{s}_x_bytes"], t[f"{s}_x_ends"]), t[f"{s}_y"]) for s in SPLITS}
        elif kind == "tabular":
            splits = {s: ([json.loads(r) for r in _unpack_texts(t[f"{s}_x_bytes"], t[f"{s}_x_ends"])], t[f"{s}_y"])
                      for s in SPLITS}
        else:
            splits = {s: (t[f"{s}_x"], t[f"{s}_y"]) for s in SPLITS}
        report = DataReport(**json.loads(meta["report"]))
        fmt = json.loads(meta["format"])
        return cls(splits, json.loads(meta["class_names"]), ImageFormat(**fmt) if fmt else None, report, fp, kind)


def fingerprint(splits: dict[str, tuple[Any, torch.Tensor]], class_names: list[str]) -> str:
    """A content hash of every split's inputs (pixels, texts or table rows) and labels and of the class names."""
    h = hashlib.sha256(json.dumps(class_names).encode())
    for name in sorted(splits):
        x, y = splits[name]
        h.update(name.encode())
        if isinstance(x, list):
            for t in x:  # texts, or table rows (dicts) as JSON
                h.update((t if isinstance(t, str) else json.dumps(t)).encode("utf-8") + b"\x00")
        else:
            h.update(x.contiguous().numpy().tobytes())
        h.update(y.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _clean(x: np.ndarray, y: np.ndarray, files: list[str], class_names: list[str]) -> tuple[np.ndarray, list[dict]]:
    """Mask of images to keep, and the reasons for those dropped (duplicates, constant images)."""
    keep = np.ones(len(y), dtype=bool)
    dropped: list[dict[str, str]] = []
    flat = x.reshape(len(x), -1)
    const = flat.min(axis=1) == flat.max(axis=1)
    for i in np.flatnonzero(const):
        keep[i] = False
        dropped.append({"file": files[i], "reason": f"constant image (every pixel = {int(flat[i, 0])})"})
    seen: dict[bytes, int] = {}
    for i in np.flatnonzero(keep):
        key = hashlib.sha1(flat[i].tobytes()).digest()
        if key in seen:
            j = seen[key]
            keep[i] = False
            if y[i] == y[j]:
                reason = f"duplicate of {files[j]}"
            else:
                reason = (
                    f"duplicate of {files[j]} with a different label "
                    f"({class_names[y[i]]!r} vs {class_names[y[j]]!r})"
                )
            dropped.append({"file": files[i], "reason": reason})
        else:
            seen[key] = i
    return keep, dropped


def stratified_split(y: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split indices per class with a fixed seed.

    Every class keeps at least one training example; with two examples it gets one in train and
    one in the first held-out split named in ``fractions``; with three or more, every split gets
    at least one.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {"train": [], **{k: [] for k in fractions}}
    for cls in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == cls))
        n, start = len(idx), 0
        for k, frac in fractions.items():
            want = int(round(n * frac))
            room = n - start - 1  # leave one for training
            take = min(max(want, 1 if room >= 1 else 0), room)
            out[k].append(idx[start : start + take])
            start += take
        out["train"].append(idx[start:])
    return {k: np.sort(np.concatenate(v)) for k, v in out.items()}


def prepare_dataset(data: DataSpec, base_dir: str | Path = ".") -> Dataset:
    """Load, validate, clean and split the source named by ``data``.

    Raises:
        DataError: the source is missing, empty, unreadable, or a class has fewer than 2 images.
    """
    source = data.source
    fixed: dict[str, np.ndarray] | None = None
    if source.startswith("builtin:"):
        b = load_builtin(source.removeprefix("builtin:"))
        x, y, class_names, fmt, files, dropped = b.x, b.y, b.class_names, b.fmt, b.files, []
        fixed = b.fixed_split
        if data.image_size is not None and tuple(data.image_size) != (fmt.height, fmt.width):
            raise DataError(
                f"field 'data.image_size': received {list(data.image_size)}; built-in {source} images are "
                f"[{fmt.height}, {fmt.width}] (leave image_size unset)"
            )
    else:
        path = Path(source)
        if not path.is_absolute():
            path = Path(base_dir) / path
        f = load_image_folder(path, data.image_size, data.on_bad_file)
        x, y, class_names, fmt, files, dropped = f.x, f.y, f.class_names, f.fmt, f.files, f.dropped

    report = DataReport(source=source, found=len(y) + len(dropped), image_format=fmt.to_dict())
    keep, more = _clean(x, y, files, class_names)
    report.dropped = dropped + more
    kept_idx = np.flatnonzero(keep)
    x, y = x[kept_idx], y[kept_idx]
    report.kept = len(y)
    counts = np.bincount(y, minlength=len(class_names))
    report.class_counts = {c: int(n) for c, n in zip(class_names, counts, strict=True)}
    few = [(c, int(n)) for c, n in zip(class_names, counts, strict=True) if n < 2]
    if few:
        where = source if source.startswith("builtin:") else str(Path(source))
        detail = ", ".join(f"class folder {str(Path(where) / c)!r} has {n} usable image{'s' if n != 1 else ''}"
                           for c, n in few)
        raise DataError(f"data source {where!r}: {detail}; expected at least 2 images per class")

    frac_val, frac_test = data.split.validation, data.split.test
    if fixed is not None:
        # Remap the dataset's own split to the images kept after cleaning.
        pos = -np.ones(len(keep), dtype=np.int64)
        pos[kept_idx] = np.arange(len(kept_idx))
        train_pool = pos[fixed["train"]][pos[fixed["train"]] >= 0]
        test_idx = pos[fixed["test"]][pos[fixed["test"]] >= 0]
        inner = stratified_split(y[train_pool], {"val": frac_val}, data.split.seed)
        idx = {"train": train_pool[inner["train"]], "val": train_pool[inner["val"]], "test": test_idx}
    else:
        idx = stratified_split(y, {"test": frac_test, "val": frac_val}, data.split.seed)

    splits = {s: (torch.from_numpy(np.ascontiguousarray(x[idx[s]])), torch.from_numpy(y[idx[s]])) for s in SPLITS}
    report.split_counts = {
        s: {c: int(n) for c, n in zip(class_names, np.bincount(y[idx[s]], minlength=len(class_names)), strict=True)}
        for s in SPLITS
    }
    return Dataset(splits, class_names, fmt, report, fingerprint(splits, class_names))


def prepare_text_dataset(data: DataSpec, base_dir: str | Path = ".") -> Dataset:
    """Load, validate, clean and split a text source (CSV/TSV/JSONL/Parquet or builtin:rotten-tomatoes).

    Raises:
        DataError: the source is missing or unreadable, a column is missing, a row is broken, or
            there are fewer than 2 classes or a class with fewer than 2 texts.
    """
    from .text import check_classes, load_rotten_tomatoes, load_text_table

    source = data.source
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        if name != "rotten-tomatoes":
            raise DataError(f"field 'data.source': received {source!r}; expected a CSV/TSV/JSONL/Parquet file or "
                            "builtin:rotten-tomatoes for text-classification")
        table = load_rotten_tomatoes()
    else:
        path = Path(source)
        if not path.is_absolute():
            path = Path(base_dir) / path
        table = load_text_table(path, text_column=data.text_column, label_column=data.label_column)
    class_names = check_classes(table.labels, source)
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index[lab] for lab in table.labels], dtype=np.int64)
    texts = list(table.texts)
    idx = stratified_split(y, {"test": data.split.test, "val": data.split.validation}, data.split.seed)
    splits = {s: ([texts[i] for i in idx[s]], torch.from_numpy(y[idx[s]])) for s in SPLITS}
    lengths = np.array([len(t) for t in texts]) if texts else np.zeros(1)
    report = DataReport(
        source=source, found=len(texts) + len(table.dropped), kept=len(texts), dropped=list(table.dropped),
        class_counts={c: int(n) for c, n in zip(class_names, np.bincount(y, minlength=len(class_names)),
                                                strict=True)},
        split_counts={s: {c: int(n) for c, n in zip(class_names, np.bincount(y[idx[s]], minlength=len(class_names)),
                                                    strict=True)} for s in SPLITS},
        text={"truncated": int(table.truncated), "median_chars": float(np.median(lengths)),
              "max_chars": int(lengths.max())},
    )
    return Dataset(splits, class_names, None, report, fingerprint(splits, class_names), kind="text")
