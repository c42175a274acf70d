"""The head-fused prefix maps rollout and flow read: computed in torch, row block by row block,
from q, k and each row's log-sum-exp; checked against the model's own eager attention fused as
Abnar & Zuidema (2020) fuse heads (mean), and by max and min."""

from __future__ import annotations

import numpy as np
import pytest

from app import insights
from models.capture import run_capture
from tests.unit.models.test_capture import reference_attention

LONG_PROMPT = " ".join(["The committee met on Tuesday, argued for hours, and then agreed to wait."] * 6)
FUSE = {"mean": np.mean, "max": np.max, "min": np.min}


@pytest.mark.parametrize("name", ["tiny-gpt2", "tiny-llama", "tiny-bert"])
@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
def test_fused_prefix_maps_match_the_models_attention(tiny_models, monkeypatch, name, fusion):
    handle = tiny_models[name]
    monkeypatch.setattr(insights, "FUSED_ROWS", 20)  # several row blocks, the last one short
    capture = run_capture(handle, LONG_PROMPT)
    assert capture.n_tokens > 2 * insights.FUSED_ROWS
    expected = reference_attention(handle, LONG_PROMPT)  # [L, H, N, N] the model's eager attention
    fused = list(insights._fused_layers(capture, fusion))
    assert len(fused) == capture.n_layers
    for layer, ours in enumerate(fused):
        np.testing.assert_allclose(ours, FUSE[fusion](expected[layer], axis=0), atol=1e-5, err_msg=f"layer {layer}")
