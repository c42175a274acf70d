"""The on-demand contribution analyses through the app: context mixing and the feed-forward maps
(Kobayashi et al. 2021, 2023) and information-flow routes (Ferrando & Voita 2024) over HTTP and
Socket.IO, the same answer both ways, a float threshold in a query string, and a clear `too_long`
above their token limits while the server keeps serving."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from app.protocol import NAMESPACE
from tests.integration.conftest import collect

PROMPT = "The contribution of each token is more than its weight."
LONG = " ".join(["word"] * 140)  # above the routes' and the feed-forward's token limits


def wire(array: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(array["data"]), dtype=array["dtype"]).reshape(array["shape"])


@pytest.fixture(scope="module")
def key(service) -> str:
    return service.analyze("minilm", PROMPT).key


def test_mixing_over_http_and_socket_agree(client, connect, key):
    answer = client.get(f"/api/analysis/{key}/mixing?layer=2")
    assert answer.status_code == 200, answer.get_json()
    payload = answer.get_json()
    maps, ratios = wire(payload["maps"]), wire(payload["ratios"])
    n = payload["tokens"]
    assert maps.shape == (4, n, n) and ratios.shape == (4, 6) and payload["post_ln"]
    assert (ratios[3] < ratios[0]).all()  # the residual and the norm keep tokens to themselves
    socket = connect()
    socket.emit("mixing", {"rid": "m", "key": key, "layer": 2}, namespace=NAMESPACE)
    event = collect(socket, until=("mixing", "error"), rid="m")[-1]
    assert event["name"] == "mixing"
    np.testing.assert_array_equal(np.frombuffer(event["maps"]["data"], dtype="float32").reshape(maps.shape), maps)


def test_routes_take_a_float_threshold_from_the_query(client, key):
    low = client.get(f"/api/analysis/{key}/routes?token=3&threshold=0.02").get_json()
    high = client.get(f"/api/analysis/{key}/routes?token=3&threshold=0.2").get_json()
    assert low["threshold"] == 0.02 and high["threshold"] == 0.2
    assert 0 < len(wire(high["edges"]["weight"])) < len(wire(low["edges"]["weight"]))
    assert (wire(high["edges"]["weight"]) > 0.2).all()


def test_feedforward_answers_one_layer(client, key):
    payload = client.get(f"/api/analysis/{key}/feedforward?layer=1").get_json()
    assert payload["names"] == ["before", "ff", "after"] and wire(payload["maps"]).shape[0] == 3


@pytest.mark.parametrize("name, fields", [("routes", "token=0"), ("feedforward", "layer=0")])
def test_too_long_is_a_clear_error(client, service, name, fields):
    long_key = service.analyze("minilm", LONG).key
    answer = client.get(f"/api/analysis/{long_key}/{name}?{fields}")
    assert answer.status_code in (400, 413) and answer.get_json()["code"] == "too_long", answer.get_json()
    assert "at most" in answer.get_json()["message"]
    assert client.get("/api/models").status_code == 200  # still serving
