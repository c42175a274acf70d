"""Configuration objects. Values come from these defaults, then ATLAS_* environment variables
(``Flask.config.from_prefixed_env("ATLAS")``: ``ATLAS_MAX_CHARS=20000`` sets ``MAX_CHARS``,
values are parsed as JSON when they can be), then the ``test_config`` mapping of ``create_app``."""
from __future__ import annotations

import os
from pathlib import Path

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return str(Path(base) / "attention-atlas")


class Config:
    SECRET_KEY = None  # set ATLAS_SECRET_KEY; a random per-process key is used when unset
    CACHE_DIR = default_cache_dir()  # results, converted GGUF weights
    CACHE_MEMORY_BYTES = 1 * GIB  # bytes of captures kept in memory (LRU)
    CACHE_DISK_BYTES = 20 * GIB  # bytes of captures kept on disk (oldest pruned first)
    MODEL_FILES: list[str] = []  # extra registry TOML files
    EXTRA_MODELS: list[str] = []  # NAME=PATH_OR_HF_ID entries
    ALLOWED_MODELS: list[str] = []  # when non-empty, only these names are served
    PRELOAD_MODELS: list[str] = []  # loaded at start-up instead of on first use
    MAX_CHARS = 60_000  # characters per prompt
    MAX_TOKENS = 4096  # tokens per prompt, on top of each model's own limit
    MAX_MESSAGE_BYTES = 1 * MIB  # largest Socket.IO message accepted from a client
    CORS_ALLOWED_ORIGINS: list[str] | None = None  # None = same origin only
    DENSE_LAYER_MAX_TOKENS = 256  # above this a layer travels as top-k links per query
    LAYER_TOP_K = 16  # links per query token and head in top-k layer payloads
    MATRIX_TILE_MAX = 256  # cells per side of one matrix-view tile
