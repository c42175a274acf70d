"""Per-prompt result cache: content-addressed keys, a bytes-bounded memory LRU over a store.

A repeated or shared prompt costs one lookup. The store is a local :class:`DiskStore` or, with
several server processes, :class:`app.redis_store.RedisStore`; both keep checksummed blobs
(:func:`pack`), so a torn or corrupted entry is detected, deleted and recomputed instead of
served. Disk entries survive restarts and are written atomically (temp file + rename).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import io
import json
import logging
import os
import tempfile
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from app import limits
from app.bounded import SingleFlight, SizedLRU
from models.record import FORMAT_VERSION, Capture

log = logging.getLogger(__name__)

MAGIC = b"ATLAS01\n"  # 8 bytes at the start of every disk entry
DIGEST_BYTES = 32  # sha256 of the payload, stored right after MAGIC
TEMP_PREFIX = ".tmp-"  # unfinished writes: .tmp-PID-random beside their target
WRITE_QUEUE_MIN_BYTES = 512 << 20  # bytes the background write queue may always hold (one large capture)
WRITE_HOLD_SECONDS = 0.25  # the longest an entry's write waits for answers on their way (CaptureCache.answering)


def cache_key(model: str, fingerprint: str, text: str, options: dict | None = None) -> str:
    """Content address of one analysis: model + weights, exact prompt, options, format version."""
    material = json.dumps(
        {"model": model, "weights": fingerprint, "text": text, "options": options or {}, "format": FORMAT_VERSION},
        sort_keys=True,
        ensure_ascii=False,
    )
    return hashlib.sha256(material.encode()).hexdigest()


def is_key(value: object) -> bool:
    """True for strings shaped like a cache key; anything else never reaches the filesystem."""
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


class Store(Protocol):
    """Where entries live beyond this process's memory: :class:`DiskStore` or ``RedisStore``."""

    def read(self, key: str) -> dict[str, np.ndarray] | None: ...

    def write(self, key: str, arrays: dict[str, np.ndarray]) -> bool: ...


def pack(arrays: dict[str, np.ndarray]) -> bytes:
    """One stored entry: MAGIC, sha256 of the payload, the payload (an uncompressed .npz)."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    return MAGIC + hashlib.sha256(payload).digest() + payload


class _Hashing:
    """A write-only stream that hashes what passes through it to ``out``. Having no seek or
    tell, it makes zipfile write the .npz as a stream (data descriptors, offsets counted from
    its first byte), so the archive reads back the same from the payload alone."""

    def __init__(self, out):
        self.out, self.digest = out, hashlib.sha256()

    def write(self, data) -> int:
        self.digest.update(data)
        return self.out.write(data)

    def flush(self) -> None:
        self.out.flush()

    def read(self, *_):  # numpy takes an object with read() for a file object; zipfile never reads in "w"
        raise io.UnsupportedOperation("write-only")


def write_packed(out, arrays: dict[str, np.ndarray]) -> None:
    """What :func:`pack` returns, written to the seekable file ``out`` without holding it in
    memory: the payload streams through the hash, then the digest goes in its place. pack's
    buffers held the record three times over (a 4096-token SmolLM2 record is 425 MB)."""
    start = out.tell()
    out.write(MAGIC + bytes(DIGEST_BYTES))
    stream = _Hashing(out)
    np.savez(stream, **arrays)
    end = out.tell()
    out.seek(start + len(MAGIC))
    out.write(stream.digest.digest())
    out.seek(end)


def unpack(blob: bytes) -> dict[str, np.ndarray] | None:
    """The arrays of a stored entry, or None when it is torn or corrupt (checksum mismatch)."""
    header, digest = blob[: len(MAGIC)], blob[len(MAGIC) : len(MAGIC) + DIGEST_BYTES]
    payload = blob[len(MAGIC) + DIGEST_BYTES :]
    if header != MAGIC or hashlib.sha256(payload).digest() != digest:
        return None
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


class DiskStore:
    """One file per entry under ``root``, pruned oldest-first past ``max_bytes``.

    A write goes to ``.tmp-PID-*`` beside its target, is fsynced, then renamed over it, so a
    reader sees the old entry, the new one or none, never a torn file, even when the writer is
    killed. Temp files left by dead writers are removed when a store opens.
    """

    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self.remove_leftovers()

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
        arrays = unpack(blob)
        if arrays is None:
            log.warning("cache entry %s is corrupt; removing it", key)
            path.unlink(missing_ok=True)
            return None
        with contextlib.suppress(FileNotFoundError):  # pruned meanwhile by another process
            os.utime(path)  # recency for pruning
        return arrays

    def write(self, key: str, arrays: dict[str, np.ndarray]) -> bool:
        """Store atomically; False (logged) when the disk refuses, so a full disk costs the
        cache entry, not the user's answer."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMP_PREFIX}{os.getpid()}-")
        except OSError as error:
            log.warning("could not store cache entry %s: %s", key, error)
            return False
        try:
            with os.fdopen(handle, "wb") as out:
                write_packed(out, arrays)
                out.flush()
                os.fsync(out.fileno())
            os.replace(temp, path)
            _fsync_dir(path.parent)
        except OSError as error:
            Path(temp).unlink(missing_ok=True)
            log.warning("could not store cache entry %s: %s", key, error)
            return False
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
        self.prune()
        return True

    def prune(self) -> None:
        entries = []
        for path in self.root.glob("*/*.atlas"):
            with contextlib.suppress(FileNotFoundError):  # another process pruned it first
                stat = path.stat()
                entries.append((stat.st_mtime, stat.st_size, path))
        entries.sort()
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self.max_bytes:
                break
            total -= size
            path.unlink(missing_ok=True)

    def remove_leftovers(self) -> int:
        """Delete temp files whose writer is gone (killed mid-write); returns how many."""
        removed = 0
        for temp in self.root.glob(f"*/{TEMP_PREFIX}*"):
            if not _writer_alive(temp.name):
                temp.unlink(missing_ok=True)
                removed += 1
        if removed:
            log.info("removed %d unfinished cache writes", removed)
        return removed


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable across a power cut, not only a killed process."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some filesystems cannot fsync a directory
            os.fsync(handle)
    finally:
        os.close(handle)


def _writer_alive(temp_name: str) -> bool:
    """Whether the process named in ``.tmp-PID-...`` is still running (then it may be writing)."""
    pid = temp_name[len(TEMP_PREFIX) :].partition("-")[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


class CaptureCache:
    """Memory LRU bounded by bytes, backed by a :class:`Store`, with single-flight compute.

    Two requests for the same key while it is being computed share one computation; a failed
    computation is not cached and its error reaches every waiter.

    A new entry is served from memory at once and written to the store by one background thread
    (packing, checksumming and fsyncing a large entry takes up to a second, which the user should
    not wait for). Until written it stays readable here even if the LRU evicts it; a process that
    dies before the write finishes loses the entry (it is recomputed), never corrupts it.
    :meth:`flush` waits for pending writes; it runs at interpreter exit. When the queue is
    empty the writer hands the freed C heap back to the kernel (:func:`return_freed_memory`).
    While an answer is on its way (:meth:`answering`) the writer waits, at most
    ``WRITE_HOLD_SECONDS`` an entry: it starts with the entry the answer just put.
    """

    def __init__(
        self,
        store: Store,
        max_bytes: int,
        uploads: Store | None = None,
        max_pending_bytes: int = 0,
        writer_nice: int = 0,
    ):
        self.store = store
        self.writer_nice = writer_nice  # the writer's priority below the process's (app.limits.lower_priority)
        self.uploads = uploads or store  # captures made elsewhere: their own budget, written before use
        self.max_bytes = max_bytes
        self.max_pending_bytes = max_pending_bytes or max(max_bytes, WRITE_QUEUE_MIN_BYTES)
        self._memory: SizedLRU[Capture] = SizedLRU(max_bytes)
        self._lock = threading.Lock()
        self._flights: SingleFlight[Capture] = SingleFlight()
        # key -> (capture or None for a derived result, its arrays), to be written to the store, oldest first
        self._pending: OrderedDict[str, tuple[Capture | None, dict[str, np.ndarray]]] = OrderedDict()
        self._pending_bytes = 0  # at most max_pending_bytes: past it the oldest write is dropped
        self._written = threading.Condition(self._lock)  # notified when _pending empties
        self._answers = 0  # answers on their way (answering)
        self._answered = threading.Condition(self._lock)  # notified when _answers drops to 0
        self._writer: threading.Thread | None = None
        _OPEN_CACHES.add(self)

    def get(self, key: str) -> Capture | None:
        with self._lock:
            found = self._memory.get(key)
            if found is not None:
                return found
            pending = self._pending.get(key)
        if pending is not None and pending[0] is not None:
            self._remember(key, pending[0])
            return pending[0]
        arrays = self.store.read(key)
        if arrays is None and self.uploads is not self.store:
            arrays = self.uploads.read(key)
        if arrays is None:
            return None
        capture = Capture.from_arrays(arrays)
        self._remember(key, capture)
        return capture

    def put(self, key: str, capture: Capture) -> None:
        """Serve ``capture`` from memory now; write it to the store in the background."""
        self._remember(key, capture)
        self.write_later(key, capture.to_arrays(), capture)

    def put_upload(self, key: str, capture: Capture) -> None:
        """Keep a capture made elsewhere: written to the uploads store before this returns (it
        cannot be recomputed, so its link must not be handed out before it is on disk), in a
        budget of its own so uploads never evict analyses or the gallery. Raises OSError when
        the store refuses it."""
        if not self.uploads.write(key, capture.to_arrays()):
            raise OSError("the server could not store the upload")
        self._remember(key, capture)

    def write_later(self, key: str, arrays: dict[str, np.ndarray], capture: Capture | None = None) -> None:
        """Queue ``arrays`` for the store (a capture's, or a result derived from one: app.memo);
        until written they are readable here (:meth:`read_arrays`, and :meth:`get` for a capture).

        The queue holds at most ``max_pending_bytes`` (the memory budget, and at least
        ``WRITE_QUEUE_MIN_BYTES``): past it the oldest queued write is dropped (logged), which
        costs a recomputation later, never memory without bound."""
        with self._lock:
            if key in self._pending:
                self._pending_bytes -= _entry_bytes(self._pending.pop(key))
            self._pending[key] = (capture, arrays)
            self._pending_bytes += _entry_bytes(self._pending[key])
            while self._pending_bytes > self.max_pending_bytes and len(self._pending) > 1:
                dropped, entry = self._pending.popitem(last=False)
                self._pending_bytes -= _entry_bytes(entry)
                log.warning("cache write queue over %d bytes: dropped the write of %s", self.max_pending_bytes, dropped)
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_pending, name="cache-writer", daemon=True)
                self._writer.start()

    def read_arrays(self, key: str) -> dict[str, np.ndarray] | None:
        """Stored arrays by key, pending writes included."""
        with self._lock:
            pending = self._pending.get(key)
        return pending[1] if pending is not None else self.store.read(key)

    def make_room(self, nbytes: int) -> None:
        """Shrink memory to ``max_bytes - nbytes`` before work that needs ``nbytes`` (a long
        prompt's forward pass), so cached results and that work together stay within the
        budget. Drops least recently used entries already in the store; they reload from it."""
        with self._lock:
            stored = [key for key in self._memory if key not in self._pending]  # oldest first
            for key in stored:
                if self._memory.nbytes <= max(0, self.max_bytes - nbytes):
                    break
                self._memory.pop(key)

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Hold the writer back while the body sends an answer: the writer's packing and checksums
        share the cores and the interpreter with the sending thread, and a new entry's write
        started the moment its capture was put, just before its first view went out (a 128-token
        analysis: 3-8 ms to send its tokens and overview with the writer running, 3 ms without)."""
        with self._lock:
            self._answers += 1
        try:
            yield
        finally:
            with self._lock:
                self._answers -= 1
                if not self._answers:
                    self._answered.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every entry put so far is in the store; False if ``timeout`` s ran out."""
        with self._lock:
            return self._written.wait_for(lambda: not self._pending, timeout)

    def _write_pending(self) -> None:
        """The writer thread: store pending entries oldest first, then exit (a later put starts
        another). A failed write is logged and costs the entry, never the thread.

        It runs niced like model work: besides packing and fsyncing it computes what a capture
        deferred (models.record.Deferred: a CPU capture's output Grams) right after the answer,
        while the page draws it and other clients' answers wait for the same cores."""
        limits.lower_priority(self.writer_nice)
        while True:
            with self._lock:
                if self._pending:
                    self._answered.wait_for(lambda: not self._answers, WRITE_HOLD_SECONDS)
                if not self._pending:
                    self._writer = None
                    self._written.notify_all()
                    break
                key, entry = next(iter(self._pending.items()))
            try:
                self.store.write(key, entry[1])
            except Exception:
                log.exception("could not store cache entry %s", key)
            with self._lock:
                if self._pending.get(key) is entry:  # not put again meanwhile
                    del self._pending[key]
                    self._pending_bytes -= _entry_bytes(entry)
        return_freed_memory()  # after a capture and its write, both done with their buffers

    def _remember(self, key: str, capture: Capture) -> None:
        size = capture.nbytes
        with self._lock:
            self._memory.put(key, capture, size)

    def get_or_compute(self, key: str, compute: Callable[[], Capture]) -> tuple[Capture, bool]:
        """Return (capture, was_cached). Concurrent callers of one key share one ``compute``."""
        cached = self.get(key)
        if cached is not None:
            return cached, True

        def computed() -> Capture:
            capture = compute()
            self.put(key, capture)
            return capture

        capture, leader = self._flights.run(key, computed)
        return capture, not leader


def _entry_bytes(entry: tuple[Capture | None, dict[str, np.ndarray]]) -> int:
    return int(sum(array.nbytes for array in entry[1].values()))


def return_freed_memory() -> None:
    """Give the C heap's free pages back to the kernel (glibc ``malloc_trim``; nothing elsewhere).

    A capture frees hundreds of MB of medium-sized buffers that glibc keeps mapped for reuse:
    malloc_trim returned 0.4-0.8 GB of the server's RSS after each capture of 512-2048 tokens,
    which the next long prompt's peak would otherwise stack on. ctypes releases the GIL meanwhile.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


MMAP_THRESHOLD_BYTES = 8 * 1024 * 1024  # blocks this large come from (and go back to) the kernel
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def map_large_blocks() -> None:
    """Serve every allocation of 8 MiB or more straight from the kernel, so that freeing it
    returns it (glibc ``mallopt(M_MMAP_THRESHOLD)``; nothing elsewhere). glibc otherwise raises
    that threshold to 32 MiB after the first such block is freed, and then a long prompt's
    per-layer tensors (9 MB hidden states of SmolLM2 at 4096 tokens, freed between the ones a
    capture keeps) fragment the heap: one 4096-token capture peaked at 2.5 GB of RSS, 1.9 GB with
    this. Below 8 MiB (a 1024-token prompt's tensors) nothing changes, so nothing pays the page
    faults of fresh mappings. Called once by the entry points."""
    if _LIBC is not None:
        _LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def _glibc():
    """The C library when it is glibc (which has malloc_trim), else None (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL("libc.so.6") if os.confstr("CS_GNU_LIBC_VERSION") else None
    except (AttributeError, ValueError, OSError):  # no confstr, an unknown name, no such library
        return None


_LIBC = _glibc()
_OPEN_CACHES: weakref.WeakSet[CaptureCache] = weakref.WeakSet()  # flushed at interpreter exit


@atexit.register
def _flush_open_caches() -> None:
    """Finish the background writes of every live cache before the process ends (Ctrl-C on the
    development server, a gunicorn worker's graceful exit)."""
    for cache in list(_OPEN_CACHES):
        cache.flush()
