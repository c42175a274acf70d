"""The layer modes are Kobayashi et al. (2020, section 5)'s norm of a whole attention layer's
contribution, ||sum_h alpha^h_ij f_h(x_j)||, with f_h(x) = (x W_V^h + b_V^h) W_O^h (the output
bias is no token's). Checked against that formula written out here: a plain forward pass of the
model with ``output_attentions`` (its eager attention) and hooks on the attention modules' inputs,
the vectors f_h(x_j) built from each architecture's own weights, summed over heads with the
attention weights and then normed, as [N, N, D] arrays."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from app import shaping
from app.protocol import AtlasError
from models.capture import run_capture
from models.record import Capture
from tests.unit.models.test_contributions import attention_inputs, attention_modules, head_outputs
from tests.unit.test_norm_thumbnails import pooled_by_hand
from tests.wire import decode_array

PROMPT = "The quick brown fox jumps over the lazy dog, and then the dog sleeps."
RTOL = 1e-3  # of each layer's peak: float32 capture against float32 eager attention
KEY = "k" * 64


def reference_layer_maps(handle, text: str) -> np.ndarray:
    """[L, N, N] ||sum_h alpha^h_ij f_h(x_j)|| from a plain forward pass: the model's eager
    attention weights and the heads' vectors f_h(x_j) [H, N, D] written out."""
    seen, hooks = attention_inputs(handle.model, attention_modules(handle.model))
    try:
        with torch.inference_mode():
            ids = handle.tokenizer(text, return_tensors="pt")["input_ids"]  # as the capture: ids alone
            output = handle.model(input_ids=ids, output_attentions=True, use_cache=False)
            maps = []
            for (vectors, _), weights in zip(head_outputs(handle.model, seen), output.attentions):
                summed = torch.einsum("hij,hjd->ijd", weights[0].float(), vectors)  # [N, N, D]
                maps.append(summed.norm(dim=-1))
    finally:
        for hook in hooks:
            hook.remove()
    return torch.stack(maps).numpy()


def assert_layer_maps(capture: Capture, expected: np.ndarray) -> None:
    assert capture.output_grams.shape == (capture.n_layers, capture.n_tokens, capture.n_heads, capture.n_heads)
    for layer in range(capture.n_layers):
        peak = expected[layer].max()
        np.testing.assert_allclose(shaping.layer_map(capture, layer), expected[layer], rtol=RTOL, atol=RTOL * peak)


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-gpt2", "tiny-bert"])
def case(request, tiny_models) -> tuple[Capture, np.ndarray]:
    handle = tiny_models[request.param]
    capture = run_capture(handle, PROMPT, precision="float32")
    expected = reference_layer_maps(handle, PROMPT)
    assert expected.shape == (capture.n_layers, capture.n_tokens, capture.n_tokens)
    return capture, expected


def test_layer_maps_follow_kobayashi_et_al(case):
    capture, expected = case
    assert capture.info["output_norms_exact"]
    assert_layer_maps(capture, expected)
    # summing before the norm matters: below the sum of the heads' norms wherever heads disagree
    per_head = sum(shaping._mode_matrix(capture, 0, head, "norm") for head in range(capture.n_heads))
    assert np.all(expected[0] <= per_head + 1e-5) and np.any(expected[0] < 0.95 * per_head)


def test_head_view_payloads(case):
    capture, expected = case
    layer, n = capture.n_layers - 1, capture.n_tokens
    dense = shaping.layer_payload(KEY, capture, layer, "layer", dense_max=n, top_k=4)
    values = decode_array(dense["attention"]) * dense["attention"]["scale"]
    assert dense["heads"] == 1 and values.shape == (1, n, n)
    np.testing.assert_allclose(values[0], expected[layer], atol=expected[layer].max() / 255 * 0.51 + 1e-6)

    top = shaping.layer_payload(KEY, capture, layer, "layer_share", dense_max=0, top_k=3)
    indices, shares = decode_array(top["indices"])[0], decode_array(top["values"])[0] * top["values"]["scale"]
    rows = expected[layer] / expected[layer].sum(axis=1, keepdims=True)
    for query in range(n):
        best = np.sort(rows[query])[::-1][:3]
        np.testing.assert_allclose(np.sort(rows[query, indices[query]])[::-1], best, atol=1e-6)
        np.testing.assert_allclose(np.sort(shares[query])[::-1], best, atol=0.51 / 255 + 1e-6)


def test_matrix_token_and_model_view_payloads(case):
    capture, expected = case
    n = capture.n_tokens
    shares = expected / expected.sum(axis=2, keepdims=True)  # [L, N, N] row shares of whole rows
    block = shaping.matrix_payload(KEY, capture, 1, 0, "layer_share", 3, n, 1, 6, tile_max=256)
    np.testing.assert_allclose(
        decode_array(block["matrix"]) * block["matrix"]["scale"], shares[1, 3:, 1:6], atol=0.51 / 255 + 1e-6
    )
    token = shaping.token_payload(KEY, capture, 4, "layer")
    for name, expected_part in (("outgoing", expected[:, 4, :]), ("incoming", expected[:, :, 4])):
        values = decode_array(token[name]) * token[name]["scale"]
        assert values.shape == (capture.n_layers, 1, n)
        np.testing.assert_allclose(values[:, 0], expected_part, atol=expected_part.max() / 255 * 0.51 + 1e-6)

    side = 5
    thumbs = shaping.norm_thumbnails_payload(
        KEY, dataclasses.replace(capture, thumbnails=capture.thumbnails[..., :side, :side]), "layer"
    )
    scaled = decode_array(thumbs["thumbnails"]) * thumbs["thumbnails"]["scale"]
    assert thumbs["heads"] == 1 and scaled.shape == (capture.n_layers, 1, side, side)
    for layer in range(capture.n_layers):
        pooled = pooled_by_hand(expected[layer], side)
        np.testing.assert_allclose(scaled[layer, 0] * pooled.max(), pooled, atol=pooled.max() / 255 + 1e-5)


def test_a_record_without_grams_opens_and_says_why_the_layer_modes_are_missing(tiny_models):
    capture = run_capture(tiny_models["tiny-gpt2"], PROMPT)
    arrays = capture.to_arrays()
    del arrays["output_grams"]  # as a record of format 4 (an NPZ exported before) holds
    old = Capture.from_arrays(arrays).validate()
    assert old.output_grams is None
    shaping.layer_payload(KEY, old, 0, "norm", dense_max=64, top_k=4)  # per-head modes still work
    with pytest.raises(AtlasError, match="analyse the prompt again") as raised:
        shaping.layer_payload(KEY, old, 0, "layer", dense_max=64, top_k=4)
    assert raised.value.code == "not_computed"
    with pytest.raises(ValueError, match="output_grams"):
        dataclasses.replace(capture, output_grams=capture.output_grams[:, :, :1]).validate()
