"""Inference backends, and how one is chosen for each model when it is registered.

A backend runs the whole serving function — raw 0-255 pixels in, class probabilities out — so
normalization and softmax cost no extra Python per batch:

- ``torch``: PyTorch eager, fp32 (always available; the reference).
- ``torch-bf16``: PyTorch eager with weights and activations in bfloat16.
- ``onnxruntime``: the model exported to ONNX at registration (``model.onnx``), run by ONNX Runtime.
- ``onnxruntime-int8``: that ONNX model with dynamic int8 quantization of its weights
  (``model.int8.onnx``).

:func:`choose_backend` exports, checks each candidate's parity with the fp32 reference (max
absolute probability difference within :data:`PARITY_TOL` for fp32 exports; for reduced
precision, the validation accuracy may drop by at most ``max_accuracy_drop``), measures its
latency at batch sizes 1 and 32, and picks the fastest that passes. A candidate that fails to
export or differs is recorded with the reason and not used.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["BACKENDS", "PARITY_TOL", "ServingModule", "choose_backend", "make_runner"]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-bf16", "onnxruntime", "onnxruntime-int8")
PARITY_TOL = 1e-4
ONNX_FILE, ONNX_INT8_FILE = "model.onnx", "model.int8.onnx"
#: the second output of an exported model: the input of its last linear layer, (N, D)
EMBEDDING_OUTPUT = "embedding"
Runner = Callable[[np.ndarray], np.ndarray]


class ServingModule(nn.Module):
    """Normalization + network + softmax: (N, C, H, W) pixels 0-255 -> (N, K) probabilities."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Softmax in fp32 whatever precision the network ran in: bf16 probabilities would not sum to 1.
        return torch.softmax(self.net((x - self.mean) / self.std).float(), dim=1)


def _torch_runner(module: ServingModule, dtype: torch.dtype = torch.float32) -> Runner:
    m = module.eval()
    if dtype != torch.float32:
        import copy

        m = copy.deepcopy(m).to(dtype)

    def run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return m(torch.from_numpy(x).to(dtype)).float().numpy()

    return run


class OrtRunner:
    """An ONNX Runtime session over raw inputs: ``runner(x)`` -> probabilities; where the export
    carries the embedding too (:data:`EMBEDDING_OUTPUT`), ``runner.with_embedding(x)`` -> (probabilities,
    embeddings) from the same pass (``with_embedding`` is None for an export without it)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        from ..hardware import ort_session

        self.session = ort_session(path, threads)
        self._input = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        self._probs = [outputs[0]]
        if EMBEDDING_OUTPUT not in outputs:
            self.with_embedding = None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(self._probs, {self._input: x})[0]

    def with_embedding(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        probs, emb = self.session.run([self._probs[0], EMBEDDING_OUTPUT], {self._input: x})
        return probs, emb.reshape(len(emb), -1)


def _ort_runner(path: Path, threads: int = 1) -> Runner:
    return OrtRunner(path, threads)


def make_runner(backend: str, module: ServingModule, folder: Path | None = None, threads: int = 1) -> Runner:
    """A function (N, C, H, W) float32 pixels -> (N, K) float32 probabilities for ``backend``."""
    if backend == "torch":
        return _torch_runner(module)
    if backend == "torch-bf16":
        return _torch_runner(module, torch.bfloat16)
    if backend == "onnxruntime":
        return _ort_runner(Path(folder) / ONNX_FILE, threads)
    if backend == "onnxruntime-int8":
        runner = OrtRunner(Path(folder) / ONNX_INT8_FILE, threads)
        # its embedding is quantized too, while the OOD calibration was fit on fp32 embeddings:
        # the score comes from the PyTorch reference instead
        runner.with_embedding = None
        return runner
    raise ValueError(f"backend {backend!r}: unknown; expected one of {', '.join(BACKENDS)}")


def export_onnx(module: ServingModule, example: torch.Tensor, path: Path) -> None:
    """Export with a dynamic batch dimension, as one self-contained file; the input of the
    network's last linear layer becomes a second output (:func:`_expose_embedding`)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(module.eval(), (example,), dynamo=True, input_names=["pixels"],
                                    output_names=["probs"], dynamic_shapes=({0: batch},), verbose=False)
        program.save(str(path), external_data=False)
    _expose_embedding(module, path)


def _expose_embedding(module: ServingModule, path: Path) -> bool:
    """Make the input of the network's last linear layer — the embedding the drift monitor and
    the out-of-distribution score use — a graph output (:data:`EMBEDDING_OUTPUT`), so a served
    prediction gets its embedding from the same pass instead of a second one through PyTorch.

    The layer is found by its weight's name among the graph's initializers; where no node reads
    it directly (an export that renamed or folded it), the file keeps its one output and the
    server falls back to the PyTorch pass for embeddings."""
    import onnx

    names = [name for name, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        return False
    weight = f"{names[-1]}.weight"
    model = onnx.load(str(path))
    node = next((n for n in model.graph.node if n.op_type in ("Gemm", "MatMul") and len(n.input) > 1
                 and n.input[1] == weight), None)
    if node is None:
        log.info("ONNX export: no node reads %s; the embedding stays a PyTorch pass", weight)
        return False
    model.graph.node.append(onnx.helper.make_node("Identity", [node.input[0]], [EMBEDDING_OUTPUT]))
    model.graph.output.append(onnx.helper.make_tensor_value_info(EMBEDDING_OUTPUT, onnx.TensorProto.FLOAT,
                                                                 None))
    onnx.save(model, str(path))
    return True


def _latency_ms(run: Runner, x: np.ndarray, repeats: int) -> float:
    run(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def choose_backend(module: ServingModule, x_val: np.ndarray, y_val: np.ndarray, folder: Path,
                   max_accuracy_drop: float = 0.005, candidates: tuple[str, ...] = BACKENDS,
                   repeats: int = 30) -> dict[str, Any]:
    """Export, check and time each backend; return the choice and every measurement.

    Args:
        module: the fp32 serving module (the reference).
        x_val, y_val: validation pixels (N, C, H, W) float32 0-255 and labels, for parity and accuracy.
        folder: where exported files go (they become part of the artifact).
    Returns:
        ``{"backend": name, "candidates": [{"backend", "ok", "reason", "p50_ms_batch1",
        "p50_ms_batch32", "accuracy", "max_abs_diff"}, ...], "parity_tolerance": ...}``
    """
    folder.mkdir(parents=True, exist_ok=True)
    x_val = np.ascontiguousarray(x_val, dtype=np.float32)
    ref = _torch_runner(module)(x_val)
    ref_acc = float((ref.argmax(1) == y_val).mean()) if len(y_val) else 1.0
    one = x_val[:1]
    many = np.ascontiguousarray(np.resize(x_val, (32, *x_val.shape[1:])))
    rows = []
    exported = False
    for name in candidates:
        row: dict[str, Any] = {"backend": name}
        try:
            if name.startswith("onnxruntime") and not exported:
                export_onnx(module, torch.from_numpy(many[:2]), folder / ONNX_FILE)
                exported = True
            if name == "onnxruntime-int8":
                from onnxruntime.quantization import QuantType, quantize_dynamic

                root = logging.getLogger()
                level = root.level
                root.setLevel(logging.ERROR)  # the quantizer advises on pre-processing via the root logger
                try:
                    quantize_dynamic(str(folder / ONNX_FILE), str(folder / ONNX_INT8_FILE),
                                     weight_type=QuantType.QInt8)
                finally:
                    root.setLevel(level)
            run = make_runner(name, module, folder)
            out = run(x_val)
            diff = float(np.abs(out - ref).max())
            acc = float((out.argmax(1) == y_val).mean()) if len(y_val) else 1.0
            row.update(max_abs_diff=diff, accuracy=acc,
                       p50_ms_batch1=_latency_ms(run, one, repeats), p50_ms_batch32=_latency_ms(run, many, repeats))
            exact = name in ("torch", "onnxruntime")
            if exact and diff > PARITY_TOL:
                row.update(ok=False, reason=f"differs from PyTorch by {diff:.2e} > {PARITY_TOL:.0e}")
            elif not exact and ref_acc - acc > max_accuracy_drop:
                row.update(ok=False, reason=f"validation accuracy {acc:.4f} is more than {max_accuracy_drop} "
                                            f"below fp32's {ref_acc:.4f}")
            else:
                row.update(ok=True, reason="")
        except Exception as e:  # an export or runtime failure keeps the model on PyTorch
            row.update(ok=False, reason=f"{type(e).__name__}: {str(e)[:300]}")
            log.warning("backend %s unavailable: %s", name, row["reason"])
        rows.append(row)
    usable = [r for r in rows if r["ok"]]
    # Per-item cost at low load plus per-item cost at high load: fast alone and fast in batches.
    best = min(usable, key=lambda r: r["p50_ms_batch1"] + r["p50_ms_batch32"] / 32)
    for leftover, name in ((ONNX_FILE, "onnxruntime"), (ONNX_INT8_FILE, "onnxruntime-int8")):
        if best["backend"] != name and (folder / leftover).exists() and not (
                leftover == ONNX_FILE and best["backend"] == "onnxruntime-int8"):
            (folder / leftover).unlink()
    return {"backend": best["backend"], "candidates": rows, "parity_tolerance": PARITY_TOL,
            "max_accuracy_drop": max_accuracy_drop, "reference_accuracy": ref_acc}
