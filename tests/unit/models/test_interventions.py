"""Interventions (models/interventions.py) against an independent implementation written here:
forward pre-hooks on each layer's output projection that edit its input, the heads' outputs
concatenated, before the projection mixes them. No editor of the app's is active in a reference
run."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from models import editing
from models.ablation import Ablation
from models.capture import run_capture
from models.interventions import capture_ablated, editor_for, next_token_logits, patch_heads
from models.recorder import tokenize

CLEAN = "When Mary and John went to the store, John gave a drink to"
CORRUPT = "When Mary and John went to the store, Paul gave a drink to"
CAUSAL = ("tiny-llama", "tiny-gpt2")


def output_projections(name: str, model) -> list[torch.nn.Module]:
    """The module each layer's head outputs enter, concatenated as [B, N, H * d]."""
    if name == "tiny-gpt2":
        return [block.attn.c_proj for block in model.transformer.h]
    if name == "tiny-bert":
        return [layer.attention.output.dense for layer in model.encoder.layer]
    return [layer.self_attn.o_proj for layer in model.model.layers]  # Llama-likes (tiny-llama, smollm2)


@contextlib.contextmanager
def head_hooks(name: str, model, heads: int, edits: dict):
    """Run ``edits[layer](x)`` on x = that layer's head outputs [B, N, H, d] before its projection."""

    def hook_for(edit):
        def hook(module, args):
            x = args[0]
            split = x.reshape(*x.shape[:-1], heads, -1).clone()
            return (edit(split).reshape(x.shape),)

        return hook

    projections = output_projections(name, model)
    handles = [projections[layer].register_forward_pre_hook(hook_for(edit)) for layer, edit in edits.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def zero_heads(heads: list[int]):
    def edit(x):
        for head in heads:
            x[:, :, head] = 0.0
        return x

    return edit


def mean_heads(heads: list[int]):
    def edit(x):
        for head in heads:
            x[:, :, head] = x[:, :, head].mean(dim=1, keepdim=True)
        return x

    return edit


def reference_logits(handle, ids, edits: dict, name: str) -> torch.Tensor:
    heads = handle.describe()["heads"]
    with torch.inference_mode(), head_hooks(name, handle.model, heads, edits):
        return handle.model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def ids_of(handle, text: str) -> list[int]:
    return tokenize(handle.tokenizer, text, 128).ids


@pytest.mark.parametrize("name", CAUSAL)
@pytest.mark.parametrize("mode", ["zero", "mean"])
def test_ablated_logits_equal_the_hook_reference(tiny_models, name, mode):
    handle = tiny_models[name]
    ids = ids_of(handle, CLEAN)
    ablation = Ablation.of([0, 3, 5], mode, layers=2, heads_per_layer=4)  # L0 H0, L0 H3, L1 H1
    reference_edit = zero_heads if mode == "zero" else mean_heads
    expected = reference_logits(handle, ids, {0: reference_edit([0, 3]), 1: reference_edit([1])}, name)
    got = next_token_logits(handle, [ids], editor_for(ablation))[0]
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    plain = next_token_logits(handle, [ids])[0]
    assert (got - plain).abs().max() > 1e-3  # the ablation changed something


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert"])
def test_ablated_capture_holds_the_ablated_runs_attention(tiny_models, name):
    """Every view of an ablated run shows the attention of that run: layer 1 attends differently
    once layer 0's heads are off, layer 0 itself not at all."""
    handle = tiny_models[name]
    ablation = Ablation.of([0, 1, 2, 3], "zero", layers=2, heads_per_layer=4)
    capture = capture_ablated(handle, CLEAN, ablation, precision="float32", keep_attention_bytes=1 << 30)
    heads = handle.describe()["heads"]
    with torch.inference_mode(), head_hooks(name, handle.model, heads, {0: zero_heads([0, 1, 2, 3])}):
        output = handle.model(input_ids=torch.tensor([ids_of(handle, CLEAN)]), output_attentions=True)
    expected = np.stack([layer[0].float().numpy() for layer in output.attentions])
    plain = run_capture(handle, CLEAN, precision="float32", keep_attention_bytes=1 << 30).attention
    change = np.abs(expected[1] - plain[1]).max()
    assert change > 1e-6  # random tiny weights attend almost uniformly: the change is small but real
    np.testing.assert_allclose(capture.attention, expected, atol=change / 100)
    np.testing.assert_allclose(capture.attention[0], plain[0], atol=change / 100)


@pytest.mark.parametrize("name", CAUSAL)
def test_patching_every_head_from_the_clean_run_restores_the_clean_logits(tiny_models, name):
    """The last position reads the other positions only through attention, so with the same last
    token, every head's output taken from the clean run gives exactly the clean logits."""
    handle = tiny_models[name]
    clean, corrupt = ids_of(handle, CLEAN), ids_of(handle, CORRUPT)
    assert len(clean) == len(corrupt) and clean[-1] == corrupt[-1] and clean != corrupt
    sources: dict[int, torch.Tensor] = {}
    clean_logits = next_token_logits(
        handle, [clean], editing.HeadEditor({layer: editing.recorded(sources, layer) for layer in range(2)})
    )[0]
    everything = editing.HeadEditor({layer: editing.patched([0] * 4, [0, 1, 2, 3], sources[layer]) for layer in (0, 1)})
    patched = next_token_logits(handle, [corrupt], everything)[0]
    torch.testing.assert_close(patched, clean_logits, atol=1e-4, rtol=0)
    assert (next_token_logits(handle, [corrupt])[0] - clean_logits).abs().max() > 1e-3


@pytest.mark.parametrize("name", CAUSAL)
def test_patching_scores_equal_the_hook_reference(tiny_models, name):
    handle = tiny_models[name]
    result = patch_heads(handle, CLEAN, CORRUPT)
    clean, corrupt = ids_of(handle, CLEAN), ids_of(handle, CORRUPT)
    answer, foil, heads = result["answer"], result["foil"], 4

    def keep(into, layer):
        def edit(x):
            into[layer] = x.clone()
            return x

        return edit

    clean_heads: dict[int, torch.Tensor] = {}
    clean_logits = reference_logits(handle, clean, {0: keep(clean_heads, 0), 1: keep(clean_heads, 1)}, name)
    corrupt_logits = reference_logits(handle, corrupt, {}, name)
    assert answer == int(clean_logits.argmax())

    def difference(logits):
        return float(logits[answer] - logits[foil])

    def copy_head(layer, head):
        def edit(x):
            x[:, :, head] = clean_heads[layer][:, :, head]
            return x

        return edit

    expected = np.zeros((2, heads))
    for layer in range(2):
        for head in range(heads):
            logits = reference_logits(handle, corrupt, {layer: copy_head(layer, head)}, name)
            expected[layer, head] = (difference(logits) - difference(corrupt_logits)) / (
                difference(clean_logits) - difference(corrupt_logits)
            )
    assert result["clean_difference"] == pytest.approx(difference(clean_logits), abs=1e-4)
    assert result["corrupt_difference"] == pytest.approx(difference(corrupt_logits), abs=1e-4)
    scale = abs(difference(clean_logits) - difference(corrupt_logits))
    np.testing.assert_allclose(result["restored"] * scale, expected * scale, atol=1e-4)


def test_ablation_is_validated():
    with pytest.raises(ValueError, match="does not exist"):
        Ablation.of([8], "zero", layers=2, heads_per_layer=4)
    with pytest.raises(ValueError, match="at least one head"):
        Ablation.of([], "zero", layers=2, heads_per_layer=4)
    with pytest.raises(ValueError, match="mode"):
        Ablation.of([0], "half", layers=2, heads_per_layer=4)
    assert Ablation.of([5, 0, 5], "mean", 2, 4).heads == (0, 5)


def test_patching_refuses_prompts_of_different_lengths(tiny_models):
    with pytest.raises(ValueError, match="same length"):
        patch_heads(tiny_models["tiny-llama"], CLEAN, CLEAN + " her")


def test_encoder_decoder_heads_are_numbered_as_the_record_numbers_them(tiny_models):
    """On BART the record's layers are the encoder's, then the decoder's self and cross blocks in
    the order the pass calls them; switching off the last encoder layer leaves the encoder's
    attention as it was and moves every decoder cross block, which reads the encoder's output."""
    handle = tiny_models["tiny-bart"]
    options = {"target": "a short answer", "precision": "float32", "keep_attention_bytes": 1 << 30}
    plain = run_capture(handle, CLEAN, **options)
    kinds = plain.info["layer_kinds"]
    last_encoder = kinds.index("decoder") - 1
    heads = plain.n_heads
    ablation = Ablation.of([last_encoder * heads + h for h in range(heads)], "zero", plain.n_layers, heads)
    ablated = capture_ablated(handle, CLEAN, ablation, **options)
    assert ablated.info["ablation"]["ablate"] == list(ablation.heads)
    np.testing.assert_allclose(ablated.attention[: last_encoder + 1], plain.attention[: last_encoder + 1], atol=1e-6)
    for layer, kind in enumerate(kinds):
        if kind == "cross":
            assert np.abs(ablated.attention[layer] - plain.attention[layer]).max() > 1e-7


def test_a_model_whose_attention_skips_the_hook_says_so(minilm):
    """Built with transformers' own eager attention, no layer reaches the capture hook: an
    ablation must answer that it cannot be made, not a 'no effect' from an unchanged run."""
    import transformers

    from models.errors import UnsupportedModelError
    from models.interventions import ablation_effect
    from tests.conftest import TINY_CONFIGS, handle_of

    config_class, options = TINY_CONFIGS["tiny-llama"]
    config = getattr(transformers, config_class)(vocab_size=minilm.tokenizer.vocab_size, **options)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    handle = handle_of("eager-llama", model, minilm.tokenizer)
    with pytest.raises(UnsupportedModelError, match="cannot be changed"):
        ablation_effect(handle, CLEAN, Ablation.of([1], "zero", 2, 4), max_tokens=128)
