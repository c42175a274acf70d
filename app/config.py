"""Configuration objects. Values come from these defaults, then ATLAS_* environment variables
(``Flask.config.from_prefixed_env("ATLAS")``: ``ATLAS_MAX_CHARS=20000`` sets ``MAX_CHARS``,
values are parsed as JSON when they can be), then the ``test_config`` mapping of ``create_app``."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return str(Path(base) / "attention-atlas")


class Config:
    SECRET_KEY = None  # set ATLAS_SECRET_KEY; a random per-process key is used when unset
    CACHE_DIR = default_cache_dir()  # results, converted GGUF weights
    CACHE_MEMORY_BYTES = 1 * GIB  # bytes of captures kept in memory (LRU)
    CACHE_DISK_BYTES = 20 * GIB  # bytes of captures and short links kept on disk (oldest pruned first)
    UPLOAD_DISK_BYTES = 4 * GIB  # bytes of uploaded captures on disk: a budget of their own, pruned oldest first
    MODEL_FILES: list[str] = []  # extra registry TOML files
    EXTRA_MODELS: list[str] = []  # NAME=PATH_OR_HF_ID entries
    ALLOWED_MODELS: list[str] = []  # when non-empty, only these names are served
    PRELOAD_MODELS: list[str] = []  # loaded at start-up instead of on first use
    PRECOMPUTE_GALLERY = False  # analyse the demo gallery into the cache at start-up (in the background)
    PRECOMPUTE_ATLAS: list[str] = []  # models whose global view of the built-in corpus is computed at start-up
    ANALYSED_TEXTS = 0  # prompts per model in the global view's "Analysed here" corpus: every user sees them, so off
    # (0) unless the operator turns it on (a class pooling its prompts, a server of your own: e.g. 500)
    MAX_CHARS = 60_000  # characters per prompt
    MAX_TOKENS = 4096  # tokens per prompt, on top of each model's own limit
    MODEL_MAX_TOKENS: dict[str, int] = {}  # tokens per prompt for named models, e.g. {"smollm2": 1024}
    MAX_GENERATE_TOKENS = 256  # new tokens per generation request
    MAX_MESSAGE_BYTES = 1 * MIB  # largest Socket.IO message or HTTP body accepted from a client
    MAX_QUEUED_JOBS = 64  # model jobs waiting per device; more are answered `busy` at once
    DEVICE_WORKERS = 1  # model jobs running at once per device
    MAX_QUEUE_WAIT_SECONDS = 300  # a job that waits longer for its turn is answered `busy`
    MAX_JOBS_PER_CLIENT = 2  # model requests and streams one client may have in progress at once
    CPU_WORKERS = 1  # analyses of stored results (summary, rollout, flow, exports) running at once
    MAX_QUEUED_CPU_JOBS = 32  # such analyses waiting; more are answered `busy` at once
    MAX_CPU_JOBS_PER_CLIENT = 4  # such analyses one client may have in progress at once
    MEMO_MEMORY_BYTES = 256 * MIB  # bytes of derived results (summaries, rollouts, lens windows) kept in memory
    RATE_ANALYZE_PER_MINUTE = 30  # analyze/generate requests per client per minute (0 = no limit)
    RATE_ANALYZE_BURST = 10  # analyze/generate requests a client may send back to back
    RATE_EVENTS_PER_SECOND = 40  # requests of any kind per client per second, burst of 2 s (0 = no limit)
    RATE_LINKS_PER_MINUTE = 20  # short links per client per minute, burst of 10 (0 = no limit)
    RATE_CONNECTS_PER_MINUTE = 6  # new sockets per person per minute, burst of 2; per address times
    # CLIENTS_PER_ADDRESS (0 = no limit)
    ADDRESS_EVENTS_PER_PERSON = 2.0  # an address's requests per second refill at this times CLIENTS_PER_ADDRESS
    # (0 = at a connection's RATE_EVENTS_PER_SECOND times CLIENTS_PER_ADDRESS)
    CLIENTS_PER_ADDRESS = 60  # people one address may stand for (a class behind one NAT): per-address limits
    # on sockets are the per-connection ones times this (docs/reliability.md)
    MAX_SOCKETS = 1100  # Socket.IO connections one process holds: each holds a thread, so the Procfile gives
    # gunicorn 150 threads more than this for pages and API calls
    MAX_SOCKETS_PER_ADDRESS = 120  # of those from one address (a class of 60 with two tabs each)
    REFUSALS_BEFORE_CLOSING = 20  # refused requests (rate limits, busy) a connection may have in a row...
    REFUSALS_PER_SECOND = 1.0  # ...plus this many a second; one more and the server closes it (0 = never)
    TURNS_PER_ADDRESS = 2  # requests of one address handled at once; the rest wait (0 = no limit)
    MAX_LAYERS = 128  # attention layers of an uploaded record
    MAX_HEADS = 128  # query heads per layer of an uploaded record
    MAX_MODEL_HEADS = 4096  # layers x heads of an uploaded record (the head summary grows with its square)
    MAX_HEAD_SIZE = 512  # dimensions of one head's queries and keys in an uploaded record
    CORS_ALLOWED_ORIGINS: list[str] | None = None  # None = same origin only
    PROXY_FIX_X_FOR = 0  # proxies in front that set X-Forwarded-For (rate limits need the user's address)
    REDIS_URL: str | None = None  # ATLAS_REDIS_URL or REDIS_URL: share sessions and results between processes
    MODEL_WORKERS = False  # model work runs on `python -m app worker` processes (needs REDIS_URL); this one loads none
    # Niceness model work adds to its threads (app.limits.ModelThreads), in one process or on a
    # model worker: short answers (cached analyses, details, pages) then take a core from a forward
    # pass at once instead of queueing behind its threads (docs/reliability.md). 0: no change.
    MODEL_NICE = 10
    REDIS_CACHE_TTL_SECONDS = 7 * 24 * 3600  # a shared result expires this long after its last use
    REDIS_MAX_ENTRY_BYTES = 256 * MIB  # larger results stay in the computing process's memory only
    CONTENT_SECURITY_POLICY = (
        "default-src 'self'; script-src 'self'; connect-src 'self'; "
        "img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'self'; form-action 'self'"
    )
    FRAME_ANCESTORS = ["http://localhost:*", "http://127.0.0.1:*"]  # origins that may frame the embeddable view
    # (`/?...&embed=1`, what notebook.show opens: Jupyter on any local port); every other page stays unframeable
    DENSE_LAYER_MAX_TOKENS = 256  # above this a layer travels as top-k links per query
    LAYER_TOP_K = 16  # links per query token and head in top-k layer payloads
    MATRIX_TILE_MAX = 256  # cells per side of one matrix-view tile
    JSON_EXPORT_MAX_TOKENS = 512  # tokens of the JSON export (above, its attention lists run to hundreds of MB)


JSON_BYTES_PER_CHAR = 6  # worst case for one prompt character in a JSON message (\u001f)
MESSAGE_OVERHEAD_BYTES = 4096  # the rest of an analyze message: event name, rid, model, layers
POSITIVE = (
    "MAX_CHARS",
    "MAX_TOKENS",
    "MAX_GENERATE_TOKENS",
    "MAX_MESSAGE_BYTES",
    "MAX_QUEUED_JOBS",
    "DEVICE_WORKERS",
    "MAX_QUEUE_WAIT_SECONDS",
    "MAX_JOBS_PER_CLIENT",
    "CPU_WORKERS",
    "MAX_QUEUED_CPU_JOBS",
    "MAX_CPU_JOBS_PER_CLIENT",
    "MEMO_MEMORY_BYTES",
    "JSON_EXPORT_MAX_TOKENS",
    "UPLOAD_DISK_BYTES",
    "CLIENTS_PER_ADDRESS",
    "MAX_SOCKETS",
    "MAX_SOCKETS_PER_ADDRESS",
    "REFUSALS_BEFORE_CLOSING",
    "MAX_LAYERS",
    "MAX_HEADS",
    "MAX_MODEL_HEADS",
    "MAX_HEAD_SIZE",
    "CACHE_MEMORY_BYTES",
    "CACHE_DISK_BYTES",
    "REDIS_CACHE_TTL_SECONDS",
    "REDIS_MAX_ENTRY_BYTES",
)
FRAME_SOURCE = re.compile(r"https?://[A-Za-z0-9.*\[\]:-]+(:(\d+|\*))?")  # a CSP host-source: no ';' or spaces
NON_NEGATIVE = (
    "ANALYSED_TEXTS",
    "MODEL_NICE",
    "RATE_ANALYZE_PER_MINUTE",
    "RATE_ANALYZE_BURST",
    "RATE_EVENTS_PER_SECOND",
    "RATE_LINKS_PER_MINUTE",
    "RATE_CONNECTS_PER_MINUTE",
    "PROXY_FIX_X_FOR",
    "TURNS_PER_ADDRESS",
    "REFUSALS_PER_SECOND",
    "ADDRESS_EVENTS_PER_PERSON",
)


def check(config: Mapping) -> None:
    """Refuse settings that would silently disable a limit (a typo in ATLAS_MAX_CHARS should
    stop the server at start, not let fifty novels through)."""
    for name in POSITIVE + NON_NEGATIVE:
        value, positive = config[name], name in POSITIVE
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or value < 0 or (positive and value == 0):
            kind = "a positive" if positive else "a non-negative"
            raise ValueError(f"{name} must be {kind} number, got {value!r} (check ATLAS_{name})")
    if config["MAX_MESSAGE_BYTES"] < JSON_BYTES_PER_CHAR * config["MAX_CHARS"] + MESSAGE_OVERHEAD_BYTES:
        raise ValueError(
            f"MAX_MESSAGE_BYTES ({config['MAX_MESSAGE_BYTES']}) is too small for prompts of MAX_CHARS "
            f"({config['MAX_CHARS']}) characters: a prompt within the limit would be dropped instead of "
            f"answered; allow {JSON_BYTES_PER_CHAR} bytes per character plus {MESSAGE_OVERHEAD_BYTES}"
        )
    if config["MODEL_WORKERS"] and not config["REDIS_URL"]:
        raise ValueError("MODEL_WORKERS needs REDIS_URL: the workers take their work from Redis (set ATLAS_REDIS_URL)")
    ancestors = config["FRAME_ANCESTORS"]
    if not isinstance(ancestors, list) or not all(isinstance(a, str) and FRAME_SOURCE.fullmatch(a) for a in ancestors):
        raise ValueError(
            f'FRAME_ANCESTORS must be a list of origins such as "https://hub.example.org" or '
            f'"http://localhost:*", e.g. ATLAS_FRAME_ANCESTORS=\'["http://localhost:*"]\'; got {ancestors!r}'
        )
    limits = config["MODEL_MAX_TOKENS"]
    if not isinstance(limits, dict) or not all(isinstance(v, int) and v > 0 for v in limits.values()):
        raise ValueError(
            f"MODEL_MAX_TOKENS must map model names to positive token counts, e.g. "
            f"ATLAS_MODEL_MAX_TOKENS='{{\"smollm2\": 1024}}'; got {limits!r}"
        )
