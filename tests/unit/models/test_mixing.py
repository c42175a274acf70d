"""Context mixing (models.mixing, app.analysis.mixing) against Kobayashi et al. (2021)'s definition
written out here from each architecture's own modules: the layer's input x_i, the attention
weights the model returns, f_h(x_j) = (u_j W_V^h + b_V^h) W_O^h from the value and output
projections, every [N, N, D] vector built explicitly, the norm's divisor from the residual sum.
Tolerance: relative 1e-4 of each map's peak (float32 throughout)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.analysis.mixing import mixing_ratio
from models.mixing import MAPS, context_mixing

PROMPT = "The quick brown fox jumps over the lazy dog."
TOLERANCE = 1e-4  # of each map's largest value


def run_model(handle, blocks, text: str) -> tuple[list[torch.Tensor], tuple]:
    """One forward pass: the hidden states entering each transformer block ([N, D], in order) and
    the attention weights the model returns (one [1, H, N, N] per layer)."""
    seen = []

    def keep(module, args, kwargs):
        seen.append(kwargs.get("hidden_states", args[0] if args else None)[0].detach().float())

    hooks = [block.register_forward_pre_hook(keep, with_kwargs=True) for block in blocks]
    ids = handle.tokenizer(text, return_tensors="pt")["input_ids"]
    try:
        with torch.no_grad():
            attentions = handle.model(input_ids=ids, output_attentions=True, use_cache=False).attentions
    finally:
        for hook in hooks:
            hook.remove()
    return seen, attentions


def decompose(alpha, vectors, residual, y, gamma, eps, centred):
    """The paper's four [N, N] maps from alpha [H, N, N], f_h(x_j) [H, N, D], x_i [N, D] and the
    norm's input y_i [N, D], with every vector built: m_ij = sum_h alpha_ij f_h(x_j)."""
    n = alpha.shape[-1]
    mixed = torch.einsum("hij,hjd->ijd", alpha, vectors)  # [N, N, D]
    with_residual = mixed + torch.eye(n)[:, :, None] * residual[:, None, :]  # + [i = j] x_i
    mean = (lambda t: t.mean(dim=-1, keepdim=True)) if centred else (lambda t: 0.0)
    s = ((y - mean(y)).pow(2).mean(dim=-1) + eps).sqrt()  # [N]
    normed = gamma * (with_residual - mean(with_residual)) / s[:, None, None]
    bias = y - residual - mixed.sum(dim=1)  # b_O, no token's
    parts = normed.sum(dim=1) + gamma * (bias - mean(bias)) / s[:, None]
    torch.testing.assert_close(parts, gamma * (y - mean(y)) / s[:, None], rtol=1e-4, atol=1e-4)  # LN(y) - beta
    return {
        "weights": alpha.mean(dim=0),
        "attn": mixed.norm(dim=-1),
        "attn_res": with_residual.norm(dim=-1),
        "attn_res_ln": normed.norm(dim=-1),
    }


def reference(name: str, handle, text: str) -> list[dict[str, torch.Tensor]]:
    """Per layer, the four maps from the formula, for BERT (post-LN), Llama and GPT-2 (pre-LN)."""
    model, config = handle.model, handle.config
    blocks = {
        "bert": lambda: model.encoder.layer,
        "llama": lambda: model.model.layers,
        "gpt2": lambda: model.transformer.h,
    }
    kind = next(k for k in blocks if k in name)
    seen, attentions = run_model(handle, blocks[kind](), text)
    layers = []
    with torch.no_grad():
        for index, x in enumerate(seen):
            alpha = attentions[index][0].float()  # [H, N, N]
            heads, n = alpha.shape[0], alpha.shape[-1]
            if kind == "bert":
                block = model.encoder.layer[index].attention
                u, norm = x, block.output.LayerNorm
                values, out = block.self.value(u), block.output.dense
                w_out, b_out = out.weight.T, out.bias
            elif kind == "llama":
                block = model.model.layers[index]
                u, norm = block.input_layernorm(x), block.post_attention_layernorm
                values, out = block.self_attn.v_proj(u), block.self_attn.o_proj
                w_out, b_out = out.weight.T, 0.0
            else:
                block = model.transformer.h[index]
                u, norm = block.ln_1(x), block.ln_2
                values, out = block.attn.c_attn(u).split(config.n_embd, dim=-1)[2], block.attn.c_proj
                w_out, b_out = out.weight, out.bias
            values = values.reshape(n, -1, w_out.shape[0] // heads)  # [N, KV, d]
            values = values.repeat_interleave(heads // values.shape[1], dim=1)  # [N, H, d]
            d = values.shape[-1]
            vectors = torch.stack([values[:, h] @ w_out[h * d : (h + 1) * d] for h in range(heads)])  # [H, N, D]
            y = x + torch.einsum("hij,hjd->id", alpha, vectors) + b_out  # the residual sum the norm reads
            centred = kind != "llama"
            eps = norm.variance_epsilon if kind == "llama" else norm.eps
            beta = None if kind == "llama" else norm.bias
            expected = norm(y)
            mean = y.mean(dim=-1, keepdim=True) if centred else 0.0
            got = norm.weight * (y - mean) / ((y - mean).pow(2).mean(dim=-1, keepdim=True) + eps).sqrt()
            torch.testing.assert_close(got + (0 if beta is None else beta), expected, rtol=1e-4, atol=1e-4)
            layers.append(decompose(alpha, vectors, x, y, norm.weight, eps, centred))
    return layers


def check_against_reference(name: str, handle, text: str) -> dict:
    result = context_mixing(handle, text)
    expected = reference(name, handle, text)
    assert result["maps"].shape == (len(MAPS), len(expected), *expected[0]["weights"].shape)
    for layer, maps in enumerate(expected):
        for m, key in enumerate(MAPS):
            want = maps[key].numpy()
            np.testing.assert_allclose(result["maps"][m, layer], want, atol=TOLERANCE * want.max(), rtol=0)
    return result


@pytest.mark.parametrize("name", ["tiny-bert", "tiny-llama", "tiny-gpt2"])
def test_maps_follow_kobayashi_et_al_2021(tiny_models, name):
    result = check_against_reference(name, tiny_models[name], PROMPT)
    assert result["post_ln"].tolist() == [name == "tiny-bert"] * result["maps"].shape[1]


def reference_ratio(matrix: np.ndarray, first_row: int) -> float:
    """Mean over rows i >= first_row of sum_{j != i} M_ij / sum_j M_ij, by loops."""
    shares = []
    for i in range(first_row, matrix.shape[0]):
        total = sum(float(v) for v in matrix[i])
        if total > 0:
            shares.append((total - float(matrix[i, i])) / total)
    return sum(shares) / len(shares)


@pytest.mark.parametrize("causal", [False, True])
def test_mixing_ratio_is_the_mean_share_of_other_tokens(causal):
    rng = np.random.default_rng(0)
    maps = rng.random((3, 7, 7)).astype(np.float32)
    if causal:
        maps = np.tril(maps)
    maps[1, 4] = 0.0  # a row of zeros is left out
    got = mixing_ratio(maps, causal)
    want = [reference_ratio(matrix, 1 if causal else 0) for matrix in maps]
    np.testing.assert_allclose(got, want, rtol=1e-6)


@pytest.mark.real_model
def test_minilm_follows_the_definition(minilm):
    """The packaged post-LN encoder: the residual keeps most of each token (the paper's finding)."""
    result = check_against_reference("minilm-bert", minilm, PROMPT)
    ratios = mixing_ratio(result["maps"], causal=False)  # [4, L]
    assert (ratios[3] < ratios[0]).all()  # ATTN+RES+LN mixes less than the weights suggest


@pytest.mark.real_model
def test_smollm2_follows_the_definition(smollm2):
    check_against_reference("smollm2-llama", smollm2, PROMPT)
