"""Head detectors from mechanistic-interpretability practice: previous-token, duplicate-token and
induction scores, with the conventions of TransformerLens' ``head_detector`` (Nanda et al.):

- a detection pattern P [N, N] marks the query/key pairs such a head attends to: the previous
  token (P[i, i-1]); an earlier occurrence of the same token (duplicate: P[i, j] for j < i with
  token j == token i); the token after an earlier occurrence (induction: the duplicate pattern
  shifted one key to the right, first column zero), each lower-triangular;
- the score is the "mul" measure, sum(A * P) / sum(A): the share of the head's attention that
  falls on the marked pairs (so at most the share of rows that have a marked pair at all).

Duplicate and induction patterns are empty on a prompt that repeats no token; callers report
whether it does. Token identity is the tokenizer's own token string (its id, one to one).
"""

from __future__ import annotations

import numpy as np

DETECTORS = ("previous_token", "duplicate_token", "induction")
INDUCTION_ROLE_SCORE = 0.3  # induction score (share, 0..1) from which a head is labelled INDUCTION
DUPLICATE_ROLE_SCORE = 0.3  # duplicate-token score from which a head is labelled DUPLICATE


def detection_patterns(pieces: list[str], special: np.ndarray) -> dict[str, np.ndarray]:
    """[N, N] float32 pattern per detector. Special tokens ([CLS], <s>) are never duplicates."""
    n = len(pieces)
    previous = np.eye(n, k=-1, dtype=np.float32)
    ids = np.unique(np.asarray(pieces, dtype=object), return_inverse=True)[1].reshape(-1)  # [N]
    same = (ids[:, None] == ids[None, :]) & ~np.asarray(special, dtype=bool)[None, :]
    duplicate = np.tril(same, k=-1).astype(np.float32)
    induction = np.zeros_like(duplicate)
    induction[:, 1:] = duplicate[:, :-1]  # the key after each earlier copy
    return {"previous_token": previous, "duplicate_token": duplicate, "induction": np.tril(induction)}


def repeats(patterns: dict[str, np.ndarray]) -> bool:
    """Whether the prompt repeats a token at all (else duplicate and induction scores are 0)."""
    return bool(patterns["duplicate_token"].any())


def marked_pairs(pattern: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pairs a 0/1 pattern marks: the only attention a score reads."""
    return np.nonzero(pattern)


def detector_score(on_pattern: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """[H] float32 "mul" score from the attention at a pattern's marked pairs [H, P] and each
    head's total attention [H] (the number of rows that read anything, as rows sum to 1)."""
    safe = np.where(totals > 0, totals, 1.0)
    return (on_pattern.sum(axis=-1, dtype=np.float64) / safe).astype(np.float32)


def detector_roles(roles: np.ndarray, scores: dict[str, np.ndarray], repeated: bool) -> np.ndarray:
    """Roles with INDUCTION and DUPLICATE where the prompt repeats and a head's score passes its
    threshold; induction first, as the more specific behaviour (an induction head's attention
    lands one past each duplicate)."""
    roles = np.asarray(roles).astype(object)
    if repeated:
        roles = np.where(scores["duplicate_token"] >= DUPLICATE_ROLE_SCORE, "DUPLICATE", roles)
        roles = np.where(scores["induction"] >= INDUCTION_ROLE_SCORE, "INDUCTION", roles)
    return roles.astype(str)
