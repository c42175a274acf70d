"""Results derived from a stored analysis (head summary, rollout, flow, a logit-lens window, a
generated text), computed once per (analysis key, name) and kept like the analyses themselves.

The memo belongs to the service, not to the record: a :class:`models.record.Capture` stays what
the model produced, so its size never changes after it is cached, and two threads that derive
different results from one record never write into the same object. Entries are dicts of numpy
arrays; :func:`pack_payload` turns a view payload (nested dicts with binary arrays) into one.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from app.bounded import SingleFlight, SizedLRU

Arrays = dict[str, np.ndarray]
BLOB = "$blob"  # marks where a bytes value of a packed payload was taken out


class Backing(Protocol):
    """Where entries go beyond this process's memory (the results cache's store)."""

    def read_arrays(self, key: str) -> Arrays | None: ...

    def write_later(self, key: str, arrays: Arrays) -> None: ...


def memo_key(key: str, name: str) -> str:
    """The store key of one derived result: a content address, like the analysis key itself."""
    return hashlib.sha256(f"{key}\x00{name}".encode()).hexdigest()


def entry_bytes(arrays: Arrays) -> int:
    return int(sum(value.nbytes for value in arrays.values()))


class Memo:
    """Thread-safe, single-flight, bytes-bounded LRU of derived results over a store.

    Two requests for the same (key, name) share one computation; a failed computation is not
    kept and its error reaches every waiter. Each entry's size is taken once, when it is added,
    so the byte count cannot drift. New entries are written to the store in the background and
    are found there by every process and after a restart.
    """

    def __init__(self, backing: Backing, max_bytes: int):
        self.backing = backing
        self.max_bytes = max_bytes
        self._memory: SizedLRU[Arrays] = SizedLRU(max_bytes)  # by store key
        self._flights: SingleFlight[Arrays] = SingleFlight()
        self._lock = threading.Lock()

    def get(self, key: str, name: str) -> Arrays | None:
        """The stored result, from memory or the store, or None."""
        stored = memo_key(key, name)
        with self._lock:
            found = self._memory.get(stored)
        if found is not None:
            return found
        arrays = self.backing.read_arrays(stored)
        if arrays is not None:
            self._remember(stored, arrays)
        return arrays

    def get_or_compute(self, key: str, name: str, compute: Callable[[], Arrays]) -> Arrays:
        """The result of ``compute()`` for (key, name), computed at most once at a time."""
        found = self.get(key, name)
        if found is not None:
            return found
        stored = memo_key(key, name)

        def computed() -> Arrays:
            arrays = {field: np.asarray(value) for field, value in compute().items()}
            self._remember(stored, arrays)
            self.backing.write_later(stored, arrays)
            return arrays

        return self._flights.run(stored, computed)[0]

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._memory.nbytes

    def _remember(self, stored: str, arrays: Arrays) -> None:
        with self._lock:
            self._memory.put(stored, arrays, entry_bytes(arrays))


def pack_payload(payload: dict) -> Arrays:
    """A view payload as arrays: its binary values as uint8 arrays, the rest as one JSON document."""
    blobs: list[np.ndarray] = []

    def take(value: Any) -> Any:
        if isinstance(value, bytes):
            blobs.append(np.frombuffer(value, dtype=np.uint8))
            return {BLOB: len(blobs) - 1}
        if isinstance(value, dict):
            return {name: take(item) for name, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [take(item) for item in value]
        return value.item() if isinstance(value, np.generic) else value

    document = json.dumps(take(payload)).encode()
    return {"payload": np.frombuffer(document, dtype=np.uint8), **{f"blob{i}": blob for i, blob in enumerate(blobs)}}


def unpack_payload(arrays: Arrays) -> dict:
    """The payload :func:`pack_payload` packed."""

    def restore(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {BLOB}:
                return arrays[f"blob{value[BLOB]}"].tobytes()
            return {name: restore(item) for name, item in value.items()}
        if isinstance(value, list):
            return [restore(item) for item in value]
        return value

    return restore(json.loads(arrays["payload"].tobytes()))
