"""Capture correctness: the hook sees exactly what the model computes, on tiny models of three
architectures and on both packaged pretrained models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models import recorder as recorder_module
from models.capture import run_capture
from models.errors import TooManyTokensError
from models.recorder import ATTENTION_IMPLEMENTATION, Recorder, new_recorder, recorded_forward, thumbnail_side
from tests.conftest import causal_from_config, converted

PROMPT = "The doctor asked the nurse a question. She said: it's fine, isn't it?"
TOLERANCE = 1e-3  # what the docs promise: recomputed attention within 1e-3 of the model's own
KEEP_ALL = 1 << 40  # keep_attention_bytes that keeps every layer's attention


def reference_attention(handle, text: str) -> np.ndarray:
    """[L, H, N, N] from transformers' own eager attention with output_attentions."""
    ids = handle.tokenizer(text, return_tensors="pt")
    handle.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            output = handle.model(input_ids=ids["input_ids"].to(handle.device), output_attentions=True, use_cache=False)
    finally:
        handle.model.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    assert output.attentions, "the model returned no attentions"
    return np.stack([layer[0].float().cpu().numpy() for layer in output.attentions])


def softmax_rows(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, written here from its definition so the check does not reuse
    the code under test; a row that is -inf everywhere (no visible key) comes out all zero."""
    peak = np.max(scores, axis=-1, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    weights = np.exp(scores - peak)
    total = weights.sum(axis=-1, keepdims=True)
    return np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)


def recomputed(capture) -> np.ndarray:
    """softmax(q.k * scaling + mask) from the captured queries and keys."""
    return np.stack(
        [
            [softmax_rows(capture.scores_block(layer, head)) for head in range(capture.n_heads)]
            for layer in range(capture.n_layers)
        ]
    )


@pytest.fixture(params=["tiny-bert", "tiny-gpt2", "tiny-llama"])
def tiny(request, tiny_models):
    return tiny_models[request.param]


def check_capture(handle) -> None:
    """The default record (q, k and the kernel's row log-sum-exp, no attention) gives back the
    model's eager attention within TOLERANCE; a record asked to keep attention keeps it."""
    capture = run_capture(handle, PROMPT)
    expected = reference_attention(handle, PROMPT)
    assert capture.attention is None and capture.info["attention_path"] == "fused"
    assert capture.queries.dtype == np.float32  # as the model computed them on the CPU
    recorded = np.stack([capture.layer_attention(layer) for layer in range(capture.n_layers)])
    np.testing.assert_allclose(recorded, expected, atol=TOLERANCE)
    np.testing.assert_allclose(recomputed(capture), expected, atol=TOLERANCE)
    np.testing.assert_allclose(recorded.sum(-1), 1.0, atol=TOLERANCE)
    if handle.is_causal:
        upper = np.triu(np.ones(expected.shape[-2:], dtype=bool), k=1)
        assert np.all(recorded[..., upper] == 0)
    from app.analysis.sinks import received_attention

    received = np.stack([received_attention(layer, handle.is_causal) for layer in expected])
    np.testing.assert_allclose(capture.received, received, atol=1e-5)
    kept = run_capture(handle, PROMPT, precision="float32", keep_attention_bytes=KEEP_ALL)
    assert kept.attention.shape == expected.shape
    np.testing.assert_allclose(kept.attention, expected, atol=TOLERANCE)


def test_tiny_models_capture_exactly(tiny):
    check_capture(tiny)


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["minilm", "smollm2"])
def test_packaged_models_capture_exactly(request, name):
    check_capture(request.getfixturevalue(name))


def test_a_bfloat16_model_records_from_the_kernel_in_float32(tiny_models):
    """What a GPU does with a model trained in bfloat16 (models.loading.model_dtype), here on the
    CPU: the kernel reads bfloat16 q and k, the record keeps them in float32 (numpy has no
    bfloat16) and gives back the model's own bfloat16 attention within that rounding (weights of
    up to 1 rounded to 8 bits: 4e-3)."""
    cpu = tiny_models["tiny-llama"]
    handle = converted(cpu, torch.bfloat16)
    capture = run_capture(handle, PROMPT)
    assert capture.info["attention_path"] == "fused" and capture.queries.dtype == np.float32
    recorded = np.stack([capture.layer_attention(layer) for layer in range(capture.n_layers)])
    np.testing.assert_allclose(recorded, reference_attention(handle, PROMPT), atol=1e-2)


def test_grouped_query_keys_map_to_their_query_heads(tiny_models):
    capture = run_capture(tiny_models["tiny-llama"], PROMPT, precision="float32")
    assert capture.keys.shape[1] == 2 and capture.queries.shape[1] == 4
    assert capture.kv_map.tolist() == [0, 0, 1, 1]
    np.testing.assert_array_equal(capture.head_keys(1, 3), capture.keys[1, 1])


@pytest.mark.real_model
def test_smollm2_is_causal_with_grouped_query_attention(smollm2):
    capture = run_capture(smollm2, "The capital of France is", precision="float32")
    assert capture.info["causal"] and capture.info["kv_heads"] == 3 and capture.n_heads == 9
    assert capture.n_layers == 30 and capture.kv_map.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert np.array_equal(capture.masks[0], np.tril(np.ones((capture.n_tokens,) * 2, dtype=bool)))


@pytest.mark.real_model
def test_smollm2_still_answers_paris(smollm2):
    """The capture attention leaves the model's own computation untouched."""
    ids = smollm2.tokenizer("The capital of France is", return_tensors="pt")
    with torch.inference_mode():
        output = smollm2.model.generate(**ids, max_new_tokens=2, do_sample=False)
    assert smollm2.tokenizer.decode(output[0, ids["input_ids"].shape[1] :]).strip().startswith("Paris")


@pytest.mark.real_model
def test_tokens_carry_spans_and_special_flags(minilm):
    capture = run_capture(minilm, "Hello, world")
    assert capture.tokens == ["[CLS]", "Hello", ",", "world", "[SEP]"]
    assert capture.special.tolist() == [True, False, False, False, True]
    for token, (start, end), special in zip(capture.tokens, capture.spans, capture.special):
        assert special or capture.text[start:end] == token


def test_value_and_hidden_norms_have_the_documented_shapes(tiny_models):
    capture = run_capture(tiny_models["tiny-gpt2"], PROMPT)
    layers, heads, n = capture.n_layers, capture.n_heads, capture.n_tokens
    assert capture.output_norms.shape == (layers, heads, n) and np.all(capture.output_norms > 0)
    assert capture.hidden_norms.shape == (layers + 1, n)
    side = thumbnail_side(layers, heads, n)
    assert capture.thumbnails.shape == (layers, heads, side, side)


def test_hidden_norms_are_the_norms_of_the_models_own_hidden_states(tiny):
    """The recorded pass keeps only the residual stream's norms; they equal the norms of the
    hidden states a plain forward pass returns."""
    capture = run_capture(tiny, PROMPT, precision="float32")
    ids = tiny.tokenizer(PROMPT, return_tensors="pt")["input_ids"].to(tiny.device)
    tiny.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            states = tiny.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
    finally:
        tiny.model.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    expected = np.stack([np.linalg.norm(state[0].float().cpu().numpy(), axis=-1) for state in states])
    np.testing.assert_allclose(capture.hidden_norms, expected, rtol=1e-4, atol=1e-4)


def test_a_recorded_pass_holds_norms_not_hidden_states(tiny_models, monkeypatch):
    """Each layer of a long prompt shrinks the hidden states collected before it: only the last
    stays whole (a short prompt's, BATCH_TOKENS or fewer, stay whole: they are small)."""
    monkeypatch.setattr(recorder_module, "BATCH_TOKENS", 0)  # 5 tokens read as a long prompt is
    handle = tiny_models["tiny-llama"]
    recorder = new_recorder(Recorder, handle, 5, "float32", 0, None)
    output, _ = recorded_forward(handle, recorder, None, input_ids=torch.tensor([[1, 2, 3, 4, 5]]))
    kinds = [type(state).__name__ for state in output.hidden_states]
    assert kinds[:-1] == ["HiddenNorms"] * (len(kinds) - 1) and kinds[-1] == "Tensor"


def test_too_many_tokens_is_refused_before_the_model_runs(tiny_models):
    with pytest.raises(TooManyTokensError, match="at most 8"):
        run_capture(tiny_models["tiny-bert"], PROMPT, max_tokens=8)


def test_soft_capped_scores_keep_the_models_own_attention(minilm):
    """Gemma-2 soft-caps its scores, so softmax(q.k) is not its attention: the capture notices
    and stores the model's weights instead of recomputing them."""

    handle = causal_from_config(
        "Gemma2Config",
        minilm.tokenizer,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=64,
        attn_logit_softcapping=0.5,
    )
    with torch.no_grad():
        for param in handle.model.parameters():
            param.mul_(20)  # large scores, so the cap bites
    capture = run_capture(handle, PROMPT, precision="float32", keep_attention_bytes=0)
    assert capture.info["scores_exact"] is False and capture.attention is not None
    assert "softcap" in capture.info["attention_path"]
    np.testing.assert_allclose(capture.attention, reference_attention(handle, PROMPT), atol=1e-6)


@pytest.mark.parametrize("kept", [True, False])
def test_attention_at_pairs_equals_the_full_map(tiny_models, kept):
    capture = run_capture(tiny_models["tiny-llama"], PROMPT, keep_attention_bytes=1 << 30 if kept else 0)
    assert (capture.attention is not None) == kept
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(capture.n_tokens, size=(2, 40))  # some pairs the causal mask forbids
    for layer in range(capture.n_layers):
        np.testing.assert_allclose(
            capture.attention_at(layer, rows, cols), capture.layer_attention(layer)[:, rows, cols], atol=1e-6
        )
