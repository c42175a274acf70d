"""The capture on a CUDA GPU (flash / memory-efficient kernels), in half and full precision.
Skipped without a GPU; scripts/device-check runs these on a machine that has one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.capture import run_capture
from tests.conftest import converted
from tests.unit.models.test_capture import PROMPT, reference_attention
from tests.unit.models.test_fused import check_outputs_unchanged

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
HALF_TOLERANCE = 1e-2  # float16 outputs: kernels round and sum in different orders
HALF_ATTENTION_TOLERANCE = 2e-3  # float16 eager weights themselves are rounded to ~5e-4


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-llama", "tiny-bart"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_capture_on_the_gpu_matches_the_models_attention(tiny_models, name, dtype):
    cpu = tiny_models[name]
    handle = converted(cpu, dtype, "cuda")
    half = dtype == torch.float16
    check_outputs_unchanged(handle, HALF_TOLERANCE if half else 1e-4)
    capture = run_capture(handle, PROMPT)
    assert capture.info["attention_path"] == "fused" and capture.attention is None
    assert capture.queries.dtype == (np.float16 if half else np.float32)
    if cpu.config.is_encoder_decoder:
        return  # its blocks are checked on the CPU (test_fused); here: the kernels ran and outputs agree
    expected = reference_attention(handle, PROMPT)
    recorded = np.stack([capture.layer_attention(layer) for layer in range(capture.n_layers)])
    np.testing.assert_allclose(recorded, expected, atol=HALF_ATTENTION_TOLERANCE if half else 1e-3)


def test_the_packaged_encoder_records_from_the_kernel_in_half_precision(minilm):
    """The loader's choice on a GPU: minilm in float16. Its layers go the fused way (the score check
    compares in float32, where half-precision rounding does not look like a different attention)
    and the record gives back the attention the model computes in float16."""
    handle = converted(minilm, torch.float16, "cuda")
    capture = run_capture(handle, PROMPT)
    assert capture.info["attention_path"] == "fused" and capture.attention is None
    expected = reference_attention(handle, PROMPT)
    recorded = np.stack([capture.layer_attention(layer) for layer in range(capture.n_layers)])
    np.testing.assert_allclose(recorded, expected, atol=HALF_TOLERANCE)


def analyses(handle) -> dict[str, np.ndarray]:
    """What the views that re-read the model compute (arrays by name), on ``handle``'s device."""
    from models import feedforward, information_flow, interventions, language, mixing
    from models.ablation import Ablation

    found = {"mixing": mixing.context_mixing(handle, PROMPT)["maps"]}
    found["feedforward"] = feedforward.feed_forward_mixing(handle, PROMPT, 1)["maps"]
    if handle.is_causal:
        found.update({f"routes {k}": v for k, v in information_flow.route_importances(handle, PROMPT).items()})
        found["lens"] = language.logit_lens(handle, PROMPT, 0, 4)["probs"]
        heads = handle.config.num_attention_heads
        ablation = Ablation.of([1, heads + 2], "mean", handle.config.num_hidden_layers, heads)
        effect = interventions.ablation_effect(handle, PROMPT, ablation, 128)
        found["ablation"] = np.array([effect["prob_before"], effect["prob_after"], effect["kl"]])
    return found


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_the_analyses_give_on_the_gpu_what_they_give_on_the_cpu(tiny_models, name, dtype):
    """Context mixing, feed-forward mixing, routes and the lens read the model's tensors where it
    runs: on a GPU they must not mix devices, and they agree with the CPU's float32 answer (in
    float16 within what half-precision activations allow)."""
    cpu = analyses(tiny_models[name])
    gpu = analyses(converted(tiny_models[name], dtype, "cuda"))
    assert gpu.keys() == cpu.keys()
    tolerance = HALF_TOLERANCE if dtype == torch.float16 else 1e-4
    for key in cpu:
        np.testing.assert_allclose(np.asarray(gpu[key], np.float32), cpu[key], atol=tolerance, err_msg=key)
