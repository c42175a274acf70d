"""output_norms are Kobayashi et al. (2020)'s ||f_h(x_j)|| = ||(x_j W_V^h + b_V^h) W_O^h||,
checked against that formula written out here from each architecture's own weights: the value
projection applied to the attention block's input (read with a forward pre-hook), split into heads,
times that head's columns of the output projection."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.capture import run_capture
from models.record import Deferred

PROMPT = "The quick brown fox jumps over the lazy dog."


def attention_inputs(model, modules) -> list[torch.Tensor]:
    """Hidden states entering each attention module, in order, while the model runs."""
    seen = []

    def keep(module, args, kwargs):
        seen.append((kwargs.get("hidden_states", args[0] if args else None))[0].detach().float())

    handles = [module.register_forward_pre_hook(keep, with_kwargs=True) for module in modules]
    return seen, handles


def reference_norms(model, inputs: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """[L, H, N] ||f_h(x_j)|| from the formula, per architecture, and [L, H, N] ||v_j||."""
    layers = [(f.norm(dim=-1), values.transpose(0, 1).norm(dim=-1)) for f, values in head_outputs(model, inputs)]
    return tuple(torch.stack([layer[i] for layer in layers]).numpy() for i in range(2))


def head_outputs(model, inputs: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, f_h(x_j) = (x_j W_V^h + b_V^h) W_O^h [H, N, D] written out from the modules of
    a Llama, GPT-2 or BERT, and the value vectors [N, H, d] (grouped-query heads repeated)."""
    config, layers = model.config, []
    for layer, x in enumerate(inputs):  # x: [N, D]
        if config.model_type == "llama":
            attention = model.model.layers[layer].self_attn
            heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
            values = attention.v_proj(x).reshape(len(x), kv_heads, -1)  # [N, KV, d]
            values = values.repeat_interleave(heads // kv_heads, dim=1)  # [N, H, d]
            out = attention.o_proj.weight  # [D, H * d]
        elif config.model_type == "gpt2":
            attention = model.transformer.h[layer].attn
            heads = config.n_head
            values = attention.c_attn(x).split(config.n_embd, dim=-1)[2].reshape(len(x), heads, -1)
            out = attention.c_proj.weight.T  # Conv1D keeps [in, out]
        else:  # bert
            block = model.encoder.layer[layer].attention
            heads = config.num_attention_heads
            values = block.self.value(x).reshape(len(x), heads, -1)
            out = block.output.dense.weight
        d = values.shape[-1]
        contributions = torch.stack([values[:, h] @ out[:, h * d : (h + 1) * d].T for h in range(heads)])  # [H, N, D]
        layers.append((contributions, values))
    return layers


def attention_modules(model) -> list:
    """The innermost attention modules of a model, in order (those the value projection is in)."""
    modules = [m for m in model.modules() if type(m).__name__.endswith(("Attention", "SelfAttention"))]
    return [m for m in modules if not any(c in modules for c in m.children())]


def captured_with_inputs(handle, text: str):
    """A float32 capture of ``text`` and the hidden states that entered each attention module."""
    seen, handles = attention_inputs(handle.model, attention_modules(handle.model))
    try:
        return run_capture(handle, text, precision="float32"), seen
    finally:
        for hook in handles:
            hook.remove()


@pytest.mark.parametrize("deferred", [True, False], ids=["after-the-pass", "in-the-pass"])
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2", "tiny-bert"])
def test_output_norms_follow_kobayashi_et_al(tiny_models, name, deferred, monkeypatch):
    """On the CPU the norms and Grams are computed after the pass from the kept value vectors; a
    GPU computes them during the pass (forced here on the CPU). Both follow the formula."""
    from models import recorder

    monkeypatch.setattr(recorder, "DEFERRED_OUTPUT_DEVICES", ("cpu",) if deferred else ())
    handle = tiny_models[name]
    capture, seen = captured_with_inputs(handle, PROMPT)
    assert isinstance(capture.output_grams, Deferred) == deferred
    assert capture.info["output_norms_exact"]
    with torch.inference_mode():  # the captured inputs are inference tensors
        expected, value_norms = reference_norms(handle.model, seen)
        vectors = [f.transpose(0, 1) for f, _ in head_outputs(handle.model, seen)]  # [N, H, D] per layer
        expected_grams = torch.stack([f @ f.transpose(1, 2) for f in vectors]).numpy()  # [L, N, H, H]
    np.testing.assert_allclose(capture.output_norms, expected, rtol=1e-4, atol=1e-5)
    scale = np.abs(expected_grams).max()
    np.testing.assert_allclose(capture.output_grams, expected_grams, rtol=1e-4, atol=1e-5 * scale)
    # W_O matters: within a head, ||f_h(x_j)|| / ||v_j|| varies across tokens (Kobayashi's point)
    assert np.ptp(expected / value_norms, axis=-1).max() > 1e-3


def test_grams_in_blocks_equal_the_whole_and_fall_back_to_value_norms(monkeypatch):
    """G_j[h, g] = f_h(x_j) . f_g(x_j) computed in blocks of tokens equals the whole product; with
    no output projection found the heads sit side by side (W_O = I): a diagonal of ||v_j||^2."""
    from models import contributions

    generator = torch.Generator().manual_seed(0)
    values, projections = torch.randn(3, 50, 4, generator=generator), torch.randn(3, 4, 6, generator=generator)
    vectors = torch.einsum("hnd,hde->nhe", values, projections)  # [N, H, D] f_h(x_j)
    monkeypatch.setattr(contributions, "GRAM_BLOCK_BYTES", 4 * 3 * 6 * 7)  # 7 tokens a block
    np.testing.assert_allclose(
        contributions.output_grams(values, projections), vectors @ vectors.transpose(1, 2), rtol=1e-5, atol=1e-5
    )
    fallback = contributions.output_grams(values, None)  # [N, H, H]
    np.testing.assert_allclose(torch.diagonal(fallback, dim1=1, dim2=2).T.sqrt(), values.norm(dim=-1), rtol=1e-6)
    assert torch.count_nonzero(fallback - torch.diag_embed(torch.diagonal(fallback, dim1=1, dim2=2))) == 0


def test_a_deferred_array_is_computed_once_by_its_first_reader():
    """Readers on several threads share one computation; the array then reads like an ndarray."""
    import threading

    calls = []

    def compute():
        calls.append(1)
        return np.arange(6, dtype=np.float64).reshape(2, 3)

    deferred = Deferred((2, 3), np.float32, compute)
    assert deferred.nbytes == 24 and deferred.shape == (2, 3) and not deferred.resolved
    readers = [threading.Thread(target=deferred.resolve) for _ in range(4)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    assert calls == [1] and deferred.resolved
    assert deferred.dtype == np.float32 and np.asarray(deferred).dtype == np.float32
    np.testing.assert_array_equal(deferred[1], [3, 4, 5])
    np.testing.assert_array_equal(deferred * 2 > 5, [[False, False, False], [True, True, True]])
    assert deferred.max() == 5 and len(deferred) == 2


def test_a_deferred_array_that_fails_is_tried_again():
    attempts = []

    def compute():
        attempts.append(1)
        if len(attempts) == 1:
            raise MemoryError("first try")
        return np.ones(3)

    deferred = Deferred((3,), np.float32, compute)
    with pytest.raises(MemoryError):
        deferred.resolve()
    np.testing.assert_array_equal(deferred, np.ones(3))
