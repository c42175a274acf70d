"""Row shares, for norm-based attention (Kobayashi et al. 2020, "Attention is not only a weight")
and for rollout.

A head's output for query i is sum_j alpha_ij f(x_j). A large weight on a token whose
transformed vector f(x_j) is tiny moves nothing: sink tokens typically get high weight and small
norms. Weighting each alpha_ij by ||f(x_j)|| shows what actually reaches the output; the views'
"value" (row shares) and "norm" (raw) modes do that in :mod:`app.shaping`, block by block as it
reads attention, so no [H, N, N] product is ever built here. Both it and rollout then need each
row as shares.
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
