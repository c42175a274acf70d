"""The context-mixing ratio of Kobayashi et al. (2021, "Incorporating Residual and Normalization
Layers into Analysis of Masked Language Models", EMNLP), from the maps :mod:`models.mixing` builds.

A row i of a map says how much of token i's new vector each token j contributes. The part from
the other tokens mixes context in; the diagonal (with the residual, in ATTN+RES and ATTN+RES+LN)
preserves the token itself. The ratio of a layer is the mean over query rows of

    r_i = sum_{j != i} M_ij / sum_j M_ij

Rows with no choice (row 0 of a causal model sees only itself) and rows of zeros are left out.
"""

from __future__ import annotations

import numpy as np


def mixing_ratio(maps: np.ndarray, causal: bool) -> np.ndarray:
    """[...] mean context-mixing ratio of [..., N, N] maps (rows = the token being updated)."""
    values = maps.astype(np.float64)
    n = values.shape[-1]
    totals = values.sum(axis=-1)  # [..., N]
    own = np.diagonal(values, axis1=-2, axis2=-1)  # [..., N]
    shares = np.divide(totals - own, totals, out=np.zeros_like(totals), where=totals > 0)
    rows = (totals > 0) & (np.arange(n) >= (1 if causal else 0))  # causal row 0 cannot mix
    counted = rows.sum(axis=-1)
    return np.where(counted > 0, (shares * rows).sum(axis=-1) / np.maximum(counted, 1), 0.0).astype(np.float32)
