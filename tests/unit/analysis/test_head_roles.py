import math

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon

from app.analysis.head_roles import (
    OFFSETS,
    allowed_keys,
    cluster_heads,
    head_metrics,
    js_distance_matrix,
    offset_name,
    punctuation_mask,
    role_labels,
)

# Bidirectional, 3 tokens: key 0 is special ([CLS]), key 2 is punctuation (".").
SPECIAL = np.array([True, False, False])
PUNCTUATION = np.array([False, False, True])
BIDIRECTIONAL = np.array(
    [
        np.eye(3),  # self
        np.full((3, 3), 1 / 3),  # uniform
        [[1, 0, 0], [1, 0, 0], [1, 0, 0]],  # everything on key 0
    ],
    dtype=np.float32,
)  # [H=3, N=3, N=3]
CAUSAL = np.array(
    [
        [[1, 0, 0], [1, 0, 0], [0, 1, 0]],  # previous token
        [[1, 0, 0], [0.5, 0.5, 0], [1 / 3, 1 / 3, 1 / 3]],  # uniform over allowed keys
    ],
    dtype=np.float32,
)  # [H=2, N=3, N=3]


def metrics_of(attention: np.ndarray, causal: bool) -> dict[str, np.ndarray]:
    return head_metrics(attention, SPECIAL, PUNCTUATION, causal=causal)


@pytest.mark.parametrize(
    "tokens, expected",
    [
        ([".", ",", " ...", "?!"], [True, True, True, True]),
        (["Hello", "a.", "[CLS]", "</s>"], [False, False, False, False]),
        (["", "  ", "\n"], [False, False, False]),
        (["$", "«", "—", " ("], [True, True, True, True]),
    ],
)
def test_punctuation_mask(tokens, expected):
    mask = punctuation_mask(tokens)
    assert mask.dtype == bool
    np.testing.assert_array_equal(mask, expected)


@pytest.mark.parametrize("causal, expected", [(True, [1, 2, 3]), (False, [3, 3, 3])])
def test_allowed_keys(causal, expected):
    np.testing.assert_array_equal(allowed_keys(3, causal), expected)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("entropy", [0.0, math.log(3), 0.0]),
        ("entropy_norm", [0.0, 1.0, 0.0]),
        ("distance", [0.0, 8 / 9, 1.0]),  # uniform rows: (0+1+2)/3, (1+0+1)/3, (2+1+0)/3
        ("sink", [1 / 3, 1 / 3, 1.0]),
        ("special", [1 / 3, 1 / 3, 1.0]),
        ("punctuation", [1 / 3, 1 / 3, 0.0]),
        ("delimiter", [2 / 3, 2 / 3, 1.0]),
        ("self", [1.0, 1 / 3, 1 / 3]),
        ("previous", [0.0, 1 / 3, 0.5]),  # rows 1 and 2 only: row 0 has no previous token
        ("next", [0.0, 1 / 3, 0.0]),  # rows 0 and 1 only
        ("offset-2", [0.0, 1 / 3, 1.0]),  # row 2 only
        ("offset+2", [0.0, 1 / 3, 0.0]),  # row 0 only
        ("offset+3", [0.0, 0.0, 0.0]),  # no row has that key
    ],
)
def test_head_metrics_bidirectional_by_hand(name, expected):
    values = metrics_of(BIDIRECTIONAL, causal=False)[name]
    assert values.dtype == np.float32 and values.shape == (3,)
    np.testing.assert_allclose(values, expected, atol=1e-6)


@pytest.mark.parametrize(
    "name, expected",
    [
        # Row 0 of a causal model has one allowed key and no choice: rows 1 and 2 only.
        ("entropy", [0.0, (math.log(2) + math.log(3)) / 2]),
        ("entropy_norm", [0.0, 1.0]),
        ("distance", [1.0, (0.5 + 1.0) / 2]),
        ("sink", [0.5, (0.5 + 1 / 3) / 2]),
        ("previous", [1.0, (0.5 + 1 / 3) / 2]),
        ("self", [0.0, (0.5 + 1 / 3) / 2]),
        ("next", [0.0, 0.0]),
    ],
)
def test_head_metrics_causal_by_hand(name, expected):
    np.testing.assert_allclose(metrics_of(CAUSAL, causal=True)[name], expected, atol=1e-6)


def test_head_metrics_has_every_offset():
    names = set(metrics_of(CAUSAL, causal=True))
    assert {offset_name(k) for k in OFFSETS} <= names
    assert offset_name(-2) == "offset-2" and offset_name(3) == "offset+3"


def test_head_metrics_skip_rows_of_zeros():
    attention = BIDIRECTIONAL.copy()
    attention[:, 1] = 0.0  # query 1 attends nowhere (padding)
    metrics = metrics_of(attention, causal=False)
    np.testing.assert_allclose(metrics["self"], [1.0, 1 / 3, 0.5], atol=1e-6)
    all_zero = metrics_of(np.zeros((1, 3, 3), dtype=np.float32), causal=False)
    assert all(np.all(v == 0) for v in all_zero.values())


def base_metrics(**overrides: float) -> dict[str, np.ndarray]:
    """[H=1] metrics of a head that matches no rule, with some values overridden."""
    metrics = {"sink": 0.1, "self": 0.1, "previous": 0.1, "next": 0.1, "delimiter": 0.1, "entropy_norm": 0.5}
    metrics |= {offset_name(k): 0.0 for k in OFFSETS}
    return {name: np.array([value], dtype=np.float32) for name, value in (metrics | overrides).items()}


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({}, "MIXED"),
        ({"sink": 0.5}, "SINK"),
        ({"sink": 0.9, "delimiter": 0.9}, "SINK"),
        ({"self": 0.6}, "SELF"),
        ({"previous": 0.7, "delimiter": 0.6}, "PREVIOUS"),
        ({"next": 0.8, "entropy_norm": 0.9}, "NEXT"),
        ({"offset-3": 0.6}, "OFFSET-3"),
        ({"offset+2": 0.55, "offset-2": 0.45}, "OFFSET+2"),
        ({"delimiter": 0.6}, "DELIMITER"),
        ({"delimiter": 0.6, "entropy_norm": 0.9}, "BROAD"),
        ({"entropy_norm": 0.8}, "BROAD"),
        ({"sink": 0.49, "entropy_norm": 0.79}, "MIXED"),
    ],
)
def test_role_labels_priority(overrides, expected):
    assert role_labels(base_metrics(**overrides)).tolist() == [expected]


def test_role_labels_of_hand_built_heads():
    bidirectional = role_labels(metrics_of(BIDIRECTIONAL, causal=False))
    causal = role_labels(metrics_of(CAUSAL, causal=True))
    assert bidirectional.tolist() == ["SELF", "BROAD", "SINK"]
    # Three tokens are too few to tell: row 1's previous token is key 0, so sink share is 0.5.
    assert causal.tolist() == ["SINK", "BROAD"]


def test_previous_token_head_of_a_longer_causal_prompt():
    n_tokens = 6
    previous = np.eye(n_tokens, k=-1, dtype=np.float32)
    previous[0, 0] = 1.0
    flags = np.zeros(n_tokens, dtype=bool)
    metrics = head_metrics(previous[None], flags, flags, causal=True)
    np.testing.assert_allclose(metrics["sink"], [1 / 5])
    assert role_labels(metrics).tolist() == ["PREVIOUS"]


def test_role_labels_keep_the_layer_by_head_shape():
    per_layer = [metrics_of(BIDIRECTIONAL, causal=False)] * 2
    stacked = {name: np.stack([m[name] for m in per_layer]) for name in per_layer[0]}  # [L, H]
    labels = role_labels(stacked)
    assert labels.shape == (2, 3) and labels.dtype.kind == "U"


def test_js_distance_by_hand():
    one_hot = np.array([[[1, 0], [1, 0]]], dtype=np.float32)  # [1, N=2, N=2]
    other = np.array([[[0, 1], [0, 1]]], dtype=np.float32)  # disjoint: 1 bit per row
    even = np.array([[[0.5, 0.5], [0.5, 0.5]]], dtype=np.float32)
    distances = js_distance_matrix(np.concatenate([one_hot, one_hot, other, even]))
    assert distances.dtype == np.float32
    np.testing.assert_allclose(np.diag(distances), 0.0)
    np.testing.assert_allclose(distances, distances.T)
    assert distances[0, 1] == 0.0
    np.testing.assert_allclose(distances[0, 2], 1.0, atol=1e-6)
    # [1, 0] vs [.5, .5]: H([.75, .25]) - (0 + 1) / 2 bits.
    expected = math.sqrt(-(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25)) - 0.5)
    np.testing.assert_allclose(distances[0, 3], expected, atol=1e-6)


def test_js_distance_matches_scipy_row_by_row():
    rng = np.random.default_rng(0)
    maps = rng.random((3, 5, 5)).astype(np.float32)
    maps /= maps.sum(axis=-1, keepdims=True)
    expected = np.sqrt((jensenshannon(maps[0], maps[2], base=2, axis=1) ** 2).mean())
    np.testing.assert_allclose(js_distance_matrix(maps)[0, 2], expected, rtol=1e-5)


def test_cluster_heads_separates_two_groups():
    diagonal = np.eye(4, dtype=np.float32)
    first_key = np.zeros((4, 4), dtype=np.float32)
    first_key[:, 0] = 1.0
    noise = np.full((4, 4), 0.01, dtype=np.float32)
    maps = np.stack([diagonal, first_key, diagonal * 0.96 + noise, first_key * 0.96 + noise])
    labels = cluster_heads(js_distance_matrix(maps), n_clusters=2)
    assert labels.dtype == np.int64
    assert labels[0] == labels[2] and labels[1] == labels[3] and labels[0] != labels[1]
    assert set(labels.tolist()) == {0, 1}


@pytest.mark.parametrize("n_maps, n_clusters, expected", [(1, 3, [0]), (3, 1, [0, 0, 0])])
def test_cluster_heads_small_cases(n_maps, n_clusters, expected):
    maps = np.stack([np.eye(3, dtype=np.float32)] * n_maps)
    assert cluster_heads(js_distance_matrix(maps), n_clusters).tolist() == expected


def test_cluster_heads_rejects_zero_clusters():
    with pytest.raises(ValueError, match="n_clusters"):
        cluster_heads(np.zeros((2, 2), dtype=np.float32), 0)
