"""Featurizers: raw inputs -> the tensor a trainable model consumes.

A candidate model is a featurizer followed by a trainable network. The featurizer holds whatever
is fit on the training split only (pixel statistics, a TF-IDF vocabulary) or frozen (a pretrained
encoder's weights, which come from the installed package, never from the artifact), so the
expensive frozen part runs once per example and training, search and retraining work on cached
tensors.

Raw inputs are, per task: images as pixels 0-255 (N, C, H, W) in any numeric dtype; texts as a
list of str. Every featurizer describes itself as a JSON-able ``config()`` (kind + learned state)
and is rebuilt by :func:`featurizer_from_config`; nothing is pickled.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..data.transforms import Normalizer

__all__ = ["Featurizer", "PixelFeaturizer", "EfficientNetFeaturizer", "TfidfFeaturizer", "MiniLMFeaturizer",
           "TokenFeaturizer", "ConcatFeaturizer", "featurizer_from_config", "register_featurizer"]

log = logging.getLogger(__name__)


class Featurizer(ABC):
    """Fit on the training split only (``fit``), then turn raw inputs into model inputs."""

    kind: ClassVar[str]
    #: the whole serving function can be exported (normalization + network) to ONNX
    exportable: ClassVar[bool] = False
    #: runs pretrained weights (a "large" model): selection and reports say so
    pretrained: ClassVar[bool] = False

    def fit(self, x: Any) -> Featurizer:
        return self

    @abstractmethod
    def transform(self, x: Any) -> torch.Tensor:
        """Raw inputs (N items) -> model inputs (N, ...)."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-able kind, settings and learned state; ``featurizer_from_config`` rebuilds it."""

    def frozen_bytes(self) -> int:
        """Bytes of frozen weights and learned state that serving needs besides the trained network."""
        return 0

    def set_cache(self, folder: Path | None) -> None:
        """Where to keep expensive features between runs (a no-op for cheap featurizers)."""
        return None


class PixelFeaturizer(Featurizer):
    """Per-channel standardization of 0-255 pixels (statistics from the training split)."""

    kind = "pixels"
    exportable = True

    def __init__(self, normalizer: Normalizer | None = None) -> None:
        self.normalizer = normalizer or Normalizer()

    def fit(self, x: torch.Tensor) -> PixelFeaturizer:
        self.normalizer.fit(x)
        return self

    def transform(self, x: torch.Tensor) -> torch.Tensor:  # (N, C, H, W) 0-255 -> standardized float
        return self.normalizer.transform(torch.as_tensor(x))

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "normalizer": self.normalizer.state_dict()}

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> PixelFeaturizer:
        return cls(Normalizer.from_state(cfg["normalizer"]))


class EfficientNetFeaturizer(Featurizer):
    """The frozen front of EfficientNet-Lite0 (ImageNet weights from the installed package).

    ``mode: frozen`` -> pooled 1280-d features (N, 1280); ``mode: finetune`` -> the feature maps
    before the last ``finetune_blocks`` blocks, which the trainable network continues from.
    """

    kind = "efficientnet"
    pretrained = True

    def __init__(self, mode: str = "frozen", finetune_blocks: int = 2, image_size: int = 224,
                 weights: str | None = None, batch_size: int = 64) -> None:
        self.mode, self.finetune_blocks, self.image_size = mode, finetune_blocks, image_size
        self.weights, self.batch_size = weights, batch_size
        self._prefix: torch.nn.Module | None = None

    def _transfer_config(self) -> dict[str, Any]:
        return {"family": "efficientnet-lite0", "mode": self.mode, "finetune_blocks": self.finetune_blocks,
                "image_size": self.image_size, "weights": self.weights, "num_classes": 2}

    @property
    def prefix(self) -> torch.nn.Module:
        if self._prefix is None:
            from ..models.transfer import transfer_parts

            self._prefix, _ = transfer_parts(self._transfer_config())
        return self._prefix

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        from ..models.transfer import extract

        return extract(self.prefix, torch.as_tensor(x).float(), batch_size=self.batch_size)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "mode": self.mode, "finetune_blocks": self.finetune_blocks,
                "image_size": self.image_size, "weights": self.weights}

    def frozen_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.prefix.parameters())

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> EfficientNetFeaturizer:
        return cls(cfg.get("mode", "frozen"), int(cfg.get("finetune_blocks", 2)), int(cfg.get("image_size", 224)),
                   cfg.get("weights"))


class TfidfFeaturizer(Featurizer):
    """TF-IDF of word unigrams and bigrams (vocabulary and IDF from the training split), dense."""

    kind = "tfidf"

    def __init__(self, max_features: int = 5000, ngram_max: int = 2, min_df: int = 2,
                 vocabulary: dict[str, int] | None = None, idf: list[float] | None = None) -> None:
        self.max_features, self.ngram_max, self.min_df = max_features, ngram_max, min_df
        self._vec = None
        if vocabulary is not None and idf is not None:
            self._vec = self._vectorizer(vocabulary)
            self._vec.idf_ = np.asarray(idf, dtype=np.float64)

    def _vectorizer(self, vocabulary: dict[str, int] | None = None):
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(sublinear_tf=True, ngram_range=(1, self.ngram_max), min_df=self.min_df,
                               max_features=self.max_features, vocabulary=vocabulary, dtype=np.float32)

    def fit(self, x: list[str]) -> TfidfFeaturizer:
        try:
            self._vec = self._vectorizer().fit(list(x))
        except ValueError:  # too few texts for min_df: keep every term
            self.min_df = 1
            try:
                self._vec = self._vectorizer().fit(list(x))
            except ValueError:
                from ..errors import DataError

                raise DataError(f"training texts ({len(x)}): no word of two or more letters or digits in any of "
                                "them; expected texts with words for a TF-IDF candidate") from None
        return self

    def transform(self, x: list[str]) -> torch.Tensor:  # (N, V) float32
        return torch.from_numpy(self._vec.transform(list(x)).toarray().astype(np.float32))

    def config(self) -> dict[str, Any]:
        vocab = {t: int(i) for t, i in self._vec.vocabulary_.items()}
        return {"kind": self.kind, "max_features": self.max_features, "ngram_max": self.ngram_max,
                "min_df": self.min_df, "vocabulary": vocab, "idf": [float(v) for v in self._vec.idf_]}

    def frozen_bytes(self) -> int:
        return sum(len(t) + 12 for t in self._vec.vocabulary_)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TfidfFeaturizer:
        return cls(int(cfg["max_features"]), int(cfg["ngram_max"]), int(cfg["min_df"]), cfg["vocabulary"],
                   cfg["idf"])


class MiniLMFeaturizer(Featurizer):
    """Frozen sentence embeddings (all-MiniLM-L6-v2 by default), cached by text hash on disk."""

    kind = "minilm"
    pretrained = True

    def __init__(self, encoder: str = "all-MiniLM-L6-v2", max_length: int = 256) -> None:
        self.encoder_name, self.max_length = encoder, max_length
        self._encoder = None
        self._cache = None

    @property
    def encoder(self):
        if self._encoder is None:
            from ..models.text_encoder import TextEncoder

            self._encoder = TextEncoder(self.encoder_name, max_length=self.max_length)
        return self._encoder

    def set_cache(self, folder: Path | None) -> None:
        from ..models.text_encoder import EmbeddingCache

        self._cache = EmbeddingCache(folder) if folder is not None else None

    def transform(self, x: list[str]) -> torch.Tensor:  # (N, 384) L2-normalized
        texts = list(x)
        if self._cache is not None and len(texts) > 1:
            from ..models.text_encoder import encode_cached

            return encode_cached(self.encoder, texts, self._cache)
        return self.encoder.encode(texts)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "encoder": self.encoder_name, "max_length": self.max_length}

    def frozen_bytes(self) -> int:
        from ..models.text_encoder import encoder_weight_bytes

        return encoder_weight_bytes(self.encoder_name)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> MiniLMFeaturizer:
        return cls(cfg.get("encoder", "all-MiniLM-L6-v2"), int(cfg.get("max_length", 256)))


class TokenFeaturizer(Featurizer):
    """Token ids and attention mask (N, 2, L) for fine-tuning a pretrained encoder."""

    kind = "tokens"
    pretrained = True

    def __init__(self, encoder: str = "all-MiniLM-L6-v2", max_length: int = 128) -> None:
        self.encoder_name, self.max_length = encoder, max_length
        self._tokenizer = None

    def transform(self, x: list[str]) -> torch.Tensor:  # (N, 2, L): input_ids, attention_mask
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            from ..models.text_encoder import resolve_encoder

            source = resolve_encoder(self.encoder_name)
            self._tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=Path(source).is_dir())
        enc = self._tokenizer(list(x), truncation=True, max_length=self.max_length, padding=True,
                              return_tensors="pt", return_token_type_ids=False)
        return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "encoder": self.encoder_name, "max_length": self.max_length}

    def frozen_bytes(self) -> int:
        """The pretrained encoder the fine-tuned network runs on (its weights files)."""
        from ..models.text_encoder import encoder_weight_bytes

        return encoder_weight_bytes(self.encoder_name)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TokenFeaturizer:
        return cls(cfg.get("encoder", "all-MiniLM-L6-v2"), int(cfg.get("max_length", 128)))


class ConcatFeaturizer(Featurizer):
    """Several featurizers side by side: their (N, D_i) outputs concatenated to (N, sum D_i).

    TF-IDF (which words) and MiniLM embeddings (what they mean) make mistakes on different texts:
    a linear model over both beats either alone.
    """

    kind = "concat"

    def __init__(self, parts: list[Featurizer]) -> None:
        self.parts = parts
        self.pretrained = any(p.pretrained for p in parts)

    def fit(self, x: Any) -> ConcatFeaturizer:
        for p in self.parts:
            p.fit(x)
        return self

    def transform(self, x: Any) -> torch.Tensor:
        return torch.cat([p.transform(x).flatten(1) for p in self.parts], dim=1)

    def set_cache(self, folder: Path | None) -> None:
        for p in self.parts:
            p.set_cache(folder)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "parts": [p.config() for p in self.parts]}

    def frozen_bytes(self) -> int:
        return sum(p.frozen_bytes() for p in self.parts)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ConcatFeaturizer:
        return cls([featurizer_from_config(c) for c in cfg["parts"]])


#: featurizer kind -> class, for featurizer_from_config. Featurizers of other modules (audio, tables)
#: add themselves with register_featurizer; the package's ``__init__`` imports those modules, so
#: every kind is known once ``modelloop.tasks`` is loaded and this module imports none of them.
_KINDS: dict[str, type[Featurizer]] = {c.kind: c for c in (PixelFeaturizer, EfficientNetFeaturizer, TfidfFeaturizer,
                                                           MiniLMFeaturizer, TokenFeaturizer, ConcatFeaturizer)}


def register_featurizer(cls: type[Featurizer]) -> type[Featurizer]:
    """Class decorator: :func:`featurizer_from_config` rebuilds featurizers of ``cls.kind`` with ``cls``.

    Raises:
        ValueError: another class already has that kind.
    """
    if _KINDS.get(cls.kind, cls) is not cls:
        raise ValueError(f"featurizer kind {cls.kind!r}: received {cls.__qualname__}; expected a kind not taken "
                         f"(it is {_KINDS[cls.kind].__qualname__}'s)")
    _KINDS[cls.kind] = cls
    return cls


def featurizer_from_config(cfg: dict[str, Any]) -> Featurizer:
    """Rebuild a featurizer from its ``config()`` (or a fresh one from ``{"kind": ..., settings}``)."""
    kind = cfg.get("kind")
    if kind not in _KINDS:
        raise ValueError(f"featurizer kind {kind!r}: unknown; expected one of {', '.join(_KINDS)}")
    if kind == "pixels" and "normalizer" not in cfg:
        return PixelFeaturizer()
    if kind == "tfidf" and "vocabulary" not in cfg:
        return TfidfFeaturizer(int(cfg.get("max_features", 5000)), int(cfg.get("ngram_max", 2)),
                               int(cfg.get("min_df", 2)))
    return _KINDS[kind].from_config(cfg)
