"""FAQ entries and example customer questions: read, checked, split.

An FAQ is a table of entries (``id``, ``question``, ``answer`` by default; other column names
through the spec's ``faq`` section). Example customer questions are a second, optional table
(``query``, ``id``); an example with an empty id is a question no entry answers (out of scope),
used to calibrate when to hand over to a person. Both are CSV, TSV, JSON Lines or Parquet files.

Nothing is dropped silently: a duplicate id, an empty question or answer, an example naming an
id the FAQ does not have, or a missing column is an error naming the file, the line and what was
expected. Texts are normalized as every text of the project is (:func:`~.text.normalize_text`).

``builtin:faq-example`` is a fictional shop's help desk written for modelloop's examples and
tests (synthetic, not a real company's policy): 55 entries with 8 differently worded customer
questions each, and 90 out-of-scope questions.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .text import _INTEGRAL_FLOAT, normalize_text, read_rows

__all__ = ["Faq", "Examples", "load_faq", "load_examples", "builtin_faq_example", "split_examples", "BUILTIN",
           "NO_ANSWER", "write_faq_example", "question_of"]

#: the built-in example's name (``builtin:faq-example``)
BUILTIN = "faq-example"
#: the label of a question no entry answers (feedback and examples)
NO_ANSWER = "__none__"


@dataclass
class Faq:
    """The entries, in file order: ``ids[i]`` is asked as ``questions[i]`` and answered by ``answers[i]``."""

    ids: list[str]
    questions: list[str]
    answers: list[str]
    source: str
    id_from: str = "column"  # "column" or "row number"

    def __len__(self) -> int:
        return len(self.ids)

    def index(self) -> dict[str, int]:
        return {e: i for i, e in enumerate(self.ids)}


@dataclass
class Examples:
    """Customer questions and the id of the entry that answers each (:data:`NO_ANSWER`: none does)."""

    queries: list[str]
    ids: list[str]
    source: str = ""
    dropped: list[dict[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.queries)

    def subset(self, rows) -> Examples:
        return Examples([self.queries[i] for i in rows], [self.ids[i] for i in rows], self.source)

    @property
    def in_scope(self) -> int:
        return sum(i != NO_ANSWER for i in self.ids)


def _cell(v: object) -> str:
    """One cell -> its text ("" for a missing value; an integral float as its integer)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return normalize_text(str(v))


def _column(frame, source: str, name: str, role: str, flag: str) -> None:
    if name not in frame.columns:
        raise DataError(f"data source {source!r}: no {role} column {name!r}; columns found: "
                        f"{[str(c) for c in frame.columns]}; expected a column {name!r} (or name yours with {flag})")


def load_faq(path: str | os.PathLike, id_column: str = "id", question_column: str = "question",
             answer_column: str = "answer") -> Faq:
    """Read and check an FAQ file.

    Without an ``id_column`` column (and ``id_column`` left at its default ``"id"``) the row
    number (1, 2, ...) is each entry's id.

    Raises:
        DataError: the file cannot be read, a named column is missing, an id appears twice, or an
            entry's id, question or answer is empty (naming the file, line and column).
    """
    source = str(path)
    frame, lines = read_rows(path, "FAQ entries (columns id, question, answer)")
    if frame.empty:
        raise DataError(f"data source {source!r}: no entries; expected a header row and one row per FAQ entry")
    _column(frame, source, question_column, "question", "--question-column")
    _column(frame, source, answer_column, "answer", "--answer-column")
    id_from = "column"
    if id_column not in frame.columns:
        if id_column != "id":
            _column(frame, source, id_column, "id", "--id-column")
        id_from = "row number"
    ids, questions, answers = [], [], []
    first: dict[str, int] = {}
    for row, line in enumerate(lines):
        rec = frame.iloc[row]
        eid = str(row + 1) if id_from == "row number" else _cell(rec[id_column])
        q, a = _cell(rec[question_column]), _cell(rec[answer_column])
        for name, value in ((id_column, eid), (question_column, q), (answer_column, a)):
            if not value:
                raise DataError(f"data source {source!r}: line {line}: column {name!r} is empty; expected every "
                                "entry to have an id, a question and an answer")
        if eid == NO_ANSWER:
            raise DataError(f"data source {source!r}: line {line}: id {eid!r} is reserved (it marks a question no "
                            "entry answers); expected another id")
        if eid in first:
            raise DataError(f"data source {source!r}: line {line}: id {eid!r} appears twice (first on line "
                            f"{first[eid]}); expected each entry's id once")
        first[eid] = int(line)
        ids.append(eid)
        questions.append(q)
        answers.append(a)
    return Faq(ids, questions, answers, source, id_from)


def load_examples(path: str | os.PathLike, faq: Faq, query_column: str = "query", id_column: str = "id") -> Examples:
    """Read example customer questions for ``faq``.

    A row with an empty id (or :data:`NO_ANSWER`) is a question no entry answers. A question
    that appears twice with the same id keeps its first row (counted in ``dropped``).

    Raises:
        DataError: unreadable file, a missing column, an empty question, an id that is not one of
            the FAQ's, or one question given two different ids (naming the file and line).
    """
    source = str(path)
    frame, lines = read_rows(path, "example questions (columns query, id)")
    if frame.empty:
        raise DataError(f"examples {source!r}: no rows; expected a header row and one row per customer question")
    _column(frame, source, query_column, "query", "faq.query_column")
    _column(frame, source, id_column, "id", "faq.example_id_column")
    known = set(faq.ids)
    seen: dict[str, tuple[str, int]] = {}
    queries, ids, dropped = [], [], []
    for row, line in enumerate(lines):
        rec = frame.iloc[row]
        q, eid = _cell(rec[query_column]), _cell(rec[id_column]) or NO_ANSWER
        whole = _INTEGRAL_FLOAT.fullmatch(eid)
        if eid not in known and whole and whole.group(1) in known:
            eid = whole.group(1)  # "3.0": a numeric id column with blanks, as pandas writes it
        if not q:
            raise DataError(f"examples {source!r}: line {line}: column {query_column!r} is empty; expected a "
                            "customer question")
        if eid != NO_ANSWER and eid not in known:
            some = ", ".join(repr(i) for i in faq.ids[:5])
            raise DataError(f"examples {source!r}: line {line}: id {eid!r} is not an entry of the FAQ "
                            f"{faq.source!r} ({len(faq.ids)} entries, e.g. {some}); expected one of its ids, or an "
                            "empty id for a question no entry answers")
        if q in seen:
            if seen[q][0] != eid:
                raise DataError(f"examples {source!r}: line {line}: question {q[:80]!r} has id {eid!r} here and "
                                f"{seen[q][0]!r} on line {seen[q][1]}; expected one id per question")
            dropped.append({"file": f"{source}:{line}", "reason": f"duplicate of {source}:{seen[q][1]}"})
            continue
        seen[q] = (eid, int(line))
        queries.append(q)
        ids.append(eid)
    return Examples(queries, ids, source, dropped)


@lru_cache(maxsize=1)
def _builtin() -> dict:
    return json.loads((Path(__file__).parent / "faq_example.json").read_text(encoding="utf-8"))


def builtin_faq_example() -> tuple[Faq, Examples]:
    """The built-in example help desk: its FAQ and every customer question (out-of-scope ones
    with :data:`NO_ANSWER`), in a fixed order."""
    raw = _builtin()
    entries = raw["entries"]
    faq = Faq([e["id"] for e in entries], [normalize_text(e["question"]) for e in entries],
              [normalize_text(e["answer"]) for e in entries], f"builtin:{BUILTIN}")
    queries, ids = [], []
    for e in entries:
        for q in e["customer_questions"]:
            queries.append(normalize_text(q))
            ids.append(e["id"])
    for q in raw["out_of_scope"]:
        queries.append(normalize_text(q))
        ids.append(NO_ANSWER)
    return faq, Examples(queries, ids, f"builtin:{BUILTIN}")


def write_faq_example(folder: Path) -> tuple[Path, Path]:
    """The built-in example as files a user would have: ``faq.csv`` (id, question, answer) and
    ``questions.csv`` (query, id; out-of-scope questions with an empty id)."""
    import csv

    faq, ex = builtin_faq_example()
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "faq.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "question", "answer"])
        w.writerows(zip(faq.ids, faq.questions, faq.answers, strict=True))
    with (folder / "questions.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["query", "id"])
        w.writerows([q, "" if i == NO_ANSWER else i] for q, i in zip(ex.queries, ex.ids, strict=True))
    return folder / "faq.csv", folder / "questions.csv"


def split_examples(ex: Examples, validation: float, test: float, seed: int) -> dict[str, Examples]:
    """Train / validation / test, stratified by entry (out-of-scope questions as one more
    stratum), as classification splits are: an entry with one example keeps it in train."""
    from .dataset import stratified_split

    if not len(ex):
        return {k: Examples([], [], ex.source) for k in ("train", "val", "test")}
    labels = np.asarray(ex.ids)
    parts = stratified_split(labels, {"test": test, "val": validation}, seed)
    return {k: ex.subset(parts[k].tolist()) for k in ("train", "val", "test")}


def question_of(item: Any) -> str | None:
    """The question of a logged answer's stored input (its request as JSON text, or a plain text)."""
    if isinstance(item, bytes):
        item = item.decode("utf-8", "replace")
    if not isinstance(item, str):
        return None
    try:
        body = json.loads(item)
    except ValueError:
        return item
    q = body.get("question") if isinstance(body, dict) else None
    return q if isinstance(q, str) else None
