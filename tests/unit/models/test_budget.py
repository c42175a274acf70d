"""The capture's cost on paper (models.budget) against what a capture really keeps, and the
refusal of a capture that would not fit, before the model runs."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from models import budget
from models.capture import run_capture
from models.errors import TooManyTokensError
from models.loading import ModelHandle
from models.recorder import ATTENTION_IMPLEMENTATION, capture_plan
from models.registry import ModelSpec
from tests.conftest import converted

LLAMA_1B = dict(  # Llama-3.2-1B's geometry (its config.json), one layer of it here
    hidden_size=2048, num_attention_heads=32, num_key_value_heads=8, head_dim=64, intermediate_size=8192
)
PROMPT = "The capital of France is Paris, and the capital of Italy is Rome. " * 3


def test_the_plan_gives_the_record_of_a_1b_layer(minilm):
    """Random weights with a 1B Llama's layer geometry (one layer, so the test stays small): the
    record the capture returns is the size the plan gives for it."""
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=minilm.tokenizer.vocab_size, num_hidden_layers=1, **LLAMA_1B)
    config.tie_word_embeddings = True
    model = transformers.LlamaForCausalLM._from_config(config, attn_implementation=ATTENTION_IMPLEMENTATION).eval()
    spec, cpu = ModelSpec("llama-1b-layer"), torch.device("cpu")
    handle = ModelHandle("llama-1b-layer", spec, model, minilm.tokenizer, cpu, "x", 0.0, threading.Lock())
    capture = run_capture(handle, PROMPT)
    plan = budget.plan_capture(budget.Geometry.of(config), capture.n_tokens, itemsize=4)
    assert capture.info["attention_path"] == "fused"
    assert abs(plan.record - capture.nbytes) <= 0.1 * capture.nbytes, (plan.record, capture.nbytes)


def test_plans_grow_with_the_prompt_and_the_model():
    small = budget.Geometry(16, 32, 8, 64, 2048, 8192, causal=True)  # Llama-3.2-1B
    large = budget.Geometry(32, 32, 8, 128, 4096, 14336, causal=True)  # Llama-3.1-8B
    for geometry in (small, large):
        short, long = (budget.plan_capture(geometry, n, itemsize=2) for n in (1024, 4096))
        assert long.total > 3 * short.total and long.record_flops > 10 * short.record_flops
    assert budget.plan_capture(large, 4096, 2).total > budget.plan_capture(small, 4096, 2).total


def test_a_capture_that_would_not_fit_is_refused_before_the_model_runs(tiny_models, monkeypatch):
    monkeypatch.setattr(budget, "available_bytes", lambda device: 1 << 20)  # 1 MiB free
    layers = []
    with pytest.raises(TooManyTokensError, match=r"needs about .* GiB .* at most \d+ tokens fits"):
        run_capture(tiny_models["tiny-llama"], PROMPT, on_layer=lambda *layer: layers.append(layer))
    assert layers == []  # no layer ran


def test_only_a_capture_that_keeps_its_values_plans_them():
    """A CPU capture keeps every layer's float32 value vectors until its Grams are computed after
    the answer; a GPU capture computes them in the pass, so its plan has none of them."""
    large = budget.Geometry(32, 32, 8, 128, 4096, 14336, causal=True)  # Llama-3.1-8B
    kept, not_kept = (budget.plan_capture(large, 4096, 2, keeps_values=keeps) for keeps in (True, False))
    assert kept.activations - not_kept.activations == 32 * 8 * 4096 * 128 * 4  # 0.5 GiB
    assert kept.record == not_kept.record


def test_the_plan_of_a_bfloat16_model_counts_its_q_and_k_in_float32(tiny_models):
    """numpy has no bfloat16: the record keeps such q and k in float32, and the plan counts them so."""
    cpu = tiny_models["tiny-llama"]
    handle = converted(cpu, torch.bfloat16)
    capture = run_capture(handle, PROMPT)
    assert capture.queries.dtype == np.float32
    planned = capture_plan(handle)(capture.n_tokens).record
    assert abs(planned - capture.nbytes) <= 0.1 * capture.nbytes, (planned, capture.nbytes)
