"""The fused-kernel capture: the model computes what transformers computes, and what the record
derives in row blocks (thumbnails, received attention, head statistics) is what the definitions
give on the model's own eager attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from app.analysis import head_roles
from app.analysis.sinks import received_attention
from models import blocks, cpu_blocks, recorder
from models.capture import run_capture
from models.record import HEAD_STATS
from models.recorder import ATTENTION_IMPLEMENTATION, HiddenNorms, Recorder, new_recorder, recorded_forward
from models.seq2seq import _SegmentRecorder
from tests.conftest import causal_from_config
from tests.unit.models.test_capture import PROMPT, TOLERANCE, reference_attention

OUTPUT_TOLERANCE = 1e-4  # float32 logits and hidden states: kernels sum in different orders
TINY = ["tiny-bert", "tiny-gpt2", "tiny-llama", "tiny-bart", "tiny-t5"]


def _inputs(handle) -> dict:
    ids = torch.tensor([handle.tokenizer(PROMPT)["input_ids"]], device=handle.device)
    if not handle.config.is_encoder_decoder:
        return {"input_ids": ids}
    return {"input_ids": ids, "decoder_input_ids": ids[:, :7]}


def _outputs(output) -> list[torch.Tensor]:
    """Every tensor a user of the model reads: logits (if any) and all hidden states (or their norms)."""
    names = ("logits", "last_hidden_state", "encoder_last_hidden_state", "hidden_states")
    names += ("decoder_hidden_states", "encoder_hidden_states")
    found = []
    for name in names:
        value = getattr(output, name, None)
        found += list(value) if isinstance(value, tuple) else [value] if value is not None else []
    return found


def plain_outputs(handle, implementation: str) -> list[torch.Tensor]:
    handle.model.set_attn_implementation(implementation)
    try:
        with torch.inference_mode():
            return _outputs(handle.model(**_inputs(handle), output_hidden_states=True, use_cache=False))
    finally:
        handle.model.set_attn_implementation(ATTENTION_IMPLEMENTATION)


def recorded_outputs(handle) -> tuple[list[torch.Tensor], Recorder]:
    inputs = _inputs(handle)
    n = inputs["input_ids"].shape[1] + inputs.get("decoder_input_ids", inputs["input_ids"][:, :0]).shape[1]
    extra = {"encoder_tokens": inputs["input_ids"].shape[1]} if handle.config.is_encoder_decoder else {}
    kind = _SegmentRecorder if extra else Recorder
    listening = new_recorder(kind, handle, n, "float32", 0, None, **extra)
    output, _ = recorded_forward(handle, listening, None, **inputs)
    return _outputs(output), listening


def check_outputs_unchanged(handle, tolerance: float = OUTPUT_TOLERANCE) -> None:
    recorded, listening = recorded_outputs(handle)
    assert listening.layers, "no layer was recorded"
    for implementation in ("eager", "sdpa"):
        plain = plain_outputs(handle, implementation)
        assert len(plain) == len(recorded)
        for ours, theirs in zip(recorded, plain):
            if isinstance(ours, HiddenNorms):  # a recorded pass keeps only the norms of earlier states
                ours, theirs = ours.norms, theirs[0].float().norm(dim=-1)
            torch.testing.assert_close(ours, theirs, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("name", TINY)
def test_recording_leaves_the_models_outputs_unchanged(tiny_models, name):
    check_outputs_unchanged(tiny_models[name])


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["minilm", "smollm2"])
def test_recording_leaves_the_packaged_models_outputs_unchanged(request, name):
    check_outputs_unchanged(request.getfixturevalue(name))


@pytest.mark.parametrize(
    "name", ["tiny-bert", "tiny-gpt2", "tiny-llama", pytest.param("smollm2", marks=pytest.mark.real_model)]
)
def test_layers_attended_in_their_blocks_leave_the_models_outputs_unchanged(request, monkeypatch, name):
    """Past BATCH_TOKENS the CPU capture computes each fused layer's attention in the blocks that
    summarise it (Recorder.attend) instead of calling the kernel and reading the blocks again:
    the model still computes what transformers computes, and every layer went that way."""
    handle = request.getfixturevalue("tiny_models")[name] if name.startswith("tiny") else request.getfixturevalue(name)
    monkeypatch.setattr(recorder, "BATCH_TOKENS", 0)
    monkeypatch.setattr(blocks, "ATTEND_ROWS", 3)  # several blocks a layer
    attended = []
    original = Recorder.attend
    monkeypatch.setattr(Recorder, "attend", lambda self, *args: attended.append(1) or original(self, *args))
    check_outputs_unchanged(handle)
    assert len(attended) == handle.config.num_hidden_layers


def prefix_metrics(attention: np.ndarray, capture, causal: bool, n: int) -> dict[str, np.ndarray]:
    """head_roles.head_metrics of every layer's [H, n, n] prefix block: the definition."""
    special, punctuation = capture.special[:n], head_roles.punctuation_mask(capture.tokens[:n])
    per_layer = [head_roles.head_metrics(layer[:, :n, :n], special, punctuation, causal=causal) for layer in attention]
    return {name: np.stack([layer[name] for layer in per_layer]) for name in per_layer[0]}


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("stats_tokens", [1024, 9])
@pytest.mark.parametrize("batch_tokens", [recorder.BATCH_TOKENS, 0], ids=["all-layers-at-once", "layer-by-layer"])
@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch"])
def test_blocked_pass_matches_the_definitions(tiny_models, monkeypatch, name, stats_tokens, batch_tokens, compiled):
    """Row blocks of a few rows each (and a prefix shorter than the prompt, where a bidirectional
    model's prefix rows do not sum to 1) give the same thumbnails, received attention and head
    statistics as the definitions applied to transformers' own attention, whether the layers
    are read as the model finishes each or all at once after the pass (a short prompt), and
    whether each block's cells are read by the compiled loop or by torch operations."""
    handle = tiny_models[name]
    monkeypatch.setattr(cpu_blocks, "ENABLED", compiled)
    monkeypatch.setattr(blocks, "BLOCK_BYTES", 3 * 4 * handle.config.num_attention_heads * 32)  # 3 rows a block
    monkeypatch.setattr(blocks, "ATTEND_ROWS", 3)  # and in a layer attended in its blocks
    monkeypatch.setattr(recorder, "STATS_TOKENS", stats_tokens)
    monkeypatch.setattr(recorder, "BATCH_TOKENS", batch_tokens)
    capture = run_capture(handle, PROMPT)
    expected = reference_attention(handle, PROMPT)  # [L, H, N, N]
    side = capture.thumbnails.shape[-1]
    thumbnails = F.adaptive_max_pool2d(torch.from_numpy(expected).flatten(0, 1), side).view(capture.thumbnails.shape)
    np.testing.assert_allclose(capture.thumbnails, thumbnails.numpy(), atol=1e-3, rtol=1e-3)  # float16 storage
    received = np.stack([received_attention(layer, handle.is_causal) for layer in expected])
    np.testing.assert_allclose(capture.received, received, atol=1e-6)
    n = min(stats_tokens, capture.n_tokens)
    metrics = prefix_metrics(expected, capture, handle.is_causal, n)
    for index, stat in enumerate(HEAD_STATS):
        np.testing.assert_allclose(capture.head_stats[..., index], metrics[stat], atol=1e-5, err_msg=stat)
    np.testing.assert_allclose(capture.key_shares[..., 0], metrics["sink"], atol=1e-6)
    from app import insights

    monkeypatch.setattr(insights, "ANALYSIS_MAX_TOKENS", stats_tokens)
    summary = insights.summary(capture)
    assert list(summary)[: len(metrics)] == list(metrics)  # the same metrics, in the same order
    for stat, values in metrics.items():
        np.testing.assert_allclose(summary[stat], values, atol=1e-5, err_msg=stat)


def test_a_sliding_window_mask_goes_to_the_kernel_as_it_is(minilm, monkeypatch):
    """A mask that is neither full nor causal (Mistral's sliding window) reaches the kernel as
    the model's additive mask, and blocks (3 rows each here) skip the keys left of the window."""

    monkeypatch.setattr(blocks, "BLOCK_BYTES", 3 * 4 * 4 * 32)

    handle = causal_from_config(
        "MistralConfig",
        minilm.tokenizer,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        sliding_window=5,
    )
    capture = run_capture(handle, PROMPT)
    expected = reference_attention(handle, PROMPT)
    assert capture.info["attention_path"] == "fused" and capture.attention is None
    behind = np.subtract.outer(np.arange(capture.n_tokens), np.arange(capture.n_tokens))  # query - key
    window = (behind >= 0) & (behind < 5)
    assert np.array_equal(capture.masks[0], window)
    recorded = np.stack([capture.layer_attention(layer) for layer in range(capture.n_layers)])
    np.testing.assert_allclose(recorded, expected, atol=TOLERANCE)
    metrics = prefix_metrics(expected, capture, True, capture.n_tokens)
    for index, stat in enumerate(HEAD_STATS):
        np.testing.assert_allclose(capture.head_stats[..., index], metrics[stat], atol=1e-5, err_msg=stat)
    check_outputs_unchanged(handle)


@pytest.mark.parametrize("name", ["tiny-bart", "tiny-t5"])
@pytest.mark.parametrize("batch_tokens", [recorder.BATCH_TOKENS, 0], ids=["all-layers-at-once", "layer-by-layer"])
def test_encoder_decoder_records_give_back_attention_within_tolerance(tiny_models, monkeypatch, name, batch_tokens):
    """BART runs every layer (encoder, decoder, cross) through the kernel; T5's position bias
    is not softmax(q.k), so its layers run eager and the record keeps their weights. Layer by
    layer (a long prompt), each segment's layer is placed on the record's axis before it is
    read: none is attended in blocks over its segment alone."""
    monkeypatch.setattr(recorder, "BATCH_TOKENS", batch_tokens)
    capture = run_capture(tiny_models[name], "The house is wonderful.", target="Das Haus ist wunderbar.")
    if name == "tiny-bart":
        assert capture.info["attention_path"] == "fused" and capture.attention is None
    else:
        assert "position_bias" in capture.info["attention_path"] and capture.attention is not None
    from tests.unit.models.test_seq2seq import blocks as segment_blocks
    from tests.unit.models.test_seq2seq import reference

    output = reference(tiny_models[name], capture)
    expected = {
        "encoder": list(output.encoder_attentions),
        "decoder": list(output.decoder_attentions),
        "cross": list(output.cross_attentions),
    }
    for layer, (kind, rows, cols) in enumerate(segment_blocks(capture)):
        attention = capture.layer_attention(layer)[:, rows, cols]
        np.testing.assert_allclose(attention, expected[kind].pop(0)[0].numpy(), atol=TOLERANCE)
