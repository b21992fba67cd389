"""Text classification through the whole loop: init -> run -> serve -> feedback -> retrain -> gate.

Real data (Rotten Tomatoes review snippets), the real MiniLM weights, a real server on loopback.
"""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from modelloop.data.text import load_rotten_tomatoes
from tests.conftest import cli, cli_json, feedback_and_retrain

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reviews():
    t = load_rotten_tomatoes()
    return t.texts, t.labels


def _write_csv(path, texts, labels):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["review", "verdict"])
        w.writerows(zip(texts, labels, strict=True))


def test_text_project_runs_serves_and_learns_from_feedback(tmp_path, serve, reviews):
    texts, labels = reviews
    data = tmp_path / "reviews.csv"
    _write_csv(data, texts[:600], labels[:600])
    proj = tmp_path / "proj"
    out = cli_json("init", str(proj), "--task", "text-classification", "--data", str(data),
                   "--text-column", "review", "--label-column", "verdict", "--target", "0.6",
                   "--time-budget-s", "300")
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    assert out["spec_content"]["task"] == "text-classification"
    spec["selection"]["candidates"] = ["tfidf-linear", "minilm-linear"]
    spec["selection"]["trials"] = 2
    spec["selection"]["choose"] = "best"  # MiniLM wins on quality, so distillation into TF-IDF runs
    spec["training"]["max_epochs"] = 15
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))

    res = cli_json("run", str(proj), timeout=900)
    assert res["champion"] and res["passed"]
    assert res["metrics"]["accuracy"] >= 0.6
    m = json.loads((proj / "registry" / "versions" / res["version"] / "manifest.json").read_text())
    board = {r["candidate"]: r for r in m["selection"]["leaderboard"]}
    assert {"tfidf-linear", "minilm-linear"} <= set(board)
    assert all(r["p95_ms"] > 0 and r["size_mb"] > 0 for r in board.values())
    # MiniLM's frozen weights count in its size: far larger than a TF-IDF vocabulary and a linear layer.
    assert board["minilm-linear"]["size_mb"] > 10 * board["tfidf-linear"]["size_mb"]
    if m["selection"]["chosen"] == "minilm-linear":
        # The pretrained winner was distilled into the small candidate, which competed under the same rule.
        student = next(r for r in board.values() if r.get("distilled_from") == "minilm-linear")
        assert student["family"] == "linear" and student["p95_ms"] < board["minilm-linear"]["p95_ms"]
        shipped = m["selection"]["shipped"]
        assert m["model"]["candidate"] == ("tfidf-linear" if shipped == student["candidate"] else "minilm-linear")

    server = serve(proj)
    one = server.client.post("/predict", json={"text": "A warm, funny and moving film."})
    assert one.status_code == 200, one.text
    assert set(one.json()["scores"]) == {"fresh", "rotten"}
    batch = server.client.post("/predict", json={"instances": texts[600:760]})
    assert batch.status_code == 200
    preds = batch.json()["predictions"]
    assert len(preds) == 160
    for bad, field in (({"text": "   "}, "text"), ({"text": 3}, "text"), ({"pixels": [1, 2]}, "pixels"),
                       ({"instances": ["ok", ""]}, "instances[1]")):
        r = server.client.post("/predict", json=bad)
        assert r.status_code == 422, (bad, r.text)
        assert field in r.json()["detail"]
    # The web UI in a real headless Chromium shows a text box for a text model.
    from playwright.sync_api import sync_playwright

    from tests.e2e.test_ui import CHROMIUM, FLAGS

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        page = browser.new_page()
        page.goto(server.url + "/")
        page.wait_for_selector("#pane-text:not(.hidden)")
        assert page.is_hidden("#pane-draw")
        page.fill("#text-input", "An utterly charming, beautifully acted film.")
        page.click("#predict-text")
        page.wait_for_function("document.querySelector('#result').textContent.length > 0 && "
                               "!document.querySelector('#result').classList.contains('empty')")
        assert page.text_content("#result").startswith(("fresh", "rotten"))
        browser.close()
    # Invalid UTF-8 in the body is a clear 422, not a server error.
    r = server.client.post("/predict", content=b'{"text": "caf\xe9"}', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "UTF-8" in r.json()["detail"]

    feedback_and_retrain(server, proj, preds, labels[600:760], timeout=900)

    pred = cli_json("predict", str(proj), "--text", "Dull and far too long.")
    assert pred["predictions"][0]["label"] in ("fresh", "rotten")


def test_text_bad_inputs_are_clear(tmp_path):
    proj = tmp_path / "p"
    missing = tmp_path / "none.csv"
    r = cli("init", str(proj), "--task", "text-classification", "--data", str(missing))
    assert r.returncode == 2 and "none.csv" in r.stderr
    one_class = tmp_path / "one.csv"
    _write_csv(one_class, ["good", "great", "fine"], ["pos", "pos", "pos"])
    cli_json("init", str(proj), "--task", "text-classification", "--data", str(one_class), "--label-column",
             "verdict", "--text-column", "review")
    r = cli("run", str(proj))
    assert r.returncode == 2 and "1 class" in r.stderr and "at least 2" in r.stderr
    no_label = tmp_path / "nolabel.csv"
    no_label.write_text("review,stars\nnice,5\nbad,1\n")
    cli_json("init", str(tmp_path / "q"), "--task", "text-classification", "--data", str(no_label))
    r = cli("run", str(tmp_path / "q"))
    assert r.returncode == 2 and "label" in r.stderr and "nolabel.csv" in r.stderr


def test_retrain_when_feedback_brings_new_words(tmp_path, reviews):
    """Feedback with words the training texts never had widens the TF-IDF vocabulary; the
    challenger is built for the features it now gets."""
    from modelloop import Project
    from modelloop.feedback import FeedbackStore, prediction_row

    texts, labels = reviews
    data = tmp_path / "small.csv"
    _write_csv(data, texts[:80], labels[:80])
    p = Project.init(tmp_path / "p", task="text-classification", data=str(data), target=0.3, time_budget_s=120,
                     text_column="review", label_column="verdict")
    spec = yaml.safe_load((p.path / "modelloop.yaml").read_text())
    spec["selection"].update(candidates=["tfidf-linear"], trials=1)
    (p.path / "modelloop.yaml").write_text(yaml.safe_dump(spec))
    p = Project(p.path)
    res = p.run()
    assert res["champion"]
    store = FeedbackStore(f"sqlite:///{p.path / 'feedback.db'}")
    new = [f"stunning cinematography truly number {i} zyxwv" for i in range(30)]
    store.log_many([prediction_row(f"id{i}", res["version"], t, "fresh", {"fresh": 1.0, "rotten": 0.0}, 1.0)
                    for i, t in enumerate(new)])
    for i in range(30):
        store.add_feedback(f"id{i}", "fresh")
    store.close()
    out = p.retrain()
    assert out["feedback_examples"] + out["feedback_validation"] + out["feedback_holdout"] == 30
    m = json.loads((p.path / "registry" / "versions" / out["version"] / "manifest.json").read_text())
    parent = json.loads((p.path / "registry" / "versions" / res["version"] / "manifest.json").read_text())
    assert m["model"]["input_shape"][0] > parent["model"]["input_shape"][0]
