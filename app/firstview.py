"""The first view of recent analyses (their ``tokens`` and ``overview`` payloads), shaped once.

Every analysis sends both, cached repeats and shared links too, and shaping them again each time
(every head's thumbnail scaled and quantized, the sinks found, every token's string joined) took
1.7 ms of a 4096-token repeat's 3.6-5.4 ms. A capture never changes once cached, so its key
names its payloads for good; they are a few hundred KB, kept in a bounded LRU of their own.
"""

from __future__ import annotations

import threading
from typing import Any

from app import shaping
from app.bounded import SizedLRU
from models.record import Capture


class FirstViews:
    """Thread-safe LRU of (tokens payload, overview payload) by analysis key, at most
    ``max_bytes`` of their strings and binary arrays. Callers must not change what they get."""

    def __init__(self, max_bytes: int):
        self._shaped: SizedLRU[tuple[dict, dict]] = SizedLRU(max_bytes)
        self._lock = threading.Lock()

    def get(self, key: str, capture: Capture) -> tuple[dict, dict]:
        """The payloads of ``capture`` (the analysis ``key`` names), shaped now if not kept."""
        with self._lock:
            shaped = self._shaped.get(key)
        if shaped is None:
            shaped = (shaping.tokens_payload(key, capture), shaping.overview_payload(key, capture))
            with self._lock:
                self._shaped.put(key, shaped, payload_bytes(shaped))
        return shaped

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._shaped


def payload_bytes(payload: Any) -> int:
    """Bytes of the strings and binary values in ``payload`` (nested dicts, lists, tuples)."""
    if isinstance(payload, (bytes, str)):
        return len(payload)
    if isinstance(payload, dict):
        return sum(payload_bytes(value) for value in payload.values())
    if isinstance(payload, (list, tuple)):
        return sum(payload_bytes(value) for value in payload)
    return 8
