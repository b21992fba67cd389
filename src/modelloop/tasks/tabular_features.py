"""The ``tabular`` featurizer: table rows (dicts) -> one float vector per row.

Learned on the training split only, stored as JSON:

- numeric columns: median imputation, a missing-indicator (for columns with a missing value in
  training), standardization (mean and standard deviation of the imputed training values);
- categorical columns: the categories seen in training (at most ``max_categories``, the most
  frequent) one-hot encoded, plus a ``(missing)`` slot and an ``(other)`` slot. A category never
  seen in training (or too rare to keep) is not an error at prediction time: it goes to
  ``(other)`` and the prediction is made as usual.

Request rows are checked and normalized by :meth:`TabularFeaturizer.coerce_rows`: a row missing a
column entirely, or a non-numeric value in a numeric column, raises :class:`InputError` naming the
row and the column. Columns the model does not know (an id, the target itself) are ignored.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from .features import Featurizer, register_featurizer

__all__ = ["TabularFeaturizer", "MISSING", "OTHER"]

MISSING, OTHER = "(missing)", "(other)"


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _shown(v: Any) -> str:
    """A received cell for a message: short values as they are, long strings by their length."""
    if isinstance(v, str) and len(v) > 40:
        return f"a string of {len(v)} characters"
    shown = repr(v)
    return f"{shown} ({type(v).__name__})" if len(shown) <= 60 else f"a {type(v).__name__} ({len(shown)} characters)"


def _numeric(v: Any, where: str, column: str, strict: bool = False) -> float | None:
    """A numeric cell -> float, or None when missing (null, NaN, an empty string).

    ``strict`` (requests): an infinite value is refused rather than read as missing.
    """
    if v is None:
        return None
    f = None
    if _is_number(v):
        f = float(v)
    elif isinstance(v, str):
        s = v.strip()
        if not s:
            return None
        try:
            f = float(s) if len(s) <= 100 else None
        except ValueError:
            f = None
    if f is None:
        raise InputError(f"{where}, column {column!r}: received {_shown(v)}; expected a number or null "
                         "(a numeric column)")
    if math.isinf(f) and strict:
        raise InputError(f"{where}, column {column!r}: received an infinite number; expected a finite number or "
                         "null (a numeric column)")
    return f if math.isfinite(f) else None


def _category(v: Any, where: str, column: str, max_chars: int | None = None) -> str | None:
    """A categorical cell -> its string form, or None when missing."""
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if _is_number(v):
        f = float(v)
        if not math.isfinite(f):
            return None
        return str(int(f)) if f.is_integer() else str(v)
    if isinstance(v, str):
        if max_chars is not None and len(v) > max_chars:
            raise InputError(f"{where}, column {column!r}: received a string of {len(v)} characters; expected at "
                             f"most {max_chars} (serving.max_text_chars)")
        return v.strip() or None
    raise InputError(f"{where}, column {column!r}: received {type(v).__name__}; expected a string, a number or null "
                     "(a categorical column)")


@register_featurizer
class TabularFeaturizer(Featurizer):
    """Rows ``{column: value}`` -> (N, D) float32: per numeric column its standardized value (and a
    missing-indicator where training had missing values), per categorical column a one-hot block
    over its training categories + ``(missing)`` + ``(other)``.

    Args:
        max_categories: the most categories one column keeps (the most frequent in training).
        numeric: learned state per numeric column (``name``, ``median``, ``mean``, ``std``, ``indicator``).
        categorical: learned state per categorical column (``name``, ``categories``).
        columns: every input column in order.
    """

    kind = "tabular"

    def __init__(self, max_categories: int = 50, numeric: list[dict[str, Any]] | None = None,
                 categorical: list[dict[str, Any]] | None = None, columns: list[str] | None = None) -> None:
        if max_categories < 1:
            raise ValueError(f"max_categories: received {max_categories}; expected at least 1")
        self.max_categories = int(max_categories)
        self.numeric_ = list(numeric or [])
        self.categorical_ = list(categorical or [])
        self.columns_ = list(columns or [])
        self._index()

    def _index(self) -> None:
        self._numeric = {c["name"] for c in self.numeric_}
        self._slots = {c["name"]: {v: i for i, v in enumerate(c["categories"])} for c in self.categorical_}

    @property
    def columns(self) -> list[str]:
        """The columns every row must have."""
        return list(self.columns_)

    @property
    def width(self) -> int:
        return (sum(1 + bool(c["indicator"]) for c in self.numeric_)
                + sum(len(c["categories"]) + 2 for c in self.categorical_))

    def coerce_rows(self, rows: Any, field: str = "row", *, strict: bool = False, max_fields: int | None = None,
                    max_chars: int | None = None) -> list[dict[str, float | str | None]]:
        """Check raw rows against the learned columns; numeric cells -> float/None, categorical -> str/None.

        ``strict`` (a request, not training data): infinite numbers are refused instead of read
        as missing; ``max_fields`` bounds the fields of one row and ``max_chars`` a text cell.

        Raises:
            InputError: not a list of objects, a row missing a column or with too many fields, a
                non-numeric value in a numeric column, or a value of the wrong type; the message
                names the row and column.
        """
        if not self.columns_:
            raise ValueError("tabular featurizer: not fitted; call fit on the training rows first")
        if not isinstance(rows, (list, tuple)):
            raise InputError(f"field {field!r}: received {type(rows).__name__}; expected a list of rows "
                             "({column: value} objects)")
        out = []
        for i, row in enumerate(rows):
            where = f"field {field!r}" if len(rows) == 1 and field == "row" else f"field '{field}[{i}]'"
            if not isinstance(row, dict):
                raise InputError(f"{where}: received {type(row).__name__}; expected an object {{column: value}}")
            if max_fields is not None and len(row) > max_fields:
                raise InputError(f"{where}: received an object of {len(row)} fields; expected at most {max_fields} "
                                 f"(serving.max_row_fields; the model reads {len(self.columns_)} columns)")
            missing = [c for c in self.columns_ if c not in row]
            if missing:
                shown = ", ".join(repr(c) for c in missing[:5]) + (f" and {len(missing) - 5} more"
                                                                    if len(missing) > 5 else "")
                raise InputError(f"{where}: column {shown} missing; expected every column the model was trained on "
                                 f"({len(self.columns_)} columns; send null for an unknown value)")
            out.append({c: (_numeric(row[c], where, c, strict) if c in self._numeric
                            else _category(row[c], where, c, max_chars)) for c in self.columns_})
        return out

    def fit(self, x: list[dict[str, Any]]) -> TabularFeaturizer:
        rows = list(x)
        if not rows:
            raise ValueError("tabular featurizer: received 0 training rows; expected at least 1")
        columns: dict[str, None] = {}
        for r in rows:
            columns.update(dict.fromkeys(r))
        self.columns_ = list(columns)
        self.numeric_, self.categorical_ = [], []
        for c in self.columns_:
            values = [r.get(c) for r in rows]
            present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
            if all(_is_number(v) for v in present):  # the loader wrote numeric columns as floats
                arr = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
                seen = arr[~np.isnan(arr)]
                median = float(np.median(seen)) if len(seen) else 0.0
                filled = np.where(np.isnan(arr), median, arr)
                std = float(filled.std())
                self.numeric_.append({"name": c, "median": median, "mean": float(filled.mean()),
                                      "std": std if std > 1e-12 else 1.0, "indicator": bool(np.isnan(arr).any())})
            else:
                counts = Counter(_category(v, "training data", c) for v in values)
                counts.pop(None, None)
                kept = sorted(counts, key=lambda v: (-counts[v], v))[: self.max_categories]
                self.categorical_.append({"name": c, "categories": sorted(kept)})
        self._index()
        return self

    def transform(self, x: list[dict[str, Any]]) -> torch.Tensor:  # N rows -> (N, D) float32
        rows = self.coerce_rows(list(x), "rows")
        n = len(rows)
        blocks = []
        for c in self.numeric_:
            col = np.array([np.nan if r[c["name"]] is None else r[c["name"]] for r in rows], dtype=np.float64)
            miss = np.isnan(col)
            blocks.append(((np.where(miss, c["median"], col) - c["mean"]) / c["std"])[:, None])   # (N, 1)
            if c["indicator"]:
                blocks.append(miss[:, None].astype(np.float64))                                  # (N, 1)
        for c in self.categorical_:
            slots = self._slots[c["name"]]
            k = len(c["categories"])
            idx = np.array([k if (v := r[c["name"]]) is None else slots.get(v, k + 1) for r in rows], dtype=np.int64)
            onehot = np.zeros((n, k + 2))                                                        # (N, k + 2)
            onehot[np.arange(n), idx] = 1.0
            blocks.append(onehot)
        out = np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0))
        return torch.from_numpy(out.astype(np.float32))

    def feature_names(self) -> list[str]:
        """A name per output feature, in order."""
        names = []
        for c in self.numeric_:
            names.append(c["name"])
            if c["indicator"]:
                names.append(f"{c['name']}={MISSING}")
        for c in self.categorical_:
            names += [f"{c['name']}={v}" for v in (*c["categories"], MISSING, OTHER)]
        return names

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "max_categories": self.max_categories, "columns": self.columns_,
                "numeric": self.numeric_, "categorical": self.categorical_}

    def frozen_bytes(self) -> int:
        return 32 * len(self.numeric_) + sum(16 + sum(len(v) + 8 for v in c["categories"]) for c in self.categorical_)

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> TabularFeaturizer:
        return cls(int(cfg.get("max_categories", 50)), cfg.get("numeric"), cfg.get("categorical"), cfg.get("columns"))
