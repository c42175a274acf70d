"""Capture -> view payloads. Pure numpy: the socket namespace and the HTTP API send these same
dicts (one binary, one base64), so every payload is shaped once, here."""

from __future__ import annotations

import numpy as np

from app.analysis import norms, sinks
from app.protocol import (
    HEAD_NORM_MODES,
    LAYER_NORM_MODES,
    NORM_MODES,
    RAW_MODES,
    AtlasError,
    encode_array,
    encode_strings,
    quantize_unit,
)
from models.record import Capture

TOPK_ROW_CHUNK = 512  # query rows per block when picking top-k links; bounds memory at long N
NEURON_MAX_KEYS = 4096  # keys shown in the neuron view; all of them up to the longest prompt
TOKEN_MODES = ("attention", "norm", "layer")  # the token view's columns; shares would need every row's total
LAYER_BLOCK_BYTES = 64 * 2**20  # bytes of the [H, r, c] float32 weights a layer-level map holds at a time


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
    ||alpha_ij f_h(x_j)|| (``norm``) or its row shares (``value``), or one map per layer of
    ||sum_h alpha^h_ij f_h(x_j)|| (``layer``, ``layer_share``: ``heads`` is then 1), max-pooled to
    the side of the capture's attention thumbnails over the same bins, then scaled like them
    (uint8 [L, H or 1, t, t], each map to its own maximum, with those maxima). Recomputed from the
    record a head (or a block of rows) at a time, so nothing [H, N, N] is held; the dispatcher
    memoises the answer."""
    if mode not in NORM_MODES:
        raise AtlasError("bad_request", f"norm-based thumbnails are {', '.join(NORM_MODES)}")
    if mode in LAYER_NORM_MODES and capture.output_grams is None:
        layer_map(capture, 0, slice(0, 1), slice(0, 1))  # raises the record's "analyse again" error
    side = int(capture.thumbnails.shape[-1])
    maps = _maps_per_layer(capture, mode)
    pooled = _pooled_norm_maps(capture, mode, side)  # [L, maps, t, t]
    thumbnails, peaks = scaled_thumbnails(pooled)
    return {
        "key": key,
        "mode": mode,
        "layers": capture.n_layers,
        "heads": maps,
        "side": side,
        "tokens": capture.n_tokens,
        "thumbnails": thumbnails,  # [L, H or 1, t, t] uint8, each map / its peak
        "peaks": peaks,  # [L, H or 1] float16: norm units (``norm``, ``layer``) or shares
    }


def _pooled_norm_maps(capture: Capture, mode: str, side: int) -> np.ndarray:
    """[L, H or 1, t, t] float32 maps of a norm mode max-pooled over the attention thumbnails'
    bins, in torch through the capture's own row blocks (models.blocks): all heads at once, only
    the keys each block's rows may see. Numpy, head by head over whole matrices, took minutes at
    4096 tokens."""
    import torch  # here, not at start-up: serving cached results never waits for it

    from models.blocks import pooled_maps, record_sources

    pooled = []
    for layer, (source, spans) in enumerate(record_sources(capture, range(capture.n_layers))):
        weigh = _norm_weigher(torch, capture, layer, mode)
        pooled.append(pooled_maps(source, spans, heads=capture.n_heads, thumb=side, weigh=weigh).numpy())
    return np.stack(pooled)


def _norm_weigher(torch, capture: Capture, layer: int, mode: str):
    """block, c0, c1 -> [H or 1, r, c] the block's attention in a Kobayashi et al. (2020) mode:
    ||alpha_ij f_h(x_j)|| per head, or ||sum_h alpha^h_ij f_h(x_j)|| = sqrt(alpha^T G_j alpha)
    for the layer, raw or as shares of each row (a block holds every key its rows may see)."""
    if mode in LAYER_NORM_MODES:
        grams = torch.from_numpy(capture.output_grams[layer].astype(np.float32))  # [N, H, H]

        def weigh(block, c0: int, c1: int):
            weights = block.p.permute(2, 1, 0).contiguous()  # [c, r, H]
            quadratic = (torch.bmm(weights, grams[c0:c1]) * weights).sum(-1).T  # [r, c] alpha^T G alpha
            return _shares(torch, quadratic.clamp_(min=0).sqrt_()[None], mode == "layer_share")
    else:
        norms = torch.from_numpy(capture.output_norms[layer].astype(np.float32))  # [H, N]

        def weigh(block, c0: int, c1: int):
            return _shares(torch, block.p * norms[:, None, c0:c1], mode == "value")

    return weigh


def _shares(torch, maps, shares: bool):
    """[M, r, c] maps, or each row divided by its sum (rows of zeros stay zeros)."""
    if not shares:
        return maps
    total = maps.sum(dim=-1, keepdim=True)
    return torch.where(total > 0, maps / total.clamp(min=torch.finfo(maps.dtype).tiny), 0.0)


def _maps_per_layer(capture: Capture, mode: str) -> int:
    """Maps a layer has in ``mode``: one per head, or one for the whole layer."""
    return 1 if mode in LAYER_NORM_MODES else capture.n_heads


def _mode_matrix(capture: Capture, layer: int, head: int, mode: str, rows=slice(None), cols=slice(None)):
    """[r, c] float32 of one head (or, in a layer mode, the whole layer: ``head`` is ignored) in
    the requested colouring. Shares are of the whole row, also when the block is a zoomed part."""
    if mode == "scores":
        return capture.scores_block(layer, head, rows, cols)
    whole = cols == slice(None)
    if mode in LAYER_NORM_MODES:
        block = layer_map(capture, layer, rows, cols)  # ||sum_h alpha^h_ij f_h(x_j)||
        if mode == "layer":
            return block
        return _row_shares(block, block.sum(axis=1) if whole else layer_map(capture, layer, rows).sum(axis=1))
    block = capture.attention_block(layer, head, rows, cols)
    if mode in HEAD_NORM_MODES:
        output_norms = capture.output_norms[layer, head]  # [N]
        weighted = block * output_norms[cols][None, :]  # ||alpha_ij f_h(x_j)||
        if mode == "norm":
            return weighted
        total = weighted.sum(axis=1) if whole else capture.attention_block(layer, head, rows) @ output_norms  # [r]
        return _row_shares(weighted, total)
    return block


def _row_shares(block: np.ndarray, total: np.ndarray) -> np.ndarray:
    """[r, c] block divided by its rows' [r] totals (rows of zeros stay zeros)."""
    return np.divide(block, total[:, None], out=np.zeros_like(block), where=total[:, None] > 0)


def layer_map(capture: Capture, layer: int, rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
    """[r, c] float32 ||sum_h alpha^h_ij f_h(x_j)|| (Kobayashi et al. 2020, section 5) from the
    recomputed attention of every head and the stored Grams, in blocks of rows within
    LAYER_BLOCK_BYTES (whole up to ~1800 x 1024: numpy's q.k of 256-row blocks took 3x as long).
    Raises AtlasError for a record made before the capture stored the Grams."""
    if capture.output_grams is None:
        raise AtlasError(
            "not_computed",
            "this record predates the per-layer norms (format 5): analyse the prompt again to see the layer modes",
        )
    grams = capture.output_grams[layer, cols]  # [c, H, H]
    start, stop, _ = rows.indices(capture.n_tokens)
    step = max(1, LAYER_BLOCK_BYTES // (4 * capture.n_heads * max(1, grams.shape[0])))
    blocks = [np.zeros((0, grams.shape[0]), np.float32)]
    for first in range(start, stop, step):
        chunk = slice(first, min(stop, first + step))
        weights = np.stack([capture.attention_block(layer, head, chunk, cols) for head in range(capture.n_heads)])
        blocks.append(norms.layer_norms(weights, grams))  # [r', c]
    return np.concatenate(blocks)


def quantize_mode(values: np.ndarray, mode: str) -> dict:
    """uint8 colours of one mode's values: shares as they are; raw norms (``norm``, ``layer``:
    unbounded) divided by their peak, which the ``scale`` carries back (value = byte * scale)."""
    if mode not in RAW_MODES:
        return quantize_unit(values)
    peak = float(values.max()) if values.size else 0.0
    peak = peak if peak > 0 else 1.0
    encoded = quantize_unit(values / peak)
    return {**encoded, "scale": encoded["scale"] * peak}


def layer_payload(key: str, capture: Capture, layer: int, mode: str, dense_max: int, top_k: int) -> dict:
    """All heads of one layer for the head view: dense up to ``dense_max`` tokens, else the
    ``top_k`` strongest keys per query (what the head view draws anyway). In a layer mode the
    layer's one map stands in for the heads (``heads`` 1)."""
    _check_index("layer", layer, capture.n_layers)
    if mode == "scores":
        raise AtlasError("bad_request", "the head view shows attention or norm-based attention, not scores")
    n, heads = capture.n_tokens, range(_maps_per_layer(capture, mode))
    base = {"key": key, "layer": layer, "mode": mode, "tokens": n, "heads": len(heads)}
    if n <= dense_max:
        matrices = np.stack([_mode_matrix(capture, layer, head, mode) for head in heads])  # [H or 1, N, N]
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
    query in every head of one layer ([1, N, k]: the layer's one map, in a layer mode), in no
    particular order within a row.

    Done in torch (imported here, not at start-up, so serving cached results never waits for
    it): at 4096 tokens numpy's argpartition of rows that are mostly zeros took 0.6 s per
    512-row block, ``torch.topk`` 18 ms. Keys no query of a block may see (the future, in a
    causal model) are skipped, and plain attention picks its keys by score (softmax keeps each
    row's order), so only the k chosen weights are exponentiated.
    """
    import torch

    heads, n = _maps_per_layer(capture, mode), capture.n_tokens
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
    if mode in LAYER_NORM_MODES:  # the layer's one map; masked keys are 0 in it
        block = torch.from_numpy(layer_map(capture, layer, rows, slice(0, width)))  # [r, width]
        top = torch.topk(block, k, dim=1, sorted=False)
        if mode == "layer":
            return top.indices, top.values
        total = block.sum(dim=1, keepdim=True)  # every key a row may see lies within width
        return top.indices, torch.where(total > 0, top.values / total, torch.zeros_like(top.values))

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
    if mode in HEAD_NORM_MODES:
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
    attention or as raw ``norm`` ||alpha f(x)|| (row shares would need every row's total); in
    ``layer`` mode one row per layer, ||sum_h alpha^h f_h(x)||."""
    _check_index("index", index, capture.n_tokens)
    if mode not in TOKEN_MODES:
        raise AtlasError("bad_request", f"the token view shows {', '.join(TOKEN_MODES)}")
    row, col = slice(index, index + 1), slice(index, index + 1)
    maps = _maps_per_layer(capture, mode)
    heads = [(layer, head) for layer in range(capture.n_layers) for head in range(maps)]
    shape = (capture.n_layers, maps, capture.n_tokens)
    outgoing = np.stack([_mode_matrix(capture, layer, head, mode, rows=row)[0] for layer, head in heads])
    incoming = np.stack([_mode_matrix(capture, layer, head, mode, cols=col)[:, 0] for layer, head in heads])
    return {
        "key": key,
        "index": index,
        "mode": mode,
        "outgoing": quantize_mode(outgoing.reshape(shape), mode),  # [L, H or 1, N]
        "incoming": quantize_mode(incoming.reshape(shape), mode),  # [L, H or 1, N]
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
