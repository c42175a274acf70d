"""Analysis payloads over real captures: head summary, sinks, rollout, flow, compare."""

from __future__ import annotations

import numpy as np
import pytest

from app import insights
from models.capture import run_capture

PAIR = ("The doctor asked the nurse a question. She", "The doctor asked the nurse a question. He")


def decode(array: dict) -> np.ndarray:
    values = np.frombuffer(array["data"], dtype=np.dtype(array["dtype"]).newbyteorder("<")).reshape(array["shape"])
    return values * array["scale"] if "scale" in array else values


@pytest.fixture(scope="module", params=["minilm", "smollm2"])
def pair(request):
    handle = request.getfixturevalue(request.param)
    return tuple(run_capture(handle, text) for text in PAIR)


@pytest.mark.real_model
def test_head_summary_has_a_role_and_cluster_per_head(pair):
    capture = pair[0]
    payload = insights.heads_payload("k", capture, insights.summary(capture))
    shape = (capture.n_layers, capture.n_heads)
    assert np.array(payload["roles"]).shape == shape and decode(payload["clusters"]).shape == shape
    assert decode(payload["metrics"]["entropy_norm"]).shape == shape
    assert set(np.unique(payload["roles"])) <= {
        "SINK",
        "SELF",
        "PREVIOUS",
        "NEXT",
        "BROAD",
        "DELIMITER",
        "MIXED",
        "OFFSET-4",
        "OFFSET-3",
        "OFFSET-2",
        "OFFSET+2",
        "OFFSET+3",
        "OFFSET+4",
    }
    assert payload["analysed_tokens"] == capture.n_tokens


@pytest.mark.real_model
def test_smollm2_has_previous_token_heads_and_a_first_token_sink(smollm2):
    """A known behaviour of small Llama models, as a check that the measures read real structure."""
    text = (
        "The quick brown fox jumps over the lazy dog. Meanwhile, the cat watched from the window, "
        "wondering why anyone would run so fast on a Sunday morning. Later that day it rained, and "
        "the fox, the dog and the cat all stayed inside, listening to the storm and waiting for the sun."
    )
    capture = run_capture(smollm2, text)
    payload = insights.heads_payload("k", capture, insights.summary(capture))
    roles = np.array(payload["roles"])
    assert (roles == "PREVIOUS").sum() >= 1 and (roles == "SINK").sum() >= 1
    assert 0 in payload["sinks"]


@pytest.mark.real_model
def test_rollout_rows_are_distributions_and_match_the_papers_definition(pair):
    capture = pair[0]
    payload = insights.rollout_payload("k", capture, "mean", capture.n_tokens - 1)
    rows = decode(payload["rows"]).astype(np.float32)
    assert rows.shape == (capture.n_layers, capture.n_tokens)
    np.testing.assert_allclose(rows.sum(-1), 1.0, atol=5e-3)
    # Abnar & Zuidema 2020, written out here rather than read from app.analysis.rollout: heads
    # averaged, A_hat = 0.5 A + 0.5 I with rows renormalised, then the product over layers.
    expected = np.eye(capture.n_tokens)
    for layer in range(capture.n_layers):
        adjusted = 0.5 * capture.layer_attention(layer).astype(np.float64).mean(axis=0) + 0.5 * np.eye(capture.n_tokens)
        expected = (adjusted / adjusted.sum(axis=-1, keepdims=True)) @ expected
    np.testing.assert_allclose(rows[-1], expected[-1], atol=2e-3)


@pytest.mark.real_model
def test_flow_is_bounded_and_refused_when_too_large(pair):
    capture = pair[0]
    payload = insights.flow_payload("k", capture, "mean", capture.n_tokens - 1)
    flows, shares = decode(payload["flow"]), decode(payload["flow_share"])
    np.testing.assert_allclose(shares, flows / flows.sum(), rtol=1e-6)  # the authors' normalisation
    assert flows.shape == (capture.n_tokens,) and np.all((flows >= 0) & (flows <= 1 + 1e-6))
    long = run_capture_like(capture, 400)
    with pytest.raises(insights.AtlasError, match="flow"):
        insights.flow_payload("k", long, "mean", 0)


def run_capture_like(capture, n_tokens: int):
    """The same record with its token count faked upward, for the size check alone."""
    import copy

    clone = copy.copy(capture)
    clone.tokens = ["x"] * n_tokens
    return clone


@pytest.mark.real_model
def test_compare_finds_the_changed_pronoun(pair):
    payload = insights.compare_payload("a", pair[0], "b", pair[1])
    assert payload["same_length"] and len(payload["changed_tokens"]) == 1
    difference = decode(payload["difference"])
    assert difference.shape == (pair[0].n_layers, pair[0].n_heads) and difference.max() > 0
    assert np.all((difference >= 0) & (difference <= 1))
