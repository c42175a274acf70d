"""The two building blocks the results cache and the memo of derived results share: one
computation per key at a time, and a least-recently-used map bounded by bytes."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Generic, TypeVar

from app.limits import turn_given_back

Value = TypeVar("Value")


class SingleFlight(Generic[Value]):
    """Concurrent callers of one key share one ``compute``; a failure is not kept and reaches
    every waiter (the next caller computes again)."""

    def __init__(self):
        self._calls: dict[str, Future] = {}
        self._lock = threading.Lock()

    def __contains__(self, key: str) -> bool:
        with self._lock:
            return key in self._calls

    def run(self, key: str, compute: Callable[[], Value]) -> tuple[Value, bool]:
        """(value, whether this caller computed it)."""
        with self._lock:
            future = self._calls.get(key)
            leader = future is None
            if leader:
                future = self._calls[key] = Future()
        if not leader:
            with turn_given_back():  # the leader may take seconds (a forward pass)
                return future.result(), False
        try:
            value = compute()
            future.set_result(value)
            return value, True
        except BaseException as error:
            future.set_exception(error)
            raise
        finally:
            with self._lock:
                self._calls.pop(key, None)


class SizedLRU(Generic[Value]):
    """Values with a size in bytes taken once, when added (so eviction subtracts exactly what was
    added), least recently used first out past ``max_bytes``; the newest always stays. Not locked:
    its owner holds its own lock around every call."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[str, tuple[Value, int]] = OrderedDict()

    def get(self, key: str) -> Value | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: str, value: Value, size: int) -> None:
        self.pop(key)
        self._entries[key] = (value, size)
        self.nbytes += size
        while self.nbytes > self.max_bytes and len(self._entries) > 1:
            self.nbytes -= self._entries.popitem(last=False)[1][1]

    def pop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.nbytes -= entry[1]

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        """Keys, least recently used first."""
        return iter(list(self._entries))
