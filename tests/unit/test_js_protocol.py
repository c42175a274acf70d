"""The JavaScript half of the wire contract equals the Python half: static/js/protocol.js's
requests, streams, events, modes and error codes, and static/js/views/index.js's view names,
read by running node on the modules themselves. Every error code and event the Python code
raises or sends is listed, and every limit the page reads is one the server publishes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from app import protocol, published, security, shaping

ROOT = Path(__file__).resolve().parents[2]
STATIC_JS = ROOT / "static" / "js"
NODE = shutil.which("node")
NODE_SECONDS = 30

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed: the JS tables cannot be read")


def python_tables() -> dict[str, set[str]]:
    """The Python request tables the JS ones mirror: Socket.IO requests, and those answered by a
    stream of events. The one place that says where requests are declared."""
    from app.requests import REQUESTS, SOCKET_EVENTS

    return {"requests": set(SOCKET_EVENTS), "streams": {name for name, request in REQUESTS.items() if request.streams}}


def js_exports(module: str) -> dict:
    """The exported values of an ES module under static/js (functions left out), as node sees them."""
    script = f"const m = await import({json.dumps((STATIC_JS / module).as_uri())}); console.log(JSON.stringify(m));"
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=NODE_SECONDS, check=False
    )
    assert done.returncode == 0, f"node could not import {module}: {done.stderr}"
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def js_protocol() -> dict:
    return js_exports("protocol.js")


def python_sources(*packages: str) -> str:
    return "\n".join(path.read_text() for package in packages for path in sorted((ROOT / package).rglob("*.py")))


def js_sources() -> str:
    return "\n".join(path.read_text() for path in sorted(STATIC_JS.rglob("*.js")))


def test_requests_and_streams_match(js_protocol):
    tables = python_tables()
    assert len(js_protocol["REQUESTS"]) == len(set(js_protocol["REQUESTS"]))
    assert set(js_protocol["REQUESTS"]) == tables["requests"]
    assert set(js_protocol["STREAMS"]) == tables["streams"]
    assert set(js_protocol["PRESENTER_REQUESTS"]) == {
        name for name in tables["requests"] if name.startswith("present_")
    }


def test_server_events_match(js_protocol):
    events = js_protocol["EVENTS"] + js_protocol["PRESENTER_EVENTS"]
    assert len(events) == len(set(events)) and set(events) == set(protocol.SERVER_EVENTS)
    assert set(js_protocol["PRESENTER_EVENTS"]) == {
        name for name in protocol.SERVER_EVENTS if name.startswith("present_")
    }


def test_every_event_the_server_sends_is_listed():
    """Events named in an emit call, and the detail requests, each answered by an event of its own name."""
    sent = set(re.findall(r'(?:emit|_to)\((?:[\w.]+, )?"(\w+)"', python_sources("app")))
    tables = python_tables()
    details = (
        tables["requests"] - tables["streams"] - {name for name in tables["requests"] if name.startswith("present_")}
    )
    assert {"progress", "tokens", "error", "present_state"} <= sent  # the pattern still finds them
    assert sent | details <= set(protocol.SERVER_EVENTS), sorted((sent | details) - set(protocol.SERVER_EVENTS))


def test_modes_match(js_protocol):
    assert js_protocol["ATTENTION_MODES"] == list(protocol.ATTENTION_MODES)
    assert js_protocol["NORM_MODES"] == list(protocol.NORM_MODES)
    assert js_protocol["LAYER_NORM_MODES"] == list(protocol.LAYER_NORM_MODES)
    assert js_protocol["RAW_MODES"] == list(protocol.RAW_MODES)
    assert js_protocol["TOKEN_MODES"] == list(shaping.TOKEN_MODES)
    assert js_protocol["FUSIONS"] == list(protocol.FUSIONS)
    assert js_protocol["NAMESPACE"] == protocol.NAMESPACE


def test_every_error_code_the_server_raises_is_listed():
    raised = set(re.findall(r'(?:AtlasError|__init__)\(\s*"(\w+)"', python_sources("app", "models")))
    assert {"bad_request", "not_found", "busy"} <= raised  # the pattern still finds them
    assert raised <= set(protocol.ERRORS), sorted(raised - set(protocol.ERRORS))
    assert set(security.STATUS_CODES.values()) <= set(protocol.ERRORS)


def test_the_page_knows_every_error_code_it_meets(js_protocol):
    """The page's own codes are its own, and every code its modules compare with or raise is one
    the server publishes or one of the page's own."""
    own = set(js_protocol["CLIENT_ERRORS"])
    assert not own & set(protocol.ERRORS), "a code is both the server's and the page's own"
    used = set(re.findall(r'\bcode\s*(?:===|!==|:)\s*"(\w+)"', js_sources()))
    assert {"not_found", "bad_payload"} <= used  # the pattern still finds them
    assert used <= own | set(protocol.ERRORS), sorted(used - own - set(protocol.ERRORS))


def test_view_names_match_the_tabs():
    names = js_exports("views/index.js")["VIEW_NAMES"]
    assert names == [name for name, _, _ in published.VIEWS]
    assert all((STATIC_JS / "views" / f"{name}.js").is_file() for name in names)


def test_every_limit_the_page_reads_is_published(app, service):
    limits = published.page_settings(app.config, service)["limits"]
    read = set(re.findall(r"\blimits\.(\w+)", js_sources()))
    assert read and read <= set(limits), sorted(read - set(limits))
