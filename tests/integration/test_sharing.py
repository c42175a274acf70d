"""Sharing: short links, the demo gallery, exports, uploads and the notebook bridge."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest

from app import gallery, notebook
from app.links import LinkError, LinkStore, normalise_query
from app.protocol import NAMESPACE
from tests.browser.server import running_server

PROMPT = "Sharing is caring."


@pytest.fixture(scope="module")
def analysis(app):
    response = app.test_client().post("/api/analyze", json={"model": "minilm", "text": PROMPT})
    assert response.status_code == 200
    return response.get_json()


def test_short_links_resolve_after_a_restart(tmp_path):
    query = "model=minilm&text=" + "long+prompt+" * 500 + "&view=head&layer=2"
    link_id = LinkStore(tmp_path, 1 << 20).create(query)
    assert len(link_id) == 10 and LinkStore(tmp_path, 1 << 20).create(query) == link_id
    assert LinkStore(tmp_path, 1 << 20).resolve(link_id) == normalise_query(query)
    assert LinkStore(tmp_path, 1 << 20).resolve("../../etc/passwd") is None


@pytest.mark.parametrize("query", ["", "a", "x=1&" * 50, "bad-name=1", "<script>=1", "text=%ZZ&="])
def test_bad_link_queries_are_refused(query):
    with pytest.raises(LinkError):
        normalise_query(query)


def test_short_link_routes(client):
    made = client.post("/api/links", json={"query": "model=minilm&text=Hi%20there&view=token&token=1"})
    assert made.status_code == 200
    response = client.get(made.get_json()["path"])
    assert (
        response.status_code == 302
        and response.headers["Location"] == "/?model=minilm&text=Hi+there&view=token&token=1"
    )
    assert client.get("/s/aaaaaaaaaa").status_code == 404
    assert client.post("/api/links", json={"query": "<b>=1"}).get_json()["code"] == "bad_request"


def test_gallery_items_teach_something_and_link_to_a_view(client):
    items = client.get("/api/gallery").get_json()["items"]
    assert {"coreference", "previous-token", "sinks", "delimiters", "induction", "agreement"} <= {
        i["id"] for i in items
    }
    for item in items:
        assert len(item["explanation"]) > 100 and item["link"].startswith("/?model=")


@pytest.mark.real_model
def test_gallery_precompute_fills_the_cache(service):
    first = gallery.precompute(service)
    again = gallery.precompute(service)
    assert len(first) == sum(len(gallery.prompts(item)) for item in gallery.gallery_for(service))
    assert all(cached for _, cached, _ in again)


def test_npz_and_json_exports(client, analysis):
    key = analysis["key"]
    with client.get(f"/api/analysis/{key}/export.npz") as response:
        assert response.status_code == 200
        with np.load(io.BytesIO(response.data)) as data:
            assert data["queries"].shape[:2] == (6, 12)
    document = json.loads(client.get(f"/api/analysis/{key}/export.json").data)
    attention = np.array(document["attention"])
    assert attention.shape == (6, 12, len(document["tokens"]), len(document["tokens"]))
    np.testing.assert_allclose(attention.sum(-1), 1.0, atol=1e-2)


def upload(client, body: bytes):
    return client.post("/api/captures", data=body, content_type="application/octet-stream")


def test_an_uploaded_capture_opens_by_key(client, service, analysis, socket_client):
    record = service.lookup(analysis["key"])
    buffer = io.BytesIO()
    np.savez(buffer, **record.to_arrays())
    answer = upload(client, buffer.getvalue()).get_json()
    assert answer["link"] == f"/?key={answer['key']}"
    socket_client.emit("open", {"rid": "o", "key": answer["key"]}, namespace=NAMESPACE)
    deadline, names = time.monotonic() + 10, []
    while "done" not in names and time.monotonic() < deadline:
        names += [e["name"] for e in socket_client.get_received(NAMESPACE)]
        time.sleep(0.02)
    assert names == ["tokens", "overview", "done"]


@pytest.mark.parametrize("body", [b"", b"not an npz", b"PK\x03\x04garbage"])
def test_garbage_uploads_are_refused(client, body):
    response = upload(client, body)
    assert response.status_code in (400, 413) and response.get_json()["code"] in ("bad_request", "too_long")


def test_an_inconsistent_upload_is_refused(client, service, analysis):
    arrays = service.lookup(analysis["key"]).to_arrays()
    arrays["keys"] = arrays["keys"][:, :, :2]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    response = upload(client, buffer.getvalue())
    assert response.status_code == 400 and "keys" in response.get_json()["message"]


@pytest.mark.real_model
def test_notebook_bridge_against_a_live_server(tmp_path, tiny_models, minilm):
    with running_server(tmp_path / "cache", tmp_path / "server.log") as url:
        by_name = notebook.push("minilm", PROMPT, server=url, view={"view": "head", "layer": 1})
        assert by_name.startswith(f"{url}/?model=minilm&text=") and by_name.endswith("view=head&layer=1")
        handle = tiny_models["tiny-gpt2"]
        by_object = notebook.push(handle.model, PROMPT, tokenizer=minilm.tokenizer, server=url)
        key = by_object.split("key=")[1]
        import urllib.request

        with urllib.request.urlopen(f"{url}/api/analysis/{key}/layer?layer=1") as response:
            assert json.load(response)["heads"] == 4
        seq2seq = notebook.push(
            tiny_models["tiny-bart"].model, PROMPT, tokenizer=minilm.tokenizer, target="Une question.", server=url
        )
        with urllib.request.urlopen(f"{url}/api/analysis/{seq2seq.split('key=')[1]}/token?index=1") as response:
            assert json.load(response)["outgoing"]["shape"][0] == 6  # 2 encoder + 2 x (self + cross) layers
        with pytest.raises(notebook.BridgeError, match="unknown model"):
            notebook.push("no-such-model", PROMPT, server=url)
    with pytest.raises(notebook.BridgeError, match="cannot reach"):
        notebook.push("minilm", PROMPT, server=url)
