"""Tabular classification: rows of numeric and categorical columns with a target column -> class labels.

Candidates share one featurizer (``tabular``: median imputation + missing-indicators +
standardization for numeric columns, one-hot with an ``(other)`` bucket for categorical ones, all
learned on the training split) and differ in the model on top: logistic regression, an MLP, and
scikit-learn's HistGradientBoostingClassifier converted to a torch tree evaluator
(``models.trees.HGBNet``; fitted directly, not by gradient descent; no pickle in the artifact).

A raw batch is a list of row dicts ``{column: value}``; a request sends ``{"row": {...}}`` or
``{"instances": [{...}, ...]}``; each row is stored with its prediction as a JSON string.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..data.tabular import prepare_tabular_dataset
from ..errors import DataError, InputError
from ..spec import DataSpec, ServingSpec
from .base import Candidate, fields_of
from .image_classification import MAX_ITEMS, _check_items
from .supervised import SupervisedTask

__all__ = ["TabularClassification"]

_TAB = {"kind": "tabular", "max_categories": 50}


def _columns_of(like: Any) -> list[str] | None:
    """The columns a dataset or model takes (None: unknown, accept any row)."""
    feat = getattr(like, "featurizer", None)
    if feat is not None and hasattr(feat, "columns"):
        return feat.columns
    report = getattr(like, "report", None)
    table = getattr(report, "table", None) or {}
    return table.get("columns")


class TabularClassification(SupervisedTask):
    unit = "rows"
    name = "tabular-classification"
    input_kind = "tabular"
    json_example = '{"row": {"column": value, ...}}'
    candidates = {
        "linear": Candidate("linear", "linear", dict(_TAB), about="logistic regression on the featurized row"),
        "mlp": Candidate("mlp", "mlp", dict(_TAB), about="one hidden layer on the featurized row"),
        "hgb": Candidate("hgb", "hgb", dict(_TAB),
                         about="histogram gradient-boosted trees (scikit-learn), evaluated in torch"),
    }
    default_candidates = ("linear", "mlp", "hgb")

    def prepare(self, data: DataSpec, base_dir: Path):
        return prepare_tabular_dataset(data, base_dir)

    def candidates_for(self, ds) -> tuple[list[str], dict[str, str]]:
        return list(self.default_candidates), {}

    def collate(self, items: list[Any], like) -> tuple[Any, list[bool]]:
        """Stored rows (JSON strings) -> row dicts; a row is usable when it has every column ``like`` takes."""
        columns = _columns_of(like)
        rows, keep = [], []
        for item in items:
            row = None
            if isinstance(item, str):
                try:
                    row = json.loads(item)
                except ValueError:
                    row = None
            ok = isinstance(row, dict) and (columns is None or all(c in row for c in columns))
            keep.append(ok)
            if ok:
                rows.append(row)
        return rows, keep

    def parse_json(self, body: Any, model, limits: ServingSpec | None = None) -> tuple[Any, bool]:
        from ..data.image import json_type

        lim = limits or ServingSpec()
        opts = {"strict": True, "max_fields": lim.max_row_fields, "max_chars": lim.max_text_chars}
        if isinstance(body, dict):
            if "instances" in body:
                items = body["instances"]
                _check_items(items, "rows")
                return model.featurizer.coerce_rows(items, "instances", **opts), True
            if "row" in body:
                return model.featurizer.coerce_rows([body["row"]], "row", **opts), False
            raise InputError(f"request body: received fields {fields_of(body)}; expected a field 'row' "
                             "(one {column: value} object) or 'instances' (a list of them)")
        raise InputError(f"request body: received {json_type(body)}; expected {{\"row\": {{...}}}} or "
                         "{\"instances\": [{...}, ...]}")

    def describe_input(self, model) -> dict[str, Any]:
        feat = model.featurizer
        return {"input": "row", "columns": feat.columns,
                "numeric": [c["name"] for c in feat.numeric_],
                "categorical": {c["name"]: c["categories"] for c in feat.categorical_}}

    def request_schema(self, model, limits: ServingSpec | None = None) -> dict[str, Any]:
        feat = getattr(model, "featurizer", None)
        chars = (limits or ServingSpec()).max_text_chars
        row: dict[str, Any] = {"type": "object", "description": "{column: value}; null for a missing value"}
        if feat is not None and getattr(feat, "columns_", None):
            numeric = {c["name"] for c in feat.numeric_}
            row["required"] = feat.columns
            row["properties"] = {
                c: ({"type": ["number", "null"]} if c in numeric else
                    {"type": ["string", "number", "boolean", "null"], "maxLength": chars}) for c in feat.columns}
        return {"anyOf": [{"type": "object", "required": ["row"], "properties": {"row": row}},
                          {"type": "object", "required": ["instances"], "properties": {"instances": {
                              "type": "array", "minItems": 1, "maxItems": MAX_ITEMS, "items": row}}}]}

    # -- projects and the command line -------------------------------------------------------
    default_data = "builtin:breast-cancer"
    init_options = ("label_column",)

    def _builtins(self) -> tuple[str, ...]:
        from ..data.tabular import TABULAR_BUILTINS

        return TABULAR_BUILTINS

    def check_source(self, source: str, base: Path) -> None:
        from ..data.tabular import TABULAR_SUFFIXES

        builtins = self._builtins()
        path = Path(source) if Path(source).is_absolute() else base / source
        if source.startswith("builtin:"):
            if source.removeprefix("builtin:") not in builtins:
                raise DataError(f"data source {source!r}: unknown built-in dataset for {self.name}; expected one of "
                                + ", ".join(f"builtin:{n}" for n in builtins))
        elif not path.is_file() or path.suffix.lower() not in TABULAR_SUFFIXES:
            raise DataError(f"data source {source!r}: {'no such file' if not path.is_file() else 'unsupported type'}; "
                            f"expected a {'/'.join(s.lstrip('.').upper() for s in TABULAR_SUFFIXES)} table with "
                            "feature columns and a target column, or "
                            + ", ".join(f"builtin:{n}" for n in builtins))

    def offline_inputs(self, files: list[Path], texts: list[str], rows: list[str]) -> tuple[list[str], Any, str]:
        if not rows:
            raise InputError("option '--row': missing; expected one or more --row '{\"column\": value, ...}' "
                             "for a tabular model")
        parsed = []
        for i, r in enumerate(rows):
            try:
                value = json.loads(r)
            except json.JSONDecodeError as e:
                raise InputError(f"option '--row' #{i + 1}: not valid JSON ({e}); expected an object like "
                                 "'{\"column\": value}'") from None
            if not isinstance(value, dict):
                raise InputError(f"option '--row' #{i + 1}: received {type(value).__name__}; expected a JSON object")
            parsed.append(value)
        return list(rows), parsed, "row"

    def predict_offline(self, model, inputs: Any) -> list[dict[str, Any]]:
        """One row ``{column: value}``, a list of rows, or a pandas DataFrame."""
        if hasattr(inputs, "to_dict") and hasattr(inputs, "columns"):  # a pandas DataFrame
            inputs = inputs.astype(object).where(inputs.notna(), None).to_dict("records")
        rows = model.featurizer.coerce_rows([inputs] if isinstance(inputs, dict) else list(inputs), "inputs")
        return self.answers(model, model.predict_proba(rows).numpy())
