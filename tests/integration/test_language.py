"""Generation and the logit lens on the packaged decoder."""

from __future__ import annotations

import numpy as np
import pytest

from app import language
from app.protocol import AtlasError
from tests.wire import decode_strings

pytestmark = pytest.mark.real_model
GREEDY = {"max_new_tokens": 3, "sample": False, "seed": 0, "temperature": 1.0}


def test_greedy_generation_is_cached_and_marks_the_new_tokens(service):
    text = language.generate(service, "smollm2", "The capital of France is", GREEDY)
    assert text.startswith("The capital of France is Paris")
    assert language.generate(service, "smollm2", "The capital of France is", GREEDY) == text
    capture = service.analyze("smollm2", text).capture
    first = language.first_generated_token(capture, "The capital of France is")
    assert capture.tokens[first].strip() == "Paris"


def test_seeded_sampling_repeats(service):
    settings = {**GREEDY, "sample": True, "seed": 11, "max_new_tokens": 6}
    from models.language import generate

    handle = service.loader.get("smollm2")
    assert generate(handle, "Once upon a time", **settings) == generate(handle, "Once upon a time", **settings)


def test_generation_limits(service):
    with pytest.raises(AtlasError) as error:
        language.generate(service, "smollm2", "hi", {**GREEDY, "max_new_tokens": 10_000})
    assert error.value.code == "too_long"
    with pytest.raises(AtlasError) as error:
        language.generate(service, "minilm", "hi", GREEDY)
    assert error.value.code == "unsupported_model"


def test_logit_lens_last_layer_predicts_paris(service):
    analysis = service.analyze("smollm2", "The capital of France is")
    payload = language.lens_payload(service, analysis.key, analysis.capture, 0, 8)
    ids = np.frombuffer(payload["ids"]["data"], dtype="<i4").reshape(payload["ids"]["shape"])
    assert ids.shape == (31, analysis.capture.n_tokens, 5)
    assert payload["words"][str(ids[-1, -1, 0])].strip() == "Paris"


def test_generate_over_http(client):
    response = client.post(
        "/api/generate", json={"model": "smollm2", "text": "The capital of France is", "max_new_tokens": 2}
    )
    assert response.status_code == 200, response.get_json()
    answer = response.get_json()
    assert answer["text"].startswith("The capital of France is Paris")
    assert decode_strings(answer["tokens"]["tokens"])[answer["first_generated"]].strip() == "Paris"
    lens = client.get(f"/api/analysis/{answer['key']}/lens?start=0&count=4").get_json()
    assert lens["ids"]["shape"] == [31, 4, 5]
