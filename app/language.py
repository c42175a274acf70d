"""Generation and the logit lens at the service level: validate, cache, run as model work.

A generation is cached as its resulting text (keyed by model, weights, prompt and sampling
settings), and that text is then analysed like any prompt: with causal attention, the capture of
prompt + continuation holds exactly the attention each new token had when it was generated.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from app.cache import cache_key
from app.protocol import AtlasError, Field, encode_array
from app.service import AtlasService, Progress, check_text
from models.record import Capture

LENS_MAX_POSITIONS = 32  # positions per logit-lens request
GENERATION_FIELDS = {  # the sampling settings of a `generate` request (the page reads their bounds)
    "max_new_tokens": Field(int, False, 20, minimum=1),  # at most MAX_GENERATE_TOKENS (config)
    "sample": Field(bool, False, False),
    "seed": Field(int, False, 0, minimum=0, maximum=2**31 - 1),
    "temperature": Field(float, False, 1.0, minimum=0.05, maximum=5.0),
}


def generate(
    service: AtlasService,
    model: str | None,
    text: object,
    settings: dict,
    progress: Progress | None = None,
    on_token: Callable | None = None,
) -> str:
    """Prompt + continuation; the same request is answered from the memo (shared by every
    process through the store, like analyses). ``on_token`` (models.language.TokenDone) hears
    each new token when this request runs the model; what it raises stops the generation."""
    text = check_text(text, service.config["MAX_CHARS"])
    limit = service.config["MAX_GENERATE_TOKENS"]
    if settings["max_new_tokens"] > limit:
        raise AtlasError("too_long", f"at most {limit} new tokens can be generated")
    name = service.model_name(model)
    options = {"generate": {k: settings[k] for k in ("max_new_tokens", "sample", "seed", "temperature")}}
    key = cache_key(name, service.registry.fingerprint(name), text, options)

    def run() -> dict[str, np.ndarray]:
        full = service.model_work(name, lambda handle: _generate(handle, text, options["generate"], on_token), progress)
        return {"text": np.frombuffer(full.encode(), dtype=np.uint8)}

    return service.memo.get_or_compute(key, "text", run)["text"].tobytes().decode()


def first_generated_token(capture: Capture, prompt: str) -> int:
    """Index of the first token that starts at or after the end of the prompt."""
    starts = capture.spans[:, 0]
    after = np.flatnonzero((starts >= len(prompt)) & ~capture.special)
    return int(after[0]) if after.size else capture.n_tokens


def lens_payload(service: AtlasService, key: str, capture: Capture, start: int, count: int) -> dict:
    """Top-k predictions from every layer's residual stream at ``count`` positions from ``start``.

    The lens runs a forward pass over the prompt up to the window, so the server's token limit
    applies to that prefix whatever the record claims (an uploaded record may claim anything)."""
    count = min(count, LENS_MAX_POSITIONS, capture.n_tokens - start)
    if count <= 0:
        raise AtlasError("bad_request", f"'start' must be below {capture.n_tokens}")
    limit = service.token_limit(service.model_name(capture.model))
    if start + count > limit:
        raise AtlasError("too_long", f"the logit lens reads at most the first {limit:,} tokens on this server")

    def work(handle) -> tuple[dict[str, np.ndarray], dict[int, str]]:
        """One place in the model queue: the lens and its token texts."""
        from models.language import logit_lens, token_texts

        lens = logit_lens(handle, capture.text, start, count)
        return lens, token_texts(handle, lens["ids"])

    lens, words = service.model_work(capture.model, work)
    return {
        "key": key,
        "start": start,
        "count": count,
        "ids": encode_array(lens["ids"], "int32"),
        "probs": encode_array(lens["probs"], "float16"),
        "words": {str(k): v for k, v in words.items()},
    }


def _generate(handle, text: str, settings: dict, on_token: Callable | None) -> str:
    """Model work: imported here, after the loader has imported the model code (service.loader)."""
    from models.language import generate

    return generate(handle, text, **settings, on_token=on_token)


def probe_text(service: AtlasService, model: str | None, length: int, seed: int) -> str:
    """The seeded repeated random-word sequence for ``model`` (models.language), for the head
    detectors: needs the model's tokenizer, so it is model work."""
    from models.language import repeated_random_words  # after the loader imported the model code

    return service.model_work(service.model_name(model), lambda handle: repeated_random_words(handle, length, seed))
