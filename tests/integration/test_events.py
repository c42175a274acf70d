"""The Socket.IO protocol with the Flask-SocketIO test client, on the packaged default model."""

from __future__ import annotations

import time

import numpy as np
import pytest

from app import stream
from app.protocol import NAMESPACE
from models import recorder
from tests.wire import decode_array, decode_strings

PROMPT = "The cat sat on the mat because it was tired."
WAIT_SECONDS = 120  # the first smollm2 request converts its GGUF weights


def collect(socket_client, until=("done", "error"), timeout=WAIT_SECONDS) -> list[dict]:
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        events += [{"name": e["name"], **e["args"][0]} for e in socket_client.get_received(NAMESPACE)]
        if any(event["name"] in until for event in events):
            return events
        time.sleep(0.02)
    raise AssertionError(f"no {until} within {timeout} s; got {[e['name'] for e in events]}")


def request(socket_client, event: str, **fields) -> dict:
    socket_client.emit(event, {"rid": event, **fields}, namespace=NAMESPACE)
    answers = collect(socket_client, until=(event, "error"))
    assert len(answers) == 1, answers
    return answers[0]


def decode(array: dict) -> np.ndarray:
    values = np.frombuffer(array["data"], dtype=np.dtype(array["dtype"]).newbyteorder("<")).reshape(array["shape"])
    return values * array["scale"] if "scale" in array else values


@pytest.fixture(scope="module")
def analysis(app):
    from app.extensions import socketio

    client = socketio.test_client(app, namespace=NAMESPACE)
    client.emit("analyze", {"rid": 7, "model": "minilm", "text": PROMPT, "layers": [2]}, namespace=NAMESPACE)
    events = collect(client)
    client.disconnect(namespace=NAMESPACE)
    return events


def test_events_arrive_overview_first(analysis):
    names = [event["name"] for event in analysis if event["name"] not in ("progress", "overview_layer")]
    assert names == ["tokens", "overview", "layer", "done"]
    assert all(event["rid"] == 7 for event in analysis)


def test_streamed_layers_go_in_bursts_at_most_every_progress_interval_and_with_the_last(monkeypatch):
    """The page renders a burst of events in one frame, so layers finished close together go
    together: the first at once, then what finished since, each interval, and the last layer."""
    clock = iter([0.0, 0.6, 0.65, 0.7, 0.9, 0.95, 1.0])  # started, then one reading per layer
    monkeypatch.setattr(stream.time, "monotonic", lambda: next(clock))
    sent = []
    layers = stream.LayerStream(lambda name, payload: sent.append((name, payload["layer"])), "r")
    thumbnails = np.zeros((2, 3, 3), np.float16)
    bursts = []
    for layer in range(6):
        before = len(sent)
        layers(layer, 6, thumbnails)
        bursts.append([index for _, index in sent[before:]])
    assert bursts == [[0], [], [], [1, 2, 3], [], [4, 5]]  # 0.6 s; 0.9 s (0.3 s later); the last
    assert layers.complete(type("Capture", (), {"n_layers": 6})())


def test_layers_stream_while_the_model_runs_and_do_not_travel_twice(socket_client, monkeypatch):
    monkeypatch.setattr(stream, "LIVE_AFTER_SECONDS", 0.0)  # however quick the pass, stream every layer
    monkeypatch.setattr(recorder, "BATCH_TOKENS", 0)  # each layer read as the model finishes it (a long prompt)
    text = "A prompt no other test sends, so that the model runs for it."
    socket_client.emit("analyze", {"rid": "s", "model": "minilm", "text": text}, namespace=NAMESPACE)
    events = [e for e in collect(socket_client) if e["name"] != "progress"]
    names = [e["name"] for e in events]
    assert names == ["overview_layer"] * 6 + ["tokens", "overview", "done"]
    layers = [e for e in events if e["name"] == "overview_layer"]
    assert [e["layer"] for e in layers] == list(range(6)) and all(e["layers"] == 6 for e in layers)
    overview = events[names.index("overview")]
    assert overview["streamed"] and overview["thumbnails"] is None

    socket_client.emit("open", {"rid": "o", "key": events[-1]["key"]}, namespace=NAMESPACE)
    full = next(e for e in collect(socket_client) if e["name"] == "overview")  # from the cache: no layers streamed
    assert not full["streamed"]
    streamed = np.stack([decode(e["thumbnails"]) for e in layers])
    np.testing.assert_array_equal(streamed, decode(full["thumbnails"]))
    np.testing.assert_array_equal(np.stack([decode(e["peaks"]) for e in layers]), decode(full["peaks"]))


@pytest.mark.parametrize("live_after", [60.0, 0.0], ids=["quicker-than-live", "slower-than-live"])
def test_a_short_forward_pass_sends_no_layer_events(socket_client, monkeypatch, live_after):
    """A pass quicker than LIVE_AFTER_SECONDS holds its layers back; a short prompt's layers
    (read all at once after the pass) are never announced, however long the pass took: the
    overview that carries them comes next."""
    monkeypatch.setattr(stream, "LIVE_AFTER_SECONDS", live_after)
    socket_client.emit(
        "analyze",
        {"rid": "q", "model": "minilm", "text": f"A quick pass, not streamed layer by layer ({live_after})."},
        namespace=NAMESPACE,
    )
    events = [e for e in collect(socket_client) if not (live_after == 0.0 and e["name"] == "progress")]
    assert [e["name"] for e in events] == ["tokens", "overview", "done"]  # no overview_layer (nor progress when quick)
    overview = events[1]
    assert not overview["streamed"] and decode(overview["thumbnails"]).shape[0] == 6


def test_tokens_are_text_with_spans_and_flags(analysis):
    tokens = analysis[[e["name"] for e in analysis].index("tokens")]
    texts, special, spans = (
        decode_strings(tokens["tokens"]),
        decode_array(tokens["special"]),
        decode_array(tokens["spans"]),
    )
    assert texts[0] == "[CLS]" and special[0] and texts[2] == "cat"
    assert len(decode_strings(tokens["pieces"])) == len(texts) == len(special) and spans.shape == (len(texts), 2)
    assert tokens["text"][slice(*spans[2])] == "cat"
    assert tokens["info"]["layers"] == 6 and tokens["info"]["heads"] == 12


def test_overview_is_binary_and_small(socket_client, analysis):
    socket_client.emit("open", {"rid": "o", "key": analysis[-1]["key"]}, namespace=NAMESPACE)
    overview = next(e for e in collect(socket_client) if e["name"] == "overview")  # whole, from the cache
    thumbnails = overview["thumbnails"]
    assert thumbnails["dtype"] == "uint8" and isinstance(thumbnails["data"], bytes)
    layers, heads, side, _ = thumbnails["shape"]
    assert (layers, heads) == (6, 12) and side == overview["tokens"]
    assert len(thumbnails["data"]) == layers * heads * side * side
    assert decode(overview["peaks"]).shape == (6, 12) and overview["peaks"]["dtype"] == "float16"


def test_dense_layer_rows_sum_to_one(analysis):
    layer = next(e for e in analysis if e["name"] == "layer")
    attention = decode(layer["attention"])
    assert layer["format"] == "dense" and attention.shape == (12, 13, 13)
    np.testing.assert_allclose(attention.sum(-1), 1.0, atol=13 / 255)


def test_repeat_is_served_from_the_cache(socket_client, analysis):
    socket_client.emit("analyze", {"rid": "again", "model": "minilm", "text": PROMPT}, namespace=NAMESPACE)
    done = collect(socket_client)[-1]
    assert done["name"] == "done" and done["cached"] and done["key"] == analysis[-1]["key"]


@pytest.mark.parametrize(
    "event, fields, shapes",
    [
        ("layer", {"layer": 0, "mode": "value"}, {"attention": (12, 13, 13)}),
        ("matrix", {"layer": 1, "head": 3, "mode": "scores", "row0": 2, "row1": 6}, {"matrix": (4, 13)}),
        ("matrix", {"layer": 1, "head": 3}, {"matrix": (13, 13)}),
        ("token", {"index": 3}, {"outgoing": (6, 12, 13), "incoming": (6, 12, 13)}),
        (
            "neuron",
            {"layer": 5, "head": 11, "query": 4},
            {"query_vector": (32,), "keys": (13, 32), "products": (13, 32), "dots": (13,), "attention": (13,)},
        ),
    ],
)
def test_detail_requests_answer_binary_arrays(socket_client, analysis, event, fields, shapes):
    answer = request(socket_client, event, key=analysis[-1]["key"], **fields)
    assert answer["name"] == event and answer["rid"] == event
    for name, shape in shapes.items():
        assert tuple(answer[name]["shape"]) == shape and isinstance(answer[name]["data"], bytes)


def test_neuron_softmax_matches_scores(socket_client, analysis):
    answer = request(socket_client, "neuron", key=analysis[-1]["key"], layer=2, head=1, query=3)
    scores = decode(answer["scores"])
    expected = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
    np.testing.assert_allclose(decode(answer["attention"]), expected, atol=2e-3)
    np.testing.assert_allclose(decode(answer["dots"]) * answer["scaling"], scores, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "event, payload, code",
    [
        ("analyze", {"text": ""}, "empty_prompt"),
        ("analyze", {"text": "   \n"}, "empty_prompt"),
        ("analyze", {"text": "x" * 70_000}, "too_long"),
        ("analyze", {"text": "hello", "model": "no-such-model"}, "unknown_model"),
        ("analyze", {"text": "a\x00b"}, "bad_request"),
        ("analyze", {"text": 42}, "bad_request"),
        ("analyze", {"text": "the " * 600}, "too_long"),
        ("analyze", "not an object", "bad_request"),
        ("layer", {"key": "f" * 64, "layer": 0}, "not_found"),
        ("layer", {"key": "../etc/passwd", "layer": 0}, "bad_request"),
        ("layer", {"key": "f" * 64, "layer": -1}, "bad_request"),
        ("layer", {"key": "f" * 64, "layer": True}, "bad_request"),
        ("matrix", {"key": "f" * 64, "layer": 0, "head": 0, "mode": "bogus"}, "bad_request"),
        ("no_such_event", {}, "bad_request"),
    ],
)
def test_bad_requests_get_an_error_event(socket_client, event, payload, code):
    data = {"rid": "bad", **payload} if isinstance(payload, dict) else payload
    socket_client.emit(event, data, namespace=NAMESPACE)
    answer = collect(socket_client, until=("error", "done"))[-1]
    assert answer["name"] == "error" and answer["code"] == code and answer["message"]
    if isinstance(payload, dict):
        assert answer["rid"] == "bad"


def test_out_of_range_detail_is_an_error_and_the_server_keeps_serving(socket_client, analysis):
    key = analysis[-1]["key"]
    assert request(socket_client, "layer", key=key, layer=6)["name"] == "error"
    assert request(socket_client, "token", key=key, index=99)["name"] == "error"
    assert request(socket_client, "layer", key=key, layer=5)["name"] == "layer"


@pytest.mark.real_model
def test_smollm2_streams_too(socket_client):
    socket_client.emit("analyze", {"rid": 1, "model": "smollm2", "text": PROMPT}, namespace=NAMESPACE)
    events = collect(socket_client)
    overview = next(e for e in events if e["name"] == "overview")
    assert (overview["layers"], overview["heads"]) == (30, 9) and events[-1]["name"] == "done"


def test_stats_is_a_bokeh_item_with_a_role_per_head(socket_client, analysis):
    answer = request(socket_client, "stats", key=analysis[-1]["key"])
    assert answer["name"] == "stats" and {"doc", "root_id"} <= set(answer["plot"])
    assert "entropy" in str(answer["plot"]["doc"]) and "role" in str(answer["plot"]["doc"])


@pytest.mark.real_model
def test_generate_streams_the_continuation_then_its_analysis(socket_client):
    socket_client.emit(
        "generate",
        {"rid": "g", "model": "smollm2", "text": "The capital of France is", "max_new_tokens": 2},
        namespace=NAMESPACE,
    )
    events = [e for e in collect(socket_client) if e["name"] not in ("progress", "generated_token")]
    assert [e["name"] for e in events] == ["generated", "tokens", "overview", "done"]
    generated, tokens = events[0], events[1]
    assert generated["text"].startswith("The capital of France is Paris")
    assert decode_strings(tokens["tokens"])[generated["first_generated"]].strip() == "Paris"


@pytest.mark.real_model
def test_lens_event(socket_client, analysis):
    socket_client.emit(
        "analyze", {"rid": "a", "model": "smollm2", "text": "The capital of France is"}, namespace=NAMESPACE
    )
    key = collect(socket_client)[-1]["key"]
    answer = request(socket_client, "lens", key=key, start=2, count=3)
    assert answer["name"] == "lens" and answer["ids"]["shape"] == [31, 3, 5]
    assert request(socket_client, "lens", key=analysis[-1]["key"])["code"] == "unsupported_model"
