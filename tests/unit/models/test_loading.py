"""Where and in what precision the loader runs a model (models.loading)."""

from __future__ import annotations

import torch


def test_a_gpu_runs_a_model_in_its_own_half_precision(monkeypatch):
    """bfloat16 for a model trained in it (float16 overflows Gemma's activations) where the GPU
    has it; float16 otherwise; float32 on the CPU whatever the model says."""
    import transformers

    from models.loading import model_dtype

    cpu, gpu = torch.device("cpu"), torch.device("cuda")  # device names: no GPU needed to choose for one
    bf16, plain = transformers.LlamaConfig(dtype="bfloat16"), transformers.LlamaConfig()
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert model_dtype(bf16, gpu) == torch.bfloat16 and model_dtype(plain, gpu) == torch.float16
    assert model_dtype(bf16, cpu) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert model_dtype(bf16, gpu) == torch.float16
