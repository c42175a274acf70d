import numpy as np
import pytest

from app.analysis.sinks import (
    SINK_MULTIPLE,
    received_attention,
    sink_tokens,
    uniform_received,
    visible_queries,
)


def uniform_attention(n_tokens: int, causal: bool) -> np.ndarray:
    """[1, N, N] float32: every query spreads evenly over the keys it may see."""
    allowed = np.tril(np.ones((n_tokens, n_tokens))) if causal else np.ones((n_tokens, n_tokens))
    return (allowed / allowed.sum(axis=-1, keepdims=True))[None].astype(np.float32)


@pytest.mark.parametrize("causal, expected", [(True, [3, 2, 1]), (False, [3, 3, 3])])
def test_visible_queries(causal, expected):
    np.testing.assert_array_equal(visible_queries(3, causal), expected)


def test_received_attention_bidirectional_by_hand():
    attention = np.array([[[0.5, 0.5], [1.0, 0.0]], [[0.5, 0.5], [0.0, 1.0]]], dtype=np.float32)
    received = received_attention(attention, causal=False)
    assert received.dtype == np.float32
    np.testing.assert_allclose(received, [(1.5 + 0.5) / 4, (0.5 + 1.5) / 4])


def test_received_attention_causal_divides_by_visible_queries():
    attention = np.array([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.25, 0.25]]], dtype=np.float32)
    np.testing.assert_allclose(received_attention(attention, causal=True), [2 / 3, 0.75 / 2, 0.25])


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_tokens", [1, 4, 9])
def test_uniform_attention_matches_the_uniform_expectation(causal, n_tokens):
    received = received_attention(uniform_attention(n_tokens, causal), causal)
    np.testing.assert_allclose(received, uniform_received(n_tokens, causal), rtol=1e-6)
    flags = sink_tokens(received[None], causal=causal)
    np.testing.assert_allclose(flags["score"], 1.0, rtol=1e-6)
    assert not flags["is_sink"].any()


def test_sink_tokens_needs_enough_layers():
    # Bidirectional, 8 tokens: uniform is 1/8, so 5x is 0.625.
    received = np.full((3, 8), 0.05, dtype=np.float32)  # [L, N]
    received[:2, 0] = 0.65  # key 0 over the threshold in 2 of 3 layers
    received[2, 5] = 0.65  # key 5 in 1 of 3 layers
    flags = sink_tokens(received, causal=False)
    np.testing.assert_array_equal(flags["is_sink"], [True] + [False] * 7)
    np.testing.assert_allclose(flags["layer_share"][[0, 5]], [2 / 3, 1 / 3], rtol=1e-6)
    assert flags["score"].dtype == np.float32 and flags["layer_share"].dtype == np.float32


@pytest.mark.parametrize("threshold, flagged", [(SINK_MULTIPLE, True), (100.0, False)])
def test_sink_tokens_threshold(threshold, flagged):
    received = np.array([[0.55] + [0.05] * 9], dtype=np.float32)  # [L=1, N=10]: key 0 at 5.5x uniform
    assert sink_tokens(received, causal=False, threshold=threshold)["is_sink"][0] is np.bool_(flagged)


def test_late_causal_keys_are_not_flagged_for_local_attention():
    # Each query reads only its previous token: the last key gets its single query's full weight.
    n_tokens = 16
    attention = np.eye(n_tokens, k=-1, dtype=np.float32)[None]  # [1, N, N]
    attention[0, 0, 0] = 1.0
    received = received_attention(attention, causal=True)
    flags = sink_tokens(received[None], causal=True)
    assert flags["score"][-2] > SINK_MULTIPLE  # key 14: 1 / 2 visible queries vs ~0.065 uniform
    assert not flags["is_sink"].any()


def test_rows_of_zeros_do_not_produce_nan():
    attention = np.zeros((2, 4, 4), dtype=np.float32)
    received = received_attention(attention, causal=True)
    flags = sink_tokens(received[None], causal=True)
    assert np.all(np.isfinite(flags["score"])) and not flags["is_sink"].any()


@pytest.mark.parametrize("n_tokens", [200, 512, 2048])
def test_uniform_causal_attention_flags_nothing_at_any_length(n_tokens):
    received = uniform_received(n_tokens, causal=True)[None]  # what received_attention gives for it
    assert not sink_tokens(received, causal=True)["is_sink"].any()


@pytest.mark.parametrize("n_tokens", [12, 33, 128])
def test_a_decoder_first_token_sink_is_flagged_on_short_prompts(n_tokens):
    """SmolLM2 gives token 0 about half of every row on a 33-token prompt; the 5x-causal-uniform
    rule could not flag it below ~18 tokens. Written from the alpha/N rule: each query puts
    0.49 on key 0 and spreads the rest evenly over the other keys it may see."""
    attention = np.zeros((1, n_tokens, n_tokens), dtype=np.float32)
    attention[0, 0, 0] = 1.0
    for query in range(1, n_tokens):
        attention[0, query, 0] = 0.49
        attention[0, query, 1 : query + 1] = 0.51 / query
    received = received_attention(attention, causal=True)  # [N]
    share_of_key_0 = attention[0, :, 0].mean()
    assert share_of_key_0 > 5 / n_tokens  # the alpha/N rule itself says sink
    flags = sink_tokens(np.repeat(received[None], 3, axis=0), causal=True)
    assert flags["is_sink"][0] and not flags["is_sink"][1:].any()
