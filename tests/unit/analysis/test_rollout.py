import numpy as np
import pytest

from app.analysis.rollout import (
    attention_flow,
    flow_size_ok,
    fuse_heads,
    iter_rollout,
    residual_adjust,
)

HEADS = np.array(
    [
        [[1.0, 0.0], [0.2, 0.8]],
        [[1.0, 0.0], [0.6, 0.4]],
    ],
    dtype=np.float32,
)  # [H=2, N=2, N=2], causal

# Three tokens, two layers, no residual: worked by hand in test_flow_two_layers_by_hand.
LAYER_1 = np.array([[1.0, 0.0, 0.0], [0.6, 0.4, 0.0], [0.1, 0.2, 0.7]], dtype=np.float32)
LAYER_2 = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=np.float32)


def reference_rollout(layers, residual: bool = True) -> np.ndarray:
    """[L, N, N] float64 rollout written from Abnar & Zuidema 2020, independent of the module:
    per layer A_hat = 0.5 A + 0.5 I (or A alone), rows renormalised (a row of zeros stays zeros),
    and after layer l the product A_hat_l ... A_hat_1."""
    product, out = None, []
    for attention in layers:
        attention = np.asarray(attention, dtype=np.float64)
        adjusted = 0.5 * attention + 0.5 * np.eye(len(attention)) if residual else attention
        sums = adjusted.sum(axis=-1, keepdims=True)
        adjusted = np.divide(adjusted, sums, out=np.zeros_like(adjusted), where=sums > 0)
        product = adjusted if product is None else adjusted @ product
        out.append(product)
    return np.stack(out)


def rollout_of(layers, residual: bool = True) -> np.ndarray:
    """[L, N, N] float32: every layer's cumulative rollout from the module's generator."""
    return np.stack(list(iter_rollout(layers, residual)))


def random_causal_layers(n_layers: int, n_tokens: int, seed: int) -> np.ndarray:
    """[L, N, N] float32 causal rows that sum to 1."""
    rng = np.random.default_rng(seed)
    weights = rng.random((n_layers, n_tokens, n_tokens)) ** 3 * np.tril(np.ones((n_tokens, n_tokens)))
    return (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize(
    "how, expected",
    [
        ("mean", [[1.0, 0.0], [0.4, 0.6]]),
        ("max", [[1.0, 0.0], [0.6, 0.8]]),
        ("min", [[1.0, 0.0], [0.2, 0.4]]),
    ],
)
def test_fuse_heads(how, expected):
    fused = fuse_heads(HEADS, how)
    assert fused.dtype == np.float32
    np.testing.assert_allclose(fused, expected, atol=1e-6)


def test_fuse_heads_rejects_unknown_method():
    with pytest.raises(ValueError, match="mean"):
        fuse_heads(HEADS, "median")


def test_residual_adjust_adds_half_identity():
    adjusted = residual_adjust(np.array([[0.0, 1.0], [1.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(adjusted, [[0.5, 0.5], [0.5, 0.5]])
    assert adjusted.dtype == np.float32


@pytest.mark.parametrize("residual, expected_row", [(True, [0.0, 1.0]), (False, [0.0, 0.0])])
def test_residual_adjust_keeps_rows_of_zeros_finite(residual, expected_row):
    adjusted = residual_adjust(np.array([[1.0, 0.0], [0.0, 0.0]], dtype=np.float32), residual)
    np.testing.assert_allclose(adjusted[1], expected_row)


@pytest.mark.parametrize("residual", [True, False])
def test_rollout_of_one_layer_is_the_adjusted_attention(residual):
    rollout = rollout_of([LAYER_1], residual)
    assert rollout.shape == (1, 3, 3) and rollout.dtype == np.float32
    np.testing.assert_allclose(rollout[0], residual_adjust(LAYER_1, residual))
    np.testing.assert_allclose(rollout, reference_rollout([LAYER_1], residual), rtol=1e-6)


@pytest.mark.parametrize("residual", [True, False])
def test_rollout_of_identity_is_identity(residual):
    layers = np.stack([np.eye(4, dtype=np.float32)] * 3)  # [L, N, N] stack works like a list
    np.testing.assert_allclose(rollout_of(layers, residual), layers)


def test_rollout_two_layers_by_hand():
    # A_hat = [[1, 0], [0.5, 0.5]] both layers; A_hat @ A_hat = [[1, 0], [0.75, 0.25]].
    attention = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    rollout = rollout_of([attention, attention])
    np.testing.assert_allclose(rollout[0], [[1.0, 0.0], [0.5, 0.5]])
    np.testing.assert_allclose(rollout[1], [[1.0, 0.0], [0.75, 0.25]])


def test_rollout_rows_sum_to_one_and_stay_causal():
    rollout = rollout_of(random_causal_layers(4, 6, seed=0))
    np.testing.assert_allclose(rollout.sum(axis=-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(rollout, k=1) == 0)


@pytest.mark.parametrize("residual", [True, False])
def test_rollout_matches_the_papers_definition(residual):
    layers = random_causal_layers(5, 7, seed=4)
    np.testing.assert_allclose(rollout_of(layers, residual), reference_rollout(layers, residual), atol=1e-6)


@pytest.mark.parametrize("n_tokens", [300, 517])
def test_lower_triangular_rollout_of_a_long_prompt_matches_the_definition(n_tokens):
    """Past two product blocks a causal model's rollout multiplies only the non-zero blocks: the
    same numbers as the full products (517: a last block of 5 rows)."""
    layers = random_causal_layers(3, n_tokens, seed=n_tokens)
    lower = np.stack(list(iter_rollout(layers, lower=True)))
    np.testing.assert_allclose(lower, reference_rollout(layers), atol=1e-5)
    assert np.all(np.triu(lower, k=1) == 0)


def test_iter_rollout_streams_from_a_generator():
    layers = random_causal_layers(3, 5, seed=1)
    streamed = list(iter_rollout(layer for layer in layers))
    np.testing.assert_allclose(np.stack(streamed), reference_rollout(layers), atol=1e-6)


@pytest.mark.parametrize("residual", [True, False])
def test_flow_of_one_layer_is_the_output_row(residual):
    # One layer: each input has a single edge to the output, so its flow is that edge's weight.
    flow = attention_flow([LAYER_1], output_position=2, residual=residual)
    assert flow.dtype == np.float32
    np.testing.assert_allclose(flow, residual_adjust(LAYER_1, residual)[2], atol=1e-6)


def test_flow_two_layers_by_hand():
    # Output (2, 2) has in-edges 0.2, 0.3, 0.5 from middle nodes 0, 1, 2; each middle node is a
    # separate path, so the min cut takes min(edge in, edge out) per middle node:
    #   input 0: min(1, .2) + min(.6, .3) + min(.1, .5) = 0.6
    #   input 1:               min(.4, .3) + min(.2, .5) = 0.5
    #   input 2:                             min(.7, .5) = 0.5
    flow = attention_flow([LAYER_1, LAYER_2], output_position=2, residual=False)
    np.testing.assert_allclose(flow, [0.6, 0.5, 0.5], atol=1e-6)
    # Rollout row: .2 [1, 0, 0] + .3 [.6, .4, 0] + .5 [.1, .2, .7] = [.43, .22, .35].
    rollout = reference_rollout([LAYER_1, LAYER_2], residual=False)[-1, 2]
    np.testing.assert_allclose(rollout, [0.43, 0.22, 0.35], atol=1e-6)
    assert np.argmax(flow) == np.argmax(rollout) == 0


@pytest.mark.parametrize("residual", [True, False])
def test_flow_is_bounded_by_one_and_by_rollout_below(residual):
    # Sending rollout[out, j] along every path in proportion to its weight is a feasible flow,
    # so max flow >= rollout; the output's in-edges sum to 1, so flow <= 1.
    layers = random_causal_layers(3, 6, seed=2)
    flow = attention_flow(layers, output_position=5, residual=residual)
    rollout = reference_rollout(layers, residual)[-1, 5]
    assert np.all(flow <= 1.0 + 1e-6) and np.all(flow >= rollout - 1e-5)


def test_flow_of_a_causal_model_ignores_later_tokens():
    flow = attention_flow(random_causal_layers(2, 6, seed=3), output_position=2)
    assert np.all(flow[3:] == 0) and np.all(flow[:3] > 0)


@pytest.mark.parametrize("position", [-1, 3])
def test_flow_rejects_positions_outside_the_prompt(position):
    with pytest.raises(ValueError, match="output_position"):
        attention_flow([LAYER_1], output_position=position)


@pytest.mark.parametrize(
    "n_layers, n_tokens, ok",
    [(6, 32, True), (30, 64, True), (6, 128, True), (12, 128, True), (30, 128, False), (6, 512, False)],
)
def test_flow_size_ok(n_layers, n_tokens, ok):
    assert flow_size_ok(n_layers, n_tokens) is ok


@pytest.mark.parametrize("residual, expected", [(True, [0.0, 1.0]), (False, [0.0, 0.0])])
def test_rows_of_zeros_are_safe(residual, expected):
    silent = np.zeros((2, 2), dtype=np.float32)
    np.testing.assert_allclose(rollout_of([silent], residual)[0, 1], expected)
    np.testing.assert_allclose(attention_flow([silent, silent], 1, residual), expected)
