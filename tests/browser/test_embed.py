"""notebook.show in a real browser, the way a researcher coming from BertViz uses it: a page on
another origin (a notebook on another port) holds the iframe `show` returns, and the app renders
inside it; an origin not in ATLAS_FRAME_ANCESTORS, or any page but the embeddable view, is refused."""

from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app import notebook
from tests.browser.conftest import watch
from tests.browser.helpers import ANALYSIS_TIMEOUT_MS, PROMPT, READY
from tests.browser.server import free_port

pytestmark = pytest.mark.browser

NOTEBOOK_HOST = "127.0.0.1"  # another port of an allowed host: a local Jupyter
STRANGER_HOST = "127.0.0.2"  # a loopback address the default FRAME_ANCESTORS does not name
REFUSED = 'Content Security Policy directive: "frame-ancestors'  # Chromium's console line for a refused frame


@contextlib.contextmanager
def notebook_page(host: str, src: str):
    """Serve, on `host` and a free port, a page holding one iframe of `src`; yield its URL."""
    body = f'<!doctype html><title>notebook</title><iframe src="{src}" width="1200" height="720"></iframe>'.encode()

    class Page(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer((host, free_port()), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{host}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def app_frame(page):
    """The iframe's frame once it has navigated (to the app, or to Chromium's error page)."""
    page.wait_for_function("() => document.querySelector('iframe') !== null")
    frame = page.frames[1]
    frame.wait_for_load_state()
    return frame


def open_notebook(open_context):
    context, log = open_context()
    page = watch(context.new_page(), log)
    page.set_default_timeout(30_000)
    return page, log


def test_show_renders_inside_a_notebook_on_another_port(open_context, live_server):
    link = notebook.embed_link(notebook.push("minilm", PROMPT, server=live_server))  # the src show() frames
    assert "embed=1" in link
    page, log = open_notebook(open_context)
    with notebook_page(NOTEBOOK_HOST, link) as url:
        page.goto(url)
        frame = app_frame(page)
        assert frame.url.startswith(live_server)
        frame.wait_for_function(READY, timeout=ANALYSIS_TIMEOUT_MS)  # analysed inside the notebook's iframe
        frame.wait_for_selector("[data-testid=model-canvas], #view-model canvas")
        assert frame.evaluate("() => document.documentElement.dataset.analysis") != ""
    assert not log.errors, f"the embedded app logged errors: {log.errors}"


@pytest.mark.parametrize(
    ("host", "embed"),
    [(STRANGER_HOST, True), (NOTEBOOK_HOST, False)],
    ids=["origin-not-allowed", "page-not-embeddable"],
)
def test_framing_is_refused(open_context, live_server, host, embed):
    link = f"{live_server}/?model=minilm&view=model" + ("&embed=1" if embed else "")
    page, log = open_notebook(open_context)
    with notebook_page(host, link) as url:
        page.goto(url)
        frame = app_frame(page)
        page.wait_for_timeout(500)
        assert not frame.url.startswith(live_server), "the app was framed"
        assert frame.evaluate("() => document.querySelector('#analyze')") is None
    assert log.errors and all(REFUSED in error for error in log.errors), log.errors
