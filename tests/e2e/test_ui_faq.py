"""The web UI of an FAQ answering project in a real headless Chromium: a chat box instead of the
/predict panes; each answer (or the hand-over to a person) with its runners-up, and feedback on
it: "helped", "wrong", the entry that answers it, or none of them."""

from __future__ import annotations

import pytest

from modelloop.data.faq import NO_ANSWER, builtin_faq_example
from modelloop.feedback import FeedbackStore
from modelloop.project import Project
from modelloop.tasks.faq_http import HANDOVER

pytestmark = pytest.mark.slow


def _history(project, prediction_id: str) -> list[dict]:
    store = FeedbackStore(f"sqlite:///{project / 'feedback.db'}")
    try:
        return store.feedback_history(prediction_id)
    finally:
        store.close()


def _ask(page, question: str, n: int):
    """Ask ``question`` in the chat and wait for the ``n``-th answer; returns its bubble."""
    page.fill("#faq-question", question)
    page.press("#faq-question", "Enter")  # the form submits with Enter, as a chat does
    page.wait_for_function(f"document.querySelectorAll('#faq-chat .msg.bot').length === {n}")
    return page.locator("#faq-chat .msg.bot").nth(n - 1)


def test_faq_chat_answers_hands_over_and_takes_feedback(tmp_path, serve, page):
    proj = tmp_path / "help"
    project = Project.init(proj, task="faq", data="builtin:faq-example", name="help")
    assert project.run()["champion"]  # zero-shot MiniLM: no example questions needed
    faq, _ = builtin_faq_example()
    answer_of = dict(zip(faq.ids, faq.answers, strict=True))

    server = serve(proj)
    key = server.auth("client")["Authorization"].split()[1]
    page.goto(f"{server.url}/#key={key}")
    page.wait_for_selector("#pane-ask:not(.hidden)")
    # Only the chat: no drawing, upload, text, row or recommendation pane, no /predict result card.
    for hidden in ("#pane-draw", "#pane-upload", "#pane-text", "#pane-row", "#pane-user", "#tab-draw", "#tab-upload",
                   "#tab-text", "#tab-row", "#tab-user", "#result-card", "#predict-drawing"):
        assert page.is_hidden(hidden), hidden
    assert page.text_content("#try h2") == "Ask the FAQ"

    # An FAQ question: the reset-password entry's answer, its runners-up, and "helped".
    msg = _ask(page, "I forgot my password and cannot sign in", 1)
    assert page.text_content("#faq-chat .msg.user") == "I forgot my password and cannot sign in"
    assert msg.locator("p.answer").text_content() == answer_of["reset-password"]
    assert "handover" not in msg.get_attribute("class")
    picks = msg.locator("button.pick")
    assert picks.count() == 3  # the two runners-up (k = 3) and "none of these answers it"
    assert "reset-password" not in [picks.nth(i).get_attribute("data-entry") for i in range(3)]
    assert picks.nth(2).get_attribute("data-entry") == NO_ANSWER
    pid = msg.get_attribute("data-prediction")
    msg.locator("button.helped").click()
    msg.locator("p.status.ok").wait_for()
    assert [(r["kind"], r["value"], r["label"]) for r in _history(proj, pid)] == [("thumbs", 1.0, "reset-password")]
    page.wait_for_function("document.querySelector('#c-feedback').textContent === '1'")

    # An off-topic question: the hand-over message; the agent says no entry answers it.
    msg = _ask(page, "what's the weather in Paris tomorrow?", 2)
    assert "handover" in msg.get_attribute("class")
    assert msg.locator("p.answer").text_content() == HANDOVER
    assert msg.locator("button.pick").count() == 4  # the three closest entries, and "none of these"
    pid = msg.get_attribute("data-prediction")
    msg.locator(f"button.pick[data-entry='{NO_ANSWER}']").click()
    msg.locator("p.status.ok").wait_for()
    assert [(r["kind"], r["label"]) for r in _history(proj, pid)] == [("label", NO_ANSWER)]

    # A wrong answer (zero-shot MiniLM ranks delivery cost first): "wrong", then the right entry
    # picked among the runners-up.
    msg = _ask(page, "Is there a faster shipping option?", 3)
    shown = msg.locator("p.answer").text_content()
    assert shown in answer_of.values() and shown != answer_of["express-delivery"]
    pid = msg.get_attribute("data-prediction")
    msg.locator("button.wrong").click()
    page.wait_for_function("document.querySelectorAll('#faq-chat .msg.bot')[2].querySelector('.status.ok')")
    msg.locator("button.pick[data-entry='express-delivery']").click()
    page.wait_for_function("document.querySelectorAll('#faq-chat .msg.bot')[2].querySelector('.status')"
                           ".textContent.includes('right entry')")
    assert "chosen" in msg.locator("button.pick[data-entry='express-delivery']").get_attribute("class")
    rows = _history(proj, pid)
    assert [(r["kind"], r["value"]) for r in rows] == [("thumbs", -1.0), ("label", None)]
    assert rows[-1]["label"] == "express-delivery"
    page.wait_for_function("document.querySelector('#c-feedback').textContent === '4'")

    # Server text and the user's own text are shown as text, never as markup.
    msg = _ask(page, "<img src=x onerror=alert(1)> can I <b>return</b> this?", 4)
    user = page.locator("#faq-chat .msg.user").nth(3)
    assert user.locator("img, b").count() == 0 and "<b>return</b>" in user.text_content()
