"""The FAQ task's parts on real data: FAQ and example files read and checked, the split, the
retrievers (BM25, MiniLM, a fine-tuned MiniLM) and their artifacts, the abstention threshold,
feedback turned into training pairs (through a real SQLite store) and the answer gate."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from modelloop.data.faq import (
    NO_ANSWER,
    Examples,
    Faq,
    builtin_faq_example,
    load_examples,
    load_faq,
    split_examples,
)
from modelloop.errors import DataError
from modelloop.feedback import FeedbackStore, prediction_row
from modelloop.gate import compare_answers
from modelloop.models.retrieval import BM25, Retriever, fine_tune
from modelloop.spec import parse_spec
from modelloop.tasks.faq import choose_threshold, feedback_pairs

FAQ_ROWS = [("reset", "How do I reset my password?", "Use the 'Forgot password' link on the sign-in page."),
            ("refund", "How long does a refund take?", "Refunds reach your card within 5 to 10 working days."),
            ("ship", "Do you ship abroad?", "We ship to 30 countries; see the shipping page for the list."),
            ("cancel", "How do I cancel my order?", "Open the order under 'My orders' and choose Cancel.")]


def _csv(path, header, rows) -> str:
    pd.DataFrame(rows, columns=header).to_csv(path, index=False)
    return str(path)


@pytest.fixture
def faq_file(tmp_path):
    return _csv(tmp_path / "faq.csv", ["id", "question", "answer"], FAQ_ROWS)


@pytest.fixture(scope="module")
def builtin():
    return builtin_faq_example()


def _raises(path, *needles):
    """A DataError whose message names the file and each of ``needles``."""
    def check(exc: pytest.ExceptionInfo) -> None:
        msg = str(exc.value)
        assert str(path) in msg, msg
        for n in needles:
            assert n in msg, (n, msg)
    return check


# -- reading and checking an FAQ ----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_file_type_reads_the_same_faq(tmp_path, suffix):
    frame = pd.DataFrame(FAQ_ROWS, columns=["id", "question", "answer"])
    path = tmp_path / f"faq{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t")
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    faq = load_faq(path)
    assert faq.ids == [r[0] for r in FAQ_ROWS]
    assert faq.questions == [r[1] for r in FAQ_ROWS] and faq.answers == [r[2] for r in FAQ_ROWS]
    assert faq.id_from == "column" and faq.source == str(path)


def test_without_an_id_column_the_row_number_is_the_id(tmp_path):
    path = _csv(tmp_path / "faq.csv", ["question", "answer"], [r[1:] for r in FAQ_ROWS])
    faq = load_faq(path)
    assert faq.ids == ["1", "2", "3", "4"] and faq.id_from == "row number"
    # examples then name entries by their row number; pandas writes a numeric column with a blank
    # (an out-of-scope question) as floats: "3.0" is entry 3
    path = _csv(tmp_path / "q.csv", ["query", "id"], [["forgot my password", 1], ["moon?", None], ["Peru?", 3]])
    assert "3.0" in (tmp_path / "q.csv").read_text()
    assert load_examples(path, faq).ids == ["1", NO_ANSWER, "3"]


def test_other_column_names_are_read_when_named(tmp_path):
    path = _csv(tmp_path / "faq.csv", ["key", "q", "a"], FAQ_ROWS)
    faq = load_faq(path, id_column="key", question_column="q", answer_column="a")
    assert faq.ids[0] == "reset"
    with pytest.raises(DataError) as exc:
        load_faq(path, id_column="entry", question_column="q", answer_column="a")
    _raises(path, "'entry'", "--id-column", "columns found")(exc)


def test_duplicate_id_names_both_lines(tmp_path):
    path = _csv(tmp_path / "faq.csv", ["id", "question", "answer"], [*FAQ_ROWS, ("refund", "Again?", "Yes.")])
    with pytest.raises(DataError) as exc:
        load_faq(path)
    _raises(path, "line 6", "id 'refund' appears twice", "first on line 3", "expected each entry's id once")(exc)


@pytest.mark.parametrize(("column", "row"), [("answer", ("x", "Where is my order?", "")),
                                             ("question", ("x", "  ", "It is on its way.")),
                                             ("id", ("", "Where is my order?", "It is on its way."))])
def test_an_empty_cell_names_its_line_and_column(tmp_path, column, row):
    path = _csv(tmp_path / "faq.csv", ["id", "question", "answer"], [*FAQ_ROWS[:2], row])
    with pytest.raises(DataError) as exc:
        load_faq(path)
    _raises(path, "line 4", f"column {column!r} is empty", "expected every entry to have an id, a question and "
                                                           "an answer")(exc)


def test_the_reserved_id_is_refused(tmp_path):
    path = _csv(tmp_path / "faq.csv", ["id", "question", "answer"], [*FAQ_ROWS[:1], (NO_ANSWER, "Q?", "A.")])
    with pytest.raises(DataError) as exc:
        load_faq(path)
    _raises(path, "line 3", f"id {NO_ANSWER!r} is reserved", "expected another id")(exc)


@pytest.mark.parametrize("missing", ["question", "answer"])
def test_a_file_without_the_named_columns(tmp_path, missing):
    cols = ["id", "question", "answer"]
    rows = [tuple(v for c, v in zip(cols, r, strict=True) if c != missing) for r in FAQ_ROWS]
    path = _csv(tmp_path / "faq.csv", [c for c in cols if c != missing], rows)
    with pytest.raises(DataError) as exc:
        load_faq(path)
    _raises(path, f"no {missing} column {missing!r}", "columns found", f"expected a column {missing!r}",
            f"--{missing}-column")(exc)


def test_unsupported_suffix_and_missing_file(tmp_path):
    path = tmp_path / "faq.xlsx"
    path.write_text("id,question,answer\n")
    with pytest.raises(DataError) as exc:
        load_faq(path)
    _raises(path, "unsupported file type '.xlsx'", ".csv", ".parquet")(exc)
    gone = tmp_path / "nowhere.csv"
    with pytest.raises(DataError) as exc:
        load_faq(gone)
    _raises(gone, "no such file", "expected a .csv file of FAQ entries")(exc)
    empty = tmp_path / "empty.csv"
    empty.write_text("id,question,answer\n")
    with pytest.raises(DataError) as exc:
        load_faq(empty)
    _raises(empty, "no entries", "expected a header row and one row per FAQ entry")(exc)


# -- example questions ----------------------------------------------------------------------------


def test_examples_read_with_out_of_scope_and_duplicates(tmp_path, faq_file):
    faq = load_faq(faq_file)
    path = _csv(tmp_path / "q.csv", ["query", "id"], [["forgot my password", "reset"], ["is the moon far", ""],
                                                      ["forgot my password", "reset"], ["ship to Peru?", "ship"]])
    ex = load_examples(path, faq)
    assert ex.queries == ["forgot my password", "is the moon far", "ship to Peru?"]
    assert ex.ids == ["reset", NO_ANSWER, "ship"] and ex.in_scope == 2
    assert ex.dropped == [{"file": f"{path}:4", "reason": f"duplicate of {path}:2"}]


def test_an_example_naming_an_unknown_entry(tmp_path, faq_file):
    faq = load_faq(faq_file)
    path = _csv(tmp_path / "q.csv", ["query", "id"], [["forgot my password", "reset"], ["where is it", "track"]])
    with pytest.raises(DataError) as exc:
        load_examples(path, faq)
    _raises(path, "line 3", "id 'track' is not an entry of the FAQ", faq_file, "4 entries", "'reset'",
            "expected one of its ids, or an empty id")(exc)


def test_an_example_with_an_empty_question(tmp_path, faq_file):
    faq = load_faq(faq_file)
    path = _csv(tmp_path / "q.csv", ["query", "id"], [["forgot my password", "reset"], ["", "ship"]])
    with pytest.raises(DataError) as exc:
        load_examples(path, faq)
    _raises(path, "line 3", "column 'query' is empty", "expected a customer question")(exc)


def test_one_question_with_two_ids(tmp_path, faq_file):
    faq = load_faq(faq_file)
    path = _csv(tmp_path / "q.csv", ["query", "id"], [["I want my money back", "refund"], ["x?", "ship"],
                                                      ["I want my money back", "cancel"]])
    with pytest.raises(DataError) as exc:
        load_examples(path, faq)
    _raises(path, "line 4", "'I want my money back'", "id 'cancel' here and 'refund' on line 2",
            "expected one id per question")(exc)


def test_examples_without_the_named_columns(tmp_path, faq_file):
    faq = load_faq(faq_file)
    path = _csv(tmp_path / "q.csv", ["text", "id"], [["forgot my password", "reset"]])
    with pytest.raises(DataError) as exc:
        load_examples(path, faq)
    _raises(path, "no query column 'query'", "['text', 'id']", "faq.query_column")(exc)
    path = _csv(tmp_path / "q2.csv", ["query", "entry"], [["forgot my password", "reset"]])
    with pytest.raises(DataError) as exc:
        load_examples(path, faq)
    _raises(path, "no id column 'id'", "faq.example_id_column")(exc)


def test_split_is_stratified_by_entry_with_out_of_scope_a_stratum(builtin):
    faq, ex = builtin
    # one entry keeps a single example: it must stay in train
    lone = faq.ids[0]
    keep = [i for i, e in enumerate(ex.ids) if e != lone] + [ex.ids.index(lone)]
    ex = ex.subset(sorted(keep))
    parts = split_examples(ex, 0.15, 0.15, seed=0)
    assert sum(len(p) for p in parts.values()) == len(ex)
    assert sorted(q for p in parts.values() for q in p.queries) == sorted(ex.queries)
    assert parts["train"].ids.count(lone) == 1 and lone not in parts["val"].ids + parts["test"].ids
    for name in ("val", "test"):
        # every entry with 8 examples and the out-of-scope questions appear in each held-out split
        assert set(parts[name].ids) == set(ex.ids) - {lone}, name
        assert NO_ANSWER in parts[name].ids
    out = sum(i == NO_ANSWER for i in ex.ids)
    assert abs(parts["test"].ids.count(NO_ANSWER) - round(0.15 * out)) <= 1
    assert split_examples(ex, 0.15, 0.15, seed=0)["test"].queries == parts["test"].queries  # seeded
    assert all(len(p) == 0 for p in split_examples(Examples([], []), 0.15, 0.15, 0).values())


# -- retrievers -------------------------------------------------------------------------------------


def test_bm25_ranks_the_exact_wording_first(builtin):
    faq, _ = builtin
    bm = BM25([f"{q} {a}" for q, a in zip(faq.questions, faq.answers, strict=True)])
    s = bm.scores(faq.questions)
    assert s.shape == (len(faq), len(faq))
    assert (s.argmax(axis=1) == np.arange(len(faq))).all()
    assert (bm.scores(["zzz qqq"]) == 0).all()  # no known word: no score

    r = Retriever({"kind": "bm25", "threshold": 1.0}, faq.ids, faq.questions, faq.answers).index()
    top = r.answer([faq.questions[3], "zzz qqq"], k=2)
    assert top[0]["answers"][0]["id"] == faq.ids[3] and not top[0]["abstained"]
    assert len(top[0]["answers"]) == 2 and top[0]["answers"][0]["score"] >= top[0]["answers"][1]["score"]
    assert top[1]["abstained"]


@pytest.fixture(scope="module")
def tiny(builtin):
    """Eight entries of the built-in FAQ and their customer questions."""
    faq, ex = builtin
    ids = faq.ids[:8]
    small = Faq(ids, faq.questions[:8], faq.answers[:8], "tiny")
    pairs = [(q, ids.index(e)) for q, e in zip(ex.queries, ex.ids, strict=True) if e in ids]
    return small, pairs


def _round_trip(r: Retriever) -> Retriever:
    state = {k: v.clone() for k, v in r.trainable_state_dict().items()}
    pre = json.loads(json.dumps(r.preprocessing()))  # as preprocessing.json stores it
    return Retriever.from_artifact(pre, state)


def test_dense_retriever_round_trip_scores_identically(tiny):
    faq, pairs = tiny
    train, held = pairs[::2], [q for q, _ in pairs[1::2]]
    r = Retriever({"kind": "dense", "examples": True, "threshold": 0.4}, faq.ids, faq.questions, faq.answers,
                  train).index()
    assert r.key_emb.shape[0] == 2 * len(faq) + len(train)  # question, answer and each example
    back = _round_trip(r)
    assert back.config == r.config and back.example_keys == r.example_keys
    np.testing.assert_allclose(back.scores(held), r.scores(held), atol=1e-6)
    got, want = back.answer(held, k=3), r.answer(held, k=3)
    assert [[a["id"] for a in g["answers"]] for g in got] == [[a["id"] for a in w["answers"]] for w in want]
    assert [g["abstained"] for g in got] == [w["abstained"] for w in want]


def test_fine_tuned_retriever_round_trip_scores_identically(tiny):
    faq, pairs = tiny
    r = Retriever({"kind": "dense", "examples": True}, faq.ids, faq.questions, faq.answers, pairs[:24])
    rec = fine_tune(r, pairs[:24], epochs=1, batch_size=12, seed=0)
    assert rec["steps"] == 2 and rec["epochs"] == 1 and rec["final_loss"] is not None and rec["stopped"] == "epochs"
    state = r.trainable_state_dict()
    adapters = [k for k in state if k.startswith("adapter.")]
    assert adapters and r.config["lora"] == {"r": 8, "alpha": 16}
    held = [q for q, _ in pairs[24:40]]
    back = _round_trip(r)
    np.testing.assert_allclose(back.scores(held), r.scores(held), atol=1e-5)
    # the tuned encoder differs from the pretrained one
    frozen = Retriever({"kind": "dense"}, faq.ids, faq.questions, faq.answers)
    assert not torch.allclose(frozen.embed(held[:2]), r.embed(held[:2]), atol=1e-4)


# -- the abstention threshold -----------------------------------------------------------------


def test_threshold_separates_in_scope_from_out_of_scope():
    best_in = np.array([0.82, 0.71, 0.9, 0.66, 0.75])
    best_out = np.array([0.2, 0.35, 0.41, 0.3])
    t, rule = choose_threshold(best_in, best_out, answer_rate=0.9)
    assert best_out.max() < t <= best_in.min()
    assert "Youden" in rule and "5 in-scope and 4 out-of-scope" in rule


def test_threshold_without_out_of_scope_answers_the_answer_rate():
    best_in = np.linspace(0.3, 0.9, 20)
    t, rule = choose_threshold(best_in, np.array([0.1, 0.2]), answer_rate=0.9)  # < 3 out-of-scope: not used
    assert np.mean(best_in >= t) == pytest.approx(0.9, abs=0.05)
    assert "faq.answer_rate" in rule and "90%" in rule
    t_all, _ = choose_threshold(best_in, np.zeros(0), answer_rate=1.0)
    assert t_all == pytest.approx(best_in.min())
    assert choose_threshold(np.zeros(0), np.zeros(0), 0.9) == (None, "no validation questions")


# -- feedback -> (question, entry) pairs, through a real store -----------------------------------


def test_feedback_pairs_from_a_real_store(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    served = {"up": ("how do I reset it", "reset"), "down": ("where is my parcel", "ship"),
              "fix": ("money back please", "cancel"), "none": ("is the moon far", "reset"),
              "bad": ("what is this", "ship"), "twice": ("can I send it to Peru", "refund"),
              "handover": ("talk to a human", NO_ANSWER), "rated": ("do you deliver on sundays", "ship"),
              "flip": ("can I change my order", "cancel")}
    store.log_many([prediction_row(p, "v1", json.dumps({"question": q, "k": 3}), top, {top: 0.5}, 1.0)
                    for p, (q, top) in served.items()])
    store.log_many([prediction_row("img", "v1", np.zeros((2, 2)), "reset", {}, 1.0)])  # not an answer
    store.add_feedback("up", "reset", kind="thumbs", value=1)
    store.add_feedback("down", "ship", kind="thumbs", value=-1)
    store.add_feedback("fix", "refund")
    store.add_feedback("none", NO_ANSWER)
    store.add_feedback("bad", "no-such-entry")
    store.add_feedback("twice", "cancel")
    store.add_feedback("twice", "ship")  # the latest label wins
    store.add_feedback("handover", NO_ANSWER, kind="thumbs", value=1)  # handing over was right
    store.add_feedback("img", "reset")
    store.add_feedback("rated", "ship", kind="rating", value=1)  # says nothing about which entry is right
    store.add_feedback("flip", "cancel", kind="thumbs", value=1)
    store.add_feedback("flip", "cancel", kind="thumbs", value=-1)  # the latest thumbs wins: no pair
    pairs, counts = feedback_pairs(store.feedback_events(), {"reset", "refund", "ship", "cancel"})
    store.close()
    assert pairs == {"up": ("how do I reset it", "reset"), "fix": ("money back please", "refund"),
                     "none": ("is the moon far", NO_ANSWER), "twice": ("can I send it to Peru", "ship"),
                     "handover": ("talk to a human", NO_ANSWER)}
    assert "down" not in pairs and "bad" not in pairs and "rated" not in pairs and "flip" not in pairs
    assert counts == {"feedback_rows": 12, "labelled": 4, "thumbs_up": 3, "thumbs_down": 2, "out_of_scope": 2,
                      "not_an_answer": 1, "unknown_entry": 1, "other_kinds": 1, "pairs": 5}


def test_a_label_after_thumbs_down_gives_the_pair(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    store.log_many([prediction_row("p", "v1", json.dumps({"question": "where is my parcel"}), "ship", {}, 1.0)])
    store.add_feedback("p", "ship", kind="thumbs", value=-1)
    store.add_feedback("p", "refund")
    pairs, counts = feedback_pairs(store.feedback_events(), {"ship", "refund"})
    store.close()
    assert pairs == {"p": ("where is my parcel", "refund")} and counts["thumbs_down"] == 1


# -- the gate ---------------------------------------------------------------------------------------


@pytest.fixture
def spec():
    return parse_spec({"task": "faq", "data": {"source": "builtin:faq-example"}})


PASSED = {"passed": True, "checks": [{"name": "test top1", "value": 0.8, "target": ">= 0.5", "passed": True}]}


def test_gate_promotes_a_better_challenger(spec):
    rng = np.random.default_rng(0)
    champ = rng.choice([1.0, 0.5, 1 / 3, 0.0], size=120, p=[0.5, 0.2, 0.1, 0.2])
    chall = champ.copy()
    chall[np.flatnonzero(champ < 1)[:40]] = 1.0  # better on 40 questions, worse on none
    fb_a, fb_b = champ[:30], chall[:30]
    d = compare_answers(spec, champ, chall, fb_a, fb_b, PASSED)
    assert d["decision"] == "promoted"
    assert "test split" in d["significantly_better_on"]
    assert d["test"]["n"] == 120 and d["feedback"]["enough"] and d["challenger_value"] > d["champion_value"]
    assert "significantly better" in d["reasons"][0]


def test_gate_rejects_a_significantly_worse_challenger(spec):
    rng = np.random.default_rng(1)
    champ = rng.choice([1.0, 0.5, 0.0], size=120, p=[0.7, 0.2, 0.1])
    chall = champ.copy()
    chall[np.flatnonzero(champ == 1.0)[:30]] = 0.25
    d = compare_answers(spec, champ, chall, np.zeros(0), np.zeros(0), PASSED)
    assert d["decision"] == "rejected"
    assert any("significantly worse on the test questions" in r and "Wilcoxon" in r for r in d["reasons"])
    assert d["test"]["significantly_worse"] and not d["feedback"]["enough"]
    # worse on held-out feedback alone is enough to reject too
    same = np.full(50, 0.5)
    d = compare_answers(spec, same, same, champ[:60], chall[:60], PASSED)
    assert d["decision"] == "rejected" and any("held-out feedback" in r for r in d["reasons"])


def test_gate_has_no_evidence_without_test_or_enough_feedback(spec):
    d = compare_answers(spec, np.zeros(0), np.zeros(0), np.ones(5), np.ones(5), PASSED)
    assert d["decision"] == "rejected"
    assert d["reasons"] == ["no evidence: no test questions and 5 held-out feedback questions (< 20)"]
    assert d["test"]["n"] == 0 and d["feedback"]["n"] == 5 and not d["feedback"]["enough"]


def test_gate_rejects_a_challenger_missing_a_requirement(spec):
    x = np.ones(40)
    failed = {"passed": False, "checks": [{"name": "p95 latency (ms)", "value": 90, "target": "<= 50",
                                           "passed": False}]}
    d = compare_answers(spec, x, x, np.zeros(0), np.zeros(0), failed)
    assert d["decision"] == "rejected" and d["reasons"][0] == "challenger misses requirements: p95 latency (ms)"


def test_gate_does_not_promote_a_challenger_that_ranks_everything_as_the_champion(spec):
    rng = np.random.default_rng(2)
    rr = rng.choice([1.0, 0.5, 0.0], size=80)
    d = compare_answers(spec, rr, rr.copy(), rr[:30], rr[:30].copy(), PASSED)
    assert d["decision"] == "rejected"
    assert d["reasons"] == ["the challenger ranks every test and held-out question exactly as the champion: nothing "
                            "to promote"]


def test_live_accuracy_counts_a_thumbs_down_as_wrong_whatever_the_number_of_entries(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    store.log_many([prediction_row(p, "v1", json.dumps({"question": p}), "reset", {"reset": 0.9}, 1.0)
                    for p in ("a", "b", "c")])
    store.add_feedback("a", "reset", kind="thumbs", value=1)
    store.add_feedback("b", "reset", kind="thumbs", value=-1)
    store.add_feedback("c", "refund")
    stats = store.feedback_stats(model_version="v1", class_names=["reset", "refund", "ship", "cancel"])
    assert (stats["labelled"], stats["agreed"]) == (3, 1)
    # as training labels a thumbs down among many classes still names no class
    assert {r["id"] for r in store.labelled(["reset", "refund", "ship", "cancel"])} == {"a", "c"}
    store.close()


def test_a_zero_shot_project_refuses_candidates_that_need_examples(tmp_path):
    from modelloop.errors import SpecError
    from modelloop.project import Project

    faq = _csv(tmp_path / "faq.csv", ["id", "question", "answer"], FAQ_ROWS)
    project = Project.init(tmp_path / "p", task="faq", data=faq, candidates="minilm-tuned")
    with pytest.raises(SpecError, match=r"faq.candidates.*needs example questions.*bm25, minilm or hybrid"):
        project.run()
