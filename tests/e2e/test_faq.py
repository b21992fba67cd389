"""FAQ answering through the whole loop: init (the FAQ alone: zero-shot) -> run -> serve ->
POST /answer, GET /gaps -> agents' corrections as feedback -> retrain (a fine-tuned MiniLM) ->
gate -> lineage -> monitor.

The built-in example help desk written as the files a team would have (``faq.csv``,
``questions.csv``), the real CLI, a real server on loopback (stopped by its process id), the
real SQLite store.
"""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
import yaml

from modelloop.data.faq import NO_ANSWER, write_faq_example
from tests.conftest import cli, cli_json

pytestmark = pytest.mark.slow

OFF_TOPIC = "what is the best recipe for banana bread with walnuts"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_faq_example(tmp_path_factory.mktemp("helpdesk"))


def test_faq_project_answers_hands_over_and_learns_from_corrections(tmp_path, serve, files):
    faq_csv, questions_csv = files
    proj = tmp_path / "proj"
    out = cli_json("init", str(proj), "--task", "faq", "--data", str(faq_csv))
    assert out["spec_content"]["task"] == "faq" and out["spec_content"]["data"]["source"] == str(faq_csv)
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    spec["faq"] = {**(spec.get("faq") or {}), "fine_tune_epochs": 2}  # a short fine-tune: a test, not a model
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))

    # the FAQ alone: zero-shot MiniLM, quality unknown, serving anyway
    res = cli_json("run", str(proj), timeout=600)
    v1 = res["version"]
    assert res["champion"] and res["passed"] and res["family"] == "minilm"
    assert res["metrics"]["top1"] is None
    m1 = json.loads((proj / "registry" / "versions" / v1 / "manifest.json").read_text())
    assert m1["task"] == "faq" and m1["measured"] is False and m1["dataset"]["entries"] == 55
    assert m1["abstention"]["threshold"] == 0.3 and "uncalibrated" in m1["abstention"]["rule"]
    assert "Quality: unknown" in (proj / "reports" / f"{v1}.html").read_text()
    assert m1["requirements"]["checks"][0]["unmeasured"] and "unknown" in m1["requirements"]["checks"][0]["target"]

    faq = pd.read_csv(faq_csv)
    examples = pd.read_csv(questions_csv, keep_default_na=False)
    server = serve(proj)
    c, auth = server.client, server.auth("client")
    champion = c.get("/health").json()["model_version"]
    assert champion == v1

    r = c.post("/answer", json={"question": faq["question"][4], "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_version"] == champion and not body["abstained"] and body["message"] is None
    assert [a["id"] for a in body["answers"]][0] == faq["id"][4] and len(body["answers"]) == 3
    assert body["answers"][0]["answer"] == faq["answer"][4]
    assert body["answers"][0]["score"] >= body["answers"][1]["score"] >= body["answers"][2]["score"]
    first = body["prediction_id"]

    # answers from many threads at once: each one what the same question gets alone
    from concurrent.futures import ThreadPoolExecutor

    asked = [str(q) for q in examples["query"][:24]]
    alone = [c.post("/answer", json={"question": q}).json()["answers"][0]["id"] for q in asked]
    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(lambda q: c.post("/answer", json={"question": q}), asked))
    assert [r.status_code for r in together] == [200] * len(asked), [r.text for r in together if r.status_code != 200]
    assert [r.json()["answers"][0]["id"] for r in together] == alone

    off = c.post("/answer", json={"question": OFF_TOPIC}).json()
    assert off["abstained"] and "person" in off["message"] and off["answers"]
    gaps = c.get("/gaps").json()
    assert any(OFF_TOPIC in g["questions"] for g in gaps["groups"])

    for payload, field, needle in (({"question": "   "}, "'question'", "empty"),
                                   ({"question": "why? " * 300}, "'question'", "at most 1000"),
                                   ({"question": "refund?", "k": 0}, "'k'", "from 1 to 10"),
                                   ({"question": "refund?", "k": 11}, "'k'", "from 1 to 10"),
                                   ({"question": "refund?", "k": "3"}, "'k'", "'3'"),
                                   ({"k": 3}, "'question'", "missing")):
        r = c.post("/answer", json=payload)
        assert r.status_code == 422, (payload, r.text)
        assert field in r.json()["detail"] and needle in r.json()["detail"], (payload, r.json())
    r = c.post("/predict", json={"text": "How do I reset my password?"})
    assert r.status_code == 422 and "/answer" in r.json()["detail"]
    schema = c.get("/openapi.json").json()["paths"]["/answer"]["post"]["requestBody"]["content"]
    props = schema["application/json"]["schema"]["properties"]
    assert props["question"]["maxLength"] == 1000 and props["k"]["maximum"] == 10

    r = c.post("/feedback", json={"prediction_id": first, "label": "no-such-entry"}, headers=auth)
    assert r.status_code == 422 and "'label'" in r.json()["detail"] and "no-such-entry" in r.json()["detail"]
    r = c.post("/feedback", json={"prediction_id": first, "kind": "thumbs", "value": 1}, headers=auth)
    assert r.status_code == 201 and r.json()["label"] == faq["id"][4]  # a thumbs up confirms what was served

    # agents correct the answers to 80 customer questions (two per entry, of 40 entries) and mark
    # two off-topic questions as answered by no entry
    in_scope = examples[examples["id"] != ""].groupby("id").head(2).head(80)
    out_scope = examples[examples["id"] == ""].head(2)
    corrected = []
    for q, label in [*zip(in_scope["query"], in_scope["id"], strict=True),
                     *((q, NO_ANSWER) for q in out_scope["query"])]:
        a = c.post("/answer", json={"question": q})
        assert a.status_code == 200, a.text
        r = c.post("/feedback", json={"prediction_id": a.json()["prediction_id"], "label": label}, headers=auth)
        assert r.status_code == 201 and r.json()["label"] == label, r.text
        corrected.append(a.json())
    assert sum(a["answers"][0]["id"] == i for a, i in zip(corrected, in_scope["id"], strict=False)) > 20
    server.stop()

    proc = cli("retrain", str(proj), "--json", timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1: the gate rejected the challenger
    rt = json.loads(proc.stdout)
    v2 = rt["version"]
    assert rt["parent"] == champion and rt["decision"] in ("promoted", "rejected")
    ev = rt["evidence"]
    assert rt["champion_metrics"]["questions"] == rt["challenger_metrics"]["questions"] == 0  # no test split
    assert ev["reasons"] and ev["decision"] == rt["decision"]
    assert rt["feedback_examples"] + rt["feedback_validation"] + rt["feedback_holdout"] == 83  # the thumbs up too
    m2 = json.loads((proj / "registry" / "versions" / v2 / "manifest.json").read_text())
    gate = m2["gate"]
    assert m2["parent"] == champion and gate["decision"] == rt["decision"]
    assert m2["model"]["candidate"] == "minilm-tuned"
    assert gate["test"]["n"] == 0  # no example questions: the held-out feedback is the evidence
    assert 0 < gate["feedback"]["n"] <= rt["feedback_holdout"] and "Wilcoxon" in gate["feedback"]["method"]
    assert gate["feedback"]["enough"] == (gate["feedback"]["n"] >= 20)
    assert (rt["decision"] == "rejected") or gate["feedback"]["enough"]
    assert any("no evidence" in r for r in gate["reasons"]) == (not gate["feedback"]["enough"])
    assert m2["feedback"]["labelled"] == 82 and m2["feedback"]["thumbs_up"] == 1
    assert m2["feedback"]["unknown_entry"] == 0 and m2["feedback"]["out_of_scope"] == 2
    assert m2["training"]["record"]["epochs"] == 2
    assert cli_json("models", str(proj))["champion"] == (v2 if rt["decision"] == "promoted" else champion)

    # lineage: an answer -> the version that gave it -> its run; and the version its correction trained
    trained = cli_json("lineage", str(proj), "--version", v2)["feedback_ids"]
    assert len(trained) == rt["feedback_examples"]
    lin = cli_json("lineage", str(proj), "--prediction", trained[0])
    assert lin["model_version"] == champion and v2 in lin["trained_into"]
    assert lin["feedback"] and lin["feedback"][-1]["kind"] in ("label", "thumbs")
    lin = cli_json("lineage", str(proj), "--prediction", off["prediction_id"])
    assert lin["model_version"] == champion and lin["predicted"] == NO_ANSWER and lin["trained_into"] == []

    mon = cli_json("monitor", str(proj))
    assert mon["abstention"]["answers"] >= 84 and mon["abstention"]["abstained"] >= 1
    assert 0 < mon["abstention"]["rate"] < 1
    assert any(OFF_TOPIC in g["questions"] for g in mon["gaps"])
    assert mon["drift"]["n_live"] >= 20

    # shadow mode: the version that is not the champion answers the same questions, silently
    champ_now = cli_json("models", str(proj))["champion"]
    other = v2 if champ_now != v2 else champion
    assert cli_json("shadow", str(proj), other)["shadow"] == other
    server = serve(proj)
    for q in in_scope["query"][:10]:
        a = server.client.post("/answer", json={"question": q})
        assert a.status_code == 200 and a.json()["model_version"] == champ_now
    deadline = time.time() + 60
    while True:
        sh = cli_json("monitor", str(proj)).get("shadow") or {}
        if sh.get("scored", 0) >= 10 or time.time() > deadline:
            break
        time.sleep(1)
    assert sh["version"] == other and sh["scored"] >= 10 and 0 <= sh["agreement"] <= 1
    assert sh["with_feedback"] == 0  # these answers got no feedback yet
    server.stop()


def _faq(path, rows, columns=("id", "question", "answer")):
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


GOOD = [("reset", "How do I reset my password?", "Use the link on the sign-in page."),
        ("refund", "How long does a refund take?", "Five to ten working days.")]


@pytest.mark.parametrize(("case", "needles"), [
    ("duplicate", ["line 4", "id 'refund' appears twice", "first on line 3"]),
    ("empty-answer", ["line 3", "column 'answer' is empty"]),
    ("unknown-id", ["questions.csv", "line 3", "id 'track' is not an entry", "faq.csv"]),
    ("no-column", ["no answer column 'answer'", "columns found", "--answer-column"]),
])
def test_faq_bad_inputs_exit_2_naming_the_file(tmp_path, case, needles):
    rows = {"duplicate": [*GOOD, ("refund", "Refund again?", "Yes.")],
            "empty-answer": [GOOD[0], ("refund", "How long does a refund take?", "")]}.get(case, GOOD)
    faq = tmp_path / "faq.csv"
    if case == "no-column":
        _faq(faq, [(i, q, a) for i, q, a in rows], ("id", "question", "reply"))
    else:
        _faq(faq, rows)
    extra = []
    if case == "unknown-id":
        q = tmp_path / "questions.csv"
        pd.DataFrame([["forgot my password", "reset"], ["where is my parcel", "track"]],
                     columns=["query", "id"]).to_csv(q, index=False)
        extra = ["--examples", str(q)]
    proc = cli("init", str(tmp_path / "proj"), "--task", "faq", "--data", str(faq), *extra)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    err = proc.stderr
    assert str(tmp_path / "questions.csv" if case == "unknown-id" else faq) in err, err
    for n in needles:
        assert n in err, (n, err)
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "proj" / "modelloop.yaml").exists()
