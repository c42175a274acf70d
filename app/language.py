"""Generation and the logit lens at the service level: validate, cache, run as model work.

A generation is cached as its resulting text (keyed by model, weights, prompt and sampling
settings), and that text is then analysed like any prompt: with causal attention, the capture of
prompt + continuation holds exactly the attention each new token had when it was generated.
"""
from __future__ import annotations

import numpy as np

from app.cache import cache_key
from app.protocol import AtlasError, encode_array
from app.record import Capture
from app.service import AtlasService, Progress, check_text

LENS_MAX_POSITIONS = 32  # positions per logit-lens request
LENS_PREFIX = "lens."  # capture.extras namespace for memoised lens windows


def generate(service: AtlasService, model: str | None, text: object, settings: dict,
             progress: Progress | None = None) -> str:
    """Prompt + continuation; the same request is answered from the cache."""
    from models.language import generate as run_generation

    text = check_text(text, service.config["MAX_CHARS"])
    limit = service.config["MAX_GENERATE_TOKENS"]
    if settings["max_new_tokens"] > limit:
        raise AtlasError("too_long", f"at most {limit} new tokens can be generated")
    name = service.model_name(model)
    options = {"generate": {k: settings[k] for k in ("max_new_tokens", "sample", "seed", "temperature")}}
    key = cache_key(name, service.registry.fingerprint(name), text, options)
    stored = service.cache.store.read(key)
    if stored is not None:
        return bytes(stored["text"]).decode()
    full = service.model_work(name, lambda handle: run_generation(handle, text, **options["generate"]), progress)
    service.cache.store.write(key, {"text": np.frombuffer(full.encode(), dtype=np.uint8)})
    return full


def first_generated_token(capture: Capture, prompt: str) -> int:
    """Index of the first token that starts at or after the end of the prompt."""
    starts = capture.spans[:, 0]
    after = np.flatnonzero((starts >= len(prompt)) & ~capture.special)
    return int(after[0]) if after.size else capture.n_tokens


def lens_payload(service: AtlasService, key: str, capture: Capture, start: int, count: int) -> dict:
    """Top-k predictions from every layer's residual stream at ``count`` positions from ``start``."""
    from models.language import logit_lens, token_texts

    count = min(count, LENS_MAX_POSITIONS, capture.n_tokens - start)
    if count <= 0:
        raise AtlasError("bad_request", f"'start' must be below {capture.n_tokens}")
    memo = f"{LENS_PREFIX}{start}.{count}"

    def work(handle) -> dict[int, str]:
        """One place in the model queue: the lens (unless memoised) and its words."""
        if memo + ".ids" not in capture.extras:
            lens = logit_lens(handle, capture.text, start, count)
            capture.extras[memo + ".ids"], capture.extras[memo + ".probs"] = lens["ids"], lens["probs"]
        return token_texts(handle, capture.extras[memo + ".ids"])

    words = service.model_work(capture.model, work)
    ids, probs = capture.extras[memo + ".ids"], capture.extras[memo + ".probs"]
    return {"key": key, "start": start, "count": count, "ids": encode_array(ids, "int32"),
            "probs": encode_array(probs, "float16"), "words": {str(k): v for k, v in words.items()}}
