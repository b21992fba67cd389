"""The web UI in a real headless Chromium for the tasks without a drawing: a table row form for a
regression model (a number back, the true value as feedback), a user box and clickable items for a
recommender, the upload pane for audio clips."""

from __future__ import annotations

import pytest
import yaml

from modelloop.feedback import FeedbackStore
from tests.conftest import cli_json

pytestmark = pytest.mark.slow


def _feedback(project):
    store = FeedbackStore(f"sqlite:///{project / 'feedback.db'}")
    try:
        return store._latest_feedback_rows(with_input=False)
    finally:
        store.close()


def _quick(proj, **section) -> None:
    spec = yaml.safe_load((proj / "modelloop.yaml").read_text())
    for k, v in section.items():
        spec.setdefault(k.split(".")[0], {})[k.split(".")[1]] = v
    (proj / "modelloop.yaml").write_text(yaml.safe_dump(spec))


def test_regression_row_form_predicts_a_number_and_takes_the_true_value(tmp_path, serve, page):
    proj = tmp_path / "patients"
    cli_json("init", str(proj), "--task", "tabular-regression", "--data", "builtin:diabetes", "--target", "0.3")
    _quick(proj, **{"selection.candidates": ["linear"], "selection.trials": 1})
    assert cli_json("run", str(proj), timeout=600)["champion"]
    server = serve(proj)
    key = server.auth("client")["Authorization"].split()[1]
    page.goto(f"{server.url}/#key={key}")
    page.wait_for_selector("#pane-row:not(.hidden)")
    assert page.is_hidden("#pane-draw") and page.is_hidden("#tab-upload")
    fields = page.locator("#row-form input")
    assert fields.count() == 10
    page.fill("#row-form input[data-column='bmi']", "0.06")
    page.fill("#row-form input[data-column='s5']", "0.05")  # the rest left empty: missing values
    page.click("#predict-row")
    page.wait_for_selector("#fb-value:not(.hidden)")
    value = float(page.input_value("#fb-value"))
    assert 25 < value < 346 and page.is_hidden("#fb-label")
    page.wait_for_function("document.querySelector('#h-m1').textContent === 'test RMSE'")
    page.fill("#fb-value", "212.5")
    page.click("#fb-send")
    page.wait_for_function("document.querySelector('#fb-status').textContent.includes('stored')")
    rows = _feedback(proj)
    assert len(rows) == 1 and rows[0]["label"] == "212.5"


def test_recommender_ui_recommends_and_records_clicks(tmp_path, serve, page):
    proj = tmp_path / "movies"
    cli_json("init", str(proj), "--task", "recommendation")
    _quick(proj, **{"recommendation.candidates": ["popularity", "ease"]})
    assert cli_json("run", str(proj), timeout=600)["champion"]
    server = serve(proj)
    key = server.auth("client")["Authorization"].split()[1]
    page.goto(f"{server.url}/#key={key}")
    page.wait_for_selector("#pane-user:not(.hidden)")
    assert page.is_hidden("#pane-draw") and page.is_hidden("#tab-text")
    page.wait_for_function("document.querySelector('#h-m1').textContent === 'test NDCG@10'")
    page.fill("#user-id", "1")
    page.fill("#rec-k", "5")
    page.click("#recommend")
    page.wait_for_selector("button.rec")
    assert page.locator("button.rec").count() == 5
    assert page.text_content("#result").startswith("For user 1")
    page.locator("button.rec").first.click()
    page.wait_for_selector("button.rec.clicked")
    store = FeedbackStore(f"sqlite:///{proj / 'feedback.db'}")
    try:
        assert store.counts()["feedback"] == 1
        pid = page.evaluate("state.last.prediction_id")
        assert [r["kind"] for r in store.feedback_history(pid)] == ["click"]
    finally:
        store.close()
    # A new user gets the popular items, and the page says so.
    page.fill("#user-id", "somebody-new")
    page.click("#recommend")
    page.wait_for_function("document.querySelector('#result').textContent.startsWith('Most popular')")
    page.wait_for_function("document.querySelector('#c-requests').textContent === '2'")  # the counter counts them
