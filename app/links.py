"""Short permalinks (``/s/<id>``) for long share links, kept on the server's own disk so they
resolve after a restart and the prompt is never sent to a third-party shortener."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
import threading
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

import redis

log = logging.getLogger(__name__)

LINK_ID_CHARS = 10  # characters of the content hash used as the id (base-32 digits)
MAX_QUERY_CHARS = 200_000  # characters of one query string as sent
MAX_LINK_BYTES = 256 * 1024  # bytes of one stored (re-encoded) link: a 60,000-character ASCII prompt fits
LINK_DISK_SHARE = 0.02  # share of CACHE_DISK_BYTES kept for links; the results store gets the rest
MAX_PARAMS = 40
PARAM_NAME = re.compile(r"^[a-z][a-z0-9_]{0,23}$")
LINK_ID = re.compile(rf"^[a-z2-7]{{{LINK_ID_CHARS}}}$")


class LinkError(ValueError):
    """A query string or link id that is not acceptable; the message says why."""


def normalise_query(query: str) -> str:
    """Re-encode a view-state query string, refusing anything that is not short plain fields."""
    if not isinstance(query, str) or len(query) > MAX_QUERY_CHARS:
        raise LinkError(f"a link holds at most {MAX_QUERY_CHARS:,} characters")
    try:
        params = parse_qsl(
            query.lstrip("?"), keep_blank_values=True, strict_parsing=bool(query.lstrip("?")), max_num_fields=MAX_PARAMS
        )
    except ValueError as error:
        raise LinkError(f"not a valid link query: {error}") from None
    if not params:
        raise LinkError("the link holds no view state")
    bad = [name for name, _ in params if not PARAM_NAME.match(name)]
    if bad:
        raise LinkError(f"unknown link fields: {', '.join(sorted(set(bad)))[:200]}")
    normal = urlencode(params)
    if len(normal) > MAX_LINK_BYTES:  # ASCII: characters are bytes
        raise LinkError(f"this view is too long for a short link ({len(normal):,} bytes; at most {MAX_LINK_BYTES:,})")
    return normal


def link_bytes(disk_bytes: int) -> int:
    """The links' part of the server's disk budget (``CACHE_DISK_BYTES``)."""
    return max(MAX_LINK_BYTES, int(disk_bytes * LINK_DISK_SHARE))


class LinkStore:
    """One small file per link under ``root``; ids are content hashes, so a link made twice is one.
    Past ``max_bytes`` the least recently made or opened links are removed (their part of the
    server's disk budget)."""

    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._bytes = sum(path.stat().st_size for path in self._links())

    def create(self, query: str) -> str:
        normal = normalise_query(query)
        digest = hashlib.sha256(normal.encode()).digest()
        link_id = _base32(digest)[:LINK_ID_CHARS]
        path = self.root / link_id
        with self._lock:
            if path.exists():
                os.utime(path)
                return link_id
            handle, temp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(normal)
            os.replace(temp, path)
            self._bytes += len(normal)
            if self._bytes > self.max_bytes:
                self._prune()
        return link_id

    def resolve(self, link_id: str) -> str | None:
        if not isinstance(link_id, str) or not LINK_ID.match(link_id):
            return None
        path = self.root / link_id
        try:
            query = path.read_text(encoding="utf-8")
            os.utime(path)  # recency for pruning
        except FileNotFoundError:
            return None
        return query

    def _links(self) -> list[Path]:
        return [path for path in self.root.iterdir() if LINK_ID.match(path.name)]

    def _prune(self) -> None:
        """Remove the least recently used links until the store is within its budget."""
        entries = []
        for path in self._links():
            with contextlib.suppress(FileNotFoundError):  # removed meanwhile by another process
                stat = path.stat()
                entries.append((stat.st_mtime, stat.st_size, path))
        entries.sort()
        self._bytes = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if self._bytes <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            self._bytes -= size


LINK_KEY = "atlas:link:"  # Redis key of a short link: prefix + its id


class SharedLinks:
    """Short links every process resolves: each is written to Redis (no expiry: a permalink) and
    to this process's disk store, which answers when Redis is down or lost the link, and puts it
    back. Ids are content hashes, so every process makes the same id for the same view."""

    def __init__(self, disk: LinkStore, client):
        self.disk, self.client = disk, client

    def create(self, query: str) -> str:
        link_id = self.disk.create(query)
        self._share(link_id, self.disk.resolve(link_id))
        return link_id

    def resolve(self, link_id: str) -> str | None:
        if not isinstance(link_id, str) or not LINK_ID.match(link_id):
            return None
        try:
            stored = self.client.get(LINK_KEY + link_id)
        except redis.RedisError as error:
            log.warning("Redis read of link %s failed (%s); trying this process's disk", link_id, error)
            return self.disk.resolve(link_id)
        if stored is not None:
            return stored.decode("utf-8")
        query = self.disk.resolve(link_id)
        self._share(link_id, query)
        return query

    def _share(self, link_id: str, query: str | None) -> None:
        if query is None:
            return
        try:
            self.client.set(LINK_KEY + link_id, query.encode("utf-8"))
        except redis.RedisError as error:  # resolved here from disk; others see it once Redis is back
            log.warning("Redis write of link %s failed: %s", link_id, error)


def _base32(digest: bytes) -> str:
    import base64

    return base64.b32encode(digest).decode("ascii").lower().rstrip("=")
