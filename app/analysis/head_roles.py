"""What each attention head does, in numbers and in one word (after Clark et al. 2019,
"What Does BERT Look At?", and Dodrio, Wang et al. 2021).

``head_metrics`` reduces one layer's [H, N, N] attention to a few [H] statistics (call it per
layer while streaming); ``role_labels`` turns them into a label per head; ``js_distance_matrix``
and ``cluster_heads`` group heads whose maps look alike.
"""

from __future__ import annotations

import string
import unicodedata

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform

OFFSETS = (-4, -3, -2, 2, 3, 4)  # key - query, in tokens; -1, 0, +1 are "previous", "self", "next"
NAMED_OFFSETS = {"previous": -1, "self": 0, "next": 1}

# Role thresholds; shares are mean attention per query row (0..1).
SINK_SHARE = 0.5  # share on key 0 for SINK
POSITION_SHARE = 0.5  # share on one relative position for SELF / PREVIOUS / NEXT / OFFSET+-k
DELIMITER_SHARE = 0.5  # share on special or punctuation tokens for DELIMITER
BROAD_ENTROPY = 0.8  # entropy / log(allowed keys) (0..1) for BROAD

# Highest priority first: the first rule a head meets names it (see docs/analyses.md).
ROLE_RULES = (
    ("SINK", "sink", SINK_SHARE),
    ("SELF", "self", POSITION_SHARE),
    ("PREVIOUS", "previous", POSITION_SHARE),
    ("NEXT", "next", POSITION_SHARE),
)
OFFSET_PREFIX = "offset"
FALLBACK_ROLE = "MIXED"


def punctuation_mask(tokens: list[str]) -> np.ndarray:
    """[N] bool: tokens whose text, stripped of whitespace, is only punctuation or ASCII symbols.

    Clark et al. found heads that park attention on "." and ","; symbols such as "$" count too.
    Empty (whitespace-only) tokens are not punctuation.
    """

    def is_punctuation(char: str) -> bool:
        return char in string.punctuation or unicodedata.category(char).startswith("P")

    stripped = [token.strip() for token in tokens]
    return np.array([bool(text) and all(map(is_punctuation, text)) for text in stripped], dtype=bool)


def allowed_keys(n_tokens: int, causal: bool) -> np.ndarray:
    """[N] int: keys each query row may attend to (q + 1 in a causal model, N otherwise)."""
    return np.arange(1, n_tokens + 1) if causal else np.full(n_tokens, n_tokens)


def choice_rows(attention_map: np.ndarray, causal: bool) -> np.ndarray:
    """[N, N] -> [N] bool: rows that carry attention and could choose between keys.

    A causal model's row 0 may only attend to itself; counting it would credit every head with
    sink and self attention it never chose. Rows of zeros (padding) carry no attention.
    """
    return (attention_map.sum(axis=-1) > 0) & (allowed_keys(attention_map.shape[-1], causal) > 1)


def offset_share(attention_map: np.ndarray, offset: int, rows: np.ndarray) -> float:
    """Mean over ``rows`` of attention on key q + ``offset``; rows without that key are left out."""
    values = np.diagonal(attention_map, offset=offset)  # [N - |offset|] a[q, q + offset]
    first_row = max(0, -offset)
    return _mean_over(values, rows[first_row : first_row + values.size])


def head_metrics(
    attention: np.ndarray,
    special: np.ndarray,
    punctuation: np.ndarray,
    *,
    causal: bool,
    offsets: tuple[int, ...] = OFFSETS,
) -> dict[str, np.ndarray]:
    """Per-head statistics of one layer, each a [H] float32 array.

    ``attention`` is [H, N, N] (head, query, key); ``special`` and ``punctuation`` are [N] bool
    over keys. Every statistic is a mean over query rows (see ``choice_rows``): ``entropy`` (nats),
    ``entropy_norm`` (entropy / log allowed keys, 0..1), ``distance`` (tokens, sum a_qk |q - k|),
    shares (0..1) ``sink`` (key 0), ``special``, ``punctuation``, ``delimiter`` (either),
    ``previous``, ``self``, ``next`` and ``offset-2`` ... ``offset+4``.
    Heads are reduced one at a time so a long prompt never needs more than one [N, N] temporary.
    """
    n_tokens = attention.shape[-1]
    distance = np.abs(np.subtract.outer(np.arange(n_tokens), np.arange(n_tokens))).astype(np.float32)  # [N, N]
    log_allowed = np.log(allowed_keys(n_tokens, causal))  # [N]
    group_names = ("special", "punctuation", "delimiter")
    key_groups = np.stack([special, punctuation, special | punctuation], axis=1).astype(np.float32)  # [N, 3] 0/1
    per_head = []
    for attention_map in attention:  # [N, N]
        rows = choice_rows(attention_map, causal)  # [N]
        entropy = row_entropy(attention_map)  # [N] nats
        metrics = {
            "entropy": _mean_over(entropy, rows),
            "entropy_norm": _mean_over(entropy / np.where(rows, log_allowed, 1.0), rows),
            "distance": _mean_over((attention_map * distance).sum(axis=-1), rows),
            "sink": _mean_over(attention_map[:, 0], rows),
        }
        # einsum, not BLAS: a matrix-vector product through OpenBLAS's threads took 7 ms on a busy machine
        shares = np.einsum("qk,kg->gq", attention_map, key_groups)  # [3, N]
        metrics |= {name: _mean_over(share, rows) for name, share in zip(group_names, shares)}
        metrics |= {name: offset_share(attention_map, k, rows) for name, k in NAMED_OFFSETS.items()}
        metrics |= {offset_name(k): offset_share(attention_map, k, rows) for k in offsets}
        per_head.append(metrics)
    return {name: np.array([m[name] for m in per_head], dtype=np.float32) for name in per_head[0]}


def offset_name(offset: int) -> str:
    """Metric key of a relative position: -2 -> "offset-2", 3 -> "offset+3"."""
    return f"{OFFSET_PREFIX}{offset:+d}"


def role_labels(metrics: dict[str, np.ndarray]) -> np.ndarray:
    """One role per head, same shape as the metrics ([L, H] or [H]), as an array of str.

    Priority, first match wins: SINK, SELF, PREVIOUS, NEXT, OFFSET+-k (largest share), BROAD,
    DELIMITER, MIXED. Sink comes first because key 0 is often a special token too; positional roles
    beat DELIMITER because a previous-token head on comma-heavy text still reads by position; BROAD
    beats DELIMITER because an even spread gives delimiters their share by count, not by choice.
    """
    shape = np.shape(metrics["sink"])
    labels = np.full(shape, "", dtype=object)

    def assign(role: np.ndarray | str, where: np.ndarray) -> None:
        chosen = where & (labels == "")
        labels[chosen] = role if isinstance(role, str) else role[chosen]

    for role, key, threshold in ROLE_RULES:
        assign(role, np.asarray(metrics[key]) >= threshold)
    offset_keys = sorted(k for k in metrics if k.startswith(OFFSET_PREFIX))
    if offset_keys:
        shares = np.stack([np.asarray(metrics[k]) for k in offset_keys])  # [K, ...]
        best = np.array([k.upper() for k in offset_keys], dtype=object)[shares.argmax(axis=0)]
        assign(best, shares.max(axis=0) >= POSITION_SHARE)
    assign("BROAD", np.asarray(metrics["entropy_norm"]) >= BROAD_ENTROPY)
    assign("DELIMITER", np.asarray(metrics["delimiter"]) >= DELIMITER_SHARE)
    assign(FALLBACK_ROLE, np.ones(shape, dtype=bool))
    return labels.astype(str)


def js_distance_matrix(maps: np.ndarray) -> np.ndarray:
    """[M, N, N] attention maps -> [M, M] float32 Jensen-Shannon distances (0..1).

    Per pair: JS divergence (base 2) of each query row's two distributions, averaged over rows,
    then the square root, which makes it a metric fit for clustering. Rows must be distributions;
    costs M^2 / 2 passes over [N, N], so callers thumbnail long prompts first.
    """
    maps = maps.astype(np.float64)
    n_maps = maps.shape[0]
    entropies = _entropy_bits(maps)  # [M, N]
    distances = np.zeros((n_maps, n_maps), dtype=np.float64)
    for i in range(n_maps - 1):  # map i against every later map at once
        mixture = 0.5 * (maps[i] + maps[i + 1 :])  # [M - i - 1, N, N]
        divergence = _entropy_bits(mixture) - 0.5 * (entropies[i] + entropies[i + 1 :])  # [M - i - 1, N]
        distances[i, i + 1 :] = distances[i + 1 :, i] = np.sqrt(np.maximum(divergence.mean(axis=-1), 0.0))
    return distances.astype(np.float32)


def cluster_heads(distances: np.ndarray, n_clusters: int) -> np.ndarray:
    """[M, M] distances -> [M] int cluster labels 0..n_clusters-1 by average-linkage clustering.

    Ties can leave fewer clusters than asked. Raises ValueError if ``n_clusters`` < 1.
    """
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be at least 1, got {n_clusters}")
    if distances.shape[0] < 2:
        return np.zeros(distances.shape[0], dtype=np.int64)
    symmetric = 0.5 * (distances + distances.T).astype(np.float64)  # [M, M]
    np.fill_diagonal(symmetric, 0.0)
    tree = linkage(squareform(symmetric, checks=False), method="average")
    return fcluster(tree, t=n_clusters, criterion="maxclust").astype(np.int64) - 1


def row_entropy(rows: np.ndarray) -> np.ndarray:
    """[..., N] -> [...] entropy of each row in nats (0 log 0 = 0), in the rows' dtype.

    Same values as ``scipy.special.entr(rows).sum(-1)``, ~5x faster on attention rows, which are
    mostly zeros: numpy's vectorised log skips them, entr branches on every element.
    """
    logs = np.log(rows, out=np.zeros_like(rows), where=rows > 0)
    return -(rows * logs).sum(axis=-1)


def _entropy_bits(rows: np.ndarray) -> np.ndarray:
    """[..., N] -> [...] entropy of each row in bits."""
    return row_entropy(rows) / np.log(2.0)


def _mean_over(values: np.ndarray, rows: np.ndarray) -> float:
    """Mean of ``values`` where ``rows`` is True; 0.0 when no row qualifies (no evidence)."""
    return float(values[rows].mean()) if rows.any() else 0.0
