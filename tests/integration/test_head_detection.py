"""Head detectors in the head summary, on a packaged decoder: a prompt that repeats shows
INDUCTION heads with their scores as measures; one that does not repeat shows none."""

from __future__ import annotations

import base64

import numpy as np
import pytest

REPEATED = "Zorp 17 blue kettle Vimbly 42 marsh. Zorp 17 blue kettle Vimbly 42 marsh."  # the gallery's
PLAIN = "The cat sat on the mat because it was tired."


def heads_of(client, text: str) -> dict:
    key = client.post("/api/analyze", json={"model": "smollm2", "text": text}).get_json()["key"]
    response = client.get(f"/api/analysis/{key}/heads")
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def metric(payload: dict, name: str) -> np.ndarray:
    wire = payload["metrics"][name]
    return np.frombuffer(base64.b64decode(wire["data"]), dtype=np.float16).reshape(wire["shape"])


@pytest.mark.real_model
def test_a_repeated_prompt_shows_induction_heads(client, smollm2):
    payload = heads_of(client, REPEATED)
    roles = np.array(payload["roles"])
    induction = metric(payload, "induction")
    assert payload["repeats"] and induction.shape == roles.shape
    assert (roles == "INDUCTION").sum() >= 1
    assert np.all(induction[roles == "INDUCTION"] >= 0.3)
    assert {"previous_token", "duplicate_token", "induction"} <= set(payload["metrics"])


@pytest.mark.real_model
def test_a_prompt_that_does_not_repeat_has_no_induction_heads(client, smollm2):
    payload = heads_of(client, PLAIN)
    assert not payload["repeats"]
    assert not {"INDUCTION", "DUPLICATE"} & set(np.array(payload["roles"]).ravel())
    assert float(metric(payload, "induction").max()) == 0.0


@pytest.mark.real_model
def test_the_probe_is_a_seeded_repeated_sequence_that_shows_induction_heads(client, smollm2):
    answer = client.get("/api/probe?model=smollm2&length=16&seed=3").get_json()
    words = answer["text"].split(" ")
    assert len(words) == 32 and words[:16] == words[16:] and len(set(words[:16])) == 16
    assert client.get("/api/probe?model=smollm2&length=16&seed=3").get_json()["text"] == answer["text"]
    roles = np.array(heads_of(client, answer["text"])["roles"])
    assert (roles == "INDUCTION").sum() >= 1


def test_the_probe_refuses_bad_lengths(client):
    response = client.get("/api/probe?model=minilm&length=1000")
    assert response.status_code == 400 and response.get_json()["code"] == "bad_request"


def test_pairs_and_whole_maps_give_the_same_scores(service, minilm, monkeypatch):
    """Short or repetitive prompts read whole maps, others the marked pairs alone: same scores."""
    from app import head_detection

    capture = service.analyze("minilm", REPEATED).capture
    monkeypatch.setattr(head_detection, "PAIR_COST", 0)  # never the whole map
    by_pairs = head_detection.detector_metrics(capture)
    monkeypatch.setattr(head_detection, "PAIR_COST", 10**9)  # always the whole map
    by_maps = head_detection.detector_metrics(capture)
    for name in ("previous_token", "duplicate_token", "induction"):
        np.testing.assert_allclose(by_pairs[name], by_maps[name], atol=1e-5)
    assert by_pairs["induction"].max() > 0
