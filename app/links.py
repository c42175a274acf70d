"""Short permalinks (``/s/<id>``) for long share links, kept on the server's own disk so they
resolve after a restart and the prompt is never sent to a third-party shortener."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

LINK_ID_CHARS = 10  # characters of the content hash used as the id (base-32 digits)
MAX_QUERY_CHARS = 200_000  # characters of one stored query string
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
    return urlencode(params)


class LinkStore:
    """One small file per link under ``root``; ids are content hashes, so a link made twice is one."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def create(self, query: str) -> str:
        normal = normalise_query(query)
        digest = hashlib.sha256(normal.encode()).digest()
        link_id = _base32(digest)[:LINK_ID_CHARS]
        path = self.root / link_id
        if not path.exists():
            handle, temp = tempfile.mkstemp(dir=self.root, prefix=".tmp-")
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                out.write(normal)
            os.replace(temp, path)
        return link_id

    def resolve(self, link_id: str) -> str | None:
        if not isinstance(link_id, str) or not LINK_ID.match(link_id):
            return None
        try:
            return (self.root / link_id).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None


def _base32(digest: bytes) -> str:
    import base64

    return base64.b32encode(digest).decode("ascii").lower().rstrip("=")
