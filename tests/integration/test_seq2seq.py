"""An encoder-decoder model through the whole app: analyze with and without a decoder text,
then every view's payload over Socket.IO, on a tiny BART registered like a user's model."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from models.loading import ModelHandle
from models.registry import ModelSpec
from tests.conftest import build_tiny
from tests.integration.test_events import collect, decode, request

SOURCE = "The house is wonderful."
TARGET = "Das Haus ist wunderbar."


@pytest.fixture()
def bart(service, minilm, tmp_path, monkeypatch) -> str:
    """A tiny random BART, "loaded" under the name tiny-bart."""
    tiny = build_tiny("tiny-bart", minilm.tokenizer)
    spec = ModelSpec(name="tiny-bart", title="tiny BART", path=str(tmp_path), max_tokens=128)
    handle = ModelHandle(
        "tiny-bart", spec, tiny.model, minilm.tokenizer, tiny.device, "tiny-bart", 0.0, threading.Lock()
    )
    monkeypatch.setitem(service.registry.specs, "tiny-bart", spec)
    monkeypatch.setitem(service.loader._handles, "tiny-bart", handle)
    monkeypatch.setattr(service, "_counters", {})
    return "tiny-bart"


def analyze(socket_client, **fields) -> dict[str, dict]:
    socket_client.emit("analyze", {"rid": "a", **fields}, namespace="/atlas")
    return {event["name"]: event for event in collect(socket_client)}


def test_analysis_names_segments_layer_kinds_and_the_decoder_text(socket_client, bart):
    events = analyze(socket_client, model=bart, text=SOURCE, target=TARGET)
    assert "error" not in events, events.get("error")
    info = events["tokens"]["info"]
    assert info["encoder_decoder"] and info["target"] == TARGET
    assert info["layer_kinds"] == ["encoder", "encoder", "decoder", "cross", "decoder", "cross"]
    encoder, decoder = info["segments"]["encoder"], info["segments"]["decoder"]
    assert encoder[0] == 0 and encoder[1] == decoder[0] and decoder[1] == events["overview"]["tokens"]
    assert events["overview"]["layers"] == 6


def test_the_target_is_part_of_the_key_and_defaults_to_the_models_output(socket_client, bart):
    own = analyze(socket_client, model=bart, text=SOURCE)
    given = analyze(socket_client, model=bart, text=SOURCE, target=TARGET)
    assert own["done"]["key"] != given["done"]["key"]
    again = analyze(socket_client, model=bart, text=SOURCE, target=own["tokens"]["info"]["target"])
    assert again["tokens"]["info"]["layer_kinds"] == own["tokens"]["info"]["layer_kinds"]
    assert analyze(socket_client, model=bart, text=SOURCE)["done"]["cached"]


def test_every_view_reads_cross_attention(socket_client, bart):
    events = analyze(socket_client, model=bart, text=SOURCE, target=TARGET)
    key, info = events["done"]["key"], events["tokens"]["info"]
    cross = info["layer_kinds"].index("cross")
    (e0, e1), (d0, d1) = info["segments"]["encoder"], info["segments"]["decoder"]

    layer = request(socket_client, "layer", key=key, layer=cross)
    attention = decode(layer["attention"])  # [H, N, N]
    np.testing.assert_allclose(attention[:, d0:d1, e0:e1].sum(-1), 1.0, atol=0.05)  # uint8 rounding
    assert attention[:, d0:d1, d0:d1].max() == 0 and attention[:, e0:e1].max() == 0

    token = request(socket_client, "token", key=key, index=d0 + 1)  # a decoder token reads the source
    outgoing = decode(token["outgoing"])  # [L, H, N]
    assert outgoing[cross, :, e0:e1].sum(-1).min() > 0.9 and outgoing[cross, :, d0:].max() == 0

    neuron = request(socket_client, "neuron", key=key, layer=cross, head=1, query=d0 + 1)
    probabilities = decode(neuron["attention"])
    assert probabilities[e0:e1].sum() == pytest.approx(1.0, abs=1e-3) and probabilities[d0:].max() == 0

    matrix = request(socket_client, "matrix", key=key, layer=cross, head=0, row0=d0, row1=d1, col0=e0, col1=e1)
    assert decode(matrix["matrix"]).shape == (d1 - d0, e1 - e0)

    assert request(socket_client, "stats", key=key)["name"] == "stats"
    heads = request(socket_client, "heads", key=key)
    assert len(heads["roles"]) == 6


def test_rollout_follows_the_encoder_and_the_lens_explains_itself(socket_client, bart):
    events = analyze(socket_client, model=bart, text=SOURCE, target=TARGET)
    key, info = events["done"]["key"], events["tokens"]["info"]
    rollout = request(socket_client, "rollout", key=key, position=1)
    encoder_tokens = info["segments"]["encoder"][1]
    assert decode(rollout["rows"]).shape == (info["layer_kinds"].count("encoder"), encoder_tokens)
    lens = request(socket_client, "lens", key=key)
    assert lens["name"] == "error" and lens["code"] == "unsupported_model"


def test_a_model_without_a_decoder_refuses_a_target(socket_client):
    events = analyze(socket_client, model="minilm", text=SOURCE, target=TARGET)
    assert events["error"]["code"] == "bad_request" and "no decoder" in events["error"]["message"]
