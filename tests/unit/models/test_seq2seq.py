"""Encoder-decoder capture: encoder, decoder and cross-attention land in their blocks of one
record, exactly as the model computes them (transformers' own output_attentions)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from models.capture import run_capture
from models.errors import TooManyTokensError, UnsupportedModelError

SOURCE = "The house is wonderful, isn't it?"
TARGET = "Das Haus ist wunderbar."


@pytest.fixture(params=["tiny-bart", "tiny-t5"])
def seq2seq(request, tiny_models):
    return tiny_models[request.param]


def reference(handle, capture):
    """transformers' encoder, decoder and cross attentions for the captured token ids."""
    ne = capture.info["segments"]["encoder"][1]
    source = torch.tensor([handle.tokenizer.convert_tokens_to_ids(capture.pieces[:ne])])
    decoder = torch.tensor([handle.tokenizer.convert_tokens_to_ids(capture.pieces[ne:])])
    handle.model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            return handle.model(
                input_ids=source,
                decoder_input_ids=decoder,
                output_attentions=True,
                output_hidden_states=True,
                use_cache=False,
            )
    finally:
        from models.recorder import ATTENTION_IMPLEMENTATION

        handle.model.set_attn_implementation(ATTENTION_IMPLEMENTATION)


def blocks(capture):
    """Per layer: (kind, rows, cols) of the block it fills."""
    encoder, decoder = (slice(*capture.info["segments"][name]) for name in ("encoder", "decoder"))
    where = {"encoder": (encoder, encoder), "decoder": (decoder, decoder), "cross": (decoder, encoder)}
    return [(kind, *where[kind]) for kind in capture.info["layer_kinds"]]


def test_every_block_matches_the_models_own_attention(seq2seq):
    capture = run_capture(seq2seq, SOURCE, target=TARGET, precision="float32").validate()
    output = reference(seq2seq, capture)
    expected = {
        "encoder": list(output.encoder_attentions),
        "decoder": list(output.decoder_attentions),
        "cross": list(output.cross_attentions),
    }
    assert capture.n_layers == sum(len(layers) for layers in expected.values())
    for layer, (kind, rows, cols) in enumerate(blocks(capture)):
        attention = capture.layer_attention(layer)
        np.testing.assert_allclose(attention[:, rows, cols], expected[kind].pop(0)[0].numpy(), atol=1e-6)
        outside = attention.copy()
        outside[:, rows, cols] = 0
        assert np.abs(outside).max() < 1e-6, f"layer {layer} ({kind}) leaks outside its block"
        mask = capture.masks[capture.mask_index[layer]].copy()
        mask[rows, cols] = False
        assert not mask.any(), f"layer {layer} ({kind}) lets a query read outside its block"


def test_record_layout_names_segments_layer_kinds_and_target(tiny_models):
    handle = tiny_models["tiny-t5"]
    capture = run_capture(handle, SOURCE, target=TARGET)
    ne = len(handle.tokenizer(SOURCE)["input_ids"])
    assert capture.info["encoder_decoder"] and capture.info["target"] == TARGET
    assert capture.info["segments"] == {"encoder": [0, ne], "decoder": [ne, capture.n_tokens]}
    assert capture.info["layer_kinds"] == ["encoder"] * 2 + ["decoder", "cross"] * 3
    assert capture.tokens[ne] == handle.tokenizer.cls_token and capture.special[ne]  # the decoder's start token
    assert "Haus" in "".join(capture.tokens[ne:])
    first_word = ne + int(np.flatnonzero(~capture.special[ne:])[0])
    start, end = capture.spans[first_word]
    assert TARGET[start:end] == capture.tokens[first_word] == "Das"  # decoder spans index the target text
    assert capture.hidden_norms.shape == (capture.n_layers + 1, capture.n_tokens)
    assert np.isfinite(capture.row_lse).all()


def test_hidden_norms_start_at_the_embeddings_and_end_at_each_stacks_output(seq2seq):
    """The recorded pass keeps only norms; its first row is both stacks' embeddings and its last
    the encoder's and the decoder's final states, as a plain forward pass returns them."""
    capture = run_capture(seq2seq, SOURCE, target=TARGET, precision="float32")
    output = reference(seq2seq, capture)

    def norms(states, index):
        return np.linalg.norm(states[index][0].float().numpy(), axis=-1)

    for row, index in ((0, 0), (-1, -1)):
        encoder, decoder = norms(output.encoder_hidden_states, index), norms(output.decoder_hidden_states, index)
        expected = np.concatenate([encoder, decoder])
        np.testing.assert_allclose(capture.hidden_norms[row], expected, rtol=1e-4, atol=1e-4)


def test_decoder_self_attention_is_causal_and_cross_reads_every_source_token(tiny_models):
    capture = run_capture(tiny_models["tiny-bart"], SOURCE, target=TARGET, precision="float32")
    kinds = capture.info["layer_kinds"]
    (_, rows, cols) = blocks(capture)[kinds.index("decoder")]
    self_block = capture.layer_attention(kinds.index("decoder"))[:, rows, cols]
    assert np.all(np.triu(self_block, k=1) == 0)
    cross = capture.layer_attention(kinds.index("cross"))[:, rows, slice(*capture.info["segments"]["encoder"])]
    np.testing.assert_allclose(cross.sum(-1), 1.0, atol=1e-5)


def test_without_a_target_the_decoder_reads_the_models_greedy_output(tiny_models):
    handle = tiny_models["tiny-bart"]
    capture = run_capture(handle, SOURCE)
    ids = torch.tensor([handle.tokenizer(SOURCE)["input_ids"]])
    with torch.inference_mode():
        greedy = handle.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False)
    ne = capture.info["segments"]["encoder"][1]
    assert capture.pieces[ne:] == handle.tokenizer.convert_ids_to_tokens(greedy[0])  # exactly what it generated
    assert capture.info["target"] == handle.tokenizer.decode(greedy[0], skip_special_tokens=True)
    for token, special, (start, end) in zip(capture.tokens[ne:], capture.special[ne:], capture.spans[ne:]):
        assert special or capture.info["target"][start:end] == token
    assert run_capture(handle, SOURCE).tokens == capture.tokens  # the link without a target reproduces it


def test_recomputed_attention_agrees_when_the_record_keeps_only_q_and_k(tiny_models):
    handle = tiny_models["tiny-bart"]
    full = run_capture(handle, SOURCE, target=TARGET, precision="float32", keep_attention_bytes=1 << 40)
    light = run_capture(handle, SOURCE, target=TARGET)
    assert light.attention is None and light.info["scores_exact"]
    for layer in range(full.n_layers):
        np.testing.assert_allclose(light.layer_attention(layer), full.attention[layer], atol=1e-5)


def test_relative_position_bias_keeps_the_models_weights(tiny_models):
    """T5 adds a learned position bias to q.k, so scores alone do not give its attention."""
    capture = run_capture(tiny_models["tiny-t5"], SOURCE, target=TARGET, keep_attention_bytes=0)
    assert not capture.info["scores_exact"] and capture.attention is not None


def test_a_model_without_a_head_needs_the_decoder_text(minilm):
    import transformers

    from models.loading import ModelHandle
    from models.recorder import ATTENTION_IMPLEMENTATION
    from models.registry import ModelSpec

    config = transformers.BartConfig(
        vocab_size=minilm.tokenizer.vocab_size,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
    )
    config._attn_implementation = ATTENTION_IMPLEMENTATION
    model = transformers.BartModel(config).eval()
    handle = ModelHandle(
        "bare-bart", ModelSpec("bare-bart"), model, minilm.tokenizer, torch.device("cpu"), "x", 0.0, threading.Lock()
    )
    with pytest.raises(UnsupportedModelError, match="give the decoder text"):
        run_capture(handle, SOURCE)
    assert run_capture(handle, SOURCE, target=TARGET).info["layer_kinds"] == ["encoder", "decoder", "cross"]


def test_source_and_decoder_tokens_share_the_token_limit(tiny_models):
    handle = tiny_models["tiny-bart"]
    with pytest.raises(TooManyTokensError, match="the decoder text is"):
        run_capture(handle, SOURCE, target=TARGET, max_tokens=16)
    long_source = " ".join(["word"] * 24)  # 26 tokens: room for the start token and a short output only
    capture = run_capture(handle, long_source, max_tokens=32)
    assert capture.n_tokens <= 32 and capture.info["segments"]["encoder"] == [0, 26]


def test_other_models_refuse_a_target(tiny_models):
    with pytest.raises(ValueError, match="no decoder"):
        run_capture(tiny_models["tiny-gpt2"], SOURCE, target=TARGET)
