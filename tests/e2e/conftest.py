"""Fixtures the end-to-end tests share."""

from __future__ import annotations

import pytest


@pytest.fixture
def page():
    """A page of a real headless Chromium; the test fails if the page raised a JavaScript error."""
    from playwright.sync_api import sync_playwright

    from tests.e2e.test_ui import CHROMIUM, FLAGS

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        p = browser.new_page(viewport={"width": 1366, "height": 900})
        errors: list[str] = []
        p.on("pageerror", lambda e: errors.append(str(e)))
        yield p
        browser.close()
        assert not errors, errors
