"""Analyze pressed while the server is down: the connection banner stays, the page says the
analysis waits for the server, and once a server answers again on the same port the queued
request is sent and its answer shown (it once hid the banner and showed "Analysing…" forever)."""

from __future__ import annotations

import pytest

from tests.browser.conftest import SERVER_ENV, watch
from tests.browser.helpers import ANALYSIS_TIMEOUT_MS, PROMPT, READY
from tests.browser.server import free_port, running_server

pytestmark = pytest.mark.browser

BANNER = "#error-banner[data-code=disconnected]"
OFFLINE_NOISE = ("WebSocket connection", "ERR_CONNECTION_REFUSED")  # the browser's own lines while it retries


def test_analyze_while_offline_is_sent_on_reconnect(open_context, tmp_path):
    port, cache = free_port(), tmp_path / "cache"
    context, log = open_context()
    page = watch(context.new_page(), log)
    page.set_default_timeout(30_000)
    with running_server(cache, tmp_path / "first.log", SERVER_ENV, port=port) as url:
        page.goto(url)
        page.wait_for_function("() => document.documentElement.dataset.busy === 'false'")
    page.wait_for_selector(BANNER)  # the server is gone: the page says so

    page.fill("#prompt", f"{PROMPT} Again.")  # not the example the first visit analysed
    page.click("#analyze")
    page.wait_for_timeout(1000)  # long enough for a hidden banner or a lost request to show
    assert page.is_visible(BANNER), "Analyze hid the connection banner"
    assert "Waiting for the server" in page.text_content("#empty-state")

    with running_server(cache, tmp_path / "second.log", SERVER_ENV, port=port):
        page.wait_for_function(READY, timeout=ANALYSIS_TIMEOUT_MS)  # the queued analysis arrived
        assert not page.is_visible("#error-banner")
        assert page.evaluate("() => document.documentElement.dataset.analysis")
    errors = [error for error in log.errors if not any(noise in error for noise in OFFLINE_NOISE)]
    assert not errors, f"the page logged errors: {errors}"
