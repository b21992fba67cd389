"""A sentence encoder exported to ONNX and run by ONNX Runtime: the fast path of TextEncoder.

Read top to bottom:

- :class:`PooledEncoder`: the transformer + mean pooling over the attention mask + L2 norm, as one
  module, so the exported graph returns finished embeddings: (B, L) int64 ids and mask -> (B, D).
- :func:`ensure_export`: export it once per model into a folder (dynamic batch and sequence
  axes, one self-contained ``model.onnx`` plus ``meta.json``), written under a temporary name and
  renamed, so a reader never sees half an export and two processes may race safely.
- :func:`check_int8`: dynamic int8 quantization of the MatMul weights (``model.int8.onnx``),
  accepted only when the cosine between int8 and fp32 embeddings is at least a threshold for
  *every* text of a check set; the minimum is recorded in ``int8.json`` so it is measured once.
- :class:`OnnxRunner`: one ONNX Runtime session per intra-op thread count (a session's thread
  pool is fixed when it is created), so the caller's thread probe can compare them.

Which backend runs, and with how many threads, is decided by :class:`~.text_encoder.TextEncoder`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..hardware import ort_session

__all__ = ["FORMAT", "INT8_FILE", "MODEL_FILE", "Int8Check", "OnnxRunner", "PooledEncoder", "check_int8",
           "ensure_export", "onnx_available"]

log = logging.getLogger(__name__)

FORMAT = "modelloop-text-onnx/1"
MODEL_FILE, INT8_FILE, META_FILE, INT8_META_FILE = "model.onnx", "model.int8.onnx", "meta.json", "int8.json"
_OPSET = 17


def onnx_available() -> bool:
    """True when ONNX Runtime and the ONNX package can be imported (both are needed: run and export)."""
    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


class PooledEncoder(nn.Module):
    """Transformer + masked mean pooling + L2 norm: (B, L) input_ids, (B, L) mask -> (B, D) unit vectors."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, L, D)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)                                   # (B, L, 1)
        pooled = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)                     # (B, D)
        return F.normalize(pooled, p=2, dim=1)


def _export_file(module: PooledEncoder, path: Path) -> str:
    """Write ``module`` to ``path`` with dynamic batch and sequence axes; returns the exporter used.

    The TorchScript-based exporter (``dynamo=False``) takes ~5 s for MiniLM here against ~20 s for
    the dynamo exporter, with the same outputs; the dynamo one is the fallback for torch releases
    that drop the former.
    """
    ids = torch.tensor([[101, 7592, 2088, 102, 0], [101, 2307, 102, 0, 0]], dtype=torch.long)   # (2, 5)
    mask = (ids != 0).long()
    names = {"input_names": ["input_ids", "attention_mask"], "output_names": ["embeddings"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings: nothing for a user to act on
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        try:
            axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                    "embeddings": {0: "batch"}}
            torch.onnx.export(module, (ids, mask), str(path), dynamo=False, dynamic_axes=axes,
                              opset_version=_OPSET, **names)
            return "torchscript"
        except Exception as exc:  # noqa: BLE001 (any failure of the old exporter: try the new one)
            log.info("ONNX export (dynamo=False) failed (%s); trying the dynamo exporter", exc)
            path.unlink(missing_ok=True)
        batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=1, max=512)
        program = torch.onnx.export(module, (ids, mask), dynamo=True, dynamic_shapes=({0: batch, 1: seq},
                                    {0: batch, 1: seq}), verbose=False, **names)
        program.save(str(path), external_data=False)
        return "dynamo"


def ensure_export(folder: Path, load_transformer: Callable[[], nn.Module], describe: dict[str, Any]) -> bool:
    """Make sure ``folder`` holds the exported encoder; returns True when it was exported now.

    Args:
        folder: the model's export folder (its name should be a hash of what the export depends on).
        load_transformer: returns the transformers model (called only when exporting).
        describe: JSON-able facts about the source, stored in ``meta.json`` (e.g. model name).
    """
    if (folder / MODEL_FILE).is_file() and (folder / META_FILE).is_file():
        return False
    folder.parent.mkdir(parents=True, exist_ok=True)
    failed = folder.parent / f"{folder.name}.failed.json"
    if failed.is_file():  # this export failed before, with this torch: do not pay for it on every load
        try:
            why = json.loads(failed.read_text())
        except (OSError, ValueError):
            why = {}
        if why.get("torch") == torch.__version__:
            raise RuntimeError(f"the export failed before ({why.get('error', 'unknown error')}); delete "
                               f"{failed} to try again")
    _sweep(folder.parent)
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    try:
        start = time.perf_counter()
        module = PooledEncoder(load_transformer()).eval()
        try:
            exporter = _export_file(module, tmp / MODEL_FILE)
        except Exception as exc:
            failed.write_text(json.dumps({"torch": torch.__version__, "error": f"{type(exc).__name__}: "
                                                                             f"{str(exc)[:300]}"}))
            raise
        meta = {"format": FORMAT, "exporter": exporter, "opset": _OPSET, "torch": torch.__version__,
                "dim": int(module.transformer.config.hidden_size), **describe}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))
        if folder.is_dir() and not (folder / MODEL_FILE).is_file():  # a damaged export: replace it
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.rename(tmp, folder)  # atomic; fails when another process finished first
        except OSError:
            if not (folder / MODEL_FILE).is_file():
                raise
            return False
        log.info("exported %s to ONNX in %.1f s: %s", describe.get("model", "encoder"),
                 time.perf_counter() - start, folder)
        return True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sweep(parent: Path, older_than_s: float = 3600.0) -> None:
    """Remove temporary export folders and files a killed process left behind (an hour old or more)."""
    now = time.time()
    for leftover in parent.glob(".*.tmp"):
        try:
            if now - leftover.stat().st_mtime > older_than_s:
                if leftover.is_dir():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink()
        except OSError:
            pass  # another process removed it first


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / META_FILE).read_text())


class OnnxRunner:
    """ONNX Runtime sessions of one model file, one per intra-op thread count, created on first use."""

    def __init__(self, path: Path) -> None:
        import onnxruntime  # noqa: F401 (fail here, at load, when it is missing)

        self.path = Path(path)
        self._sessions: dict[int, Any] = {}

    def session(self, threads: int) -> Any:
        if threads not in self._sessions:
            self._sessions[threads] = ort_session(self.path, threads)
        return self._sessions[threads]

    def run(self, input_ids: np.ndarray, mask: np.ndarray, threads: int) -> np.ndarray:
        """(B, L) int64 ids and mask -> (B, D) float32 unit vectors."""
        return self.session(threads).run(None, {"input_ids": input_ids, "attention_mask": mask})[0]


@dataclass
class Int8Check:
    """The int8 model's acceptance: min cosine to fp32 over the check set, and the verdict."""

    min_cosine: float
    threshold: float
    texts: int
    accepted: bool
    path: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _digest(batches: list[tuple[np.ndarray, np.ndarray]]) -> str:
    h = hashlib.sha256()
    for ids, mask in batches:
        h.update(np.ascontiguousarray(ids).tobytes())
        h.update(np.ascontiguousarray(mask).tobytes())
    return h.hexdigest()[:16]


def check_int8(folder: Path, fp32: OnnxRunner, batches: list[tuple[np.ndarray, np.ndarray]],
               threshold: float) -> Int8Check:
    """Quantize (once) and compare with fp32 on ``batches`` (once per check set; recorded in int8.json).

    Only the MatMul weights are quantized, per output channel: quantizing the embedding tables as
    well moved MiniLM's embeddings much further (min cosine 0.92 vs 0.98 on review snippets).
    """
    path = folder / INT8_FILE
    if not path.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = folder / f".{INT8_FILE}.{uuid.uuid4().hex[:8]}.tmp"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing suggestion on the root logger
        try:
            quantize_dynamic(str(folder / MODEL_FILE), str(tmp), weight_type=QuantType.QInt8,
                             per_channel=True, op_types_to_quantize=["MatMul"])
            os.replace(tmp, path)
        finally:
            root.setLevel(level)
            tmp.unlink(missing_ok=True)
    records: dict[str, Any] = {}
    meta = folder / INT8_META_FILE
    if meta.is_file():
        try:
            records = json.loads(meta.read_text())
        except ValueError:
            records = {}
    key = _digest(batches)
    if key not in records:
        int8 = OnnxRunner(path)
        cosines = [np.sum(fp32.run(ids, mask, 1) * int8.run(ids, mask, 1), axis=1) for ids, mask in batches]
        records[key] = {"min_cosine": float(np.min(np.concatenate(cosines))),
                        "texts": int(sum(len(ids) for ids, _ in batches))}
        tmp = folder / f".{INT8_META_FILE}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(json.dumps(records, indent=1, sort_keys=True))
        os.replace(tmp, meta)
    rec = records[key]
    return Int8Check(min_cosine=rec["min_cosine"], threshold=threshold, texts=rec["texts"],
                     accepted=rec["min_cosine"] >= threshold, path=str(path))
