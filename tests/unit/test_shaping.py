"""The head view's top-k layer payload picks, for every query of every head, the k strongest
keys that the exact numpy matrices (:func:`app.shaping._mode_matrix`) have, up to ties."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from app import shaping
from models.capture import run_capture
from tests.wire import decode_array

TOP_K = 5
PROMPT = "Attention heads pick a few keys; the head view draws the strongest links of every query token."


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-bert"])
def capture(request, tiny_models):
    return run_capture(tiny_models[request.param], PROMPT)


@pytest.mark.parametrize("stored", [True, False], ids=["stored attention", "recomputed from q and k"])
@pytest.mark.parametrize("mode", ["attention", "value", "norm"])
def test_top_k_links_are_the_strongest_keys(capture, stored, mode):
    capture = capture if stored else dataclasses.replace(capture, attention=None)
    payload = shaping.layer_payload("k" * 64, capture, 1, mode, dense_max=4, top_k=TOP_K)
    assert payload["format"] == "topk" and payload["k"] == TOP_K
    indices = decode_array(payload["indices"]).astype(np.int64)  # [H, N, k]
    values = decode_array(payload["values"]) * payload["values"]["scale"]
    assert indices.shape == values.shape == (capture.n_heads, capture.n_tokens, TOP_K)
    for head in range(capture.n_heads):
        matrix = shaping._mode_matrix(capture, 1, head, mode)  # [N, N]
        picked = np.take_along_axis(matrix, indices[head], axis=1)
        np.testing.assert_allclose(np.sort(picked, axis=1), np.sort(matrix, axis=1)[:, -TOP_K:], atol=1e-6)
        np.testing.assert_allclose(values[head], picked, atol=0.5 * payload["values"]["scale"] + 1e-6)
