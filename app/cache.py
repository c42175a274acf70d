"""Per-prompt result cache: content-addressed keys, a bytes-bounded memory LRU over a disk store.

A repeated or shared prompt costs one lookup. Disk entries survive restarts, are written
atomically (temp file + rename) and carry a checksum, so a torn or corrupted file is detected,
deleted and recomputed instead of served.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Callable

import numpy as np

from app.record import FORMAT_VERSION, Capture

log = logging.getLogger(__name__)

MAGIC = b"ATLAS01\n"  # 8 bytes at the start of every disk entry
DIGEST_BYTES = 32  # sha256 of the payload, stored right after MAGIC


def cache_key(model: str, fingerprint: str, text: str, options: dict | None = None) -> str:
    """Content address of one analysis: model + weights, exact prompt, options, format version."""
    material = json.dumps(
        {"model": model, "weights": fingerprint, "text": text, "options": options or {}, "format": FORMAT_VERSION},
        sort_keys=True, ensure_ascii=False,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def is_key(value: object) -> bool:
    """True for strings shaped like a cache key; anything else never reaches the filesystem."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class DiskStore:
    """One file per entry under ``root``, pruned oldest-first past ``max_bytes``."""

    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not is_key(key):
            raise ValueError("not a cache key")
        return self.root / key[:2] / f"{key}.atlas"

    def read(self, key: str) -> dict[str, np.ndarray] | None:
        """The stored arrays, or None when absent or corrupt (a corrupt file is removed)."""
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except FileNotFoundError:
            return None
        payload = blob[len(MAGIC) + DIGEST_BYTES:]
        header, digest = blob[: len(MAGIC)], blob[len(MAGIC): len(MAGIC) + DIGEST_BYTES]
        if header != MAGIC or hashlib.sha256(payload).digest() != digest:
            log.warning("cache entry %s is corrupt; removing it", key)
            path.unlink(missing_ok=True)
            return None
        os.utime(path)  # recency for pruning
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}

    def write(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        payload = buffer.getvalue()
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(MAGIC + hashlib.sha256(payload).digest() + payload)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        self.prune()

    def prune(self) -> None:
        entries = sorted(self.root.glob("*/*.atlas"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in entries)
        for path in entries:
            if total <= self.max_bytes:
                break
            total -= path.stat().st_size
            path.unlink(missing_ok=True)


class CaptureCache:
    """Memory LRU bounded by bytes, backed by a :class:`DiskStore`, with single-flight compute.

    Two requests for the same key while it is being computed share one computation; a failed
    computation is not cached and its error reaches every waiter.
    """

    def __init__(self, store: DiskStore, max_bytes: int):
        self.store = store
        self.max_bytes = max_bytes
        self._memory: OrderedDict[str, Capture] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._inflight: dict[str, Future] = {}

    def get(self, key: str) -> Capture | None:
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                return self._memory[key]
        arrays = self.store.read(key)
        if arrays is None:
            return None
        capture = Capture.from_arrays(arrays)
        self._remember(key, capture)
        return capture

    def put(self, key: str, capture: Capture) -> None:
        self.store.write(key, capture.to_arrays())
        self._remember(key, capture)

    def _remember(self, key: str, capture: Capture) -> None:
        with self._lock:
            if key in self._memory:
                self._bytes -= self._memory.pop(key).nbytes
            self._memory[key] = capture
            self._bytes += capture.nbytes
            while self._bytes > self.max_bytes and len(self._memory) > 1:
                _, evicted = self._memory.popitem(last=False)
                self._bytes -= evicted.nbytes

    def get_or_compute(self, key: str, compute: Callable[[], Capture]) -> tuple[Capture, bool]:
        """Return (capture, was_cached). Concurrent callers of one key share one ``compute``."""
        cached = self.get(key)
        if cached is not None:
            return cached, True
        with self._lock:
            future = self._inflight.get(key)
            leader = future is None
            if leader:
                future = self._inflight[key] = Future()
        if not leader:
            return future.result(), True
        try:
            capture = compute()
            self.put(key, capture)
            future.set_result(capture)
            return capture, False
        except BaseException as error:
            future.set_exception(error)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)
