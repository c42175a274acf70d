"""Capture -> TransformerLens-style head detector scores (app/analysis/detectors.py) for the
head-roles view: every head's previous-token, duplicate-token and induction score on the prompt,
measured over the same leading tokens as the head summary, and the INDUCTION / DUPLICATE roles
they earn when the prompt repeats."""

from __future__ import annotations

import numpy as np

from app.analysis import detectors
from app.insights import analysed_tokens
from app.protocol import encode_array
from models.record import Capture


def detector_metrics(capture: Capture) -> dict[str, np.ndarray]:
    """[L, H] float32 score per detector, and ``repeats`` (0-d bool)."""
    n = analysed_tokens(capture)
    block = slice(0, n)
    patterns = detectors.detection_patterns(capture.pieces[:n], capture.special[:n])
    per_layer = [
        detectors.detector_scores(
            np.stack([capture.attention_block(layer, head, block, block) for head in range(capture.n_heads)]),
            patterns,
        )
        for layer in range(capture.n_layers)
    ]
    scores = {name: np.stack([layer[name] for layer in per_layer]) for name in detectors.DETECTORS}
    return {**scores, "repeats": np.array(detectors.repeats(patterns))}


def with_detectors(payload: dict, found: dict[str, np.ndarray]) -> dict:
    """The head summary payload with the detector scores as measures and their roles."""
    scores = {name: found[name] for name in detectors.DETECTORS}
    repeated = bool(found["repeats"])
    roles = detectors.detector_roles(np.array(payload["roles"]), scores, repeated)
    metrics = {**payload["metrics"], **{name: encode_array(value, "float16") for name, value in scores.items()}}
    return {**payload, "metrics": metrics, "roles": roles.tolist(), "repeats": repeated}
