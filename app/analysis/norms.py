"""Row shares, for norm-based attention (Kobayashi et al. 2020, "Attention is not only a weight")
and for rollout.

A head's output for query i is sum_j alpha_ij f(x_j). A large weight on a token whose
transformed vector f(x_j) is tiny moves nothing: sink tokens typically get high weight and small
norms. Weighting each alpha_ij by ||f(x_j)|| shows what actually reaches the output; the views'
"value" (row shares) and "norm" (raw) modes do that in :mod:`app.shaping`, block by block as it
reads attention, so no [H, N, N] product is ever built here. Both it and rollout then need each
row as shares.

The layer as a whole (section 5 of the paper) sums the heads before the norm,
||sum_h alpha^h_ij f_h(x_j)||, so heads that cancel count as nothing: :func:`layer_norms` computes
it from the heads' weights and each key token's Gram matrix G_j[h, g] = f_h(x_j) . f_g(x_j), which
the capture stores (``Capture.output_grams``).
"""

from __future__ import annotations

import numpy as np


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Same shape, float32: each last-axis row divided by its sum, so views can show shares.

    Rows that sum to zero (padding, masked queries) stay zero instead of becoming NaN.
    """
    values = x.astype(np.float32)
    sums = values.sum(axis=-1, keepdims=True)
    return np.divide(values, sums, out=np.zeros_like(values), where=sums > 0)


def layer_norms(weights: np.ndarray, grams: np.ndarray) -> np.ndarray:
    """[r, c] float32 ||sum_h alpha^h_ij f_h(x_j)|| = sqrt(alpha_ij^T G_j alpha_ij) from the heads'
    weights [H, r, c] and the key tokens' Grams [c, H, H].

    Summed over the H (H + 1) / 2 head pairs elementwise, in place: a [c, r, H] batch of H x H
    products was 3x slower in numpy (its transpose alone costs more). Rounding can leave a
    vanishing sum slightly negative; it counts as 0.
    """
    heads = weights.shape[0]
    total = np.zeros(weights.shape[1:], dtype=np.float32)
    product = np.empty_like(total)
    for h in range(heads):
        for g in range(h, heads):
            np.multiply(weights[h], weights[g], out=product)
            product *= grams[:, h, g].astype(np.float32) * (1 if g == h else 2)
            total += product
    return np.sqrt(np.maximum(total, 0, out=total), out=total)
