"""Text classification (sentiment, topics, intents): texts with labels -> class labels.

Candidates: TF-IDF + a linear model (the honest baseline), frozen all-MiniLM-L6-v2 sentence
embeddings + a linear or MLP head (embeddings cached by text hash, so search and retraining never
recompute them), both feature sets side by side + a linear head, and LoRA fine-tuning of MiniLM with a head
(opt-in: minutes per epoch on a CPU).

Inputs are normalized like the training data (``data.text.normalize_text``) and truncated at
``MAX_TEXT_CHARS`` characters; the encoders truncate again at their token limit. A request text
longer than ``serving.max_text_chars`` is refused before any work is done on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.dataset import prepare_text_dataset
from ..errors import DataError, InputError
from ..spec import DataSpec, ServingSpec
from .base import Candidate, fields_of
from .image_classification import MAX_ITEMS, _check_items
from .supervised import SupervisedTask

__all__ = ["TextClassification", "parse_texts"]

_MINILM = {"kind": "minilm", "encoder": "all-MiniLM-L6-v2", "max_length": 256}


def parse_texts(values: list[Any], field: str, max_chars: int | None = None) -> list[str]:
    """Request texts -> normalized, truncated texts.

    Raises InputError for non-strings, empty texts and texts longer than ``max_chars``.
    """
    from ..data.image import json_type
    from ..data.text import MAX_TEXT_CHARS, normalize_text

    out = []
    for i, v in enumerate(values):
        name = field if len(values) == 1 and field == "text" else f"{field}[{i}]"
        if not isinstance(v, str):
            raise InputError(f"field {name!r}: received {json_type(v)}; expected a string of text")
        if max_chars is not None and len(v) > max_chars:
            raise InputError(f"field {name!r}: received a text of {len(v)} characters; expected at most {max_chars} "
                             "characters (serving.max_text_chars)")
        t = normalize_text(v)
        if not t:
            raise InputError(f"field {name!r}: received an empty text; expected at least one non-space character")
        out.append(t[:MAX_TEXT_CHARS])
    return out


class TextClassification(SupervisedTask):
    unit = "texts"
    name = "text-classification"
    input_kind = "text"
    json_example = '{"text": "..."}'
    candidates = {
        "tfidf-linear": Candidate("tfidf-linear", "linear", {"kind": "tfidf", "max_features": 5000},
                                  about="TF-IDF of words and word pairs + logistic regression"),
        "minilm-linear": Candidate("minilm-linear", "linear", dict(_MINILM), pretrained=True,
                                   about="frozen MiniLM sentence embeddings + linear head"),
        "minilm-mlp": Candidate("minilm-mlp", "mlp", dict(_MINILM), pretrained=True,
                                about="frozen MiniLM sentence embeddings + MLP head"),
        "tfidf-minilm-linear": Candidate(
            "tfidf-minilm-linear", "linear", {"kind": "concat", "parts": [
                {"kind": "tfidf", "max_features": 5000}, dict(_MINILM)]}, pretrained=True,
            about="TF-IDF and frozen MiniLM embeddings side by side + linear head"),
        "minilm-lora": Candidate("minilm-lora", "minilm-lora",
                                 {"kind": "tokens", "encoder": "all-MiniLM-L6-v2", "max_length": 64},
                                 model={"encoder": "all-MiniLM-L6-v2", "max_length": 64}, pretrained=True,
                                 about="MiniLM fine-tuned with LoRA + head"),
    }
    default_candidates = ("tfidf-linear", "minilm-linear", "minilm-mlp", "tfidf-minilm-linear")

    def prepare(self, data: DataSpec, base_dir: Path):
        return prepare_text_dataset(data, base_dir)

    def candidates_for(self, ds) -> tuple[list[str], dict[str, str]]:
        why = {"minilm-lora": "not considered by default: fine-tuning a transformer costs minutes per epoch on a "
                              "CPU; list it in selection.candidates to try it"}
        return list(self.default_candidates), why

    def collate(self, items: list[Any], like) -> tuple[Any, list[bool]]:
        keep = [isinstance(t, str) for t in items]
        return [t for t in items if isinstance(t, str)], keep

    def parse_json(self, body: Any, model, limits: ServingSpec | None = None) -> tuple[Any, bool]:
        from ..data.image import json_type

        max_chars = (limits or ServingSpec()).max_text_chars
        if isinstance(body, str):
            return parse_texts([body], "text", max_chars), False
        if isinstance(body, dict):
            if "instances" in body or "texts" in body:
                key = "instances" if "instances" in body else "texts"
                items = body[key]
                _check_items(items, "texts", key)
                return parse_texts(items, key, max_chars), True
            if "text" in body:
                return parse_texts([body["text"]], "text", max_chars), False
            raise InputError(f"request body: received fields {fields_of(body)}; expected a field 'text' "
                             "(one text) or 'instances' (a list of texts)")
        raise InputError(f"request body: received {json_type(body)}; expected {{\"text\": \"...\"}} or "
                         "{\"instances\": [\"...\", ...]}")

    def describe_input(self, model) -> dict[str, Any]:
        return {"input": "text"}

    def request_schema(self, model, limits: ServingSpec | None = None) -> dict[str, Any]:
        # at least one character that normalization keeps (not whitespace, not a control character)
        text = {"type": "string", "minLength": 1, "maxLength": (limits or ServingSpec()).max_text_chars,
                "pattern": "[^\\s\\u0000-\\u001f\\u007f-\\u009f]"}
        texts = {"type": "array", "minItems": 1, "maxItems": MAX_ITEMS, "items": text}
        return {"anyOf": [{"type": "object", "required": ["text"], "properties": {"text": text}},
                          {"type": "object", "required": ["instances"], "properties": {"instances": texts}},
                          text]}

    # -- projects and the command line -------------------------------------------------------
    default_data = "builtin:rotten-tomatoes"
    init_options = ("text_column", "label_column")

    def check_source(self, source: str, base: Path) -> None:
        suffixes = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
        if source.startswith("builtin:"):
            if source.removeprefix("builtin:") not in ("rotten-tomatoes",):
                raise DataError(f"data source {source!r}: unknown built-in dataset for {self.name}; expected one of "
                                "builtin:rotten-tomatoes")
            return
        path = Path(source) if Path(source).is_absolute() else base / source
        if not path.is_file() or path.suffix.lower() not in suffixes:
            raise DataError(f"data source {source!r}: {'no such file' if not path.is_file() else 'unsupported type'}; "
                            f"expected a {'/'.join(s.lstrip('.').upper() for s in suffixes)} file with text and "
                            "label columns, or builtin:rotten-tomatoes")

    def offline_inputs(self, files: list[Path], texts: list[str], rows: list[str]) -> tuple[list[str], Any, str]:
        if not texts:
            raise InputError("option '--text': missing; expected one or more --text \"...\" for a text model")
        return list(texts), list(texts), "text"

    def predict_offline(self, model, inputs: Any) -> list[dict[str, Any]]:
        """A text or a list of texts."""
        texts = parse_texts([inputs] if isinstance(inputs, str) else list(inputs), "inputs")
        return self.answers(model, model.predict_proba(texts).numpy())
