import numpy as np
import pytest

from app.analysis.norms import normalise_rows

ATTENTION = np.array([[[0.5, 0.5], [0.9, 0.1]]], dtype=np.float32)  # [H=1, N=2, N=2]
VALUE_NORMS = np.array([[0.5, 4.0]], dtype=np.float32)  # [H=1, N=2]: key 0 is a quiet sink


def test_value_weighting_moves_share_away_from_a_small_norm_sink():
    weighted = ATTENTION * VALUE_NORMS[:, None, :]  # alpha_ij * ||f(x_j)||, Kobayashi et al. 2020
    shares = normalise_rows(weighted)
    np.testing.assert_allclose(shares[0, 1], [0.45 / 0.85, 0.4 / 0.85], rtol=1e-6)
    assert shares[0, 1, 0] < ATTENTION[0, 1, 0]


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([[1.0, 3.0], [2.0, 2.0]], [[0.25, 0.75], [0.5, 0.5]]),
        ([[0.0, 0.0], [0.0, 5.0]], [[0.0, 0.0], [0.0, 1.0]]),  # a row of zeros stays zeros
    ],
)
def test_normalise_rows(rows, expected):
    shares = normalise_rows(np.array(rows, dtype=np.float32))
    assert shares.dtype == np.float32
    np.testing.assert_allclose(shares, expected)


def test_normalise_rows_keeps_the_shape_of_a_head_stack():
    stack = np.arange(12, dtype=np.float32).reshape(3, 2, 2)  # [H, N, N]
    shares = normalise_rows(stack)
    assert shares.shape == stack.shape
    np.testing.assert_allclose(shares[1:].sum(axis=-1), 1.0)
