"""Capture -> TransformerLens-style head detector scores (app/analysis/detectors.py) for the
head-roles view: every head's previous-token, duplicate-token and induction score on the prompt,
measured over the same leading tokens as the head summary, and the INDUCTION / DUPLICATE roles
they earn when the prompt repeats."""

from __future__ import annotations

import functools

import numpy as np

from app.analysis import detectors
from app.insights import analysed_tokens
from app.protocol import encode_array
from models.record import Capture

# A marked pair read on its own costs about as much as 32 cells of the whole map (smollm2, 1024
# tokens: 73k pairs of a sentence repeated 70 times took 4.6 s, the whole maps 2.2 s; natural text's
# ~10k pairs at 793 tokens took 0.6 s), so past n^2 / PAIR_COST pairs the map is computed instead.
PAIR_COST = 32


def detector_metrics(capture: Capture) -> dict[str, np.ndarray]:
    """[L, H] float32 score per detector, and ``repeats`` (0-d bool)."""
    n = analysed_tokens(capture)
    patterns = detectors.detection_patterns(capture.pieces[:n], capture.special[:n])
    pairs = {name: detectors.marked_pairs(pattern) for name, pattern in patterns.items()}
    dense = sum(len(rows) for rows, _ in pairs.values()) * PAIR_COST > n * n
    scores: dict[str, list[np.ndarray]] = {name: [] for name in detectors.DETECTORS}
    for layer in range(capture.n_layers):
        reading = capture.masks[capture.mask_index[layer]][:n, :n].any(axis=-1).sum()  # rows that sum to 1
        totals = np.full(capture.n_heads, float(reading))
        at = _dense_reader(capture, layer, n) if dense else functools.partial(capture.attention_at, layer)
        for name, (rows, cols) in pairs.items():
            scores[name].append(detectors.detector_score(at(rows, cols), totals))
    return {
        **{name: np.stack(values) for name, values in scores.items()},
        "repeats": np.array(detectors.repeats(patterns)),
    }


def _dense_reader(capture: Capture, layer: int, n: int):
    """Pairs read off the layer's [H, n, n] map, for prompts so repetitive that their marked pairs
    cost more one by one than the whole map."""
    block = slice(0, n)
    attention = np.stack([capture.attention_block(layer, head, block, block) for head in range(capture.n_heads)])
    return lambda rows, cols: attention[:, rows, cols]


def with_detectors(payload: dict, found: dict[str, np.ndarray]) -> dict:
    """The head summary payload with the detector scores as measures and their roles."""
    scores = {name: found[name] for name in detectors.DETECTORS}
    repeated = bool(found["repeats"])
    roles = detectors.detector_roles(np.array(payload["roles"]), scores, repeated)
    metrics = {**payload["metrics"], **{name: encode_array(value, "float16") for name, value in scores.items()}}
    return {**payload, "metrics": metrics, "roles": roles.tolist(), "repeats": repeated}
