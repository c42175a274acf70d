"""The model view's norm-based thumbnails are Kobayashi et al. (2020)'s ||alpha_ij f_h(x_j)||
per head (raw, or as shares of each query's row), max-pooled over the thumbnail's bins: checked
against that formula written out here, with f_h(x_j) = (x_j W_V^h + b_V^h) W_O^h taken from each
architecture's own weights (tests.unit.models.test_contributions) and the pooling done by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from app import shaping
from app.protocol import AtlasError
from models.capture import run_capture
from tests.unit.models.test_contributions import captured_with_inputs, reference_norms
from tests.wire import decode_array

PROMPT = "The quick brown fox jumps over the lazy dog, and then the dog sleeps."
SIDE = 5  # thumbnail pixels per side, fewer than the prompt's tokens so that bins hold several


def pooled_by_hand(matrix: np.ndarray, side: int) -> np.ndarray:
    """[side, side] maximum of each bin of the attention thumbnails (PyTorch's adaptive max
    pooling): bin i covers [floor(i n / side), ceil((i + 1) n / side)), so neighbours may share
    a token."""
    n = matrix.shape[0]
    starts = [i * n // side for i in range(side)]
    ends = [-(-(i + 1) * n // side) for i in range(side)]
    return np.array(
        [[matrix[starts[r] : ends[r], starts[c] : ends[c]].max() for c in range(side)] for r in range(side)]
    )


def softmax_attention(capture, layer: int, head: int) -> np.ndarray:
    """[N, N] alpha = softmax(q k^T * scaling) under the layer's mask, from the stored q and k."""
    q = capture.queries[layer, head].astype(np.float64)
    k = capture.keys[layer, capture.kv_map[head]].astype(np.float64)
    scores = q @ k.T * float(capture.scaling[layer])
    scores = np.where(capture.masks[capture.mask_index[layer]], scores, -np.inf)
    weights = np.exp(scores - scores.max(axis=1, keepdims=True))
    return weights / weights.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
@pytest.mark.parametrize("mode", ["norm", "value"])
def test_thumbnails_follow_kobayashi_et_al(tiny_models, name, mode):
    handle = tiny_models[name]
    capture, seen = captured_with_inputs(handle, PROMPT)
    with torch.inference_mode():
        norms, _ = reference_norms(handle.model, seen)  # [L, H, N] ||f_h(x_j)||
    capture = dataclasses.replace(capture, thumbnails=capture.thumbnails[..., :SIDE, :SIDE])
    assert capture.n_tokens > 2 * SIDE

    payload = shaping.norm_thumbnails_payload("k" * 64, capture, mode)
    scaled = decode_array(payload["thumbnails"]) * payload["thumbnails"]["scale"]  # [L, H, t, t] in [0, 1]
    peaks = decode_array(payload["peaks"]).astype(np.float64)  # [L, H]
    assert scaled.shape == (capture.n_layers, capture.n_heads, SIDE, SIDE) and payload["side"] == SIDE
    for layer in range(capture.n_layers):
        for head in range(capture.n_heads):
            weighted = softmax_attention(capture, layer, head) * norms[layer, head][None, :]  # ||alpha_ij f(x_j)||
            if mode == "value":
                weighted = weighted / weighted.sum(axis=1, keepdims=True)
            expected = pooled_by_hand(weighted, SIDE)
            np.testing.assert_allclose(peaks[layer, head], expected.max(), rtol=2e-3)  # float16 peaks
            np.testing.assert_allclose(scaled[layer, head] * expected.max(), expected, atol=expected.max() / 255 + 1e-5)


def test_thumbnails_refuse_other_modes(tiny_models):
    capture = run_capture(tiny_models["tiny-bert"], PROMPT)
    with pytest.raises(AtlasError, match="value, norm, layer_share, layer"):
        shaping.norm_thumbnails_payload("k" * 64, capture, "attention")
