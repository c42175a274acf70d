"""Pages and the HTTP API: the same payloads as the socket, as JSON with base64 arrays."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.wire import decode_strings

PROMPT = "Attention is all you need."


@pytest.fixture(scope="module")
def analysis(app):
    response = app.test_client().post("/api/analyze", json={"model": "minilm", "text": PROMPT})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_index_page_lists_the_models(client):
    page = client.get("/")
    assert page.status_code == 200 and b"minilm" in page.data and b"smollm2" in page.data


def test_bokeh_is_served_locally(client):
    with client.get("/vendor/bokeh/bokeh.min.js") as response:
        assert response.status_code == 200 and len(response.data) > 100_000
    assert client.get("/vendor/bokeh/../../../etc/passwd").status_code == 404


def test_models_endpoint(client):
    data = client.get("/api/models").get_json()
    assert data["default"] == "minilm" and [m["name"] for m in data["models"]] == ["minilm", "smollm2"]


def test_analyze_returns_tokens_and_base64_overview(analysis):
    overview = analysis["overview"]
    raw = base64.b64decode(overview["thumbnails"]["data"])
    assert len(raw) == int(np.prod(overview["thumbnails"]["shape"]))
    assert decode_strings(analysis["tokens"]["tokens"])[1] == "Attention"


@pytest.mark.parametrize(
    "event, query",
    [
        ("layer", "layer=1"),
        ("matrix", "layer=1&head=2&mode=scores"),
        ("token", "index=1"),
        ("neuron", "layer=0&head=0&query=1"),
    ],
)
def test_detail_endpoints(client, analysis, event, query):
    response = client.get(f"/api/analysis/{analysis['key']}/{event}?{query}")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["key"] == analysis["key"]


@pytest.mark.parametrize(
    "method, url, body, status, code",
    [
        ("post", "/api/analyze", {"text": ""}, 400, "empty_prompt"),
        ("post", "/api/analyze", {"text": "hi", "model": "nope"}, 404, "unknown_model"),
        ("post", "/api/analyze", None, 400, "bad_request"),
        ("get", "/api/analysis/" + "0" * 64 + "/layer?layer=0", None, 404, "not_found"),
        ("get", "/api/analysis/xyz/layer?layer=0", None, 400, "bad_request"),
        ("get", "/api/analysis/" + "0" * 64 + "/bogus", None, 404, "not_found"),
    ],
)
def test_api_errors_are_json(client, method, url, body, status, code):
    response = getattr(client, method)(url, json=body) if body is not None else getattr(client, method)(url)
    assert response.status_code == status and response.get_json()["code"] == code
