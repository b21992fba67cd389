"""The FAQ-answering contract, for every candidate of the task, on a small slice of the built-in
help desk (the task answers ranked entries, not class probabilities, so it has its own file).

For each candidate: fitted as the task fits it -> registered in a real LocalRegistry -> loaded
back -> identical scores and answers; an answer stored as a prediction comes back as the same
question; a request body parses into the question the model answers, and a bad one names its field.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from modelloop.data.faq import Faq, builtin_faq_example
from modelloop.errors import InputError, RegistryError
from modelloop.feedback import FeedbackStore, prediction_row
from modelloop.registry import LocalRegistry
from modelloop.spec import FaqSpec
from modelloop.tasks import get_task
from modelloop.tasks.faq import CANDIDATES, fit_candidate, load_version
from modelloop.tasks.faq_http import check_question

TASK = get_task("faq")


@pytest.fixture(scope="module")
def slice_():
    """Ten entries, their customer questions split in two (keys to learn from, questions to ask)."""
    faq, ex = builtin_faq_example()
    ids = faq.ids[:10]
    small = Faq(ids, faq.questions[:10], faq.answers[:10], "slice")
    pairs = [(q, ids.index(e)) for q, e in zip(ex.queries, ex.ids, strict=True) if e in ids]
    return small, pairs[::2], [q for q, _ in pairs[1::2]] + ["how far away is the moon"]


def test_every_candidate_is_covered():
    assert set(TASK.candidates) == set(CANDIDATES)


@pytest.mark.parametrize("candidate", list(CANDIDATES))
def test_fit_register_load_gives_identical_answers(tmp_path, slice_, candidate):
    faq, keys, asked = slice_
    config = {**CANDIDATES[candidate][0], "threshold": 0.35 if candidate != "bm25" else 2.0}
    if candidate == "hybrid":
        config["weight"] = 0.3
    # one epoch of one batch: the contract is about plumbing (fit, save, reload), not accuracy
    r, record = fit_candidate(candidate, config, faq, keys[:16] if candidate == "minilm-tuned" else keys, 1, 0)
    assert record["seconds"] >= 0
    if candidate == "minilm-tuned":
        assert r.config["lora"] and any(k.startswith("adapter.") for k in r.trainable_state_dict())
    registry = LocalRegistry(tmp_path / "registry")
    version = registry.register({"task": "faq", "model": {"candidate": candidate}}, r, r.preprocessing())
    loaded = load_version(registry, version)
    assert loaded.version == version and loaded.task == "faq"
    assert loaded.class_names == [*faq.ids, "__none__"]
    np.testing.assert_allclose(loaded.retriever.scores(asked), r.scores(asked), atol=1e-5)
    got, want = loaded.retriever.answer(asked, 3), r.answer(asked, 3)
    assert [[a["id"] for a in g["answers"]] for g in got] == [[a["id"] for a in w["answers"]] for w in want]
    assert [g["abstained"] for g in got] == [w["abstained"] for w in want]
    # the offline prediction is the served answer, with the version
    offline = TASK.predict_offline(loaded, asked[:2])
    assert [o["answers"][0]["id"] for o in offline] == [w["answers"][0]["id"] for w in want[:2]]
    assert all(o["model_version"] == version for o in offline)


def test_a_non_faq_version_is_refused(tmp_path, slice_):
    faq, keys, _ = slice_
    r, _ = fit_candidate("bm25", {"kind": "bm25"}, faq, keys, 1, 0)
    registry = LocalRegistry(tmp_path / "registry")
    version = registry.register({"task": "text-classification", "model": {}}, r, r.preprocessing())
    with pytest.raises(RegistryError, match="a text-classification model; expected an FAQ model"):
        load_version(registry, version)


def test_a_stored_answer_comes_back_as_its_question(tmp_path):
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    request = {"question": "Where is my parcel?", "k": 3, "abstained": False, "top": "track-order"}
    store.log_many([prediction_row("p1", "v1", json.dumps(request), "track-order", {"track-order": 0.8}, 1.0),
                    prediction_row("p2", "v1", np.zeros((2, 2)), "x", {}, 1.0)])
    items, served = store.recent_raw()
    store.close()
    questions, usable = TASK.collate(items, None)
    assert questions == ["Where is my parcel?"] and sorted(usable) == [False, True]
    assert sorted(served) == ["track-order", "x"]


def test_a_request_body_parses_into_the_question():
    limits = FaqSpec()
    assert check_question({"question": "  Where is\tmy parcel? "}, limits) == ("Where is my parcel?", 3)
    assert check_question({"question": "Refund?", "k": 5}, limits) == ("Refund?", 5)
    for body, needle in (({"question": ""}, "field 'question': received an empty"),
                         ({"question": "x" * 1001}, "field 'question': received a text of 1001 characters"),
                         ({}, "field 'question': missing"), ({"question": 3}, "field 'question': received int"),
                         ({"question": "q", "k": 0}, "field 'k': received 0"),
                         ({"question": "q", "k": True}, "field 'k': received True"),
                         ({"question": "q", "top": 1}, "unknown field(s) ['top']"), ([1], "expected a JSON object")):
        with pytest.raises(InputError) as exc:
            check_question(body, limits)
        assert needle in str(exc.value), (body, str(exc.value))
    with pytest.raises(InputError, match="POST /answer"):
        TASK.parse_json({"text": "hi"}, None)
    schema = TASK.request_schema(None)
    assert schema["required"] == ["question"] and schema["properties"]["k"]["maximum"] == limits.max_k
