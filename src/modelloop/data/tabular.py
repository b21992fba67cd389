"""Tables: feature columns and one target column per row, from CSV, TSV, JSON Lines or Parquet files.

A row is a JSON-friendly dict ``{column: value}``: numeric cells are floats, categorical cells are
strings, a missing cell is ``None``. That is also what a prediction request sends and what the
feedback store keeps (as a JSON string) with each prediction.

Column types are decided from the file as pandas reads it: a column is **numeric** when its dtype
is numeric (every non-empty cell parses as a number; booleans excepted), and **categorical**
otherwise (any non-numeric cell makes the whole column categorical). An integer-coded category
(e.g. ``1``/``2``/``3`` for three plans) therefore stays numeric; write it as text in the file (or
quote a letter into it) to have it one-hot encoded instead. A column with no value at all is
dropped and listed in the data report. Rows whose target is missing are dropped and listed.

For regression (``tabular-regression``) the target must be a number in every row that has one;
rows without one are dropped and listed, and a cell that is not a number is an error naming the
row. The split is random but balanced over the target's deciles, so test and training see the same
range of values.

Built-ins (from scikit-learn, offline): ``builtin:breast-cancer`` (569 rows, 30 numeric columns,
``malignant``/``benign``) and ``builtin:wine`` (178 rows, 13 numeric columns, 3 cultivars) for
classification; ``builtin:diabetes`` (442 rows, 10 numeric columns, disease progression after one
year, 25-346) for regression.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import DataError
from ..spec import DataSpec

__all__ = ["TabularTable", "TABULAR_BUILTINS", "TABULAR_SUFFIXES", "load_tabular_file", "load_tabular_builtin",
           "prepare_tabular_dataset", "prepare_regression_dataset", "REGRESSION_BUILTINS"]

TABULAR_BUILTINS = ("breast-cancer", "wine")
REGRESSION_BUILTINS = ("diabetes",)
TABULAR_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


@dataclass
class TabularTable:
    """Rows of feature cells, their labels (str) and what was dropped on the way."""

    rows: list[dict[str, Any]]
    labels: list[str] | list[float]
    numeric: list[str]
    categorical: list[str]
    label_column: str
    dropped: list[dict[str, str]] = field(default_factory=list)
    dropped_columns: list[dict[str, str]] = field(default_factory=list)
    missing_cells: int = 0

    @property
    def columns(self) -> list[str]:
        return list(self.rows[0]) if self.rows else [*self.numeric, *self.categorical]


def _read(path: Path, source: str) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"data source {source!r}: no such file; expected a "
                        f"{'/'.join(s.lstrip('.').upper() for s in TABULAR_SUFFIXES)} file with a target column")
    try:
        if suffix == ".csv":
            return pd.read_csv(path)
        if suffix == ".tsv":
            return pd.read_csv(path, sep="\t")
        if suffix == ".jsonl":
            return pd.read_json(path, lines=True)
        if suffix == ".parquet":
            from .parquet import require_pyarrow

            require_pyarrow(source)
            return pd.read_parquet(path)
    except pd.errors.EmptyDataError:
        raise DataError(f"data source {source!r}: empty file; expected a header row and data rows") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as e:
        raise DataError(f"data source {source!r}: not a readable {suffix.lstrip('.').upper()} file "
                        f"({e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}); expected a valid "
                        f"{suffix.lstrip('.').upper()} table") from None
    raise DataError(f"data source {source!r}: unsupported file type {suffix or '(none)'!r}; expected one of "
                    f"{', '.join(TABULAR_SUFFIXES)}")


def _label(v: Any) -> str | None:
    """One target cell -> its class name, or None when missing. 1.0 and 1 are both '1'."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return str(int(v))
    s = str(v).strip()
    return s or None


def _numeric_cell(v: Any) -> float | None:
    f = float(v)
    return f if math.isfinite(f) else None


def _categorical_cell(v: Any) -> str | None:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    s = str(v).strip()
    return s or None


def _number(v: Any, source: str, row: int, column: str) -> float | None:
    """One regression target cell -> a float, or None when missing."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, str) and not v.strip():
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = math.nan
    if isinstance(v, bool) or not math.isfinite(f):
        raise DataError(f"data source {source!r}#row {row}: target column {column!r} holds {v!r}; expected a "
                        "finite number (this is a regression task; use tabular-classification for classes)")
    return f


def frame_to_table(frame: pd.DataFrame, label_column: str, source: str, numeric_target: bool = False) -> TabularTable:
    """A pandas frame -> rows and labels, typing each feature column (see the module docstring).

    With ``numeric_target`` the labels are floats (regression), else class names.

    Raises:
        DataError: the target column is missing, a regression target is not a number, or no
            feature column is left.
    """
    frame = frame.rename(columns=lambda c: str(c).strip())
    columns = list(frame.columns)
    if label_column not in columns:
        if label_column == "label" and "target" in columns:
            label_column = "target"
        else:
            raise DataError(f"data source {source!r}: no target column {label_column!r} (columns: {columns}); "
                            "expected the column named by data.label_column (default 'label', or 'target')")
    labels = ([_number(v, source, i + 1, label_column) for i, v in enumerate(frame[label_column].tolist())]
              if numeric_target else [_label(v) for v in frame[label_column].tolist()])
    dropped = [{"file": f"{source}#row {i + 1}", "reason": f"missing target in column {label_column!r}"}
               for i, lab in enumerate(labels) if lab is None]
    keep = np.array([lab is not None for lab in labels], dtype=bool)
    frame = frame.loc[keep].reset_index(drop=True)
    labels = [lab for lab in labels if lab is not None]
    numeric, categorical, dropped_columns, cells = [], [], [], {}
    for c in columns:
        if c == label_column:
            continue
        col = frame[c]
        if col.isna().all():
            dropped_columns.append({"column": c, "reason": "no value in any row"})
            continue
        if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
            numeric.append(c)
            cells[c] = [_numeric_cell(v) for v in col.astype("float64").tolist()]
        else:
            categorical.append(c)
            cells[c] = [_categorical_cell(v) for v in col.astype(object).tolist()]
    if not cells:
        raise DataError(f"data source {source!r}: no feature column besides the target {label_column!r} "
                        f"(columns: {columns}); expected at least one column to predict from")
    names = list(cells)
    rows = [dict(zip(names, vals, strict=True)) for vals in zip(*(cells[c] for c in names), strict=True)]
    missing = sum(v is None for vals in cells.values() for v in vals)
    return TabularTable(rows, labels, numeric, categorical, label_column, dropped, dropped_columns, missing)


def load_tabular_file(path: str | Path, label_column: str = "label", source: str | None = None,
                      numeric_target: bool = False) -> TabularTable:
    """Read a CSV/TSV/JSON Lines/Parquet table. Raises DataError naming the file on any problem."""
    path = Path(path)
    source = source or str(path)
    return frame_to_table(_read(path, source), label_column, source, numeric_target)


def load_tabular_builtin(name: str, numeric_target: bool = False) -> TabularTable:
    """``builtin:breast-cancer`` or ``builtin:wine`` (classes), ``builtin:diabetes`` (regression),
    from scikit-learn (pass NAME)."""
    from sklearn import datasets

    names = REGRESSION_BUILTINS if numeric_target else TABULAR_BUILTINS
    loaders = {"breast-cancer": datasets.load_breast_cancer, "wine": datasets.load_wine,
               "diabetes": datasets.load_diabetes}
    if name not in names:
        task = "tabular-regression" if numeric_target else "tabular-classification"
        raise DataError(f"data source 'builtin:{name}': unknown built-in dataset for {task}; "
                        "expected one of " + ", ".join(f"builtin:{n}" for n in names))
    b = loaders[name]()
    frame = pd.DataFrame(b.data, columns=[str(c) for c in b.feature_names])
    if numeric_target:
        frame["target"] = b.target.astype(float)
        return frame_to_table(frame, "target", f"builtin:{name}", numeric_target=True)
    frame["label"] = [str(b.target_names[i]) for i in b.target]
    return frame_to_table(frame, "label", f"builtin:{name}")


def prepare_tabular_dataset(data: DataSpec, base_dir: str | Path = "."):
    """Load, validate and split a table (file or built-in) into a ``Dataset`` of kind ``tabular``.

    Raises:
        DataError: the source is missing or unreadable, the target column is missing, there are
            fewer than 2 classes (a constant target) or a class with fewer than 2 rows.
    """
    from .dataset import SPLITS, DataReport, Dataset, fingerprint, stratified_split
    from .text import check_classes

    source = data.source
    if source.startswith("builtin:"):
        table = load_tabular_builtin(source.removeprefix("builtin:"))
    else:
        path = Path(source)
        if not path.is_absolute():
            path = Path(base_dir) / path
        table = load_tabular_file(path, data.label_column, source)
    class_names = check_classes(table.labels, source)
    index = {c: i for i, c in enumerate(class_names)}
    y = np.array([index[lab] for lab in table.labels], dtype=np.int64)
    idx = stratified_split(y, {"test": data.split.test, "val": data.split.validation}, data.split.seed)
    splits = {s: ([table.rows[i] for i in idx[s]], torch.from_numpy(y[idx[s]])) for s in SPLITS}

    def counts(v: np.ndarray) -> dict[str, int]:
        return {c: int(n) for c, n in zip(class_names, np.bincount(v, minlength=len(class_names)), strict=True)}

    report = DataReport(
        source=source, found=len(table.rows) + len(table.dropped), kept=len(table.rows), dropped=table.dropped,
        class_counts=counts(y), split_counts={s: counts(y[idx[s]]) for s in SPLITS},
        table={"label_column": table.label_column, "columns": table.columns, "numeric": table.numeric,
               "categorical": table.categorical, "dropped_columns": table.dropped_columns,
               "missing_cells": table.missing_cells},
    )
    return Dataset(splits, class_names, None, report, fingerprint(splits, class_names), kind="tabular")


def prepare_regression_dataset(data: DataSpec, base_dir: str | Path = "."):
    """Load, validate and split a table with a numeric target into a ``Dataset`` of kind ``tabular``.

    Labels are float32 target values; ``class_names`` is ``[target column]`` (one output).

    Raises:
        DataError: the source is missing or unreadable, the target column is missing or holds a
            non-number, fewer than 10 rows have a target, or the target is constant.
    """
    from .dataset import SPLITS, DataReport, Dataset, fingerprint, stratified_split

    source = data.source
    if source.startswith("builtin:"):
        table = load_tabular_builtin(source.removeprefix("builtin:"), numeric_target=True)
    else:
        path = Path(source)
        if not path.is_absolute():
            path = Path(base_dir) / path
        table = load_tabular_file(path, data.label_column, source, numeric_target=True)
    y = np.asarray(table.labels, dtype=np.float64)
    if len(y) < 10:
        raise DataError(f"data source {source!r}: {len(y)} rows with a target in column {table.label_column!r}; "
                        "expected at least 10 to train, validate and test a regression")
    if float(y.std()) == 0.0:
        raise DataError(f"data source {source!r}: the target column {table.label_column!r} is constant "
                        f"({y[0]:g} in all {len(y)} rows); expected varying values to learn from")
    # Random split balanced over the target's deciles (each decile split like a class would be).
    edges = np.quantile(y, np.linspace(0, 1, 11)[1:-1])
    bins = np.searchsorted(edges, y, side="right")
    bins = np.unique(bins, return_inverse=True)[1]
    counts = np.bincount(bins)
    bins = np.where(counts[bins] < 2, 0, bins)
    idx = stratified_split(bins, {"test": data.split.test, "val": data.split.validation}, data.split.seed)
    yt = torch.from_numpy(y.astype(np.float32))
    splits = {s: ([table.rows[i] for i in idx[s]], yt[torch.from_numpy(np.asarray(idx[s], dtype=np.int64))])
              for s in SPLITS}
    name = table.label_column
    report = DataReport(
        source=source, found=len(table.rows) + len(table.dropped), kept=len(table.rows), dropped=table.dropped,
        class_counts={}, split_counts={s: {"rows": len(idx[s])} for s in SPLITS},
        table={"label_column": name, "columns": table.columns, "numeric": table.numeric,
               "categorical": table.categorical, "dropped_columns": table.dropped_columns,
               "missing_cells": table.missing_cells,
               "target": {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()),
                          "max": float(y.max())}},
    )
    return Dataset(splits, [name], None, report, fingerprint(splits, [name]), kind="tabular")
