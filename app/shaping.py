"""Capture -> view payloads. Pure numpy: the socket namespace and the HTTP API send these same
dicts (one binary, one base64), so every payload is shaped once, here."""

from __future__ import annotations

import numpy as np

from app.analysis import sinks
from app.protocol import NORM_MODES, AtlasError, encode_array, encode_strings, quantize_unit
from models.record import Capture

TOPK_ROW_CHUNK = 512  # query rows per block when picking top-k links; bounds memory at long N
NEURON_MAX_KEYS = 4096  # keys shown in the neuron view; all of them up to the longest prompt
TOKEN_MODES = ("attention", "norm")  # the token view's columns; "value" would need every row's total


def _check_index(name: str, value: int, limit: int) -> int:
    if not 0 <= value < limit:
        raise AtlasError("bad_request", f"'{name}' must be between 0 and {limit - 1}")
    return value


def tokens_payload(key: str, capture: Capture) -> dict:
    """The prompt as tokens. Every per-token field is binary or one joined string: this is sent
    on every analysis, cached ones too, and JSON lists of 4096 tokens cost more than the rest."""
    return {
        "key": key,
        "model": capture.model,
        "text": capture.text,
        "info": capture.info,
        "tokens": encode_strings(capture.tokens),
        "pieces": encode_strings(capture.pieces),
        "spans": encode_array(capture.spans, "int32"),  # [N, 2]
        "special": encode_array(capture.special, "uint8"),  # [N] 1 = added by the tokenizer
        "layer_names": capture.layer_names,
    }


def sink_tokens(capture: Capture) -> dict[str, np.ndarray]:
    """Attention sinks over the whole prompt, from the attention each token received per layer
    (summed at capture time, so this costs nothing at any length)."""
    return sinks.sink_tokens(capture.received, causal=bool(capture.info.get("causal")))


def scaled_thumbnails(thumbnails: np.ndarray) -> tuple[dict, dict]:
    """[..., t, t] thumbnails each scaled to its own maximum, so faint heads stay visible
    (uint8), and those maxima (float16)."""
    values = thumbnails.astype(np.float32)
    peaks = values.max(axis=(-2, -1))
    scaled = values / np.where(peaks > 0, peaks, 1.0)[..., None, None]
    return quantize_unit(scaled), encode_array(peaks, "float16")


def overview_payload(key: str, capture: Capture, streamed: bool = False) -> dict:
    """Every head as a thumbnail and the attention-sink tokens, so every view can badge them
    from the first paint. ``streamed``: the client already has every layer's thumbnails from
    ``overview_layer`` events, so they do not travel twice."""
    thumbnails, peaks = scaled_thumbnails(capture.thumbnails)  # [L, H, t, t], [L, H]
    return {
        "key": key,
        "layers": capture.n_layers,
        "heads": capture.n_heads,
        "side": int(capture.thumbnails.shape[-1]),
        "tokens": capture.n_tokens,
        "streamed": streamed,
        "thumbnails": None if streamed else thumbnails,
        "peaks": peaks,
        "sinks": np.flatnonzero(sink_tokens(capture)["is_sink"]).tolist(),
        "sink_rule": sinks.sink_rule(causal=bool(capture.info.get("causal"))),  # shown beside the badges
    }


def overview_layer_payload(layer: int, layers: int, thumbnails: np.ndarray) -> dict:
    """One layer's thumbnails [H, t, t] while the model is still running."""
    scaled, peaks = scaled_thumbnails(thumbnails)
    return {
        "layer": layer,
        "layers": layers,
        "heads": int(thumbnails.shape[0]),
        "side": int(thumbnails.shape[-1]),
        "thumbnails": scaled,
        "peaks": peaks,
    }


def norm_thumbnails_payload(key: str, capture: Capture, mode: str) -> dict:
    """The model view's thumbnails in a Kobayashi et al. (2020) mode: each head's
    ||alpha_ij f_h(x_j)|| (``norm``) or its row shares (``value``), max-pooled to the side of
    the capture's attention thumbnails over the same bins, then scaled like them (uint8 [L, H,
    t, t], each head to its own maximum, with those maxima). Recomputed from the record, one
    head at a time, so nothing [H, N, N] is held; the dispatcher memoises the answer."""
    if mode not in NORM_MODES:
        raise AtlasError("bad_request", f"norm-based thumbnails are {' or '.join(NORM_MODES)}")
    side = int(capture.thumbnails.shape[-1])
    pooled = np.stack(
        [
            np.stack([max_pool(_mode_matrix(capture, layer, head, mode), side) for head in range(capture.n_heads)])
            for layer in range(capture.n_layers)
        ]
    )  # [L, H, t, t]
    thumbnails, peaks = scaled_thumbnails(pooled)
    return {
        "key": key,
        "mode": mode,
        "layers": capture.n_layers,
        "heads": capture.n_heads,
        "side": side,
        "tokens": capture.n_tokens,
        "thumbnails": thumbnails,  # [L, H, t, t] uint8, each head / its peak
        "peaks": peaks,  # [L, H] float16: norm units (``norm``) or shares (``value``)
    }


def _mode_matrix(capture: Capture, layer: int, head: int, mode: str, rows=slice(None), cols=slice(None)):
    """[r, c] float32 of one head in the requested colouring."""
    if mode == "scores":
        return capture.scores_block(layer, head, rows, cols)
    block = capture.attention_block(layer, head, rows, cols)
    if mode in NORM_MODES:
        norms = capture.output_norms[layer, head]  # [N]
        weighted = block * norms[cols][None, :]  # ||alpha_ij f_h(x_j)||
        if mode == "norm":
            return weighted
        # shares of the whole row, also when the block is a zoomed part of it
        whole = cols == slice(None)
        total = weighted.sum(axis=1) if whole else capture.attention_block(layer, head, rows) @ norms  # [r]
        return np.divide(weighted, total[:, None], out=np.zeros_like(weighted), where=total[:, None] > 0)
    return block


def quantize_mode(values: np.ndarray, mode: str) -> dict:
    """uint8 colours of one mode's values: shares as they are; raw norms (``norm``, unbounded)
    divided by their peak, which the ``scale`` carries back (value = byte * scale)."""
    if mode != "norm":
        return quantize_unit(values)
    peak = float(values.max()) if values.size else 0.0
    peak = peak if peak > 0 else 1.0
    encoded = quantize_unit(values / peak)
    return {**encoded, "scale": encoded["scale"] * peak}


def layer_payload(key: str, capture: Capture, layer: int, mode: str, dense_max: int, top_k: int) -> dict:
    """All heads of one layer for the head view: dense up to ``dense_max`` tokens, else the
    ``top_k`` strongest keys per query (what the head view draws anyway)."""
    _check_index("layer", layer, capture.n_layers)
    if mode == "scores":
        raise AtlasError("bad_request", "the head view shows attention or norm-based attention, not scores")
    n, heads = capture.n_tokens, range(capture.n_heads)
    base = {"key": key, "layer": layer, "mode": mode, "tokens": n, "heads": capture.n_heads}
    if n <= dense_max:
        matrices = np.stack([_mode_matrix(capture, layer, head, mode) for head in heads])  # [H, N, N]
        return {**base, "format": "dense", "attention": quantize_mode(matrices, mode)}
    k = min(top_k, n)
    indices, values = _top_links(capture, layer, mode, k)  # [H, N, k] each
    index_type = "uint16" if n <= 65535 else "uint32"
    return {
        **base,
        "format": "topk",
        "k": k,
        "indices": encode_array(indices, index_type),
        "values": quantize_mode(values, mode),
    }


def _top_links(capture: Capture, layer: int, mode: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """[H, N, k] key indices and [H, N, k] float32 weights of the ``k`` strongest keys of every
    query in every head of one layer, in no particular order within a row.

    Done in torch (imported here, not at start-up, so serving cached results never waits for
    it): at 4096 tokens numpy's argpartition of rows that are mostly zeros took 0.6 s per
    512-row block, ``torch.topk`` 18 ms. Keys no query of a block may see (the future, in a
    causal model) are skipped, and plain attention picks its keys by score (softmax keeps each
    row's order), so only the k chosen weights are exponentiated.
    """
    import torch

    heads, n = capture.n_heads, capture.n_tokens
    indices = np.empty((heads, n, k), dtype=np.int64)
    values = np.empty((heads, n, k), dtype=np.float32)
    mask = capture.masks[capture.mask_index[layer]]  # [N, N] bool
    for start in range(0, n, TOPK_ROW_CHUNK):
        rows = slice(start, min(n, start + TOPK_ROW_CHUNK))
        visible = np.flatnonzero(mask[rows].any(axis=0))
        width = max(k, int(visible[-1]) + 1 if visible.size else 0)  # keys past this are masked in every row
        forbidden = torch.from_numpy(~mask[rows, :width])  # [r, width]
        for head in range(heads):
            chosen, weights = _top_in_rows(torch, capture, layer, head, mode, rows, forbidden, k)
            indices[head, rows], values[head, rows] = chosen.numpy(), weights.numpy()
    return indices, values


def _top_in_rows(torch, capture: Capture, layer: int, head: int, mode: str, rows: slice, forbidden, k: int):
    """``k`` strongest keys ([r, k] indices, [r, k] float32 weights) of some rows of one head,
    among the first ``forbidden.shape[1]`` keys: torch's version of :func:`_mode_matrix`
    (the same softmax(q.k * scaling + mask) through each row's log-sum-exp)."""
    width = forbidden.shape[1]

    def tensor(array: np.ndarray):
        return torch.from_numpy(np.array(array, dtype=np.float32))  # a writable float32 copy

    if capture.attention is not None:
        weights = tensor(capture.attention[layer, head, rows, :width])  # [r, width]
    else:
        scores = tensor(capture.queries[layer, head, rows]) @ tensor(capture.head_keys(layer, head)[:width]).T
        scores.mul_(float(capture.scaling[layer])).masked_fill_(forbidden, float("-inf"))  # [r, width]
        lse = tensor(capture.row_lse[layer, head, rows])[:, None]  # [r, 1]
        if mode == "attention":
            top = torch.topk(scores, k, dim=1, sorted=False)
            return top.indices, torch.exp(top.values - lse)
        weights = scores.sub_(lse).exp_()
    if mode in NORM_MODES:
        weights.mul_(tensor(capture.output_norms[layer, head, :width])[None, :])
        total = weights.sum(dim=1, keepdim=True)  # [r, 1]
        top = torch.topk(weights, k, dim=1, sorted=False)
        if mode == "norm":
            return top.indices, top.values
        return top.indices, torch.where(total > 0, top.values / total, torch.zeros_like(top.values))
    top = torch.topk(weights, k, dim=1, sorted=False)
    return top.indices, top.values


def matrix_payload(
    key: str,
    capture: Capture,
    layer: int,
    head: int,
    mode: str,
    row0: int,
    row1: int | None,
    col0: int,
    col1: int | None,
    tile_max: int,
) -> dict:
    """One head's matrix (or a zoomed block of it), max-pooled to at most ``tile_max`` per side."""
    _check_index("layer", layer, capture.n_layers)
    _check_index("head", head, capture.n_heads)
    n = capture.n_tokens
    row1, col1 = min(row1 if row1 is not None else n, n), min(col1 if col1 is not None else n, n)
    if row0 >= row1 or col0 >= col1:
        raise AtlasError("bad_request", "the requested block is empty")
    block = _mode_matrix(capture, layer, head, mode, slice(row0, row1), slice(col0, col1))
    pooled = max_pool(block, tile_max)
    base = {
        "key": key,
        "layer": layer,
        "head": head,
        "mode": mode,
        "row0": row0,
        "row1": row1,
        "col0": col0,
        "col1": col1,
    }
    if mode == "scores":
        return {**base, "matrix": encode_array(pooled, "float16")}
    return {**base, "matrix": quantize_mode(pooled, mode)}


def max_pool(matrix: np.ndarray, side: int) -> np.ndarray:
    """Pool a [r, c] matrix to at most ``side`` x ``side`` by taking each tile's maximum,
    so one strong link in a tile stays visible when zoomed out."""
    rows, cols = matrix.shape
    row_starts = np.linspace(0, rows, min(rows, side) + 1).astype(int)[:-1]
    col_starts = np.linspace(0, cols, min(cols, side) + 1).astype(int)[:-1]
    pooled = np.maximum.reduceat(matrix, row_starts, axis=0)
    return np.maximum.reduceat(pooled, col_starts, axis=1)


def token_payload(key: str, capture: Capture, index: int, mode: str = "attention") -> dict:
    """Where one token looks (its row) and what looks at it (its column), in every head, as
    attention or as raw ``norm`` ||alpha f(x)|| (row shares would need every row's total)."""
    _check_index("index", index, capture.n_tokens)
    if mode not in TOKEN_MODES:
        raise AtlasError("bad_request", f"the token view shows {' or '.join(TOKEN_MODES)}")
    row, col = slice(index, index + 1), slice(index, index + 1)
    heads = [(layer, head) for layer in range(capture.n_layers) for head in range(capture.n_heads)]
    shape = (capture.n_layers, capture.n_heads, capture.n_tokens)
    outgoing = np.stack([_mode_matrix(capture, layer, head, mode, rows=row)[0] for layer, head in heads])
    incoming = np.stack([_mode_matrix(capture, layer, head, mode, cols=col)[:, 0] for layer, head in heads])
    return {
        "key": key,
        "index": index,
        "mode": mode,
        "outgoing": quantize_mode(outgoing.reshape(shape), mode),  # [L, H, N]
        "incoming": quantize_mode(incoming.reshape(shape), mode),  # [L, H, N]
    }


def neuron_payload(key: str, capture: Capture, layer: int, head: int, query: int) -> dict:
    """BertViz's neuron view: q, each k, q*k elementwise, q.k, scaled + masked score, softmax."""
    _check_index("layer", layer, capture.n_layers)
    _check_index("head", head, capture.n_heads)
    _check_index("query", query, capture.n_tokens)
    q = capture.queries[layer, head, query].astype(np.float32)  # [d]
    keys = capture.head_keys(layer, head)[:NEURON_MAX_KEYS].astype(np.float32)  # [N, d]
    products = keys * q[None, :]
    cols = slice(0, keys.shape[0])
    row = slice(query, query + 1)
    return {
        "key": key,
        "layer": layer,
        "head": head,
        "query": query,
        "kv_head": int(capture.kv_map[head]),
        "scaling": float(capture.scaling[layer]),
        "query_vector": encode_array(q, "float32"),
        "keys": encode_array(keys, "float16"),
        "products": encode_array(products, "float16"),
        "dots": encode_array(products.sum(axis=1), "float32"),
        "scores": encode_array(capture.scores_block(layer, head, row, cols)[0], "float32"),
        "attention": encode_array(capture.attention_block(layer, head, row, cols)[0], "float32"),
    }
