"""Information-flow routes (Ferrando & Voita 2024, "Information Flow Routes: Automatically
Interpreting Language Models at Scale"): the graph of important edges from one token at the top of
the model back to the inputs, from the edge importances :mod:`models.information_flow` computes.

Nodes are the residual stream of token i at a level: level 0 is the embeddings, level 2l + 1 the
stream after layer l's attention, level 2l + 2 after its feed-forward block. Edges:

| kind | from | to | importance |
|---|---|---|---|
| ``ATTENTION`` | (2l, j) | (2l + 1, i) | sum over heads of head h's term alpha^h_ij f_h(x_j) |
| ``ATTENTION_RESIDUAL`` | (2l, i) | (2l + 1, i) | the residual x_i in that sum |
| ``FEED_FORWARD`` | (2l + 1, i) | (2l + 2, i) | the FF block's output |
| ``FF_RESIDUAL`` | (2l + 1, i) | (2l + 2, i) | the residual in that sum |

The paper's algorithm: start from the chosen token's node at the top; keep every edge into a kept
node whose importance exceeds the threshold tau; the kept edges' sources are kept; repeat down to
the embeddings.
"""

from __future__ import annotations

import numpy as np

ATTENTION, ATTENTION_RESIDUAL, FEED_FORWARD, FF_RESIDUAL = range(4)  # edge kinds on the wire
DEFAULT_THRESHOLD = 0.04  # tau: the paper's figures use 0.04


def prune(importances: dict[str, np.ndarray], token: int, threshold: float) -> dict[str, np.ndarray]:
    """The routes to ``token`` at the top, as edge arrays of equal length E: ``kind`` uint8,
    ``layer`` int32, ``source`` and ``target`` int32 (tokens), ``weight`` float32, ``head``
    int32 (the strongest head of an attention edge, else -1) and ``head_share`` float32 (its share).

    ``importances``: ``heads`` [L, H, N, N], ``attn_res``, ``ff``, ``ff_res`` [L, N]."""
    heads = importances["heads"]
    n_layers, n = heads.shape[0], heads.shape[-1]
    edges: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    active = np.zeros(n, dtype=bool)
    active[token] = True
    for layer in range(n_layers - 1, -1, -1):
        rows = np.flatnonzero(active)
        below = np.zeros(n, dtype=bool)
        for kind, key in ((FEED_FORWARD, "ff"), (FF_RESIDUAL, "ff_res")):
            weight = importances[key][layer, rows]
            kept = rows[weight > threshold]
            below[kept] = True
            edges.append(_edges(kind, layer, kept, kept, importances[key][layer, kept]))
        rows = np.flatnonzero(below)
        per_pair = heads[layer][:, rows, :]  # [H, r, N]
        totals = per_pair.sum(axis=0)  # [r, N]
        r, j = np.nonzero(totals > threshold)
        strongest = per_pair[:, r, j].argmax(axis=0) if r.size else np.zeros(0, dtype=np.int64)
        shares = per_pair[strongest, r, j] / totals[r, j] if r.size else np.zeros(0)
        edges.append(_edges(ATTENTION, layer, j, rows[r], totals[r, j], strongest, shares))
        kept = rows[importances["attn_res"][layer, rows] > threshold]
        edges.append(_edges(ATTENTION_RESIDUAL, layer, kept, kept, importances["attn_res"][layer, kept]))
        active = np.zeros(n, dtype=bool)
        active[j] = True
        active[kept] = True
    return _joined(edges)


def _edges(kind, layer, source, target, weight, head=None, share=None) -> tuple:
    count = len(source)
    head = np.full(count, -1) if head is None else head
    share = np.zeros(count) if share is None else share
    return np.full(count, kind), np.full(count, layer), source, target, weight, head, share


def _joined(edges: list[tuple]) -> dict[str, np.ndarray]:
    names = ("kind", "layer", "source", "target", "weight", "head", "head_share")
    types = ("uint8", "int32", "int32", "int32", "float32", "int32", "float32")
    return {
        name: np.concatenate([edge[i] for edge in edges]).astype(dtype)
        for i, (name, dtype) in enumerate(zip(names, types, strict=True))
    }
