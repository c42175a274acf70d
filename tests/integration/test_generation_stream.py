"""Generation as the page sees it: each token arrives as the model chooses it, with the attention
row that chose it, and a cancelled generation stops the model work (issue 18, point 9)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from app.protocol import NAMESPACE
from tests.integration.test_events import collect, decode, request

pytestmark = pytest.mark.real_model
PROMPT = "The capital of France is"
QUIET_SECONDS = 1.5  # how long a cancelled generation must stay silent


def generate(socket_client, rid: int, max_new_tokens: int) -> None:
    fields = {"rid": rid, "model": "smollm2", "text": PROMPT, "max_new_tokens": max_new_tokens, "sample": False}
    socket_client.emit("generate", fields, namespace=NAMESPACE)


def test_each_token_streams_with_the_attention_row_that_chose_it(socket_client):
    generate(socket_client, 1, 5)
    events = collect(socket_client)
    steps = [e for e in events if e["name"] == "generated_token"]
    generated = next(e for e in events if e["name"] == "generated")
    assert [e["step"] for e in steps] == list(range(len(steps))) and 1 <= len(steps) <= 5
    assert all(e["total"] == 5 for e in steps)
    assert "".join(e["tokens"][-1] for e in steps) == generated["text"][len(PROMPT) :]
    # The final analysis of prompt + continuation, read independently: the attention of the token
    # before each new one (causal attention: the row it had when the model chose that token).
    for event in steps:
        rows = decode(event["attention"])  # [L, H, n]
        n = rows.shape[2]
        assert len(event["tokens"]) == n + 1
        outgoing = decode(request(socket_client, "token", key=generated["key"], index=n - 1)["outgoing"])
        np.testing.assert_allclose(rows, outgoing[:, :, :n], atol=2.5 / 255)
        np.testing.assert_allclose(rows.sum(axis=2), 1.0, atol=n * 1 / 255)


def test_cancel_stops_the_generation_and_frees_the_model(socket_client):
    generate(socket_client, 2, 256)  # MAX_GENERATE_TOKENS: over 20 s of model work on a CPU
    first = collect(socket_client, until=("generated_token",))
    assert first[-1]["rid"] == 2
    answer = request(socket_client, "cancel", request=2)
    assert answer["cancelled"] is True and answer["request"] == 2
    time.sleep(QUIET_SECONDS)
    late = [e for e in socket_client.get_received(NAMESPACE) if e["args"][0].get("rid") == 2]
    assert len(late) <= 1, [e["name"] for e in late]  # at most the token being sent when it was cancelled
    assert request(socket_client, "cancel", request=2)["cancelled"] is False  # it has ended
    started = time.monotonic()
    socket_client.emit("analyze", {"rid": 3, "model": "smollm2", "text": "A short one."}, namespace=NAMESPACE)
    assert collect(socket_client)[-1]["name"] == "done"
    assert time.monotonic() - started < 10  # not behind the rest of the generation
