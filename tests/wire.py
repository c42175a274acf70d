"""Read payloads the way the browser does (static/js/protocol.js), in either form: Socket.IO
(array data as bytes) or the HTTP API (base64 strings)."""

from __future__ import annotations

import base64

import numpy as np


def decode_array(array: dict) -> np.ndarray:
    """A wire array {dtype, shape, data} -> numpy array."""
    data = array["data"]
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return np.frombuffer(raw, dtype=np.dtype(array["dtype"]).newbyteorder("<")).reshape(array["shape"])


def decode_strings(strings: dict) -> list[str]:
    """{joined, lengths (UTF-16 code units)} -> the list of strings."""
    utf16 = strings["joined"].encode("utf-16-le")
    bounds = np.concatenate([[0], np.cumsum(decode_array(strings["lengths"]), dtype=np.int64)]) * 2
    return [utf16[start:end].decode("utf-16-le") for start, end in zip(bounds[:-1], bounds[1:])]
