"""The first view's payloads kept per analysis (app.firstview): the same as shaping them again,
shaped once per key, and bounded in bytes."""

from __future__ import annotations

import numpy as np

from app import shaping
from app.firstview import FirstViews, payload_bytes
from models.capture import run_capture


def test_kept_payloads_are_the_shaped_ones_and_shaped_once(minilm, monkeypatch):
    capture = run_capture(minilm, "The cat sat on the mat because it was tired.")
    views = FirstViews(2**20)
    tokens, overview = views.get("k1", capture)
    assert tokens == shaping.tokens_payload("k1", capture)
    assert overview["thumbnails"] == shaping.overview_payload("k1", capture)["thumbnails"]
    assert overview["sinks"] == shaping.overview_payload("k1", capture)["sinks"]
    shaped_again = []
    monkeypatch.setattr(shaping, "overview_payload", lambda *args: shaped_again.append(args))
    assert views.get("k1", capture)[1] is overview and not shaped_again


def test_the_oldest_payloads_go_past_the_byte_budget(minilm):
    capture = run_capture(minilm, "A short prompt.")
    one = payload_bytes(FirstViews(2**20).get("k", capture))
    views = FirstViews(int(2.5 * one))
    for key in ("a", "b", "c"):
        views.get(key, capture)
    assert [key in views for key in ("a", "b", "c")] == [False, True, True]


def test_payload_bytes_counts_strings_and_binary_values():
    payload = {"text": "abc", "array": {"data": np.zeros(5, np.uint8).tobytes(), "shape": [5]}, "n": 1}
    assert payload_bytes(payload) == 3 + 5 + 8 + 8
