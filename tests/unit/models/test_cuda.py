"""The capture on a CUDA GPU (flash / memory-efficient kernels), in half and full precision.
Skipped without a GPU; scripts/device-check runs these on a machine that has one."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from models.capture import run_capture
from tests.unit.models.test_capture import PROMPT, reference_attention
from tests.unit.models.test_fused import check_outputs_unchanged

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
HALF_TOLERANCE = 1e-2  # float16 outputs: kernels round and sum in different orders
HALF_ATTENTION_TOLERANCE = 2e-3  # float16 eager weights themselves are rounded to ~5e-4


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-gpt2", "tiny-llama", "tiny-bart"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_capture_on_the_gpu_matches_the_models_attention(tiny_models, name, dtype):
    cpu = tiny_models[name]
    device = torch.device("cuda")
    handle = dataclasses.replace(cpu, model=copy.deepcopy(cpu.model).to(device, dtype), device=device)
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
