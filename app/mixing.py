"""The on-demand decompositions of the residual stream (:mod:`models.residual`): context mixing
(Kobayashi et al. 2021) and the feed-forward maps (Kobayashi et al. 2023) here, information-flow
routes in :mod:`app.information_flow`. Each runs one forward pass in the model queue; context
mixing keeps every layer's maps in the service's memo, so each further layer costs nothing."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from app.analysis.mixing import mixing_ratio
from app.protocol import AtlasError, encode_array
from models.record import Capture

MAPS = ("weights", "attn", "attn_res", "attn_res_ln")  # mirrors models.mixing.MAPS (which imports torch)
FF_MAPS = ("before", "ff", "after")  # mirrors models.feedforward.FF_MAPS


def decomposable(call, fields: dict, what: str) -> Capture:
    """The analysis ``fields['key']`` names, refused for encoder-decoders and a ``layer`` or
    ``token`` field beyond it (AtlasError)."""
    capture = call.service.lookup(fields["key"])
    if capture.info.get("segments"):
        raise AtlasError("unsupported_model", f"{what} reads encoder-only or decoder-only models")
    for name, limit in (("layer", capture.n_layers), ("token", capture.n_tokens)):
        if name in fields and fields[name] >= limit:
            raise AtlasError("bad_request", f"'{name}' must be between 0 and {limit - 1}")
    return capture


def run_on_model(service, capture: Capture, compute: Callable[..., dict], *args) -> dict[str, np.ndarray]:
    """``compute(handle, capture.text, *args)`` in the model queue; each ``compute`` imports its
    :mod:`models` module itself, after the loader imported the model code (no torch at start-up)."""
    result = service.model_work(capture.model, lambda handle: compute(handle, capture.text, *args))
    first = next(iter(result.values()))
    if first.shape[-1] != capture.n_tokens:
        raise AtlasError("bad_request", "this analysis needs the analysis's own model and tokenizer")
    return result


def _context_mixing(handle, text: str) -> dict:
    from models.mixing import context_mixing  # after the loader imported the model code

    return context_mixing(handle, text)


def _feed_forward_mixing(handle, text: str, layer: int) -> dict:
    from models.feedforward import feed_forward_mixing

    return feed_forward_mixing(handle, text, layer)


def mixing_arrays(service, capture: Capture) -> dict[str, np.ndarray]:
    """``maps`` [4, L, N, N], ``post_ln`` [L] and ``ratios`` [4, L] of one analysis (model work)."""
    result = run_on_model(service, capture, _context_mixing)
    return {**result, "ratios": mixing_ratio(result["maps"], bool(capture.info.get("causal")))}


def on_mixing(call, fields: dict) -> dict:
    """One layer's W, ATTN, ATTN+RES and ATTN+RES+LN maps and the ratios of every layer."""
    key, layer = fields["key"], fields["layer"]
    capture = decomposable(call, fields, "context mixing")
    arrays = call.service.memo.get_or_compute(key, "mixing", lambda: mixing_arrays(call.service, capture))
    return {
        "key": key,
        "layer": layer,
        "layers": capture.n_layers,
        "tokens": capture.n_tokens,
        "names": list(MAPS),
        "post_ln": bool(arrays["post_ln"][layer]),
        "maps": encode_array(arrays["maps"][:, layer], "float32"),  # [4, N, N]
        "ratios": encode_array(arrays["ratios"], "float32"),  # [4, L]
    }


def on_feedforward(call, fields: dict) -> dict:
    """One layer's feed-forward maps (Kobayashi et al. 2023): what the FF block reads, what it
    adds, and the stream after it, with the context-mixing ratio of each (a forward pass; the
    dispatcher memoises the answer per key and layer)."""
    key, layer = fields["key"], fields["layer"]
    capture = decomposable(call, fields, "the feed-forward analysis")
    result = run_on_model(call.service, capture, _feed_forward_mixing, layer)
    maps = result["maps"]  # [3, N, N]
    return {
        "key": key,
        "layer": layer,
        "tokens": capture.n_tokens,
        "names": list(FF_MAPS),
        "post_ln": bool(result["post_ln"]),
        "maps": encode_array(maps, "float32"),
        "ratios": encode_array(mixing_ratio(maps, bool(capture.info.get("causal"))), "float32"),  # [3]
    }
