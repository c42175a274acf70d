"""Capture -> analysis payloads: head summary (metrics, roles, clusters), attention sinks,
rollout, flow and prompt comparison, over a :class:`Capture`, like app.shaping: numpy, and torch
(imported on first use) for the [n, n] products of rollout, which are most of its cost.

Whole-model analyses cost O(L x N^2) or more, so on long prompts they read the leading
``ANALYSIS_MAX_TOKENS`` tokens. For a causal model that block is exactly the attention of that
prefix (later tokens cannot change it); payloads say how many tokens they cover. The head
summary's statistics over that prefix are computed by the capture in the same blocked pass that
records the layer (``Capture.head_stats``, ``Capture.key_shares``), so they cost no second pass.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from app.analysis import head_roles, rollout
from app.protocol import AtlasError, encode_array
from app.shaping import max_pool, sink_tokens
from models.record import HEAD_STATS, STATS_TOKENS, Capture

ANALYSIS_MAX_TOKENS = STATS_TOKENS  # tokens read by whole-model analyses (head summary, sinks, rollout)
ROLLOUT_MATRIX_MAX = 256  # cells per side of the rollout matrix sent to the browser
CLUSTERS = 8  # head clusters in the head summary


def analysed_tokens(capture: Capture) -> int:
    return min(capture.n_tokens, ANALYSIS_MAX_TOKENS)


def rollout_scope(capture: Capture) -> tuple[range, int]:
    """(layers, tokens) that rollout and flow follow: one residual stream through a stack of
    self-attention. In an encoder-decoder record that is the encoder: its layers and tokens come
    first, so positions and layer numbers stay the record's own."""
    if not capture.info.get("encoder_decoder"):
        return range(capture.n_layers), analysed_tokens(capture)
    encoder_layers = capture.info["layer_kinds"].count("encoder")
    return range(encoder_layers), min(capture.info["segments"]["encoder"][1], ANALYSIS_MAX_TOKENS)


def summary(capture: Capture) -> dict[str, np.ndarray]:
    """Head metrics [L, H] per name, ``role`` [L, H] and ``cluster`` [L, H] (the service memoises
    it per analysis: app/handlers.summary_of), from the statistics the capture computed while
    the model ran: no layer is read again."""
    result = _recorded_metrics(capture)
    result["role"] = head_roles.role_labels(result).astype(str)
    result["cluster"] = _clusters(capture)
    return result


def _recorded_metrics(capture: Capture) -> dict[str, np.ndarray]:
    """The metrics of head_roles.head_metrics, in its order, from ``head_stats`` [L, H, S] and
    ``key_shares`` [L, H, P]: a share of a group of keys is the sum of their shares."""
    n = analysed_tokens(capture)
    stats = dict(zip(HEAD_STATS, np.moveaxis(capture.head_stats, -1, 0)))
    special, punctuation = capture.special[:n], head_roles.punctuation_mask(capture.tokens[:n])
    groups = np.stack([special, punctuation, special | punctuation], axis=1).astype(np.float32)  # [P, 3]
    shares = capture.key_shares @ groups  # [L, H, 3]
    metrics = {name: stats[name] for name in ("entropy", "entropy_norm", "distance")}
    metrics["sink"] = capture.key_shares[..., 0]
    metrics |= {name: shares[..., i] for i, name in enumerate(("special", "punctuation", "delimiter"))}
    metrics |= {name: stats[name] for name in head_roles.NAMED_OFFSETS}
    metrics |= {head_roles.offset_name(k): stats[head_roles.offset_name(k)] for k in head_roles.OFFSETS}
    return {name: value.astype(np.float32) for name, value in metrics.items()}


def _clusters(capture: Capture) -> np.ndarray:
    """[L, H] cluster label per head, from Jensen-Shannon distances between the heads'
    thumbnails (row-normalised pooled maps: cheap at any prompt length)."""
    maps = capture.thumbnails.astype(np.float32).reshape(-1, *capture.thumbnails.shape[-2:])  # [L*H, t, t]
    totals = maps.sum(axis=-1, keepdims=True)
    maps = np.divide(maps, totals, out=np.zeros_like(maps), where=totals > 0)
    count = min(CLUSTERS, maps.shape[0])
    labels = head_roles.cluster_heads(head_roles.js_distance_matrix(maps), count) if count > 1 else np.zeros(1)
    return np.asarray(labels, dtype=np.int32).reshape(capture.n_layers, capture.n_heads)


def heads_payload(key: str, capture: Capture, result: dict[str, np.ndarray]) -> dict:
    """The head summary view from :func:`summary`'s ``result``: every metric as float16 [L, H],
    roles, clusters, sink tokens."""
    flagged = sink_tokens(capture)
    metrics = {
        name: encode_array(value, "float16") for name, value in result.items() if name not in ("role", "cluster")
    }
    return {
        "key": key,
        "analysed_tokens": analysed_tokens(capture),
        "metrics": metrics,
        "roles": result["role"].tolist(),
        "clusters": encode_array(result["cluster"], "int32"),
        "sink_score": encode_array(flagged["score"], "float32"),
        "sinks": np.flatnonzero(flagged["is_sink"]).tolist(),
    }


FUSED_ROWS = 128  # query rows per block of a head-fused prefix map


def _fused_layers(capture: Capture, fusion: str) -> Iterator[np.ndarray]:
    """Each rollout layer's [n, n] float32 map, its heads fused (rollout.fuse_heads), computed in
    torch a block of rows at a time through the capture's own blocks (models.blocks: only the keys
    a block's rows may see, all heads in one product, the mask applied only where a row may not
    look), so nothing [H, n, n] is held and a 1024-token prefix of 30 layers takes well under a
    second where numpy, head by head, took several."""
    import torch  # here, not at start-up: serving cached results never waits for it

    from models.blocks import record_sources, row_blocks

    if fusion not in rollout.FUSERS:
        raise ValueError(f"how must be one of {sorted(rollout.FUSERS)}, got {fusion!r}")
    layers, n = rollout_scope(capture)
    fuse = {"mean": torch.mean, "max": torch.amax, "min": torch.amin}[fusion]
    for source, spans in record_sources(capture, layers, n):
        fused = torch.zeros((n, n))
        for r0, r1, c0, c1 in row_blocks(spans, FUSED_ROWS):
            fused[r0:r1, c0:c1] = fuse(source.block(r0, r1, c0, c1).p, dim=0)
        yield fused.numpy()


def rollout_payload(key: str, capture: Capture, fusion: str, position: int) -> dict:
    """Attention rollout with residual (A + I) / 2: the final [n, n] map (max-pooled to at most
    ``ROLLOUT_MATRIX_MAX``) and, for one output ``position``, its row after every layer [L, n]."""
    n = rollout_scope(capture)[1]
    if not 0 <= position < n:
        raise AtlasError("bad_request", f"'position' must be between 0 and {n - 1}")
    rows, final = [], None
    for cumulative in rollout.iter_rollout(_fused_layers(capture, fusion), lower=_lower(capture, n)):
        rows.append(cumulative[position])
        final = cumulative
    # float16, not uint8: a sink often holds ~all of the rollout, and every other cell would round to 0
    return {
        "key": key,
        "fusion": fusion,
        "position": position,
        "analysed_tokens": n,
        "matrix": encode_array(max_pool(final, ROLLOUT_MATRIX_MAX), "float16"),
        "rows": encode_array(np.stack(rows), "float16"),
    }


def _lower(capture: Capture, n: int) -> bool:
    """Whether every rollout layer's [n, n] map is lower triangular (a causal model's)."""
    masks = {int(capture.mask_index[layer]) for layer in rollout_scope(capture)[0]}
    return all(not np.triu(capture.masks[index][:n, :n], 1).any() for index in masks)


def flow_payload(key: str, capture: Capture, fusion: str, position: int) -> dict:
    """Attention flow (max-flow on the layered graph) from every input token to ``position``."""
    layers, n = rollout_scope(capture)
    if not rollout.flow_size_ok(len(layers), n):
        raise AtlasError(
            "too_long",
            f"attention flow over {len(layers)} layers x {n} tokens would take "
            "minutes; use rollout, or a prompt of at most ~64 tokens on this model",
        )
    if not 0 <= position < n:
        raise AtlasError("bad_request", f"'position' must be between 0 and {n - 1}")
    flows = rollout.attention_flow(list(_fused_layers(capture, fusion)), position)
    total = float(flows.sum())
    # both conventions: the raw max-flow values, and the authors' code's shares (flow_values[u] /= sum)
    shares = flows / total if total > 0 else np.zeros_like(flows)
    return {
        "key": key,
        "fusion": fusion,
        "position": position,
        "flow": encode_array(flows, "float32"),
        "flow_share": encode_array(shares, "float32"),
    }


def compare_payload(key: str, capture: Capture, other_key: str, other: Capture) -> dict:
    """Per-head difference between two prompts on one model: mean |A - B| over the rows of the
    shared token positions when the prompts tokenize to the same length (the classic minimal
    pair, "She" vs "He"), else the distance between the heads' thumbnails."""
    if (capture.n_layers, capture.n_heads) != (other.n_layers, other.n_heads):
        raise AtlasError("bad_request", "compare two analyses of the same model")
    same_length = capture.n_tokens == other.n_tokens
    if same_length:
        n = min(capture.n_tokens, ANALYSIS_MAX_TOKENS)
        block = slice(0, n)
        difference = np.array(
            [
                [
                    np.abs(
                        capture.attention_block(layer, h, block, block) - other.attention_block(layer, h, block, block)
                    )
                    .sum(-1)
                    .mean()
                    / 2
                    for h in range(capture.n_heads)
                ]
                for layer in range(capture.n_layers)
            ]
        )
    else:
        side = min(capture.thumbnails.shape[-1], other.thumbnails.shape[-1])
        a, b = (_pooled_thumbnails(c, side) for c in (capture, other))
        difference = np.abs(a - b).mean(axis=(-1, -2))
    changed = [i for i, (x, y) in enumerate(zip(capture.tokens, other.tokens)) if x != y] if same_length else []
    return {
        "key": key,
        "other": other_key,
        "same_length": same_length,
        "changed_tokens": changed,
        "difference": encode_array(difference, "float32"),
    }


def _pooled_thumbnails(capture: Capture, side: int) -> np.ndarray:
    thumbnails = capture.thumbnails.astype(np.float32)
    return np.stack([[max_pool(head, side) for head in layer] for layer in thumbnails])
