"""Norm-based attention (Kobayashi et al. 2020, "Attention is not only a weight").

A head's output for query i is sum_j alpha_ij f(x_j). A large weight on a token whose
transformed vector f(x_j) is tiny moves nothing: sink tokens typically get high weight and small
norms. Weighting each alpha_ij by ||f(x_j)|| shows what actually reaches the output.
"""
from __future__ import annotations

import numpy as np


def value_weighted(attention: np.ndarray, value_norms: np.ndarray) -> np.ndarray:
    """[H, N, N] weights, [H, N] norms of each key's value -> [H, N, N] float32 ||alpha_ij f(x_j)||.

    The paper's f includes the output projection; the capture stores ||v_j|| (without W_O), a
    per-head rescaling of the same picture. Raises ValueError if the shapes disagree.
    """
    if value_norms.shape != (attention.shape[0], attention.shape[-1]):
        raise ValueError(
            f"value_norms {value_norms.shape} must be [heads, keys] = "
            f"{(attention.shape[0], attention.shape[-1])} to match attention {attention.shape}"
        )
    return (attention * value_norms[:, None, :]).astype(np.float32)  # [H, N, N]


def normalise_rows(x: np.ndarray) -> np.ndarray:
    """Same shape, float32: each last-axis row divided by its sum, so views can show shares.

    Rows that sum to zero (padding, masked queries) stay zero instead of becoming NaN.
    """
    values = x.astype(np.float32)
    sums = values.sum(axis=-1, keepdims=True)
    return np.divide(values, sums, out=np.zeros_like(values), where=sums > 0)
