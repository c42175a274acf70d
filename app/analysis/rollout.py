"""Attention rollout and attention flow (Abnar & Zuidema 2020, "Quantifying Attention Flow in
Transformers").

One layer's raw attention says where a layer reads, not which *input* tokens reach an output:
through the residual stream and L layers of mixing, information travels along paths. Rollout
multiplies the layers' maps (every path, weighted by its product of weights); flow treats the
maps as a pipe network and asks how much can travel from each input to one output at once.

Both take per-layer head-fused maps ``[N, N]`` (query, key), bottom layer first, as a sequence
or an ``[L, N, N]`` stack, so callers can fuse heads one layer at a time.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_flow

from app.analysis.norms import normalise_rows

RESIDUAL_WEIGHT = 0.5  # share of the identity in A_hat = 0.5 A + 0.5 I (the paper's residual term)
FLOW_SCALE = 1_000_000  # capacity units per unit of attention; scipy's max-flow needs integers,
#                         so weights below 0.5 / FLOW_SCALE round to no edge at all
FLOW_MAX_WORK = 500_000_000  # flow_work() units; measured ~4e-9 s each for dense bidirectional
#                             maps on a 2-core CPU, so about 2 s at the limit (docs/analyses.md)

FUSERS = {"mean": np.mean, "max": np.max, "min": np.min}


def fuse_heads(attention: np.ndarray, how: Literal["mean", "max", "min"] = "mean") -> np.ndarray:
    """[H, N, N] -> [N, N] float32: one map per layer, as rollout and flow need.

    The paper averages heads; max and min show the most and least any head attends. Fused max/min
    rows no longer sum to 1; rollout and flow renormalise rows, so that is fine.
    Raises ValueError for an unknown ``how``.
    """
    if how not in FUSERS:
        raise ValueError(f"how must be one of {sorted(FUSERS)}, got {how!r}")
    return FUSERS[how](attention, axis=0).astype(np.float32)  # [N, N]


def residual_adjust(attention: np.ndarray, residual: bool = True) -> np.ndarray:
    """[N, N] -> [N, N] float32 rows that sum to 1 (rows of zeros stay zeros without residual).

    The residual connection carries each token's own state past the layer, so the paper adds the
    identity: A_hat = 0.5 A + 0.5 I, then renormalises rows.
    """
    if not residual:
        return normalise_rows(attention)
    fused = np.array(attention, dtype=np.float32)  # a copy to scale in place (a long prompt's map is MBs)
    fused *= 1 - RESIDUAL_WEIGHT
    fused.flat[:: fused.shape[-1] + 1] += RESIDUAL_WEIGHT  # the diagonal
    return normalise_rows(fused)


def iter_rollout(layers: Iterable[np.ndarray], residual: bool = True, lower: bool = False) -> Iterator[np.ndarray]:
    """Yield each layer's cumulative rollout [N, N] float32: R_1 = A_hat_1, R_l = A_hat_l @ R_{l-1}.

    A generator, so a caller can stream a long prompt's layers and keep one [N, N] at a time.
    Row q of R_l: how much of layer l's token q is made of each input token. ``lower``: every map
    is lower triangular (a causal model), so each product skips the zero blocks (about a quarter
    of the work of 1024 x 1024 products, which are most of a long prompt's rollout).
    """
    import torch  # here, not at start-up: serving cached results never waits for it

    rollout = None
    for fused in layers:
        adjusted = torch.from_numpy(residual_adjust(fused, residual))  # [N, N]
        rollout = adjusted if rollout is None else _product(adjusted, rollout, lower)
        yield rollout.numpy()


PRODUCT_BLOCK = 128  # rows and columns per block of a lower-triangular product


def _product(a, b, lower: bool):
    """a @ b of two [N, N] torch matrices; blockwise over the non-zero blocks when both are lower
    triangular: block (i, j) of the product is the sum over k in j..i of a_ik b_kj."""
    n = a.shape[0]
    if not lower or n <= 2 * PRODUCT_BLOCK:
        return a @ b
    out = a.new_zeros((n, n))
    edges = list(range(0, n, PRODUCT_BLOCK)) + [n]
    for i in range(len(edges) - 1):
        rows = slice(edges[i], edges[i + 1])
        for j in range(i + 1):
            inner = slice(edges[j], edges[i + 1])  # k from block j to block i
            out[rows, edges[j] : edges[j + 1]] = a[rows, inner] @ b[inner, edges[j] : edges[j + 1]]
    return out


def flow_work(n_layers: int, n_tokens: int) -> int:
    """L^2 * N^3: edges of the dense layered graph (L * N^2) times path length (L) times the N
    max-flow runs. Measured run time follows it within a factor of 1.5 (docs/analyses.md)."""
    return n_layers**2 * n_tokens**3


def flow_size_ok(n_layers: int, n_tokens: int) -> bool:
    """Whether ``attention_flow`` finishes in about two seconds; callers refuse larger inputs with a
    notice rather than block a worker for minutes (the cost grows as L^2 * N^3)."""
    return flow_work(n_layers, n_tokens) <= FLOW_MAX_WORK


def attention_flow(
    layers: Sequence[np.ndarray],
    output_position: int,
    residual: bool = True,
    scale: int = FLOW_SCALE,
) -> np.ndarray:
    """[N] float32: max flow from each input token to token ``output_position`` after the top layer.

    Nodes are (layer, token) for layers 0..L; layer l's map gives an edge from (l-1, key) to
    (l, query) of capacity A_hat_l[query, key]. Values lie in [0, 1] because the output node's
    incoming capacities sum to 1. Capacities are rounded to multiples of 1 / ``scale``.
    Raises ValueError for no layers or an output position outside the tokens.
    """
    capacities = [_capacities(fused, residual, scale) for fused in layers]  # L x [N, N] int32
    if not capacities:
        raise ValueError("attention_flow needs at least one layer")
    n_tokens = capacities[0].shape[0]
    if not 0 <= output_position < n_tokens:
        raise ValueError(f"output_position {output_position} is outside 0..{n_tokens - 1}")
    capacities, reach = _prune_to_output(capacities, output_position)
    graph = _layered_graph(capacities)
    sink = len(capacities) * n_tokens + output_position
    flows = np.zeros(n_tokens, dtype=np.float32)  # [N]
    for source in np.flatnonzero(reach):
        flows[source] = maximum_flow(graph, int(source), sink).flow_value / scale
    return flows


def _capacities(fused: np.ndarray, residual: bool, scale: int) -> np.ndarray:
    """[N, N] query x key -> [N, N] int32 capacities, residual-adjusted and scaled."""
    return np.rint(residual_adjust(fused, residual) * scale).astype(np.int32)


def _prune_to_output(capacities: list[np.ndarray], output_position: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Drop edges into nodes that cannot reach the output node; return them and the [N] bool
    mask of input tokens that can. In a causal model only tokens <= output_position survive,
    which keeps early outputs cheap."""
    reach = np.zeros(capacities[-1].shape[0], dtype=bool)  # [N] nodes of the current layer
    reach[output_position] = True
    pruned = []
    for caps in reversed(capacities):
        kept = np.where(reach[:, None], caps, 0)  # [N, N] only queries that reach the output
        pruned.append(kept)
        reach = (kept > 0).any(axis=0)  # keys feeding a reachable query
    return pruned[::-1], reach


def _layered_graph(capacities: list[np.ndarray]) -> csr_array:
    """Square CSR of (L + 1) * N nodes; entry [u, v] is the capacity of edge u -> v."""
    n_tokens = capacities[0].shape[0]
    rows, cols, data = [], [], []
    for layer, caps in enumerate(capacities):
        query, key = np.nonzero(caps)  # edge (layer, key) -> (layer + 1, query)
        rows.append(layer * n_tokens + key)
        cols.append((layer + 1) * n_tokens + query)
        data.append(caps[query, key])
    n_nodes = (len(capacities) + 1) * n_tokens
    return csr_array(
        (np.concatenate(data), (np.concatenate(rows), np.concatenate(cols))),
        shape=(n_nodes, n_nodes),
    )
