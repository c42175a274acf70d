"""The result store shared by several server processes: checksummed blobs in Redis.

Same interface as :class:`app.cache.DiskStore` (``read``/``write``) and the same blob format
(:func:`app.cache.pack`), so a torn or corrupted value is detected and recomputed, never served.
Size stays bounded by Redis itself: every entry expires ``ttl_seconds`` after its last use, and
an operator sets ``maxmemory`` with an evicting ``maxmemory-policy`` (see README, Deployment).
A Redis that is down or full costs cache hits, never answers: reads miss, writes are skipped.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import numpy as np
import redis

from app.cache import is_key, pack, unpack

log = logging.getLogger(__name__)

KEY_PREFIX = "atlas:result:"  # Redis key of an entry: prefix + the 64-hex cache key
CONNECT_TIMEOUT_SECONDS = 5
IO_TIMEOUT_SECONDS = 30  # a 256 MB value takes a while on a slow link
STATE_TIMEOUT_SECONDS = 2  # rooms and links are small: a Redis this slow is answered as down
EVICTING_POLICIES = (
    "allkeys-lru",
    "allkeys-lfu",
    "allkeys-random",
    "volatile-lru",
    "volatile-lfu",
    "volatile-random",
    "volatile-ttl",
)


class RedisStore:
    """Entries under ``atlas:result:<key>`` with a sliding expiry."""

    def __init__(self, url: str, ttl_seconds: int, max_entry_bytes: int):
        self.url = url
        self.ttl_seconds = int(ttl_seconds)
        self.max_entry_bytes = max_entry_bytes
        self.client = connect(url, IO_TIMEOUT_SECONDS)

    def check(self) -> None:
        """Fail at start-up, with the address, when Redis cannot be reached; warn when it has
        no memory bound (entries then only leave by expiry)."""
        try:
            self.client.ping()
        except redis.RedisError as error:
            raise RuntimeError(
                f"cannot reach Redis at {redact(self.url)}: {error}; start it or fix ATLAS_REDIS_URL"
            ) from error
        try:
            settings = self.client.config_get("maxmemory*")
        except redis.RedisError:  # managed services often refuse CONFIG; their defaults evict
            return
        if int(settings.get("maxmemory", 0) or 0) == 0 or settings.get("maxmemory-policy") not in EVICTING_POLICIES:
            log.warning(
                "Redis at %s has maxmemory=%s, maxmemory-policy=%s: cached results leave only by their "
                "%d s expiry; set maxmemory and maxmemory-policy allkeys-lru to bound its size",
                redact(self.url),
                settings.get("maxmemory"),
                settings.get("maxmemory-policy"),
                self.ttl_seconds,
            )

    def _name(self, key: str) -> str:
        if not is_key(key):
            raise ValueError("not a cache key")
        return KEY_PREFIX + key

    def read(self, key: str) -> dict[str, np.ndarray] | None:
        """The stored arrays (their expiry restarts), or None when absent, corrupt or unreachable."""
        name = self._name(key)
        try:
            blob = self.client.getex(name, ex=self.ttl_seconds)
        except redis.RedisError as error:
            log.warning("Redis read of %s failed (%s); computing instead", key, error)
            return None
        if blob is None:
            return None
        arrays = unpack(blob)
        if arrays is None:
            log.warning("shared cache entry %s is corrupt; removing it", key)
            self._delete(name)
        return arrays

    def write(self, key: str, arrays: dict[str, np.ndarray]) -> bool:
        """Store one entry whole (a single SET: readers never see part of it); False when it is
        too large to share or Redis refuses (out of memory, unreachable)."""
        name = self._name(key)
        blob = pack(arrays)
        if len(blob) > self.max_entry_bytes:
            log.info("result %s is %d bytes, above REDIS_MAX_ENTRY_BYTES; kept in this process only", key, len(blob))
            return False
        try:
            self.client.set(name, blob, ex=self.ttl_seconds)
        except redis.RedisError as error:
            log.warning("Redis write of %s failed: %s", key, error)
            return False
        return True

    def _delete(self, name: str) -> None:
        with contextlib.suppress(redis.RedisError):
            self.client.delete(name)


def connect(url: str, io_timeout: float = STATE_TIMEOUT_SECONDS) -> redis.Redis:
    """A client (a pool of connections, reconnecting after a Redis restart) with bounded waits."""
    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS, socket_timeout=io_timeout)


def redact(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{'***@' if at else ''}{host}"


@contextlib.contextmanager
def renewing(renew, every: float) -> Iterator[None]:
    """Call ``renew`` every ``every`` seconds in a thread while the block runs (a lease, a
    claim): a Redis error is logged and the next call tries again."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every):
            try:
                renew()
            except (redis.RedisError, redis.exceptions.LockError) as error:
                log.warning("could not renew a lease: %s", error)

    thread = threading.Thread(target=loop, name="lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
