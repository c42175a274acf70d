"""Property-based fuzzing of every socket event and every HTTP route with malformed payloads:
the answer is always a clear error (or the real answer to a valid request), never an internal
error or an exception in the server's log.

CI runs a few hundred cases. ``ATLAS_FUZZ_EXAMPLES=10000`` runs that many per test (the long
mode; see docs/reliability.md):

    ATLAS_FUZZ_EXAMPLES=10000 .venv/bin/python -m pytest tests/integration/test_fuzz.py -q --hypothesis-show-statistics
"""

from __future__ import annotations

import logging
import os
import time
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as event_label
from hypothesis import strategies as st

from app.protocol import NAMESPACE, AtlasError, Field, parse_request, request_id
from app.requests import SOCKET_EVENTS as REQUESTS
from app.requests import Cost
from tests.integration.conftest import collect

EXAMPLES = int(os.environ.get("ATLAS_FUZZ_EXAMPLES", "150"))  # cases per test
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=not os.environ.get("ATLAS_FUZZ_EXAMPLES"),  # CI: the same cases every run
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROMPT = "Fuzzing needs one real analysis to aim at."
# answered from a background task (not within the test client's emit): wait for the answer
BACKGROUND_EVENTS = tuple(name for name, row in REQUESTS.items() if row.cost not in (Cost.CACHED, Cost.ROOM))
STREAM_END = ("done", "error")

leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "../../etc/passwd",
            "<script>alert(1)</script>",
            "minilm",
            "f" * 64,
            "%00",
            "\ud7ff\ue000",
            "1e309",
            "-1",
            "NaN",
        ]
    )
)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


class ServerErrors(logging.Handler):
    """Collects ERROR records (``log.exception`` of an unhandled failure) while fuzzing."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("werkzeug"):
            self.records.append(record)


@pytest.fixture()
def server_errors():
    handler = ServerErrors()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)
    assert not handler.records, [r.getMessage() for r in handler.records[:3]]


@pytest.fixture(scope="module")
def real_key(service) -> str:
    return service.analyze("minilm", PROMPT).key


@pytest.fixture()
def unlimited(limit):
    """Fuzzing sends hundreds of requests a second from one client."""
    limit(RATE_ANALYZE_PER_MINUTE=0, RATE_EVENTS_PER_SECOND=0)


def field_values(key: str):
    """Values that are nearly right (real key, in-range indices, real model) and plainly wrong."""
    near = st.sampled_from(
        [
            key,
            key.upper(),
            key[:-1],
            "minilm",
            "attention",
            "scores",
            "value",
            "mean",
            "max",
            "ABC234",
            "model=minilm&text=hi",
            "",
        ]
    )
    return (
        near
        | st.integers(-3, 40)
        | st.integers(0, 2**40)
        | st.floats(0, 6)
        | st.booleans()
        | st.lists(st.integers(-2, 8), max_size=4)
        | st.text(max_size=300)
        | json_values
    )


def valid_values(name: str, spec: Field, key: str):
    """Values parse_request accepts for one field (the run then reaches shaping and the model)."""
    if name in ("key", "other"):
        return st.just(key)
    if name == "model":
        return st.just("minilm")
    if name == "text":
        return st.text(min_size=1, max_size=120)
    if spec.choices:
        return st.sampled_from(spec.choices)
    if spec.kind is bool:
        return st.booleans()
    if spec.kind is list:  # indices, or analysis keys (the global view's own analyses)
        return st.lists(st.sampled_from([key, "f" * 64]) if spec.item is str else st.integers(-2, 8), max_size=3)
    if spec.kind in (int, float):
        low = int(spec.minimum or 0)
        high = int(spec.maximum) if spec.maximum is not None else low + 40
        values = st.integers(low, min(high, low + 40)) | st.integers(low, 2**31)
        return values if spec.kind is int else values | st.floats(spec.minimum or 0, spec.maximum or 10)
    return st.text(max_size=20)


@st.composite
def socket_requests(draw, key: str):
    """Mostly a known event with a nearly valid payload (0-2 fields broken), sometimes anything."""
    roll = draw(st.integers(0, 19))
    if roll == 0:
        return draw(st.sampled_from(["connect", "disconnect", "message", "", "analyze ", "__proto__"])), draw(
            json_values
        )
    if roll == 1:
        return draw(st.text(max_size=16)), draw(json_values)
    event = draw(st.sampled_from(sorted(REQUESTS)))
    if roll == 2:
        return event, draw(json_values)  # not even an object
    fields = REQUESTS[event].fields
    payload = {
        name: draw(valid_values(name, spec, key))
        for name, spec in fields.items()
        if spec.required or draw(st.booleans())
    }
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(sorted(fields) + ["rid", "extra"]))
        if draw(st.booleans()) or name not in payload:
            payload[name] = draw(field_values(key))
        else:
            del payload[name]
    if isinstance(payload.get("model"), str) and payload["model"] != "minilm":
        payload["model"] += "-fuzz"  # an unknown model: never spend the run loading the 135M one
    payload["rid"] = payload.get("rid", draw(st.integers(0, 10**6) | st.text(max_size=70)))
    return event, payload


def expected_error(event: str, payload) -> str | None:
    """The code parse_request gives this message, or None when it is well-formed."""
    if event not in REQUESTS:
        return "bad_request"
    try:
        parse_request(event, REQUESTS[event].fields, payload)
    except AtlasError as error:
        return error.code
    return None


@FUZZ
@given(data=st.data())
def test_every_socket_event_answers_malformed_payloads_with_an_error(connect, real_key, unlimited, server_errors, data):
    client = fuzz_client(connect)
    event, payload = data.draw(socket_requests(real_key))
    client.get_received(NAMESPACE)
    client.emit(event, payload, namespace=NAMESPACE)
    rid, code = request_id(payload), expected_error(event, payload)
    event_label(f"{'well-formed' if code is None else 'malformed'} {event if event in REQUESTS else '(unknown)'}")
    if code is not None or event not in BACKGROUND_EVENTS:
        answers = [
            {"name": e["name"], **(e["args"][0] if e["args"] and isinstance(e["args"][0], dict) else {})}
            for e in client.get_received(NAMESPACE)
        ]  # handled synchronously by the test client
    else:
        answers = collect(client, until=STREAM_END if REQUESTS[event].streams else (event, "error"), rid=rid)
    errors = [a for a in answers if a["name"] == "error"]
    assert all(e["code"] != "internal" for e in errors), (event, payload, errors)
    assert all(isinstance(e["message"], str) and e["message"] for e in errors)
    if code is not None:
        assert [(e["code"], e["rid"]) for e in errors] == [(code, rid)], (event, payload, answers)
    elif event in BACKGROUND_EVENTS:
        assert answers[-1]["name"] in STREAM_END + (event,) and answers[-1]["rid"] == rid
    if event in REQUESTS and not event.startswith("present_"):
        assert answers, (event, payload)  # every request is answered


_clients: dict = {}


def fuzz_client(connect):
    """One test client per test run (hypothesis calls the test body once per example)."""
    client = _clients.get(id(connect))
    if client is None or not client.is_connected(NAMESPACE):
        client = _clients[id(connect)] = connect()
    return client


# --- HTTP ------------------------------------------------------------------------------------------


def segment(text: str) -> str:
    return quote(text, safe="")


@st.composite
def http_requests(draw, app, key: str):
    rules = sorted(app.url_map.iter_rules(), key=lambda rule: rule.rule)
    rule = draw(st.sampled_from(rules))
    values = {}
    for name in rule.arguments:
        near = {
            "key": [key, "0" * 64, key[:10]],
            "event": sorted(REQUESTS) + ["export.npz", "stats"],
            "name": ["bokeh.min.js", "bokeh-widgets.min.js"],
            "filename": ["js/main.js", "css/app.css"],
            "link_id": ["abcdefghij", "aaaaaaaaaa"],
        }.get(name, [])
        value = (
            draw(st.sampled_from(near) | st.text(min_size=1, max_size=40))
            if near
            else draw(st.text(min_size=1, max_size=40))
        )
        values[name] = value
    path = rule.rule
    for name, value in values.items():
        path = path.replace(f"<{name}>", segment(value)).replace(f"<path:{name}>", segment(value))
    if draw(st.integers(0, 9)) == 0:
        path = "/" + "/".join(segment(part) for part in draw(st.lists(st.text(max_size=12), max_size=4)))
        path = "/" + path.lstrip("/")  # the test client reads "//host" as another server
    method = draw(
        st.sampled_from(sorted(rule.methods - {"OPTIONS"})) | st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])
    )
    query = draw(
        st.dictionaries(
            st.sampled_from(
                [
                    "layer",
                    "head",
                    "mode",
                    "index",
                    "query",
                    "row0",
                    "row1",
                    "col0",
                    "col1",
                    "key",
                    "model",
                    "text",
                    "view",
                    "fusion",
                    "start",
                    "count",
                    "other",
                    "position",
                    "token",
                    "threshold",
                ]
            )
            | st.text(max_size=8),
            st.text(max_size=20) | st.integers(-5, 50).map(str),
            max_size=5,
        )
    )
    body = draw(
        st.none()
        | json_values.map(lambda value: ("json", value))
        | st.binary(max_size=200).map(lambda raw: ("raw", raw))
        | st.fixed_dictionaries({"text": st.text(max_size=80), "model": st.sampled_from(["minilm", "x"])}).map(
            lambda value: ("json", value)
        )
    )
    return method, path, query, body


@FUZZ
@given(data=st.data())
def test_every_http_route_answers_malformed_requests_without_failing(
    app, client, real_key, unlimited, server_errors, data
):
    method, path, query, body = data.draw(http_requests(app, real_key))
    options = {"query_string": query, "environ_base": {"REMOTE_ADDR": "10.4.0.1"}}
    if body is not None:
        kind, value = body
        options.update({"json": value} if kind == "json" else {"data": value, "content_type": "application/json"})
    started = time.monotonic()
    event_label(f"{method} {path.split('/')[1:3]}")
    with client.open(path, method=method, **options) as response:
        status = response.status_code
        answer = response.get_json(silent=True) if path.startswith("/api/") else None
    assert status < 500 or (status == 503 and answer and answer["code"] in ("busy", "out_of_memory")), (
        method,
        path,
        query,
        body,
        status,
        answer,
    )
    if path.startswith("/api/") and status >= 400 and method != "HEAD":  # HEAD answers carry no body
        assert answer and answer["code"] != "internal" and answer["message"], (method, path, status, answer)
    assert time.monotonic() - started < 30
