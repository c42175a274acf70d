"""Attention sinks: tokens that draw far more attention than their content explains
(after Yu et al. 2024, "Unveiling and Harnessing Hidden Attention Sinks": a token is a sink when
the attention it receives exceeds alpha / N).

The beginning-of-sequence token is the famous sink, but sinks also form mid-prompt (often on
punctuation). A sink is a property of a token across layers, so callers reduce each layer to one
[N] vector with ``received_attention`` as they stream layers, then call ``sink_tokens`` once.
"""

from __future__ import annotations

import numpy as np

SINK_MULTIPLE = 5.0  # alpha of the alpha / N rule: received attention (a share, 0..1) x N at which a layer counts a key
CAUSAL_UNIFORM_MULTIPLE = 2.0  # causal keys: never below this multiple of what uniform causal attention gives
SINK_LAYER_FRACTION = 0.5  # share of layers (0..1) in which a key must count to be flagged a sink
SINK_MIN_QUERY_FRACTION = 0.25  # causal keys must be visible to this share of queries (0..1) to be
#                                 flagged: the last keys are seen by a handful of nearby queries
#                                 only, and local attention would make every one of them a "sink"


def visible_queries(n_tokens: int, causal: bool) -> np.ndarray:
    """[N] int: how many queries can attend to each key (N - j in a causal model, N otherwise)."""
    if causal:
        return np.arange(n_tokens, 0, -1)
    return np.full(n_tokens, n_tokens)


def received_attention(attention: np.ndarray, causal: bool) -> np.ndarray:
    """[H, N, N] -> [N] float32: mean attention each key receives per head and per query that
    can see it.

    Dividing by the visible queries rather than N keeps a causal model's late tokens from looking
    neglected merely because few queries come after them.
    """
    n_heads, n_tokens = attention.shape[0], attention.shape[-1]
    total = attention.sum(axis=(0, 1), dtype=np.float64)  # [N] summed over heads and queries
    return (total / (n_heads * visible_queries(n_tokens, causal))).astype(np.float32)


def uniform_received(n_tokens: int, causal: bool) -> np.ndarray:
    """[N] float64: what ``received_attention`` gives when every query spreads evenly over the
    keys it may see: 1/N bidirectionally; mean over q >= j of 1/(q+1) for a causal key j, which
    is about ln(N)/N for key 0 (every query can see it), so uniform attention alone flags nothing.
    """
    if not causal:
        return np.full(n_tokens, 1.0 / n_tokens)
    per_query = 1.0 / np.arange(1, n_tokens + 1)  # [N] weight query q gives each visible key
    tail_sums = np.cumsum(per_query[::-1])[::-1]  # [N] sum over q >= j
    return tail_sums / visible_queries(n_tokens, causal=True)


def sink_threshold(n_tokens: int, causal: bool, alpha: float = SINK_MULTIPLE) -> np.ndarray:
    """[N] float64: received attention at which a layer counts a key as a sink.

    The alpha / N rule. On a causal model it alone is wrong both ways: uniform causal attention
    gives key 0 about ln(N) / N (over alpha / N beyond ~150 tokens), and a 5x-uniform rule can
    never flag key 0 below ~18 tokens (its ceiling is N / H_N). So a causal key must also receive
    CAUSAL_UNIFORM_MULTIPLE x what uniform causal attention gives it.
    """
    rule = np.full(n_tokens, alpha / max(n_tokens, 1))
    if not causal:
        return rule
    return np.maximum(rule, CAUSAL_UNIFORM_MULTIPLE * uniform_received(n_tokens, causal=True))


def sink_rule(causal: bool, alpha: float = SINK_MULTIPLE) -> str:
    """The rule as the page states it beside the flags."""
    rule = f"receives more than {alpha:g}/N of the attention (alpha/N rule, Yu et al. 2024)"
    if causal:
        rule += f" and over {CAUSAL_UNIFORM_MULTIPLE:g}x what uniform causal attention gives it"
    return f"a token is a sink when it {rule} in at least {SINK_LAYER_FRACTION:.0%} of the layers"


def sink_tokens(
    received_per_layer: np.ndarray,
    *,
    causal: bool,
    threshold: float = SINK_MULTIPLE,
    layer_fraction: float = SINK_LAYER_FRACTION,
) -> dict[str, np.ndarray]:
    """Flag keys over :func:`sink_threshold` (with alpha = ``threshold``) in at least
    ``layer_fraction`` of the layers.

    ``received_per_layer`` is [L, N], one ``received_attention`` row per layer. Returns
    ``score`` [N] float32 (mean ratio to uniform attention over layers), ``layer_share`` [N]
    float32 (share of layers over the threshold) and ``is_sink`` [N] bool.
    """
    received = np.asarray(received_per_layer, dtype=np.float64)  # [L, N]
    n_tokens = received.shape[-1]
    ratio = received / uniform_received(n_tokens, causal)  # [L, N]
    layer_share = (received >= sink_threshold(n_tokens, causal, threshold)).mean(axis=0)  # [N]
    eligible = visible_queries(n_tokens, causal) >= SINK_MIN_QUERY_FRACTION * n_tokens  # [N]
    return {
        "score": ratio.mean(axis=0).astype(np.float32),
        "layer_share": layer_share.astype(np.float32),
        "is_sink": (layer_share >= layer_fraction) & eligible,
    }
