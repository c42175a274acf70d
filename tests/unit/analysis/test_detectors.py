"""Head detectors against the TransformerLens head-detector definition, written out here with
loops: previous-token, duplicate-token and induction patterns, and the "mul" score
sum(A * P) / sum(A)."""

import numpy as np
import pytest

from app.analysis.detectors import detection_patterns, detector_roles, detector_score, marked_pairs, repeats

PIECES = ["<s>", "A", "B", "C", "A", "B", "C"]  # a repeated sequence after a special token
SPECIAL = np.array([True] + [False] * 6)


def reference_patterns(pieces: list[str], special: np.ndarray) -> dict[str, np.ndarray]:
    n = len(pieces)
    previous, duplicate, induction = (np.zeros((n, n)) for _ in range(3))
    for i in range(n):
        if i > 0:
            previous[i, i - 1] = 1
        for j in range(i):
            if pieces[j] == pieces[i] and not special[j]:
                duplicate[i, j] = 1
                if j + 1 <= i:
                    induction[i, j + 1] = 1  # the token that followed the earlier copy
    return {"previous_token": previous, "duplicate_token": duplicate, "induction": induction}


def detector_scores(attention: np.ndarray, patterns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The app's scores for a whole [H, N, N] map: its attention at each pattern's marked pairs."""
    totals = attention.sum(axis=(-2, -1))
    return {name: detector_score(attention[:, *marked_pairs(pattern)], totals) for name, pattern in patterns.items()}


def random_attention(heads: int, n: int, seed: int = 0) -> np.ndarray:
    """[H, N, N] causal rows that sum to 1."""
    scores = np.random.default_rng(seed).normal(size=(heads, n, n)) * 3
    scores = np.where(np.tril(np.ones((n, n), dtype=bool)), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    return (weights / weights.sum(-1, keepdims=True)).astype(np.float32)


def test_patterns_follow_the_definition():
    patterns = detection_patterns(PIECES, SPECIAL)
    for name, expected in reference_patterns(PIECES, SPECIAL).items():
        np.testing.assert_array_equal(patterns[name], expected, err_msg=name)
    assert repeats(patterns)
    assert not repeats(detection_patterns(["<s>", "a", "b"], np.array([True, False, False])))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_are_the_share_of_attention_on_the_pattern(seed):
    attention = random_attention(3, len(PIECES), seed)
    scores = detector_scores(attention, detection_patterns(PIECES, SPECIAL))
    for name, pattern in reference_patterns(PIECES, SPECIAL).items():
        for head in range(3):
            on_pattern = sum(
                attention[head, q, k] * pattern[q, k] for q in range(len(PIECES)) for k in range(len(PIECES))
            )
            np.testing.assert_allclose(scores[name][head], on_pattern / attention[head].sum(), rtol=1e-5)


def test_an_ideal_induction_head_scores_the_share_of_rows_that_can_copy():
    n = len(PIECES)
    attention = np.zeros((1, n, n), dtype=np.float32)
    attention[0, np.arange(n), 0] = 1.0  # rows with nothing to copy rest on the first token
    for query, key in [(4, 2), (5, 3), (6, 4)]:  # second A -> first B, second B -> first C, ...
        attention[0, query] = 0
        attention[0, query, key] = 1.0
    scores = detector_scores(attention, detection_patterns(PIECES, SPECIAL))
    assert scores["induction"][0] == pytest.approx(3 / 7)
    roles = detector_roles(np.array(["SINK"]), scores, repeated=True)
    assert roles.tolist() == ["INDUCTION"]
    assert detector_roles(np.array(["SINK"]), scores, repeated=False).tolist() == ["SINK"]
